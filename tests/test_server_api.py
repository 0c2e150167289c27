"""The Videos API against a live server on loopback, driven by the official openai SDK (API.md)."""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai SDK: pip install -e '.[test]'")
pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")
httpx = pytest.importorskip("httpx")

import server_stack  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated


@pytest.fixture(scope="module")
def stack():
    return server_stack.shared()


@pytest.fixture(scope="module")
def key(stack):
    return stack.key("api")


@pytest.fixture(scope="module")
def client(stack, key):
    return stack.client(key)


@pytest.fixture(scope="module")
def done(client):
    """One finished 2 s 64x64 clip, made through create_and_poll."""
    t0 = time.perf_counter()
    v = client.videos.create_and_poll(prompt="a small red circle moves right on a black background",
                                      size="64x64", seconds="2", extra_body={"seed": 7})
    print(f"create_and_poll round trip: {time.perf_counter() - t0:.1f} s")
    assert v.status == "completed", v.error
    return v


def poll(client, vid, timeout=300):
    return server_stack.wait_for(lambda: (v := client.videos.retrieve(vid)).status in ("completed", "failed") and v,
                                 timeout, 0.1, f"video {vid}")


def test_round_trip_and_every_variant_decodes(client, done, stack):
    from PIL import Image

    from moviola.video_io import read_video

    assert (done.object, done.size, done.seconds, done.progress) == ("video", "64x64", "2", 100)
    assert done.model == "moviola-default" and done.completed_at >= done.created_at
    assert done.expires_at > time.time()
    again = client.videos.retrieve(done.id)
    assert again.id == done.id and again.status == "completed"

    mp4 = client.videos.download_content(done.id).read()
    assert hashlib.sha256(mp4).hexdigest() == done.moviola["content_hash"]
    path = stack.root / "dl.mp4"
    path.write_bytes(mp4)
    v = read_video(path)
    assert v.frames.shape == (16, 64, 64, 3) and v.fps == pytest.approx(8.0)
    # Provenance travels inside the file.
    assert v.metadata["moviola_prompt"] == done.prompt
    assert v.metadata["moviola_seed"] == "7" and v.metadata["moviola_steps"] == str(server_stack.STEPS)
    assert v.metadata["moviola_model"] == "moviola-default" and v.metadata["creation_time"].startswith("20")
    assert v.metadata["moviola_sampler"] and v.metadata["moviola_guidance"]
    assert len(v.metadata["moviola_weights_sha256"]) == 64  # which weights, not where the server keeps them
    assert not any(str(stack.root) in t or "/weights/" in t for t in v.metadata.values())

    thumb = Image.open(io.BytesIO(client.videos.download_content(done.id, variant="thumbnail").read()))
    assert thumb.format == "WEBP" and thumb.size == (64, 64)
    sheet = Image.open(io.BytesIO(client.videos.download_content(done.id, variant="spritesheet").read()))
    assert sheet.format == "JPEG" and sheet.size == (4 * 64, 4 * 64)


def test_poll_header_and_progress_while_running(client):
    raw = client.videos.with_raw_response.create(prompt="a large blue square spins", size="64x64", seconds="1")
    v = raw.parse()
    assert v.status == "queued" and v.progress == 0
    assert raw.headers["openai-poll-after-ms"] == "100"
    seen = []

    def finished():
        x = client.videos.retrieve(v.id)
        seen.append((x.status, x.progress))
        return x if x.status == "completed" else None

    final = server_stack.wait_for(finished, 300, 0.05, "completion")
    assert final.progress == 100
    progress = [p for s, p in seen if s == "in_progress"]
    assert progress == sorted(progress) and all(0 <= p <= 90 for p in progress), seen
    assert not client.videos.with_raw_response.retrieve(v.id).headers.get("openai-poll-after-ms")


def test_list_pages_with_cursor(stack):
    c = stack.client(stack.key("lister"))
    ids = [c.videos.create(prompt=f"a small green circle falls {i}", size="64x64", seconds="1").id for i in range(5)]
    try:
        page = c.videos.list(limit=2)
        assert [v.id for v in page.data] == ids[::-1][:2] and page.has_more
        walked = [v.id for v in c.videos.list(limit=2)]  # iterating follows after=last_id across pages
        assert walked == ids[::-1]
        assert [v.id for v in c.videos.list(limit=3, order="asc")] == ids
        last = c.videos.list(limit=2, after=ids[1], order="desc")
        assert [v.id for v in last.data] == [ids[0]] and not last.has_more
        with pytest.raises(openai.BadRequestError, match="after"):
            c.videos.list(after="video_unknown")
    finally:
        for i in ids:  # cancel: the shared worker need not make these
            c.videos.delete(i)
    assert list(c.videos.list()) == []


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def test_remix_extend_edit(client, done, stack):
    from moviola.video_io import read_video

    remix = client.videos.remix(done.id, prompt="a small blue circle moves right on a black background",
                                extra_body={"strength": 0.5})
    # SDK 3.57 rejects video={"id": ...} on the client side (its file extraction insists on a file), so a
    # stored video is referenced the way the SDK would encode it, as the form field video[id]:
    ext = client.videos.extend(prompt="the circle keeps moving", seconds="1", video=openai.omit,
                               extra_body={"video": {"id": done.id}})
    edit = client.videos.edit(prompt="a small yellow circle moves right", video=openai.omit,
                              extra_body={"video": {"id": done.id}})
    assert remix.remixed_from_video_id == done.id and remix.status == "queued"
    assert ext.seconds == "3" and ext.size == "64x64"  # seconds: the stitched total
    remix, ext, edit = (poll(client, v.id) for v in (remix, ext, edit))
    for v in (remix, ext, edit):
        assert v.status == "completed", v.error
        assert v.moviola["note"] is None  # nothing pretended
    assert (remix.size, remix.seconds, remix.moviola["seed"]) == ("64x64", "2", 7)
    for v in (remix, ext, edit):  # provenance: the stored source's hash, which outlives its expiry
        assert v.moviola["source_sha256"] == done.moviola["content_hash"]
    assert edit.remixed_from_video_id == done.id and edit.moviola["kind"] == "edit"

    src = read_video(_save(client, done.id, stack.root / "src.mp4")).frames
    for v in (remix, edit):  # video to video: the source's length, and not a copy of it at strength 0.5/0.6
        out = read_video(_save(client, v.id, stack.root / f"{v.id}.mp4"))
        assert out.frames.shape == src.shape and out.metadata["moviola_kind"] == v.moviola["kind"]
    assert read_video(stack.root / f"{remix.id}.mp4").metadata["moviola_strength"] == "0.5"
    extended = read_video(_save(client, ext.id, stack.root / "ext.mp4"))
    assert (extended.metadata["moviola_extension_seconds"], extended.metadata["moviola_backward"]) == ("1.0", "false")
    assert (ext.moviola["extension_seconds"], ext.moviola["backward"]) == (1.0, False)
    out = extended.frames
    assert out.shape == (24, 64, 64, 3)
    assert psnr(out[:16], src) > 30  # the source is kept as the extension's start

    # An uploaded clip whose content the test controls (a generated source may be nearly black at 4 steps,
    # and black new frames would then look like a frozen last frame): a red square moving right.
    from moviola.video_io import write_video

    clip = np.zeros((16, 64, 64, 3), np.uint8)
    for i in range(16):
        clip[i, 24:36, 8 + 2 * i:20 + 2 * i, 0] = 220
    write_video(stack.root / "moving.mp4", clip, 8)
    up = client.videos.extend(prompt="a small red square moves right on a black background", seconds="1",
                              video=("moving.mp4", (stack.root / "moving.mp4").read_bytes(), "video/mp4"))
    up = poll(client, up.id)
    assert up.status == "completed", up.error
    out = read_video(_save(client, up.id, stack.root / "up.mp4")).frames
    assert out.shape == (24, 64, 64, 3)
    assert psnr(out[:16], clip) > 30  # the upload is kept as the extension's start
    assert psnr(out[16:], out[15:16]) < 60  # ...and new frames follow it (not the last frame frozen)

    with pytest.raises(openai.BadRequestError, match="strength") as e:
        client.videos.remix(done.id, prompt="x", extra_body={"strength": 1.5})
    assert e.value.body["param"] == "strength"
    with pytest.raises(openai.BadRequestError, match="strength"):
        client.videos.edit(prompt="x", video=openai.omit, extra_body={"video": {"id": done.id}, "strength": "-1"})
    with pytest.raises(openai.BadRequestError, match="at most 60") as e:
        client.videos.extend(prompt="x", seconds="59", video=openai.omit, extra_body={"video": {"id": done.id}})
    assert e.value.body["param"] == "seconds"


def _save(client, vid, path):
    path.write_bytes(client.videos.download_content(vid).read())
    return path


def _world_image(w=64, h=64):
    """A world-like frame: a red disc and a yellow square on navy."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (20, 30, 90)
    img[(yy - h * 0.4) ** 2 + (xx - w * 0.35) ** 2 < (h * 0.18) ** 2] = (230, 40, 40)
    img[int(h * 0.6):int(h * 0.85), int(w * 0.6):int(w * 0.85)] = (240, 220, 30)
    return img


def test_input_reference_and_uploaded_edit(client, stack):
    from moviola.video_io import encode_image, read_video, write_video

    image = _world_image()
    v = client.videos.create(prompt="a small red circle falls on a navy background", size="64x64", seconds="1",
                             input_reference=("first.png", encode_image(image), "image/png"))
    # Real footage of another size and frame rate (96x64 at 24 fps): made at the trained size nearest it.
    clip = stack.root / "upload.mp4"
    write_video(clip, np.stack([np.roll(_world_image(144, 96), 2 * k, axis=1) for k in range(24)]), 24)
    e = client.videos.edit(prompt="a small red circle moves right on a navy background",
                           video=("in.mp4", clip.read_bytes(), "video/mp4"))
    assert e.size == "96x64" and e.seconds == "1"
    # A phone's portrait clip, stored 96x64 and turned a quarter on display: made at the portrait size (it had been
    # made 96x64, cropped to the middle third of the picture)
    from test_video_io import write_raw

    turned = write_raw(stack.root / "portrait.mp4", np.zeros((8, 64, 96, 3), np.uint8), 8, rotation=90)
    p = client.videos.edit(prompt="a small red circle falls", video=("p.mp4", turned.read_bytes(), "video/mp4"))
    assert p.size == "64x96", p.size
    client.videos.delete(p.id)
    v, e = poll(client, v.id), poll(client, e.id)
    assert v.status == "completed", v.error
    made = read_video(_save(client, v.id, stack.root / "i2v.mp4"))
    frames = made.frames
    assert frames.shape == (8, 64, 64, 3)
    # Provenance says what it started from: the image's hash in the file and in the Video object.
    assert made.metadata["moviola_input_image_sha256"] == v.moviola["input_image_sha256"]
    assert v.moviola["input_image_sha256"] == hashlib.sha256(encode_image(image)).hexdigest()
    assert e.moviola["source_sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert psnr(frames[0], image) >= 25  # frame 0 is the uploaded image (after H.264)
    assert e.status == "completed", e.error
    assert read_video(_save(client, e.id, stack.root / "edit.mp4")).frames.shape == (8, 64, 96, 3)

    with pytest.raises(openai.BadRequestError, match="input_reference is not a readable image") as bad:
        client.videos.create(prompt="x", input_reference=("x.png", b"not an image", "image/png"))
    assert "BytesIO" not in str(bad.value)  # no Python internals in what a user reads
    eps = __import__("io").BytesIO()
    __import__("PIL.Image").Image.new("RGB", (16, 16)).save(eps, format="EPS")  # a program: never opened
    with pytest.raises(openai.BadRequestError, match="not an image format this server reads"):
        client.videos.create(prompt="x", input_reference=("x.png", eps.getvalue(), "image/png"))
    with pytest.raises(openai.BadRequestError, match="input_reference is 1x1: too small"):  # refused, not queued
        client.videos.create(prompt="x", input_reference=("x.png", encode_image(np.zeros((1, 1, 3), np.uint8)),
                                                          "image/png"))
    with pytest.raises(openai.BadRequestError, match="fetches nothing from the network"):
        client.videos.create(prompt="x", extra_body={"input_reference": {"image_url": "https://example.com/a.png"}})
    with pytest.raises(openai.BadRequestError, match="not a readable video"):
        client.videos.extend(prompt="x", seconds="1", video=("v.mp4", b"garbage" * 10, "video/mp4"))
    # A concat list naming itself (FFmpeg had opened it within itself until no file handle was left) or what
    # lies beside it: refused before FFmpeg opens anything it names
    with pytest.raises(openai.BadRequestError, match="a playlist or a list of other files"):
        client.videos.extend(prompt="x", seconds="1", video=("v.mp4", b"ffconcat version 1.0\nfile 'source.mp4'\n",
                                                             "video/mp4"))


def test_storyboard_endpoint(client, stack):
    from moviola.video_io import read_video

    board = {"cards": [{"start": 0, "prompt": "a small red circle moves right on a black background"},
                       {"start": 1, "prompt": "a large blue square spins on a white background"}],
             "seconds": "2", "size": "64x64", "transition": "cut", "seed": 5}
    v = client.post("/videos/storyboards", body=board, cast_to=openai.types.Video)
    assert (v.status, v.seconds, v.size, v.moviola["kind"]) == ("queued", "2", "64x64", "storyboard")
    assert v.id in [x.id for x in client.videos.list(limit=5)]
    v = poll(client, v.id)
    assert v.status == "completed", v.error
    out = read_video(_save(client, v.id, stack.root / "board.mp4"))
    assert out.frames.shape == (16, 64, 64, 3)
    assert json.loads(out.metadata["moviola_storyboard"])[1] == {"start": 1.0, "prompt": board["cards"][1]["prompt"]}
    assert v.moviola["card_image_sha256"] == [None, None]  # no image cards here (the studio's test has one)
    # A completed video whose file was removed by hand: the server says so, not "no such video".
    for f in (stack.storage / "videos" / v.id).rglob("video.mp4"):
        f.unlink()
    with pytest.raises(openai.InternalServerError) as e:
        client.with_options(max_retries=0).videos.download_content(v.id)
    assert e.value.code == "asset_missing"
    # The cut: the second card's scene (white background) starts at 1 s.
    assert out.frames[:8].mean() < out.frames[8:].mean()

    cards = board["cards"]
    bad = [({**board, "cards": cards[::-1]}, "first card must start at 0", "cards[0].start"),
           ({**board, "cards": [cards[0], {**cards[1], "start": 0}]}, "without overlap", "cards[1].start"),
           ({**board, "cards": []}, "cards", "cards"),
           ({**board, "seconds": "1"}, "after the last card", "seconds"),
           ({**board, "seconds": "600"}, "at most", "seconds"),
           ({**board, "size": "100x100"}, "allowed", "size"),
           ({**board, "transition": "dissolve"}, "transition", "transition"),
           ({k: x for k, x in board.items() if k != "cards"}, "cards", "cards"),
           ({**board, "cards": [{"start": 0, "prompt": "x", "image": "https://example.com/a.png"}]},
            "fetches nothing", "cards[0].image")]
    for body, message, param in bad:
        with pytest.raises(openai.BadRequestError, match=message) as e:
            client.post("/videos/storyboards", body=body, cast_to=object)
        assert e.value.body["param"] == param, (body, e.value.body)


def test_delete_removes_assets(client, stack):
    v = client.videos.create_and_poll(prompt="a small cyan square moves up", size="64x64", seconds="1")
    assert v.status == "completed"
    folder = stack.storage / "videos" / v.id
    assert any(folder.rglob("video.mp4"))
    d = client.videos.delete(v.id)
    assert (d.id, d.deleted, d.object) == (v.id, True, "video.deleted")
    assert not folder.exists()
    for call in (lambda: client.videos.retrieve(v.id), lambda: client.videos.download_content(v.id),
                 lambda: client.videos.delete(v.id), lambda: client.videos.remix(v.id, prompt="x")):
        with pytest.raises(openai.NotFoundError):
            call()


def test_expired_assets_are_cleaned_up(client, done, stack):
    v = client.videos.create_and_poll(prompt="a small orange circle bounces", size="64x64", seconds="1")
    folder = stack.storage / "videos" / v.id
    assert folder.exists()
    stack.database().execute("UPDATE jobs SET expires_at = ? WHERE id = ?", (time.time() - 1, v.id))
    with pytest.raises(openai.NotFoundError, match="expired"):
        client.videos.download_content(v.id)
    assert not folder.exists()
    assert client.videos.retrieve(v.id).moviola["expired"] is True
    assert client.videos.download_content(done.id).read()  # others untouched


def test_error_classes(client, stack, key):
    bad = stack.client("mvl-not-a-real-key")
    with pytest.raises(openai.AuthenticationError):
        bad.videos.list()
    r = httpx.get(f"{stack.base_url}/videos")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):  # admin API with a plain key
        client.get("/admin/keys", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_0000")
    cases = [dict(size="640x480"), dict(size="64"), dict(seconds="600"), dict(seconds="zero"), dict(model="veo-3"),
             dict(extra_body={"seed": "x"})]
    for kw in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.videos.create(prompt="a red circle", **kw)
        assert e.value.body["param"] in ("size", "seconds", "model", "seed")
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.videos.create(prompt="   ")
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.videos.list(limit=1000)
    with pytest.raises(openai.BadRequestError, match="variant"):
        client.videos.download_content("video_x", variant="poster")  # type: ignore[arg-type]
    queued = client.videos.create(prompt="a small purple triangle spins", size="64x64", seconds="1")
    with pytest.raises(openai.BadRequestError, match="ready|completed") as e:
        client.videos.download_content(queued.id)
    assert e.value.code == "video_not_ready"
    with pytest.raises(openai.BadRequestError, match="completed"):
        client.videos.extend(prompt="x", seconds="1", video=openai.omit, extra_body={"video": {"id": queued.id}})
    client.videos.delete(queued.id)
    # Sora's sizes map to the model's closest aspect ratio, and the response says so.
    wide = client.videos.create(prompt="a red circle", size="1280x720", seconds="4", model="sora-2")
    assert (wide.size, wide.seconds, wide.model) == ("112x64", "4", "moviola-default")
    client.videos.delete(wide.id)
    r = httpx.post(f"{stack.base_url}/videos", headers={"authorization": f"Bearer {key}"}, content=b"\x00junk",
                   timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{stack.base_url}/nowhere", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unknown_parameters_are_refused_by_name(client, done, stack, key):
    """A misspelt option is an error naming it (as OpenAI's API does), never dropped: "second" would have made
    a clip of the default length. Form endpoints and JSON bodies alike, and nothing is queued."""
    before = len(client.videos.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(prompt="a red circle", size="64x64", extra_body={"second": "2"})
    assert e.value.body["param"] == "second" and e.value.code == "unknown_parameter"
    assert "seconds" in e.value.body["message"]  # it lists what the endpoint takes
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.edit(prompt="x", video=openai.omit, extra_body={"video": {"id": done.id}, "strenght": "0.3"})
    assert e.value.body["param"] == "strenght"
    with pytest.raises(openai.BadRequestError) as e:
        client.post(f"/videos/{done.id}/remix", body={"prompt": "a blue circle", "strenght": 0.3}, cast_to=object)
    assert e.value.body["param"] == "strenght" and "unknown parameter" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/videos/storyboards", cast_to=object,
                    body={"cards": [{"start": 0, "prompt": "a red circle", "duration": 2}], "seconds": "2"})
    assert e.value.body["param"] == "cards.0.duration"
    assert len(client.videos.list(limit=100).data) == before
    # What the SDK and the studio send is still taken (the image as a data URL: input_reference[image_url]).
    ok = client.videos.create(prompt="a red circle", size="64x64", seconds="1", model="moviola-default",
                              extra_body={"seed": "4"})
    client.videos.delete(ok.id)


def test_feedback_is_stored_and_exported_by_owner(client, done, stack):
    r = client.post(f"/videos/{done.id}/feedback", body={"rating": 4, "comment": "nice motion"}, cast_to=object)
    assert r["moviola"]["feedback"] == {"rating": 4, "comment": "nice motion"}
    export = client.get("/feedback", cast_to=object)
    assert [(e["video_id"], e["rating"], e["comment"]) for e in export["data"]] == [(done.id, 4, "nice motion")]
    other = stack.client(stack.key("stranger"))
    with pytest.raises(openai.NotFoundError):
        other.post(f"/videos/{done.id}/feedback", body={"rating": 1}, cast_to=object)
    assert other.get("/feedback", cast_to=object)["data"] == []
    with pytest.raises(openai.BadRequestError):
        client.post(f"/videos/{done.id}/feedback", body={"rating": 9}, cast_to=object)


def test_operations_endpoints(stack, done):
    assert httpx.get(f"http://127.0.0.1:{stack.port}/healthz").json()["status"] == "ok"
    m = httpx.get(f"http://127.0.0.1:{stack.port}/metrics").text
    assert 'moviola_jobs{status="completed"}' in m and "moviola_queue_depth" in m
    count = [ln for ln in m.splitlines() if ln.startswith("moviola_generation_seconds_count")]
    assert int(count[0].split()[1]) >= 1
    spec = httpx.get(f"{stack.base_url}/openapi.json").json()
    for path in ("/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content",
                 "/v1/videos/{video_id}/remix", "/v1/videos/extensions", "/v1/videos/edits",
                 "/v1/videos/storyboards"):
        assert path in spec["paths"]


def test_every_request_is_audited(stack, client, done):
    admin = stack.key("admin", admin=True)
    rows = stack.client(admin).get("/admin/audit", options={"params": {"limit": 10000}}, cast_to=object)["data"]
    mine = [r for r in rows if r["video_id"] == done.id and (r["key_name"] or "").startswith("api-")]
    actions = {r["action"] for r in mine}
    assert {"videos.create", "videos.retrieve", "videos.content"} <= actions
    assert all(r["ms"] >= 0 and r["status"] < 500 for r in mine)
    assert any(r["status"] == 401 and r["key_name"] is None for r in rows)
    assert json.dumps(rows)  # plain JSON
