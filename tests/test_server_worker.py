"""The job queue: leases, heartbeats, take-over after SIGKILL, restarts that lose nothing, the adapter."""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import threading
import time

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
    """Stands in for Pipeline in the in-process tests: frames from the seed, one callback per step."""

    def __init__(self, on_step=None):
        self.on_step = on_step
        self.calls = []

    def __call__(self, prompt, *, width, height, seconds, fps, steps, seed, callback=None, **kw):
        self.calls.append(dict(prompt=prompt, width=width, height=height, seconds=seconds, seed=seed, steps=steps))
        for i in range(steps):
            if self.on_step:
                self.on_step(i)
            if callback:
                callback(i + 1, steps)  # as moviola.flow.samplers: steps done so far
        rng = np.random.default_rng(seed)
        return rng.integers(0, 255, (round(seconds * fps), height, width, 3), dtype=np.uint8)


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
    assert Image.open(w.storage.asset(row["assets"], "thumbnail")).format == "WEBP"
    assert not list(tmp.joinpath("storage").rglob(".*tmp-*"))  # no temp files left behind


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


def test_adapter_uses_abilities_when_the_pipeline_has_them(tmp_path):
    from moviola.video_io import write_image, write_video

    src = tmp_path / "src.mp4"
    write_video(src, np.full((8, 64, 64, 3), 200, np.uint8), 8)
    img = write_image(tmp_path / "first.png", np.full((32, 32, 3), 10, np.uint8))
    base = {"width": 64, "height": 64, "seconds": 1.0, "fps": 8.0, "seed": 3, "steps": 2, "guidance": 1.0,
            "sampler": "euler"}

    class Able(FakePipe):
        def image_to_video(self, prompt, image, *, width, height, seconds, seed, callback=None):
            self.got = ("i2v", image.shape, seed)
            return np.repeat(image[None], round(seconds * 8), 0)

        def extend(self, video, prompt, *, seconds, fps, **kw):  # returns only the new segment
            self.got = ("extend", video.shape, seconds)
            return np.zeros((round(seconds * fps), 64, 64, 3), np.uint8)

        def remix(self, frames, prompt, **kw):
            self.got = ("remix", frames.shape)
            return frames[::-1]

    p = Able()
    out = run_job(p, {"kind": "create", "prompt": "x"}, {**base, "input_image": str(img)}, source=None)
    assert p.got == ("i2v", (64, 64, 3), 3) and out.frames.shape == (8, 64, 64, 3) and out.note is None
    out = run_job(p, {"kind": "extension", "prompt": "x"}, {**base, "extension_seconds": 1.0}, source=src)
    assert p.got == ("extend", (8, 64, 64, 3), 1.0) and out.frames.shape == (16, 64, 64, 3)
    assert out.frames[:8].mean() > 150 and out.frames[8:].max() == 0  # source first, then the new segment
    out = run_job(p, {"kind": "remix", "prompt": "x"}, {**base, "source_seed": 3}, source=src)
    assert p.got == ("remix", (8, 64, 64, 3)) and out.note is None

    plain = FakePipe()  # no abilities: honest fallbacks or a clean failure
    with pytest.raises(JobFailure, match="image_to_video") as e:
        run_job(plain, {"kind": "create", "prompt": "x"}, {**base, "input_image": str(img)}, source=None)
    assert e.value.code == "unsupported"
    out = run_job(plain, {"kind": "extension", "prompt": "x"}, {**base, "extension_seconds": 1.0}, source=src)
    assert out.frames.shape == (16, 64, 64, 3) and "not conditioned" in out.note
    out = run_job(plain, {"kind": "remix", "prompt": "y"}, {**base, "seed": 99, "source_seed": 3}, source=src)
    assert plain.calls[-1]["seed"] == 3 and "not conditioned" in out.note
    with pytest.raises(JobFailure, match="Pipeline.remix"):
        run_job(plain, {"kind": "edit", "prompt": "y"}, base, source=src)


def test_size_mapping_and_limits():
    from moviola import DEFAULT_MODEL_DIR
    from moviola.server.generate import RequestProblem

    m = ModelInfo.from_dir(DEFAULT_MODEL_DIR)
    assert m.parse_size("1280x720") == (112, 64) and m.parse_size("1024x1792") == (64, 112)
    assert m.parse_size("96x64") == (96, 64) and m.parse_size(None) == (64, 64)
    for bad in ("100x64", "16x16", "256x256", "big"):
        with pytest.raises(RequestProblem, match="allowed") as e:
            m.parse_size(bad)
        assert e.value.param == "size"
    assert m.parse_seconds("2.5") == 2.5 and m.parse_seconds(None) == 4.0
    for bad in ("0", "8", "12", "-1", "nan", "inf", "two"):
        with pytest.raises(RequestProblem, match="at most 4"):
            m.parse_seconds(bad)
    assert m.parse_model("sora-2-pro") == m.name == "moviola-default"


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
