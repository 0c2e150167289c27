"""The job queue: leases, heartbeats, take-over after SIGKILL, restarts that lose nothing, the adapter."""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")

from moviola.server import jobs  # noqa: E402
from moviola.server.db import Database  # noqa: E402
from moviola.server.generate import JobFailure, ModelInfo, run_job  # noqa: E402
from moviola.server.keys import create_key, hash_key  # noqa: E402
from moviola.server.worker import Worker, WorkerConfig  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class FakePipe:
    """Stands in for Pipeline in the in-process tests: frames from the seed, one callback per step, streamed
    in two chunks (the second one's steps run only after the first chunk was written, as Pipeline.stream)."""

    def __init__(self, on_step=None):
        self.on_step = on_step
        self.calls = []

    def stream(self, prompt, *, width, height, seconds, fps, steps, seed, callback=None, image=None, **kw):
        self.calls.append(dict(prompt=prompt, width=width, height=height, seconds=seconds, seed=seed, steps=steps,
                               image=image))
        rng = np.random.default_rng(seed)
        frames = rng.integers(0, 255, (round(seconds * fps), height, width, 3), dtype=np.uint8)
        return self._chunks(frames, steps, callback)

    def _chunks(self, frames, steps, callback):
        parts = [c for c in np.array_split(frames, 2) if len(c)]
        for k, part in enumerate(parts):
            for i in range(steps):
                if self.on_step:
                    self.on_step(k * steps + i)
                if callback:
                    callback(k * steps + i + 1, len(parts) * steps)  # as moviola.pipeline: steps done so far
            yield part


def _queue(db, key, n=1, kind="create", **params):
    ids = []
    for i in range(n):
        vid = jobs.new_video_id()
        p = {"width": 64, "height": 64, "seconds": 1.0, "fps": 8.0, "seed": i, "steps": 3, "guidance": 1.0,
             "sampler": "euler", **params}
        jobs.insert_job(db, key, video_id=vid, kind=kind, prompt=f"a red circle {i}", model="moviola-default",
                        seconds="1", size="64x64", params=p, cost_seconds=1.0)
        ids.append(vid)
    return ids


@pytest.fixture
def env(tmp_path):
    db = Database(tmp_path / "q.db")
    create_key(db, "k")
    key = db.one("SELECT * FROM keys WHERE name = 'k'")
    return db, key, tmp_path


def test_lease_expiry_take_over_and_guarded_completion(env):
    db, key, _ = env
    (vid,) = _queue(db, key)
    a = jobs.claim(db, "A", lease_seconds=0.3)
    assert a["id"] == vid and jobs.claim(db, "B", 0.3) is None  # held
    assert jobs.heartbeat(db, vid, "A", 0.3, progress=40)
    time.sleep(0.4)  # A stops beating: the lease runs out
    b = jobs.claim(db, "B", 10)
    assert b["id"] == vid and b["attempts"] == 2 and b["worker"] == "B"
    assert not jobs.heartbeat(db, vid, "A", 10)  # A can no longer touch it
    # B starts over; the progress clients see holds at A's 40 until B passes it (it never goes back)
    assert b["progress"] == 40 and jobs.heartbeat(db, vid, "B", 10, progress=10)
    assert db.one("SELECT progress FROM jobs WHERE id = ?", (vid,))["progress"] == 40
    assert jobs.heartbeat(db, vid, "B", 10, progress=55)
    assert db.one("SELECT progress FROM jobs WHERE id = ?", (vid,))["progress"] == 55
    assert not jobs.complete(db, vid, "A", assets="x", content_hash="h", gen_seconds=1, note=None, ttl_seconds=None)
    assert jobs.complete(db, vid, "B", assets="y", content_hash="h", gen_seconds=1, note=None, ttl_seconds=60)
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert (row["status"], row["assets"], row["progress"]) == ("completed", "y", 100)
    assert row["expires_at"] == pytest.approx(row["completed_at"] + 60)


def test_a_job_that_kills_every_worker_fails_instead_of_looping(env):
    db, key, _ = env
    (vid,) = _queue(db, key)
    for i in range(jobs.MAX_ATTEMPTS):
        assert jobs.claim(db, f"w{i}", lease_seconds=0.0)["id"] == vid
        time.sleep(0.01)
    assert jobs.claim(db, "last", 10) is None
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert row["status"] == "failed" and row["error_code"] == "worker_lost"


def test_concurrent_claims_take_each_job_once(env):
    db, key, tmp = env
    ids = _queue(db, key, n=30)
    got: list[str] = []
    lock = threading.Lock()

    def claimer(name):
        mine = Database(tmp / "q.db")  # a process of its own would have its own connection too
        while (j := jobs.claim(mine, name, 60)) is not None:
            with lock:
                got.append(j["id"])

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


def _worker(tmp, db_path, pipe, **kw):
    cfg = WorkerConfig(db=str(db_path), storage=str(tmp / "storage"), lease_seconds=kw.pop("lease", 5.0), **kw)
    return Worker(cfg, pipe=pipe, log=lambda m: None)


def test_worker_writes_outputs_then_completes(env):
    from PIL import Image

    from moviola.video_io import read_video

    db, key, tmp = env
    (vid,) = _queue(db, key)
    w = _worker(tmp, tmp / "q.db", FakePipe())
    w.run_one(jobs.claim(db, w.owner, 5))
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert row["status"] == "completed", row["error_message"]
    video = w.storage.asset(row["assets"], "video")
    assert hashlib.sha256(video.read_bytes()).hexdigest() == row["content_hash"]
    v = read_video(video)
    assert v.frames.shape == (8, 64, 64, 3)
    assert v.metadata["moviola_prompt"] == "a red circle 0" and v.metadata["moviola_video_id"] == vid
    # which weights made it: in the Video object as in the file's tags
    assert jobs.to_video(row)["moviola"]["weights_sha256"] == v.metadata["moviola_weights_sha256"] == w.weights_digest()
    assert Image.open(w.storage.asset(row["assets"], "thumbnail")).format == "WEBP"
    assert not list(tmp.joinpath("storage").rglob(".*tmp-*"))  # no temp files left behind
    assert not list(tmp.joinpath("storage", "work").rglob("*"))  # nor scratch folders


def test_stopping_worker_gives_the_job_back(env):
    db, key, tmp = env
    (vid,) = _queue(db, key)
    w = _worker(tmp, tmp / "q.db", None)
    w.pipe = FakePipe(on_step=lambda i: w.stopping.set() if i == 1 else None)
    w.run_one(jobs.claim(db, w.owner, 5))
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert (row["status"], row["lease_owner"], row["attempts"]) == ("queued", None, 0)
    assert not (tmp / "storage" / "videos" / vid).exists()


def test_deleted_mid_job_is_abandoned(env):
    db, key, tmp = env
    (vid,) = _queue(db, key)
    w = _worker(tmp, tmp / "q.db", None)
    w.pipe = FakePipe(on_step=lambda i: jobs.delete_job(db, w.storage, key["id"], vid) if i == 0 else None)
    w.run_one(jobs.claim(db, w.owner, 5))
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert row["status"] == "in_progress" and row["deleted_at"] is not None and row["lease_owner"] is None
    assert not (tmp / "storage" / "videos" / vid).exists()


def test_revoking_a_key_stops_its_running_job(env):
    """A key revoked while a worker makes its clip: the job fails as key_revoked at once (queued ones too), the
    worker drops it at its next step, and nothing is stored (it had gone on to finish a clip nobody could fetch)."""
    from moviola.server.keys import revoke_key

    db, key, tmp = env
    vid, waiting = _queue(db, key, n=2)
    logged = []
    w = _worker(tmp, tmp / "q.db", None)
    w.log = logged.append
    w.pipe = FakePipe(on_step=lambda i: revoke_key(db, "k") if i == 0 else None)
    w.run_one(jobs.claim(db, w.owner, 5))
    for v in (vid, waiting):
        row = db.one("SELECT * FROM jobs WHERE id = ?", (v,))
        assert (row["status"], row["error_code"], row["lease_owner"]) == ("failed", "key_revoked", None)
    assert len(w.pipe.calls) == 1 and not (tmp / "storage" / "videos" / vid).exists()
    assert any("abandoned" in m for m in logged) and jobs.claim(db, "w2", 5) is None


def test_a_worker_takes_only_jobs_for_the_model_it_serves(env, tmp_path):
    """A worker started with other weights than the API's (a mistyped --model, a rolling upgrade) leaves the
    API's jobs to a worker of that model, and says why it is idle, instead of making them with its own weights
    and recording them as the API's model."""
    import shutil

    from moviola import DEFAULT_MODEL_DIR

    db, key, tmp = env
    (vid,) = _queue(db, key)  # asked of moviola-default
    other = tmp_path / "mine"
    shutil.copytree(DEFAULT_MODEL_DIR, other)
    logged = []
    w = _worker(tmp, tmp / "q.db", FakePipe(), model=str(other), max_jobs=1, poll_seconds=0.01)
    w.log = logged.append
    assert w.model.name == "moviola-mine" and jobs.claim(db, "x", 5, model="moviola-mine") is None
    threading.Timer(0.3, w.stopping.set).start()
    assert w._loop() == 0
    assert db.one("SELECT status FROM jobs WHERE id = ?", (vid,))["status"] == "queued"
    assert any("waiting for moviola-default" in m and "serves moviola-mine" in m for m in logged), logged
    assert jobs.claim(db, "x", 5, model="moviola-default")["id"] == vid


def test_a_new_try_clears_the_last_tries_error(env):
    """A storage error, then workers killed: the job fails as worker_lost, not as the storage error."""
    db, key, _ = env
    (vid,) = _queue(db, key)
    assert jobs.claim(db, "a", 10)["id"] == vid
    assert jobs.retry(db, vid, "a", "storage_error", "storage error: full", 0.0)
    time.sleep(0.01)
    for i in range(jobs.MAX_ATTEMPTS - 1):
        assert jobs.claim(db, f"w{i}", lease_seconds=0.0)["error_code"] is None
        time.sleep(0.01)
    assert jobs.claim(db, "last", 10) is None
    assert db.one("SELECT error_code FROM jobs WHERE id = ?", (vid,))["error_code"] == "worker_lost"


def test_a_revoked_keys_jobs_are_not_made(env):
    """A key revoked while its job waited (or while its upload came in): the job fails as key_revoked when a
    worker reaches it, instead of being made for nobody; a request in flight is refused, nothing queued."""
    from moviola.server.keys import KeyRevoked, revoke_key

    db, key, _ = env
    (vid,) = _queue(db, key)
    revoke_key(db, "k")
    assert jobs.claim(db, "w", 10) is None
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert (row["status"], row["error_code"]) == ("failed", "key_revoked")
    with pytest.raises(KeyRevoked):
        _queue(db, key)  # the key row the request authenticated with, read before the revocation
    assert db.one("SELECT COUNT(*) AS n FROM jobs")["n"] == 1


def test_a_storage_error_requeues_the_job_then_fails_it_by_name(env, monkeypatch):
    """A full or read-only disk is not the request's fault: the job goes back to the queue (taken again after
    RETRY_SECONDS) with the problem recorded, and after MAX_ATTEMPTS tries fails as storage_error, with no
    server path in what the client reads. Its files are swept."""
    import moviola.server.worker as W

    db, key, tmp = env
    (vid,) = _queue(db, key)
    w = _worker(tmp, tmp / "q.db", FakePipe())
    w.storage.save_upload(vid, "input.png", b"png")

    def full(*a, **kw):
        raise OSError(28, "No space left on device", str(tmp / "storage" / "work"))

    monkeypatch.setattr(w.storage, "new_work_dir", full)
    monkeypatch.setattr(W, "RETRY_SECONDS", 0.05)
    w.run_one(jobs.claim(db, w.owner, 5))
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert row["status"] == "in_progress" and row["lease_owner"] is None and row["error_code"] == "storage_error"
    assert jobs.claim(db, "other", 5) is None  # not before its retry time
    for _ in range(jobs.MAX_ATTEMPTS - 1):
        time.sleep(0.1)
        w.run_one(jobs.claim(db, w.owner, 5))
    time.sleep(0.1)
    assert jobs.claim(db, "other", 5) is None
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert (row["status"], row["error_code"]) == ("failed", "storage_error")
    assert "No space left on device" in row["error_message"] and str(tmp) not in row["error_message"]
    assert "after 3 tries" in row["error_message"]  # the last try fails at once, without waiting
    assert jobs.sweep_expired(db, w.storage) == 1  # what a failed job left: its upload
    assert not (tmp / "storage" / "uploads" / vid).exists()
    assert jobs.to_video(db.one("SELECT * FROM jobs WHERE id = ?", (vid,)))["moviola"]["expired"] is False



def test_an_output_that_cannot_be_written_is_a_storage_error(env, monkeypatch):
    """The video file failing to write (a full disk, as VideoWriter reports it) is the storage's problem: retried,
    recorded as storage_error; it had failed the job at once as invalid_request, blaming "the source file"."""
    import moviola.video_io as V

    db, key, tmp = env
    (vid,) = _queue(db, key)
    w = _worker(tmp, tmp / "q.db", FakePipe())

    def full(self, frames):
        raise V.VideoError(self.path, "could not write video (No space left on device)")

    monkeypatch.setattr(V.VideoWriter, "write", full)
    w.run_one(jobs.claim(db, w.owner, 5))
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert row["status"] == "in_progress" and row["error_code"] == "storage_error", dict(row)
    assert "No space left on device" in row["error_message"] and "source" not in row["error_message"]
    assert str(tmp) not in row["error_message"]

def test_adapter_calls_the_abilities_with_their_real_signatures(tmp_path):
    import inspect

    from moviola.pipeline import Card, Pipeline
    from moviola.video_io import read_video, write_image, write_video

    src = tmp_path / "src.mp4"
    write_video(src, np.full((8, 96, 64, 3), 200, np.uint8), 12)  # footage of another size and frame rate
    img = write_image(tmp_path / "first.png", np.full((32, 32, 3), 10, np.uint8))
    base = {"width": 64, "height": 64, "seconds": 1.0, "fps": 8.0, "seed": 3, "steps": 2, "guidance": 1.0,
            "sampler": "euler"}

    class Able(FakePipe):
        """Each ability checks its call against Pipeline's own signature (a TypeError if run_job guessed)."""

        def _bind(self, name, *args, **kw):
            inspect.signature(getattr(Pipeline, name)).bind(self, *args, **kw)
            self.got = (name, args, kw)

        def stream(self, *args, **kw):
            self._bind("stream", *args, **kw)
            return super().stream(*args, **kw)

        def extend(self, video, prompt, **kw):
            self._bind("extend", video, prompt, **kw)
            new = np.zeros((round(kw["seconds"] * 8), 64, 64, 3), np.uint8)
            return np.concatenate([video, new])  # the whole stitched clip, as Pipeline.extend

        def extend_stream(self, video, prompt, **kw):
            self._bind("extend_stream", video, prompt, **kw)
            new = np.zeros((round(kw["seconds"] * 8), 64, 64, 3), np.uint8)
            return iter([video, new[:3], new[3:]])  # the source, then each window, as Pipeline.extend_stream

        def remix_stream(self, video, prompt, **kw):
            self._bind("remix_stream", video, prompt, **kw)
            return iter([video[::-1][:3], video[::-1][3:]])  # window by window, as Pipeline.remix_stream

        def storyboard(self, cards, **kw):
            self._bind("storyboard", cards, **kw)
            return self._chunks(np.zeros((round(kw["seconds"] * 8), 64, 64, 3), np.uint8), kw["steps"], None)

    p = Able()
    out = run_job(p, {"kind": "create", "prompt": "x"}, {**base, "input_image": str(img)}, source=None)
    frames = np.concatenate(list(out.chunks()))
    assert p.got[0] == "stream" and p.got[2]["image"].shape == (32, 32, 3) and p.got[2]["seed"] == 3
    assert frames.shape == (8, 64, 64, 3) and out.total == 8
    out = run_job(p, {"kind": "extension", "prompt": "x"}, {**base, "seconds": 2.0, "extension_seconds": 1.0},
                  source=src)
    name, (video, _), kw = p.got
    n_src = len(read_video(src).frames) * 8 // 12  # resampled to the model's 8 fps
    assert name == "extend_stream" and video.shape == (n_src, 64, 64, 3) and kw["seconds"] == 1.0
    stitched = np.concatenate(list(out.chunks()))  # forwards: streamed, source first, then the new frames
    assert stitched.shape == (n_src + 8, 64, 64, 3) and out.total == n_src + 8
    assert stitched[:n_src].mean() > 150 and stitched[n_src:].max() == 0
    out = run_job(p, {"kind": "extension", "prompt": "x"},
                  {**base, "seconds": 2.0, "extension_seconds": 1.0, "backward": True}, source=src)
    name, (video, _), kw = p.got
    assert name == "extend" and kw["backward"] and out.frames.shape == (n_src + 8, 64, 64, 3)
    out = run_job(p, {"kind": "edit", "prompt": "x"}, {**base, "strength": 0.25}, source=src)
    edited = np.concatenate(list(out.chunks()))
    assert p.got[0] == "remix_stream" and p.got[2]["strength"] == 0.25 and edited.shape == (n_src, 64, 64, 3)
    assert out.total == n_src
    run_job(p, {"kind": "remix", "prompt": "x"}, base, source=src)
    assert p.got[2]["strength"] == 0.6  # the default
    board = {**base, "seconds": 3.0, "transition": "continue",
             "cards": [{"start": 0.0, "prompt": "a"}, {"start": 1.5, "prompt": "b", "image_path": str(img)}]}
    out = run_job(p, {"kind": "storyboard", "prompt": "a | b"}, board, source=None)
    cards = p.got[1][0]
    assert [type(c) for c in cards] == [Card, Card] and [c.start for c in cards] == [0.0, 1.5]
    assert cards[0].image is None and cards[1].image.shape == (32, 32, 3) and p.got[2]["transition"] == "continue"
    assert sum(len(c) for c in out.chunks()) == out.total == 24
    with pytest.raises(JobFailure, match="unknown job kind"):
        run_job(p, {"kind": "teleport", "prompt": "x"}, base, source=None)


def test_frame_picker_keeps_what_the_sheet_and_thumbnail_show():
    from moviola.server.generate import FramePicker
    from moviola.video_io import sprite_sheet, thumbnail

    frames = np.random.default_rng(0).integers(0, 255, (37, 8, 8, 3), dtype=np.uint8)
    pick = FramePicker(37)
    for chunk in np.array_split(frames, 5):
        pick.add(chunk)
    assert len(pick.kept) <= 17
    assert np.array_equal(pick.middle(), thumbnail(frames))
    assert np.array_equal(sprite_sheet(pick.sheet_frames(), count=16), sprite_sheet(frames, count=16))


def test_size_mapping_and_limits():
    import dataclasses

    from moviola import DEFAULT_MODEL_DIR
    from moviola.server.generate import RequestProblem

    m = dataclasses.replace(ModelInfo.from_dir(DEFAULT_MODEL_DIR), conditioned=False)
    assert m.parse_size("1280x720") == (112, 64) and m.parse_size("1024x1792") == (64, 112)
    assert m.parse_size("96x64") == (96, 64) and m.parse_size(None) == (64, 64)
    assert m.size_for(1920, 1080) == (96, 64) and m.size_for(720, 1280) == (64, 96) and m.size_for(50, 48) == (64, 64)
    for bad in ("100x64", "16x16", "256x256", "big"):
        with pytest.raises(RequestProblem, match="allowed") as e:
            m.parse_size(bad)
        assert e.value.param == "size"
    assert m.parse_seconds("2.5") == 2.5 and m.parse_seconds(None) == 4.0
    for bad in ("0", "8", "12", "-1", "nan", "inf", "two"):  # a text-only model: one window
        with pytest.raises(RequestProblem, match="at most 4"):
            m.parse_seconds(bad)
    with pytest.raises(RequestProblem, match="known frames") as e:
        m.require_frames("extending a video")
    assert e.value.code == "unsupported"
    assert m.parse_model("sora-2-pro") == m.name == "moviola-default"
    long = dataclasses.replace(m, conditioned=True)  # window by window, up to the server's own limit
    assert long.longest == 60 and long.parse_seconds("12") == 12 and long.parse_seconds("60") == 60
    with pytest.raises(RequestProblem, match="at most 60"):
        long.parse_seconds("61")
    assert dataclasses.replace(long, cap_seconds=200).longest == 120  # the model's max_total_seconds
    for bad in ("-0.1", "1.5", "nan", "x"):
        with pytest.raises(RequestProblem, match="strength"):
            m.parse_strength(bad)
    assert m.parse_strength(None) == 0.6 and m.parse_strength("0") == 0.0


def test_storyboard_checks_name_the_problem():
    import dataclasses

    from moviola import DEFAULT_MODEL_DIR
    from moviola.server.generate import RequestProblem

    m = dataclasses.replace(ModelInfo.from_dir(DEFAULT_MODEL_DIR), conditioned=True)
    cards, end = m.parse_storyboard([{"start": 0, "prompt": "a"}, {"start": 2.5, "prompt": " b "}], None, "cut")
    assert end == 4.5 and cards[1] == {"start": 2.5, "prompt": "b"}
    assert m.parse_storyboard([{"start": 0, "prompt": "a"}], "6", "continue")[1] == 6.0
    bad = [([], None, "cut", "at least one card", "cards"),
           ([{"start": 1, "prompt": "a"}], None, "cut", "first card must start at 0", "cards[0].start"),
           ([{"start": 0, "prompt": "a"}, {"start": 3, "prompt": "b"}, {"start": 2, "prompt": "c"}], None, "cut",
            "card 3 starts at 2 s, before card 2", "cards[2].start"),
           ([{"start": 0, "prompt": "a"}, {"start": 0, "prompt": "b"}], None, "cut", "same time", "cards[1].start"),
           ([{"start": 0, "prompt": "a"}, {"start": 0.05, "prompt": "b"}], None, "cut", "less than a frame",
            "cards[1].start"),
           ([{"start": 0, "prompt": ""}], None, "cut", "prompt must not be empty", "cards[0].prompt"),
           ([{"start": 0, "prompt": "a"}, {"start": 3, "prompt": "b"}], "2", "cut", "after the last card",
            "seconds"),
           ([{"start": 0, "prompt": "a"}], "90", "cut", "at most 60", "seconds"),
           ([{"start": 0, "prompt": "a"}, {"start": 59, "prompt": "b"}], None, "cut", "would last 61", "cards"),
           ([{"start": 0, "prompt": "a"}], None, "dissolve", "transition", "transition")]
    for board, seconds, transition, message, param in bad:
        with pytest.raises(RequestProblem, match=message) as e:
            m.parse_storyboard(board, seconds, transition)
        assert e.value.param == param, (board, e.value)
    text_only = dataclasses.replace(m, conditioned=False)
    text_only.parse_storyboard([{"start": 0, "prompt": "a"}, {"start": 2, "prompt": "b"}], "4", "cut")
    for board, seconds, transition in (([{"start": 0, "prompt": "a"}], "2", "continue"),
                                       ([{"start": 0, "prompt": "a", "image": "data:"}], "2", "cut")):
        with pytest.raises(RequestProblem, match="known frames") as e:
            text_only.parse_storyboard(board, seconds, transition)
        assert e.value.code == "unsupported"


# --- live: real worker processes --------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_workers():
    pytest.importorskip("openai")
    import server_stack

    stack = server_stack.shared()
    while len(stack.live_workers()) < 2:
        stack.start_worker()
    for w in stack.live_workers():
        stack.wait_ready(w)
    return stack


def test_workers_yield_the_cpu_to_the_api(two_workers):
    # `moviola worker` renices itself (default +10) so requests are not queued behind its matmuls.
    stack = two_workers
    api_nice = os.getpriority(os.PRIO_PROCESS, stack.api.pid)
    for w in stack.live_workers():
        assert os.getpriority(os.PRIO_PROCESS, w.pid) == min(19, api_nice + 10)


def test_sigkilled_workers_job_completes_on_another(two_workers):
    import server_stack

    stack = two_workers
    c = stack.client(stack.key("crash"))
    db = stack.database()
    v = c.videos.create(prompt="a large green triangle falls on a gray background", size="64x64", seconds="2")
    row = server_stack.wait_for(lambda: (r := db.one("SELECT * FROM jobs WHERE id = ?", (v.id,)))["progress"] > 0
                                and r["status"] == "in_progress" and r, 300, 0.02, "the job to start")
    pid = int(row["lease_owner"].split(":")[1])
    victim = next(w for w in stack.workers if w.pid == pid)
    os.kill(pid, signal.SIGKILL)
    t_kill = time.time()
    victim.wait(timeout=10)
    done = server_stack.wait_for(lambda: (x := c.videos.retrieve(v.id)).status in ("completed", "failed") and x,
                                 300, 0.05, "the job to finish elsewhere")
    row = db.one("SELECT * FROM jobs WHERE id = ?", (v.id,))
    print(f"SIGKILL -> taken over after {row['claimed_at'] - t_kill:.1f} s, completed after "
          f"{row['completed_at'] - t_kill:.1f} s (lease {stack.lease:g} s)")
    assert done.status == "completed", done.error
    assert row["attempts"] == 2 and int(row["worker"].split(":")[1]) != pid
    assert row["claimed_at"] - t_kill <= stack.lease + 5.0
    assert len(list(stack.storage.joinpath("videos", v.id).iterdir())) == 1  # the dead attempt left no output


def test_api_restart_mid_queue_loses_nothing(two_workers):
    import server_stack

    stack = two_workers
    token = stack.key("restart")
    c = stack.client(token)
    ids = [c.videos.create(prompt=f"a small yellow square moves {d}", size="64x64", seconds="1").id
           for d in ("left", "right", "up")]
    stack.stop_api(signal.SIGKILL)  # no goodbye: whatever was committed must be all there is
    stack.start_api()
    c = stack.client(token)
    assert sorted(v.id for v in c.videos.list()) == sorted(ids)
    for vid in ids:
        final = server_stack.wait_for(lambda: (x := c.videos.retrieve(vid)).status in ("completed", "failed") and x,
                                      300, 0.1, f"{vid}")
        assert final.status == "completed", final.error
    rows = stack.database().query("SELECT id FROM jobs WHERE key_id = (SELECT id FROM keys WHERE hash = ?)",
                                  (hash_key(token),))
    assert sorted(r["id"] for r in rows) == sorted(ids)  # nothing lost, nothing doubled


def _children(pid: int) -> list[int]:
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


def _gone(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # exited (a zombie waiting for init to reap it)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc (Linux)")
def test_serve_workers_stop_with_serve_even_when_it_is_killed(tmp_path):
    pytest.importorskip("openai")
    import server_stack

    stack = server_stack.Stack(tmp_path, extra_serve=["--workers", "1", "--threads", "1"])
    try:
        stack.start_api()
        server_stack.wait_for(lambda: "waiting for jobs" in stack.log("api.log"), server_stack.STARTUP_TIMEOUT, 0.2,
                              "the worker of moviola serve")
        (worker,) = _children(stack.api.pid)
        stack.api.kill()  # SIGKILL: serve's own clean-up never runs
        stack.api.wait(timeout=10)
        server_stack.wait_for(lambda: _gone(worker), 30, 0.2, "the orphaned worker to stop")
        assert "is gone: stopping" in stack.log("api.log")
    finally:
        stack.stop()


def test_sqlite_writers_in_one_process_queue_without_meeting_the_busy_handler(tmp_path):
    """20 threads writing at once: with busy_timeout 0 any contention inside SQLite would raise 'database is
    locked' at once, so every write landing shows the process's own writers queue before asking SQLite
    (SQLite's busy handler sleeps up to 100 ms a try: it was the p99 of create under load)."""
    import threading

    from moviola.server.db import Database

    db = Database(tmp_path / "q.db")
    errors, start = [], threading.Barrier(20)

    def writer(n):
        db.conn().execute("PRAGMA busy_timeout=0")
        start.wait()
        try:
            for i in range(20):
                with db.transaction() as tx:
                    tx.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (f"t{n}-{i}", "x"))
                db.execute("INSERT INTO audit (at, action, status) VALUES (?, ?, ?)", (0.0, f"t{n}", 200))
        except Exception as e:  # sqlite3.OperationalError: database is locked
            errors.append(repr(e))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.one("SELECT COUNT(*) AS n FROM meta WHERE name LIKE 't%'")["n"] == 400
    assert db.one("SELECT COUNT(*) AS n FROM audit")["n"] == 400


def test_a_running_worker_is_seen_alive_and_forgotten_when_it_stops(env):
    """What /healthz counts: a worker records that it runs, idle or busy, and removes the record as it stops."""
    db, key, tmp = env
    w = _worker(tmp, tmp / "q.db", None)
    w.pipe = FakePipe()
    thread = threading.Thread(target=w.run)
    thread.start()
    try:
        deadline = time.time() + 10
        while jobs.live_workers(db) != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert jobs.live_workers(db) == 1
    finally:
        w.stopping.set()
        thread.join(10)
    assert not thread.is_alive() and jobs.live_workers(db) == 0
    assert not db.query("SELECT name FROM meta WHERE name LIKE 'worker:%'")


def test_files_no_job_names_are_swept_and_a_finished_job_keeps_one_copy(env):
    """A request killed between storing its upload and queuing its job left uploads no sweep removed; a worker
    killed after moving its outputs into place and before recording them left a second copy beside the
    finished attempt's. Folders with no job row go once an hour old; a completed job keeps only its own."""
    import os

    db, key, tmp = env
    (vid,) = _queue(db, key)
    w = _worker(tmp, tmp / "q.db", FakePipe())
    dead = w.storage.new_attempt_dir(vid)  # the killed attempt's files, moved into place
    (dead / "video.mp4").write_bytes(b"x" * 100)
    w.run_one(jobs.claim(db, w.owner, 5))
    row = db.one("SELECT * FROM jobs WHERE id = ?", (vid,))
    assert row["status"] == "completed"
    assert [d.name for d in (tmp / "storage" / "videos" / vid).iterdir()] == [Path(row["assets"]).name]
    orphan = w.storage.save_upload("video_" + "0" * 32, "source.mp4", b"y" * 100).parent
    young = w.storage.save_upload("video_" + "1" * 32, "source.mp4", b"y" * 100).parent
    finished = w.storage.new_attempt_dir("video_" + "2" * 32)  # another database's finished video, say
    old = time.time() - 2 * jobs.ORPHAN_SECONDS
    for d in (orphan, finished.parent):
        os.utime(d, (old, old))
    assert jobs.sweep_orphans(db, w.storage) == 1
    assert not orphan.exists() and young.exists()  # a request may still be uploading into the young one
    assert finished.exists()  # finished work is never removed for want of a row
    assert (tmp / "storage" / row["assets"]).is_dir()  # a job's own folders stay
