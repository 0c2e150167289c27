"""The web studio: served at /, and used in headless Chromium on a phone-sized screen to make a video
and watch it play (Playwright driving Debian's chromium by its executable path)."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")
pytest.importorskip("openai", reason="the server tests need the openai SDK: pip install -e '.[test]'")

import server_stack  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def stack():
    return server_stack.shared()


def test_studio_files_are_served(stack):
    root = f"http://127.0.0.1:{stack.port}"
    page = httpx.get(root + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="key"' in page.text and 'name="viewport"' in page.text
    csp = page.headers["content-security-policy"]  # nothing but the server's own files runs or loads
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    for asset, kind in (("/studio/studio.js", "javascript"), ("/studio/studio.css", "css")):
        r = httpx.get(root + asset)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert httpx.get(root + "/studio/nope.js").status_code == 404


def _chromium() -> str:
    path = os.environ.get("MOVIOLA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run does this)")
    return path


def _wait_until(page, expression: str, timeout: float = 30_000) -> None:
    """Poll a JavaScript expression until it is truthy (timeout in ms, as Playwright's). Playwright's own
    wait_for_function evaluates its predicate with eval() in the page, which the studio's content security
    policy (no 'unsafe-eval') refuses; page.evaluate runs through the debugger and is not refused."""
    import time

    end = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout / 1000:.0f} s waiting for {expression}")
        page.wait_for_timeout(100)


def _new_key(stack, name: str):
    """(token, database, key row) of a new key of the shared server's."""
    from moviola.server import keys

    token = stack.key(name)
    db = stack.database()
    return token, db, keys.lookup(db, token)


def _failed_video(db, key: dict, prompt: str, seed: int) -> str:
    """A failed job of ``key``'s: listed like any other video, with no worker or files needed."""
    from moviola.server import jobs

    vid = jobs.new_video_id()
    jobs.insert_job(db, key, video_id=vid, kind="create", prompt=prompt, model="moviola-default",
                    seconds="1", size="64x64", params={"seed": seed}, cost_seconds=0.0)
    db.execute("UPDATE jobs SET status = 'failed', error_code = 'test', error_message = 'made by a test' "
               "WHERE id = ?", (vid,))
    return vid


def _signed_in(browser, stack, token: str):
    """A phone-sized page of the studio, signed in with ``token``."""
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(f"http://127.0.0.1:{stack.port}/")
    page.fill("#key", token)
    page.click("#signin")
    page.wait_for_selector("#studio:not([hidden])")
    # no first-frame preview (a broken image and its Remove button) before an image is picked: display: flex
    # had overridden the hidden attribute
    assert not page.is_visible("#image-preview")
    return page


def test_studio_makes_a_video_and_plays_it(stack, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[test]'")
    exe = _chromium()
    token = stack.key("studio")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Whatever the server's content security policy blocks (an inline script or style, another
            # origin, a blob: or data: URL it does not allow) would break the studio quietly: record it.
            page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation',"
                                 " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
            page.goto(f"http://127.0.0.1:{stack.port}/")
            page.fill("#key", "mvl-wrong")
            page.click("#signin")
            _wait_until(page, "document.querySelector('#signin-error').textContent.length > 0")
            assert "not valid" in page.inner_text("#signin-error")
            page.fill("#key", token)
            page.click("#signin")
            page.wait_for_selector("#studio:not([hidden])")
            page.fill("#prompt", "a large red square moves right on a white background")
            page.select_option("#size", "64x64")
            page.fill("#seconds", "1")
            page.fill("#seed", "3")
            page.click("#generate")
            page.wait_for_selector(".card[data-status]", timeout=30_000)
            page.wait_for_selector(".card.done video", timeout=300_000)
            # It plays: frames decoded and the clock moving.
            _wait_until(page, "(() => { const v = document.querySelector('.card.done video');"
                                   " return v && v.readyState >= 2 && v.currentTime > 0 && !v.error; })()",
                                   timeout=60_000)
            width = page.evaluate("document.querySelector('.card.done video').videoWidth")
            assert width == 64
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
            page.select_option(".card.done select[name=rating]", "5")
            page.fill(".card.done input[name=comment]", "plays on a phone")
            page.click(".card.done .feedback button")
            _wait_until(page, "document.querySelector('.card.done .feedback button').textContent === 'Saved'")

            # Remix from the gallery item with the strength slider.
            page.click(".card.done [data-act=remix]")
            page.fill(".card.done .remix-form textarea", "a large blue square moves right on a white background")
            page.fill(".card.done .remix-form input[name=strength]", "0.3")
            page.click(".card.done .remix-form button[type=submit]")
            _wait_until(page, "document.querySelectorAll('.card').length === 2")

            # The storyboard editor: a third card, prompts moved between slots, one removed, submitted.
            prompts = page.locator("#board-cards textarea[name=prompt]")
            prompts.nth(0).fill("a small green circle falls on a black background")
            prompts.nth(1).fill("a small red circle moves left on a black background")
            page.click("#board-add")
            assert page.locator("#board-cards li").count() == 3
            assert page.input_value("#board-cards li:nth-child(3) input[name=start]") == "4"
            prompts.nth(2).fill("a large yellow triangle spins on a gray background")
            from PIL import Image, ImageDraw

            first_frame = tmp_path / "green.png"  # an image card: the green circle's first frame
            im = Image.new("RGB", (64, 64))
            ImageDraw.Draw(im).ellipse((27, 6, 37, 16), fill=(40, 180, 60))
            im.save(first_frame)
            page.set_input_files("#board-cards li:nth-child(1) input[name=image]", str(first_frame))
            page.click("#board-cards li:nth-child(2) [data-act=up]")  # swap the first two cards' prompts
            assert prompts.nth(0).input_value().startswith("a small red circle")
            # the image moved with its prompt
            assert page.evaluate("document.querySelector('#board-cards li:nth-child(2) input[name=image]')"
                                 ".files[0].name") == "green.png"
            assert page.evaluate("document.querySelector('#board-cards li:nth-child(1) input[name=image]')"
                                 ".files.length") == 0
            page.click("#board-cards li:nth-child(3) [data-act=remove]")
            page.fill("#board-cards li:nth-child(2) input[name=start]", "1")
            page.fill("#board-seconds", "2")
            page.fill("#board-seed", "11")  # its own seed field, not New video's (3, above)
            page.click("#board-submit")
            _wait_until(page, "document.querySelectorAll('.card').length === 3")
            assert page.inner_text("#board-error") == ""
            page.wait_for_selector(".card.done:first-child video", timeout=300_000)  # the storyboard's result
            assert "storyboard" in page.inner_text(".card:first-child .meta")
            # A bad board is refused with the server's message, and nothing is queued.
            page.fill("#board-cards li:nth-child(2) input[name=start]", "0")
            page.click("#board-submit")
            _wait_until(page, "document.querySelector('#board-error').textContent.length > 0")
            assert "order" in page.inner_text("#board-error")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
            assert not errors, errors
            assert page.evaluate("window.__csp") == []
        finally:
            browser.close()
    client = stack.client(token)
    fb = client.get("/feedback", cast_to=object)["data"]
    assert [(e["rating"], e["comment"], e["seed"]) for e in fb] == [(5, "plays on a phone", 3)]
    videos = {v.moviola["kind"]: v for v in client.videos.list()}
    assert set(videos) == {"create", "remix", "storyboard"}
    assert videos["remix"].moviola["strength"] == 0.3 and videos["remix"].remixed_from_video_id == videos["create"].id
    board = videos["storyboard"]
    assert board.seconds == "2" and board.prompt.startswith("0s: a small red circle")
    assert board.moviola["seed"] == 11 and videos["create"].moviola["seed"] == 3
    assert "1s: a small green" in board.prompt
    import json

    cards = json.loads(stack.database().one("SELECT params FROM jobs WHERE id = ?", (board.id,))["params"])["cards"]
    assert "image_path" not in cards[0] and cards[1]["image_path"].endswith("card1.png")  # the image card
    assert board.moviola["card_image_sha256"][0] is None and len(board.moviola["card_image_sha256"][1]) == 64


def test_studio_gallery_pages_through_older_videos(stack):
    """The gallery shows the newest page and follows the list's cursor for older videos."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[test]'")
    exe = _chromium()
    token, db, key = _new_key(stack, "studio-pages")
    made = [_failed_video(db, key, f"clip {i}", i) for i in range(26)]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = _signed_in(browser, stack, token)
            _wait_until(page, "document.querySelectorAll('#gallery .card').length === 24")
            assert page.is_visible("#gallery-more")
            assert page.get_attribute("#gallery .card:first-child", "data-id") == made[-1]  # newest first
            page.click("#gallery-more")
            _wait_until(page, "document.querySelectorAll('#gallery .card').length === 26")
            assert page.get_attribute("#gallery .card:last-child", "data-id") == made[0]
            assert not page.is_visible("#gallery-more")
        finally:
            browser.close()


def _completed_video(db, storage, key: dict, prompt: str, seed: int) -> str:
    """A completed job of ``key``'s with a small MP4 of its own, made without a worker."""
    import hashlib

    import numpy as np

    from moviola.server import jobs
    from moviola.video_io import write_video

    vid = jobs.new_video_id()
    jobs.insert_job(db, key, video_id=vid, kind="create", prompt=prompt, model="moviola-default",
                    seconds="1", size="64x64", params={"seed": seed}, cost_seconds=0.0)
    folder = storage / "videos" / vid / "a1"
    folder.mkdir(parents=True)
    write_video(folder / "video.mp4", np.full((8, 64, 64, 3), 20 * (seed % 12), np.uint8), 8)
    digest = hashlib.sha256((folder / "video.mp4").read_bytes()).hexdigest()
    db.execute("UPDATE jobs SET status = 'completed', progress = 100, assets = ?, content_hash = ?, "
               "completed_at = created_at WHERE id = ?", (f"videos/{vid}/a1", digest, vid))
    return vid


def test_studio_fetches_clips_as_they_come_into_view(stack):
    """A gallery page of 24 clips fetches only those near the screen, the rest as it is scrolled."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[test]'")
    exe = _chromium()
    token, db, key = _new_key(stack, "studio-lazy")
    for i in range(24):
        _completed_video(db, stack.storage, key, f"clip {i}", i)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            fetched = []
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.on("request", lambda r: fetched.append(r.url) if r.url.endswith("/content") else None)
            page.goto(f"http://127.0.0.1:{stack.port}/")
            page.fill("#key", token)
            page.click("#signin")
            _wait_until(page, "document.querySelectorAll('#gallery .card').length === 24")
            page.wait_for_timeout(1000)
            assert fetched == []  # on a phone the gallery starts below the forms: nothing of it on screen
            page.evaluate("document.querySelector('#gallery').scrollIntoView()")
            _wait_until(page, "document.querySelectorAll('#gallery .card:first-child video').length === 1")
            page.wait_for_timeout(1000)
            first = len(fetched)
            assert 0 < first < 6, first  # the cards on screen (a card is ~500 px tall), not the page's 24
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            _wait_until(page, "document.querySelectorAll('#gallery .card:last-child video').length === 1")
            assert first < len(fetched) < 24
        finally:
            browser.close()


def test_studio_says_when_the_server_fails_and_loses_nothing(stack):
    """Found by a review: a refused delete removed the card anyway, a busy server at page load forgot the saved
    key, and a failed card offered Remix and Download. Server failures are simulated by routing requests."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[test]'")
    exe = _chromium()
    from moviola.server import keys

    token = stack.key("studio-outage")
    db = stack.database()
    vid = _failed_video(db, keys.lookup(db, token), "a failed clip", 1)
    busy = lambda route: route.fulfill(status=503, content_type="application/json",  # noqa: E731
                                       body='{"error": {"message": "database unavailable", "type": "server_error"}}')
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = _signed_in(browser, stack, token)
            page.wait_for_selector(f'.card[data-id="{vid}"]')
            card = f'.card[data-id="{vid}"]'
            assert not page.is_visible(f'{card} [data-act="remix"]') and not page.is_visible(f"{card} a.download")
            assert page.is_visible(f'{card} [data-act="delete"]')  # a failed card can still be deleted
            page.route("**/v1/videos/" + vid, busy)
            page.on("dialog", lambda d: d.accept())
            page.click(f'{card} [data-act="delete"]')
            _wait_until(page, f"document.querySelector('{card} .note').textContent.startsWith('Not deleted')")
            assert page.is_visible(card)  # still there, as it is on the server
            page.unroute("**/v1/videos/" + vid)
            # A reload while the server is busy keeps the saved key and says why it could not sign in.
            page.route("**/v1/models", busy)
            page.reload()
            _wait_until(page, "document.querySelector('#signin-error').textContent.includes('database unavailable')")
            assert page.evaluate("localStorage.getItem('moviola.key')") == token
            assert page.input_value("#key") == token
        finally:
            browser.close()


def test_studio_extends_a_camera_file_of_the_artists_own(stack, tmp_path):
    """Found by a review: the studio could only remix or extend what it had made itself. A 29.97 fps 2.35:1
    H.264 clip with B-frames is uploaded and continued, and the card for the new video appears and completes."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -e '.[test]'")
    exe = _chromium()
    import numpy as np

    from moviola.video_io import write_video

    t = np.arange(30)[:, None, None]
    y, x = np.mgrid[0:80, 0:188]
    frames = np.stack([(128 + 100 * np.sin(x[None] / 15 + t / 5)).astype(np.uint8),
                       np.broadcast_to((y * 3).astype(np.uint8), (30, 80, 188)),
                       np.broadcast_to(((x + y) % 256).astype(np.uint8), (30, 80, 188))], axis=-1)
    clip = write_video(tmp_path / "camera.mp4", frames, 30000 / 1001, quality="default")
    token = stack.key("studio-own")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = _signed_in(browser, stack, token)
            page.set_input_files("#own-video", str(clip))
            page.fill("#own-prompt", "the colours keep moving")
            page.select_option("#own-action", "after")
            page.fill("#own-seconds", "1")
            page.click("#own-submit")
            page.wait_for_selector(".card[data-status]", timeout=30_000)
            assert "extension" in page.inner_text(".card .meta")
            page.wait_for_selector('.card[data-status="completed"]', timeout=300_000)
            assert page.inner_text("#own-error") == ""
        finally:
            browser.close()
