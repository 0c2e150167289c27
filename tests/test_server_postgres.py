"""PostgreSQL: SKIP LOCKED claims, and two workers (started by ``moviola serve --workers 2``) sharing the queue.

Uses ``MOVIOLA_TEST_POSTGRES_URL`` (set by .ci/run, which installs and starts Debian's PostgreSQL), else
starts a throwaway server from Debian's binaries, else skips saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[server]'")
pytest.importorskip("psycopg", reason="PostgreSQL support needs psycopg: pip install -e '.[server]'")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _throwaway_cluster():
    """(url, stop) for a private PostgreSQL in a temp folder, or raise pytest.skip with the reason."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does this) and "
                    "MOVIOLA_TEST_POSTGRES_URL is not set")
    bindir = Path(initdb[-1]).parent
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as user postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="moviola-pg-"))
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    import server_stack

    port = server_stack.free_port()
    r = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"initdb failed: {r.stderr.strip()[:300]}")
    r = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"pg_ctl start failed: {r.stderr.strip()[:300]}")

    def stop():
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="module")
def pg_url():
    url = os.environ.get("MOVIOLA_TEST_POSTGRES_URL")
    stop = None
    if not url:
        url, stop = _throwaway_cluster()
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as c:
            c.execute("DROP TABLE IF EXISTS jobs, keys, audit, meta")  # a dedicated test database
    except psycopg.Error as e:
        pytest.skip(f"cannot reach PostgreSQL at {url}: {e}")
    yield url
    if stop:
        stop()


def test_skip_locked_claims_take_each_job_once(pg_url):
    from moviola.server import jobs
    from moviola.server.db import Database
    from moviola.server.keys import create_key

    db = Database(pg_url)
    create_key(db, "pg-claims")
    key = db.one("SELECT * FROM keys WHERE name = 'pg-claims'")
    ids = []
    for i in range(40):
        vid = jobs.new_video_id()
        jobs.insert_job(db, key, video_id=vid, kind="create", prompt="x", model="m", seconds="1", size="64x64",
                        params={"seed": i}, cost_seconds=1.0)
        ids.append(vid)
    got, lock = [], threading.Lock()

    def claimer(name):
        mine = Database(pg_url)
        while (j := jobs.claim(mine, name, 60)) is not None:
            with lock:
                got.append((j["id"], name))
        mine.close()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, _ in got) == sorted(ids)  # each exactly once
    assert len({n for _, n in got}) > 1
    db.execute("DELETE FROM jobs")


def test_two_workers_share_one_queue(pg_url, tmp_path):
    import server_stack

    stack = server_stack.Stack(tmp_path, db=pg_url, lease_seconds=5.0,
                               extra_serve=["--workers", "2", "--threads", "1", "--lease-seconds", "5"])
    try:
        stack.start_api()
        server_stack.wait_for(lambda: stack.log("api.log").count("waiting for jobs") >= 2, server_stack.STARTUP_TIMEOUT,
                              0.2, "two workers to load the model")
        c = stack.client(stack.key("pg"))
        made = [c.videos.create(prompt=f"a small {col} circle moves right", size="64x64", seconds="1")
                for col in ("red", "blue", "green", "yellow")]
        for v in made:
            final = server_stack.wait_for(lambda: (x := c.videos.retrieve(v.id)).status in ("completed", "failed")
                                          and x, 600, 0.2, v.id)
            assert final.status == "completed", final.error
            assert c.videos.download_content(final.id).read()[4:8] == b"ftyp"
        rows = stack.database().query("SELECT id, worker, attempts FROM jobs WHERE id IN (?, ?, ?, ?)",
                                      tuple(v.id for v in made))
        assert sorted(r["id"] for r in rows) == sorted(v.id for v in made)
        assert all(r["attempts"] == 1 for r in rows)  # nobody ran a job twice
        assert len({r["worker"] for r in rows}) == 2, rows  # both workers took jobs from the one queue
    finally:
        stack.stop()
    pids = [int(r["worker"].split(":")[1]) for r in rows]
    server_stack.wait_for(lambda: all(_gone(p) for p in pids), 60, 0.2, "serve's workers to stop with it (SIGTERM)")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
