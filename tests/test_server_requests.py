"""Requests as the openai SDK sends them, in process (no worker: nothing here needs a video made): retries
that must not queue twice, what is refused and how, and what a request is reported and charged as."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")
openai = pytest.importorskip("openai", reason="the server tests need the openai SDK: pip install -e '.[test]'")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks the Sora API deprecated


@pytest.fixture
def served(tmp_path):
    """(app, an SDK client on it, the raw test client, the key's row): the SDK talks to the app in process."""
    from fastapi.testclient import TestClient

    from moviola.server.app import ServerConfig, create_app
    from moviola.server.keys import create_key

    app = create_app(ServerConfig(storage=str(tmp_path / "s")))
    token, _ = create_key(app.state.db, "k", quota_seconds_per_day=10)
    # server errors answered as a client sees them (503 for the database), not raised into the test
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}, raise_server_exceptions=False) as http:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=token, http_client=http, max_retries=0)
        yield app, sdk, http, app.state.db.one("SELECT * FROM keys WHERE name = 'k'")


def _charged(app, key) -> float:
    return app.state.db.one("SELECT COALESCE(SUM(cost_seconds), 0) AS s FROM jobs WHERE key_id = ?",
                            (key["id"],))["s"]


def test_a_retried_request_with_an_idempotency_key_queues_one_job(served):
    """The SDK retries a request whose answer it did not get (a timeout); with an Idempotency-Key the retry is
    answered with the job the first try queued, charged once (it had queued and charged one job per try)."""
    app, sdk, http, key = served
    same = {"Idempotency-Key": "7f1c2e4a-retry"}
    a = sdk.videos.create(prompt="a red circle", seconds="2", extra_headers=same)
    b = sdk.videos.create(prompt="a red circle", seconds="2", extra_headers=same)
    assert a.id == b.id and a.status == "queued"
    assert [v.id for v in sdk.videos.list()] == [a.id] and _charged(app, key) == 2.0
    # the same token for another request is an error naming it, not a silent replay of the first
    with pytest.raises(openai.BadRequestError, match="was used for another request") as bad:
        sdk.videos.create(prompt="a blue square", seconds="2", extra_headers=same)
    assert bad.value.body["code"] == "idempotency_key_reused"
    # what was asked, not only its prompt: another seed is another request; the seed the server drew is not
    # (a retry draws its own)
    with pytest.raises(openai.BadRequestError, match="was used for another request"):
        sdk.videos.create(prompt="a red circle", seconds="2", extra_headers=same, extra_body={"seed": 7})
    c = sdk.videos.create(prompt="a red circle", seconds="2", extra_headers={"Idempotency-Key": "another"})
    assert c.id != a.id and _charged(app, key) == 4.0
    # once its video is deleted, or after a day, the token is free again
    sdk.videos.delete(a.id)
    d = sdk.videos.create(prompt="a red circle", seconds="2", extra_headers=same)
    assert d.id not in (a.id, c.id)
    app.state.db.execute("UPDATE idempotency SET created_at = created_at - 90000")
    e = sdk.videos.create(prompt="a red circle", seconds="2", extra_headers=same)
    assert e.id != d.id
    from moviola.server import jobs

    assert jobs.prune_idempotency(app.state.db) == 1  # "another", a day old; the stale "same" was replaced
    assert [r["video_id"] for r in app.state.db.query("SELECT video_id FROM idempotency")] == [e.id]
    r = http.post("/v1/videos", data={"prompt": "x"}, headers={"Idempotency-Key": "x" * 300})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"


def test_a_failure_inside_the_queueing_transaction_queues_and_charges_nothing(served, monkeypatch):
    """The job's row is read inside the transaction that inserts it: a database error there rolls the job back
    (it had been committed, charged and listed while the client was told 503 and retried), and its upload goes."""
    from moviola.server import db as dbmod

    app, sdk, http, key = served
    real = dbmod._Tx.one

    def failing(self, sql, params=()):
        if sql.startswith("SELECT * FROM jobs WHERE id = ?"):
            raise dbmod.sqlite3.OperationalError("disk I/O error")
        return real(self, sql, params)

    monkeypatch.setattr(dbmod._Tx, "one", failing)
    from moviola.video_io import encode_image
    import numpy as np

    r = http.post("/v1/videos", data={"prompt": "a red circle", "seconds": "2"},
                  files={"input_reference": ("a.png", encode_image(np.zeros((32, 32, 3), np.uint8)), "image/png")})
    assert r.status_code == 503
    monkeypatch.setattr(dbmod._Tx, "one", real)
    assert app.state.db.query("SELECT id FROM jobs") == [] and _charged(app, key) == 0
    uploads = app.state.storage.root / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_an_expired_video_is_no_source_even_before_the_sweep(served):
    """A completed video past its expires_at is refused as a source at once (404 video_expired), as its download
    is; it had been remixed until the sweep removed its files."""
    from moviola.server import jobs

    app, sdk, http, key = served
    vid = jobs.new_video_id()
    jobs.insert_job(app.state.db, key, video_id=vid, kind="create", prompt="x", model="moviola-default",
                    seconds="1", size="64x64", params={"seed": 1}, cost_seconds=1.0)
    app.state.db.execute("UPDATE jobs SET status = 'completed', completed_at = ?, expires_at = ?, assets = 'x' "
                         "WHERE id = ?", (time.time() - 10, time.time() - 1, vid))
    with pytest.raises(openai.NotFoundError, match="has expired") as gone:
        sdk.videos.remix(vid, prompt="a blue square")
    assert gone.value.body["code"] == "video_expired"


def test_what_a_request_is_reported_and_charged_as(served):
    """Seconds are made a whole number of frames (2.3 s at 8 fps: the 18 frames, 2.25 s); numbers are plain
    numbers ("1_0" had made 10 s, true a 1 s storyboard); an empty prompt and an unknown JSON field say what
    they are; a long unknown id is not echoed whole; the SDK's models.retrieve and characters get answers."""
    app, sdk, http, key = served
    v = sdk.videos.create(prompt="a red circle", seconds="2.3")
    assert v.seconds == "2.25" and _charged(app, key) == 2.25
    for bad, param in (({"seconds": "1_0"}, "seconds"), ({"size": "6_4x6_4"}, "size"), ({"seed": "1_0"}, "seed"),
                       ({"seed": "+7"}, "seed"), ({"seconds": " 2"}, None)):
        r = http.post("/v1/videos", data={"prompt": "x", **bad})
        if param is None:  # surrounding spaces are fine
            assert r.status_code == 200, r.text
            continue
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = http.post("/v1/videos/storyboards", json={"cards": [{"start": 0, "prompt": "a"}], "seconds": True})
    assert r.status_code == 400 and "not true/false" in r.json()["error"]["message"]
    r = http.post("/v1/videos/storyboards", json={"cards": [{"start": True, "prompt": "a"}]})
    assert r.status_code == 400
    r = http.post("/v1/videos/storyboards", json={"cards": [{"start": 0, "prompt": "a"}, {"start": 1.3, "prompt": "b"}]})
    assert r.status_code == 200 and r.json()["seconds"] == "3.25"  # 1.3 + 2, made whole frames
    r = http.post("/v1/videos", data={"prompt": ""})
    assert r.status_code == 400 and r.json()["error"]["message"] == "prompt must not be empty"
    r = http.post(f"/v1/videos/{v.id}/remix", json={"prompt": "x", "strenght": 0.3})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    assert r.json()["error"]["param"] == "strenght"
    with pytest.raises(openai.NotFoundError) as nf:
        sdk.videos.retrieve("video_" + "a" * 5000)
    assert len(nf.value.body["message"]) < 200 and "5006 characters" in nf.value.body["message"]
    assert sdk.models.retrieve("moviola-default").id == "moviola-default"
    assert sdk.models.retrieve("sora-2").id == "moviola-default"  # an alias, as videos.create takes it
    with pytest.raises(openai.NotFoundError, match="this server has 'moviola-default'"):
        sdk.models.retrieve("sora-3")
    if hasattr(sdk.videos, "create_character"):  # SDK 3.63 and later
        with pytest.raises(openai.BadRequestError, match="not supported by this server") as ch:
            sdk.videos.create_character(name="hero", video=("v.mp4", b"\0" * 64, "video/mp4"))
        assert ch.value.body["code"] == "unsupported"
    r = http.get("/v1/videos/characters/char_123")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
    assert json.loads(app.state.db.one("SELECT params FROM jobs WHERE id = ?", (v.id,))["params"])["seconds"] == 2.25


def test_an_upload_the_storage_cannot_take_is_a_storage_error(served, monkeypatch):
    """A full disk while an upload is stored answers 503 storage_error without the server's paths (it had been
    500 internal_error)."""
    import numpy as np

    from moviola.video_io import encode_image

    app, sdk, http, key = served

    def full(video_id, name, data):
        raise OSError(28, "No space left on device", f"/srv/secret/uploads/{video_id}/{name}")

    monkeypatch.setattr(app.state.storage, "save_upload", full)
    r = http.post("/v1/videos", data={"prompt": "a red circle"},
                  files={"input_reference": ("a.png", encode_image(np.zeros((32, 32, 3), np.uint8)), "image/png")})
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_error"
    assert "No space left" in r.json()["error"]["message"] and "/srv" not in r.text
    assert app.state.db.query("SELECT id FROM jobs") == []


def test_seconds_are_whole_frames_within_the_limit():
    """Rounding to whole frames never goes past the limit (10.1 s at 8 fps had become 10.125 s, over a
    10.1 s cap): it takes the frame below."""
    from pathlib import Path

    from moviola.server.generate import ModelInfo

    m = ModelInfo(name="m", directory=Path("."), fps=8.0)
    assert m.parse_seconds("2.3", limit=10.1) == 2.25 and m.parse_seconds("10.1", limit=10.1) == 10.0
    assert m.parse_seconds(4, limit=10.1) == 4.0  # a JSON number (storyboards)


def test_a_created_job_is_audited_in_its_own_transaction(served, monkeypatch):
    """The audit row of a request that queues a job is written with the job: one row, the job's id, even when the
    answer never leaves the server (it had been written after the response, and lost when the API died)."""
    from moviola.server import jobs

    app, sdk, http, key = served
    v = sdk.videos.create(prompt="a red circle", seconds="1")
    rows = app.state.db.query("SELECT * FROM audit WHERE action = 'videos.create'")
    assert [(r["video_id"], r["status"], r["key_name"]) for r in rows] == [(v.id, 200, "k")]

    def dies(row):  # the answer is never made after the commit (a process killed there writes nothing more)
        raise RuntimeError("no answer")

    monkeypatch.setattr(jobs, "to_video", dies)
    assert http.post("/v1/videos", data={"prompt": "a blue square", "seconds": "1"}).status_code == 500
    monkeypatch.undo()
    jobs_rows = app.state.db.query("SELECT id FROM jobs ORDER BY seq")
    audited = app.state.db.query("SELECT video_id, status FROM audit WHERE action = 'videos.create' ORDER BY seq")
    # the row of the job that was queued and charged, as written with it (not the failed answer's, after it)
    assert [(r["video_id"], r["status"]) for r in audited] == [(j["id"], 200) for j in jobs_rows]
    assert len(jobs_rows) == 2
