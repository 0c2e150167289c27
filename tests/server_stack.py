"""A live Moviola server on loopback for the tests/test_server_*.py files (not a test module itself).

``shared()`` starts one API process (``moviola serve --workers 0``) and one worker process
(``moviola worker``, the real default model at 4 sampler steps, one CPU thread) the first time a test
asks, and every server test file reuses them, so the model is loaded once per pytest run. Each test
uses keys of its own, which is also what isolates their videos. Everything is stopped at exit.

The abilities beyond text-to-video (image-to-video, remix of long clips, extend, storyboards with
'continue') need a DiT trained with known frames. If the shipped default is text-only, the stack serves
a copy of it whose DiT is widened by ``moviola.models.dit.with_conditioning`` (it computes exactly what
the original does, and the abilities run), named "default" so the served model is still
"moviola-default".
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

STEPS = 4  # sampler steps of every job in the tests: fast, and the plumbing is the same
STARTUP_TIMEOUT = 300.0  # importing torch and the text encoder can be slow on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """An API process and worker processes sharing one database and storage folder."""

    def __init__(self, root: Path, *, db: str | None = None, steps: int = STEPS, poll_after_ms: int = 100,
                 lease_seconds: float = 3.0, extra_serve: list[str] | None = None, model: str | None = None):
        self.root = Path(root)
        self.storage = self.root / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.db = db or f"sqlite:///{self.storage / 'moviola.db'}"
        self.steps, self.poll_after_ms, self.lease = steps, poll_after_ms, lease_seconds
        self.extra_serve = extra_serve or []
        self.model_args = ["--model", model] if model else []
        self.port = free_port()
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs: list = []
        self.cleanup = False  # remove root on stop (the shared stack's temp folder)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.root / log_name, "ab")
        self._logs.append(log)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        return subprocess.Popen([sys.executable, "-m", "moviola.cli", *args], stdout=log, stderr=log, env=env,
                                cwd=self.root)

    def start_api(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self.api = self._spawn(["serve", "--workers", "0", "--port", str(self.port), "--storage", str(self.storage),
                                "--db", self.db, "--steps", str(self.steps), "--poll-after-ms",
                                str(self.poll_after_ms), *self.model_args, *self.extra_serve], "api.log")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"moviola serve exited with {self.api.returncode}:\n{self.log('api.log')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"moviola serve did not answer in {timeout:g} s:\n{self.log('api.log')}")

    def stop_api(self, sig: int = signal.SIGTERM) -> None:
        if self.api and self.api.poll() is None:
            self.api.send_signal(sig)
            self.api.wait(timeout=30)

    def start_worker(self, *extra: str) -> subprocess.Popen:
        name = f"worker{len(self.workers)}.log"
        p = self._spawn(["worker", "--storage", str(self.storage), "--db", self.db, "--threads", "1",
                         "--lease-seconds", str(self.lease), "--poll-seconds", "0.1", *self.model_args, *extra], name)
        p.log_name = name  # type: ignore[attr-defined]
        self.workers.append(p)
        return p

    def wait_ready(self, worker: subprocess.Popen, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "waiting for jobs" in self.log(worker.log_name):  # type: ignore[attr-defined]
                return
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}:\n{self.log(worker.log_name)}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout:g} s:\n{self.log(worker.log_name)}")

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def log(self, name: str) -> str:
        p = self.root / name
        return p.read_text(errors="replace") if p.exists() else ""

    def database(self):
        from moviola.server.db import Database

        return Database(self.db)

    def key(self, name: str, **kw) -> str:
        from moviola.server.keys import create_key

        token, _ = create_key(self.database(), f"{name}-{os.urandom(3).hex()}", **kw)
        return token

    def client(self, token: str, **kw):
        from openai import OpenAI

        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60.0)
        return OpenAI(base_url=self.base_url, api_key=token, **kw)

    def stop(self) -> None:
        for p in [*self.workers, self.api]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.workers, self.api]:
            if p is not None:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in self._logs:
            f.close()
        if self.cleanup:
            shutil.rmtree(self.root, ignore_errors=True)


_SHARED: Stack | None = None


def model_with_known_frames(root: Path) -> str | None:
    """None if the shipped default takes known frames; else the folder of a copy whose DiT is widened with
    ``with_conditioning`` (same outputs for text-only requests; the abilities run)."""
    from moviola import DEFAULT_MODEL_DIR
    from moviola.layout import read_config

    src = Path(DEFAULT_MODEL_DIR)
    if read_config(src, "dit").get("cond_channels"):
        return None
    from moviola.models.dit import DiT, with_conditioning

    dst = root / "models" / "default"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "dit":
            os.symlink(f, dst / f.name)
    with_conditioning(DiT.from_pretrained(src)).save_pretrained(dst / "dit")
    return str(dst)


def shared() -> Stack:
    """The session's API + one worker (started on first use, stopped at exit)."""
    global _SHARED
    if _SHARED is None:
        root = Path(tempfile.mkdtemp(prefix="moviola-server-test-"))
        stack = Stack(root, model=model_with_known_frames(root))
        stack.cleanup = True
        atexit.register(stack.stop)
        w = stack.start_worker()  # start loading the model while the API comes up
        stack.start_api()
        stack.wait_ready(w)
        _SHARED = stack
    elif not _SHARED.live_workers():  # a test killed it
        _SHARED.wait_ready(_SHARED.start_worker())
    return _SHARED


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
