"""In-process checks of the API: schemathesis fuzzes every operation of the OpenAPI document (no input may
cause a 5xx), and upload limits answer 413."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")
schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis: pip install -e '.[test]'")
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES = 25  # per operation: ~15 operations, a few seconds in all (in-process, no sockets)


@pytest.fixture(scope="module")
def app_and_keys(tmp_path_factory):
    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key

    cfg = ServerConfig(storage=str(tmp_path_factory.mktemp("fuzz")), steps=2)
    app = create_app(cfg)
    admin, _ = create_key(app.state.db, "fuzz-admin", admin=True)
    return app, admin


@pytest.fixture
def ieee_subnormals():
    # Trainers flush denormal floats for speed (train.common.pick_device: global CPU state); hypothesis
    # refuses to generate floats while they are flushed, so lift it for this test.
    import torch

    torch.set_flush_denormal(False)
    yield


def test_no_input_makes_a_server_error(app_and_keys, ieee_subnormals):
    app, admin = app_and_keys
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 12
    failures, answered = [], []
    for op in ops:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            for headers in ({"Authorization": f"Bearer {admin}"}, {}):
                r = case.call(headers=headers)
                answered.append(r.status_code)
                if r.status_code >= 500:
                    failures.append(f"{op.method.upper()} {op.path}: {r.status_code} {r.text[:200]}")
                    return
                if r.status_code >= 400:  # every error is OpenAI-shaped
                    body = r.json()
                    assert set(body["error"]) == {"message", "type", "param", "code"}, (op.path, body)

        check()
    assert not failures, "\n".join(failures[:10])
    assert sum(s < 300 for s in answered) >= 5 * len(ops)  # the fuzzer got past validation, not just 400s


def test_oversized_upload_answers_413(tmp_path):
    import numpy as np
    from fastapi.testclient import TestClient

    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key
    from moviola.video_io import encode_image

    app = create_app(ServerConfig(storage=str(tmp_path), max_image_mb=0.01))
    token, _ = create_key(app.state.db, "big")
    png = encode_image(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    assert len(png) > 0.01 * 2**20
    with TestClient(app) as client:
        r = client.post("/v1/videos", headers={"Authorization": f"Bearer {token}"},
                        data={"prompt": "a red circle", "size": "64x64", "seconds": "1"},
                        files={"input_reference": ("big.png", png, "image/png")})
    assert r.status_code == 413 and r.json()["error"]["param"] == "input_reference"
    assert not any((tmp_path / "uploads").rglob("*.png"))  # nothing stored for a refused request


def test_text_only_model_refuses_abilities_before_queuing(tmp_path):
    """A model without known frames: 400 'unsupported' at request time (nothing queued), one window at most."""
    import json

    from fastapi.testclient import TestClient

    from moviola import DEFAULT_MODEL_DIR
    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key
    from moviola.video_io import encode_image

    model = tmp_path / "text-only"
    model.mkdir()
    (model / "dit").mkdir()
    (model / "config.json").write_text((DEFAULT_MODEL_DIR / "config.json").read_text())
    (model / "dit" / "config.json").write_text(json.dumps({**json.loads((DEFAULT_MODEL_DIR / "dit" / "config.json")
                                                                        .read_text()), "cond_channels": 0}))
    app = create_app(ServerConfig(storage=str(tmp_path / "s"), model=str(model)))
    token, _ = create_key(app.state.db, "t")
    auth = {"Authorization": f"Bearer {token}"}
    png = encode_image(np.zeros((32, 32, 3), np.uint8))
    with TestClient(app) as client:
        r = client.post("/v1/videos", headers=auth, data={"prompt": "a red circle", "seconds": "2"},
                        files={"input_reference": ("a.png", png, "image/png")})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
        assert "known frames" in r.json()["error"]["message"]
        r = client.post("/v1/videos/extensions", headers=auth, data={"prompt": "x", "seconds": "1", "video[id]": "v"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
        r = client.post("/v1/videos/storyboards", headers=auth,
                        json={"cards": [{"start": 0, "prompt": "a"}], "seconds": "2", "transition": "continue"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
        r = client.post("/v1/videos", headers=auth, data={"prompt": "a red circle", "seconds": "8"})
        assert r.status_code == 400 and "at most 4" in r.json()["error"]["message"]
        models = client.get("/v1/models", headers=auth).json()["data"][0]["moviola"]
        assert models["max_seconds"] == 4 and "extend" not in models["abilities"]
        assert client.get("/v1/videos", headers=auth).json()["data"] == []  # nothing was queued


def test_healthz_counts_live_workers_and_fails_when_queued_jobs_have_none(tmp_path):
    import time

    """/healthz had said ok while jobs queued with no worker running (a deploy that left none): 503 then; a
    worker's beat brings it back, a stopped worker's row goes, and /metrics counts the live ones."""
    from fastapi.testclient import TestClient

    from moviola.server import jobs
    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key

    app = create_app(ServerConfig(storage=str(tmp_path)))
    db = app.state.db
    token, _ = create_key(db, "k")
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok", "model": client.get("/healthz").json()["model"],
                                                 "workers": 0, "queued": 0}
        r = client.post("/v1/videos", headers={"Authorization": f"Bearer {token}"},
                        data={"prompt": "a red circle", "size": "64x64", "seconds": "1"})
        assert r.status_code == 200
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["queued"] == 1  # just queued: a worker may be starting
        db.execute("UPDATE jobs SET created_at = created_at - 60")
        r = client.get("/healthz")
        assert r.status_code == 503 and "no worker is running" in r.json()["problem"] and r.json()["queued"] == 1
        name = r.json()["model"]
        jobs.worker_alive(db, "host:2:cd", "moviola-other")  # a worker of other weights never takes these jobs
        r = client.get("/healthz")
        assert r.status_code == 503 and "1 worker(s) run, serving other models" in r.json()["problem"]
        db.execute("UPDATE jobs SET model = 'moviola-other'")  # and another model's backlog is not this server's
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["queued"] == 0
        db.execute("UPDATE jobs SET model = ?", (name,))
        jobs.worker_gone(db, "host:2:cd")
        jobs.worker_alive(db, "host:1:ab", name)
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["workers"] == 1
        assert "moviola_live_workers 1" in client.get("/metrics").text
        jobs.worker_gone(db, "host:1:ab")
        assert client.get("/healthz").status_code == 200  # stopped just now: a restart is not an outage
        db.execute("UPDATE meta SET value = ? WHERE name LIKE 'workers_seen%'", (repr(time.time() - 60),))
        assert client.get("/healthz").status_code == 503
        # a job whose worker was killed mid-run (lease long gone) is waiting too
        db.execute("UPDATE jobs SET status = 'in_progress', lease_until = ?", (time.time() - 60,))
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["queued"] == 1


def test_request_bodies_over_their_routes_limit_are_refused_unread(tmp_path):
    """A 300 MB JSON body had been parsed whole for a 400 and a 1.2 GB upload written to disk before its 413:
    now 413 by Content-Length, or as a body without one streams past the limit; audit rows keep short actions."""
    from fastapi.testclient import TestClient

    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key

    app = create_app(ServerConfig(storage=str(tmp_path), max_image_mb=0.5, max_video_mb=0.5))
    token, _ = create_key(app.state.db, "k")
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        big = b'{"comment": "' + b"A" * (2 * 2**20) + b'"}'
        r = client.post("/v1/videos/video_x/feedback", headers={**auth, "content-type": "application/json"},
                        content=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: counted as it comes
            for _ in range(40):
                yield b"x" * 2**16
        r = client.post("/v1/videos", headers={**auth, "content-type": "multipart/form-data; boundary=zz"},
                        content=chunks())
        assert r.status_code == 413, r.text
        r = client.post("/v1/videos/video_x/feedback", headers=auth, json={"rating": 1, "comment": "fine"})
        assert r.status_code == 404  # an ordinary body still goes through
        assert client.get("/v1/" + "A" * 60000).status_code in (401, 404)
    actions = [row["action"] for row in app.state.db.query("SELECT action FROM audit")]
    assert max(len(a) for a in actions) <= 130


def test_uploads_are_sized_from_their_headers_and_images_stored_small(tmp_path):
    """An image sent as a video is sized from its header before FFmpeg decodes a frame (a 1 MB 16000x16000 PNG
    had cost the API 1 GB); an image to condition on is stored no larger than the pipeline reads it, so the
    worker and a storyboard's cards never hold a 40-megapixel picture."""
    import io

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key

    app = create_app(ServerConfig(storage=str(tmp_path)))
    token, _ = create_key(app.state.db, "k")
    auth = {"Authorization": f"Bearer {token}"}
    bomb = io.BytesIO()
    Image.new("RGB", (5000, 4000)).save(bomb, format="PNG")
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(photo, "JPEG")
    with TestClient(app) as client:
        r = client.post("/v1/videos/edits", headers=auth, data={"prompt": "x"},
                        files={"video": ("a.mp4", bomb.getvalue(), "video/mp4")})
        assert r.status_code == 400 and "5000x4000: too many pixels" in r.json()["error"]["message"], r.text
        r = client.post("/v1/videos", headers=auth, data={"prompt": "a red circle", "size": "64x64", "seconds": "1"},
                        files={"input_reference": ("p.jpg", photo.getvalue(), "image/jpeg")})
        assert r.status_code == 200, r.text
        wide = io.BytesIO()
        Image.new("RGB", (6000, 1100)).save(wide, format="PNG")  # longer side capped at 4x 1024
        r = client.post("/v1/videos", headers=auth, data={"prompt": "a red circle", "size": "64x64", "seconds": "1"},
                        files={"input_reference": ("w.png", wide.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        thin = io.BytesIO()
        Image.new("RGB", (4000, 10)).save(thin, format="PNG")  # accepted as sent: its short side is kept
        r = client.post("/v1/videos", headers=auth, data={"prompt": "a red circle", "size": "64x64", "seconds": "1"},
                        files={"input_reference": ("t.png", thin.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
    stored = sorted(Image.open(p).size for p in (tmp_path / "uploads").rglob("*.png"))
    assert stored == [(1365, 1024), (4000, 10), (4096, 751)], stored  # the photo's short side 1500 -> 1024


def test_a_source_longer_than_its_header_is_refused_by_the_worker(tmp_path):
    """The API charges a source's header duration; the worker reads no more than that (plus a second) and
    refuses a file whose frames run on (a header of 1 s over 90 s of frames had been charged 1 s)."""
    import numpy as np

    from moviola.server.generate import load_video
    from moviola.video_io import VideoError, write_video

    path = write_video(tmp_path / "long.mp4", np.zeros((40, 32, 32, 3), np.uint8), 8)  # 5 s
    assert len(load_video(path, 32, 32, 8.0, max_seconds=5.0)) == 40
    with pytest.raises(VideoError, match="video is 5.00 s long; at most 1.5 s can be used here"):
        load_video(path, 32, 32, 8.0, max_seconds=1.0)  # charged 1 s for 5 s of frames


def test_a_flood_without_a_valid_key_is_slowed_and_not_logged(tmp_path):
    """Past keyless_per_minute keyless requests from one address: 429 and no audit row each; a valid key from
    that address still works."""
    from fastapi.testclient import TestClient

    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key

    app = create_app(ServerConfig(storage=str(tmp_path), keyless_per_minute=5))
    token, _ = create_key(app.state.db, "k")
    with TestClient(app) as client:
        codes = [client.get("/v1/videos", headers={"Authorization": "Bearer nope"}).status_code for _ in range(8)]
        assert codes == [401] * 5 + [429] * 3
        r = client.get("/v1/videos", headers={"Authorization": "Bearer nope"})
        assert r.headers["x-frame-options"] == "DENY"  # the gates' own refusals carry the headers too
        assert r.headers["x-should-retry"] == "false"  # the SDK would sleep 60 s and retry before saying 401
        ok = client.get("/v1/videos", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.headers["x-frame-options"] == "DENY"
        assert client.get("/").headers["x-content-type-options"] == "nosniff"  # the studio too
    assert app.state.db.one("SELECT COUNT(*) AS n FROM audit")["n"] == 6  # 5 refusals and the valid request
    off = create_app(ServerConfig(storage=str(tmp_path / "off"), keyless_per_minute=0))
    with TestClient(off) as client:  # 0: no limit
        assert {client.get("/v1/videos", headers={"Authorization": "Bearer nope"}).status_code
                for _ in range(8)} == {401}
