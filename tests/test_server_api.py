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


def test_remix_extend_edit(client, done, stack):
    from moviola.video_io import read_video

    remix = client.videos.remix(done.id, prompt="a small blue circle moves right on a black background")
    # SDK 3.57 rejects video={"id": ...} on the client side (its file extraction insists on a file), so a
    # stored video is referenced the way the SDK would encode it, as the form field video[id]:
    ext = client.videos.extend(prompt="the circle keeps moving", seconds="1", video=openai.omit,
                               extra_body={"video": {"id": done.id}})
    edit = client.videos.edit(prompt="a small yellow circle moves right", video=openai.omit,
                              extra_body={"video": {"id": done.id}})
    upload = client.videos.extend(prompt="the circle keeps moving", seconds="1",
                                  video=("clip.mp4", client.videos.download_content(done.id).read(), "video/mp4"))
    assert remix.remixed_from_video_id == done.id and remix.status == "queued"
    assert ext.seconds == "3" and ext.size == "64x64"
    assert (upload.seconds, upload.size) == ("3", "64x64")
    remix, ext, edit, upload = (poll(client, v.id) for v in (remix, ext, edit, upload))
    for v in (remix, ext, edit, upload):
        assert v.status == "completed", v.error
    assert (remix.size, remix.seconds, remix.moviola["seed"]) == ("64x64", "2", 7)
    assert edit.remixed_from_video_id == done.id and edit.moviola["kind"] == "edit"

    src = read_video(_save(client, done.id, stack.root / "src.mp4")).frames.astype(np.float64)
    out = read_video(_save(client, ext.id, stack.root / "ext.mp4")).frames.astype(np.float64)
    assert out.shape == (24, 64, 64, 3)
    mse = np.mean((out[:16] - src) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30  # the source is kept as the extension's start
    import moviola.pipeline as mp

    for v, ability in ((remix, "remix"), (ext, "extend")):
        if not hasattr(mp.Pipeline, ability):  # the honest fallback says what it did
            assert "not conditioned" in v.moviola["note"]


def _save(client, vid, path):
    path.write_bytes(client.videos.download_content(vid).read())
    return path


def test_input_reference_and_uploaded_edit(client, stack):
    import moviola.pipeline as mp
    from moviola.video_io import encode_image, write_video

    png = encode_image(np.full((64, 64, 3), 90, np.uint8))
    v = client.videos.create(prompt="a small red circle stays still", size="64x64", seconds="1",
                             input_reference=("first.png", png, "image/png"))
    clip = stack.root / "upload.mp4"
    write_video(clip, np.zeros((8, 64, 64, 3), np.uint8), 8)
    e = client.videos.edit(prompt="a small red circle", video=("in.mp4", clip.read_bytes(), "video/mp4"))
    assert e.size == "64x64" and e.seconds == "1"
    v, e = poll(client, v.id), poll(client, e.id)
    if hasattr(mp.Pipeline, "image_to_video"):
        assert v.status == "completed"
    else:  # fails cleanly, naming the missing ability
        assert v.status == "failed" and v.error.code == "unsupported" and "image_to_video" in v.error.message
    if not hasattr(mp.Pipeline, "remix"):
        assert e.status == "failed" and e.error.code == "unsupported" and "Pipeline.remix" in e.error.message

    with pytest.raises(openai.BadRequestError, match="input_reference is not a readable image"):
        client.videos.create(prompt="x", input_reference=("x.png", b"not an image", "image/png"))
    with pytest.raises(openai.BadRequestError, match="fetches nothing from the network"):
        client.videos.create(prompt="x", extra_body={"input_reference": {"image_url": "https://example.com/a.png"}})
    with pytest.raises(openai.BadRequestError, match="not a readable video"):
        client.videos.extend(prompt="x", seconds="1", video=("v.mp4", b"garbage" * 10, "video/mp4"))


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
    cases = [dict(size="640x480"), dict(size="64"), dict(seconds="8"), dict(seconds="zero"), dict(model="veo-3"),
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
                 "/v1/videos/{video_id}/remix", "/v1/videos/extensions", "/v1/videos/edits"):
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
