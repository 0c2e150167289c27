"""The worker process: load the model once, then claim jobs from the database and run them.

    moviola worker --db postgresql://moviola@dbhost/moviola --storage /shared/moviola [--model DIR]

Any number of workers, on any number of machines sharing the database and the storage folder, take
jobs from one queue. A job is held by a lease that a heartbeat thread renews every third of the lease;
progress from the sampler is written as it comes (at most a few times a second). A clip is streamed
to disk window by window as it is made (``Result.frames`` may be an iterator: long clips in constant
memory) in a scratch folder, then its finished files are moved into a folder of their own, and only
then is the job marked completed, guarded by the lease: a worker that lost its job (killed and taken
over, or the video deleted) discards its work.

SIGTERM / SIGINT stop the worker at the next sampler step and give its job back to the queue, so a
restart loses nothing and waits for nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moviola.server import jobs
from moviola.server.db import Database, DatabaseError
from moviola.server.generate import FramePicker, JobFailure, ModelInfo, run_job, seconds_text
from moviola.server.storage import Storage, write_atomic
from moviola.video_io import VideoError

RETRY_SECONDS = 30.0  # a job that met a storage or database error is taken again after this (MAX_ATTEMPTS tries)


@dataclass
class WorkerConfig:
    """How a worker runs; the defaults suit one CPU machine."""

    db: str
    storage: str
    model: str | None = None  # model folder (default: the shipped model)
    lease_seconds: float = 30.0
    poll_seconds: float = 0.5
    ttl_seconds: float = 24 * 3600.0  # completed videos expire this long after completion (0: never)
    threads: int = 0  # torch CPU threads (0: torch's default)
    max_jobs: int = 0  # stop after this many jobs (0: run until stopped)
    parent_pid: int = 0  # stop when this process is gone (moviola serve's workers; 0: no parent to watch)
    # Scheduling niceness added to the worker process. Generation saturates every core it is given; on a
    # machine that also runs the API, a worker at the same priority delays every request behind its
    # matmuls. Nice 10 lets the API (and the heartbeats it depends on) run first, and costs a worker on a
    # quiet or dedicated machine nothing.
    nice: int = 10


class _Lost(Exception):
    """The job is no longer ours (lease taken over, video deleted) or the worker is stopping."""


class Worker:
    def __init__(self, cfg: WorkerConfig, pipe: Any = None, log=None):
        self.cfg = cfg
        self.db = Database(cfg.db)
        self.storage = Storage(cfg.storage)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.stopping = threading.Event()
        self.log = log or (lambda msg: print(f"moviola worker {os.getpid()}: {msg}", file=sys.stderr, flush=True))
        self.pipe = pipe
        model_dir = cfg.model
        if model_dir is None:
            from moviola import DEFAULT_MODEL_DIR

            model_dir = str(DEFAULT_MODEL_DIR)
        self.model = ModelInfo.from_dir(model_dir)
        self._told_others = -math.inf  # when _say_if_other_models last spoke

    def load(self) -> None:
        if self.pipe is None:
            import torch

            from moviola.pipeline import Pipeline

            if self.cfg.threads:
                torch.set_num_threads(self.cfg.threads)
            t0 = time.perf_counter()
            self.pipe = Pipeline.from_pretrained(self.model.directory)
            self.log(f"loaded {self.model.name} from {self.model.directory} in {time.perf_counter() - t0:.1f} s")

    def _watch_parent(self) -> None:
        """Orphaned (serve was killed): stop like on SIGTERM, giving the running job back."""
        while not self.stopping.wait(1.0):
            if os.getppid() != self.cfg.parent_pid:
                self.log(f"parent process {self.cfg.parent_pid} is gone: stopping")
                self.stopping.set()

    def _say_alive(self) -> None:
        """Every WORKER_BEAT_SECONDS, busy or idle, that this worker runs (what /healthz counts); the row goes
        when it stops."""
        try:
            while True:
                try:
                    jobs.worker_alive(self.db, self.owner, self.model.name)
                except Exception as e:  # a database hiccup: say it at the next beat
                    self.log(f"cannot record that this worker is alive ({type(e).__name__}: {e})")
                if self.stopping.wait(jobs.WORKER_BEAT_SECONDS):
                    break
            jobs.worker_gone(self.db, self.owner)
        except Exception:  # the database is gone as we stop: the row ages out
            pass
        finally:
            self.db.close()  # this thread's own connection

    def run(self) -> int:
        """Claim and run jobs until stopped; returns the number of jobs finished."""
        if self.cfg.parent_pid:
            threading.Thread(target=self._watch_parent, daemon=True).start()
        alive = threading.Thread(target=self._say_alive, daemon=True)
        alive.start()  # before the model loads: a starting worker counts as running
        try:
            self.load()
        except BaseException:
            self.stopping.set()
            alive.join(timeout=5.0)
            raise
        self.log(f"ready ({self.owner}); waiting for jobs")
        try:
            return self._loop()
        finally:
            self.stopping.set()
            alive.join(timeout=5.0)

    def _loop(self) -> int:
        done = 0
        while not self.stopping.is_set():
            try:
                job = jobs.claim(self.db, self.owner, self.cfg.lease_seconds, model=self.model.name)
            except Exception as e:  # the database restarting, a network blip: keep trying
                self.log(f"cannot claim a job ({type(e).__name__}: {e}); retrying")
                self.db.close()
                self.stopping.wait(max(1.0, self.cfg.poll_seconds))
                continue
            if job is None:
                self._say_if_other_models()
                self.stopping.wait(self.cfg.poll_seconds)
                continue
            self.run_one(job)
            done += 1
            if self.cfg.max_jobs and done >= self.cfg.max_jobs:
                break
        return done

    def _say_if_other_models(self) -> None:
        """Idle while jobs wait for other models (a --model that differs from the API's): say so, at the first idle
        moment and then once a minute."""
        now = time.monotonic()
        if now - self._told_others < 60.0:
            return
        self._told_others = now
        try:
            others = [m for m in jobs.waiting_models(self.db) if m != self.model.name]
        except Exception:  # the database: the next claim says it
            return
        if others:
            self.log(f"jobs are waiting for {', '.join(sorted(others))}; this worker serves {self.model.name} "
                     f"({self.model.directory}) and takes only its jobs: start a worker with that model's folder")

    def run_one(self, job: dict[str, Any]) -> None:
        vid, owner, lease = job["id"], self.owner, self.cfg.lease_seconds
        lost = threading.Event()
        beat_stop = threading.Event()

        def beat() -> None:  # keeps the lease while decoding/encoding, when no sampler steps come
            try:
                while not beat_stop.wait(lease / 3):
                    try:
                        if not jobs.heartbeat(self.db, vid, owner, lease):
                            lost.set()
                            return
                    except Exception as e:  # a database hiccup: try again at the next beat
                        self.log(f"{vid}: heartbeat failed ({e})")
            finally:
                self.db.close()  # this thread's own connection

        last = [0.0]

        def on_step(done: int, n: int) -> None:  # the samplers report steps done so far, 1..n
            if lost.is_set():
                raise _Lost("lease lost")
            if self.stopping.is_set():
                raise _Lost("stopping")
            now = time.monotonic()
            if now - last[0] >= 0.25 or done >= n:
                last[0] = now
                # Sampling is ~90 % of the work; decoding and writing the files the rest.
                try:
                    mine = jobs.heartbeat(self.db, vid, owner, lease, progress=int(90 * min(done, n) / max(n, 1)))
                except Exception as e:  # a database hiccup (locked, a dropped connection): the beat thread
                    self.log(f"{vid}: progress not recorded ({e})")  # keeps the lease; go on sampling
                    return
                if not mine:
                    lost.set()
                    raise _Lost("lease lost")

        hb = threading.Thread(target=beat, daemon=True)
        hb.start()
        t0 = time.perf_counter()
        out_dir = None
        try:
            params = json.loads(job["params"])
            self.log(f"{vid}: {job['kind']} {params['width']}x{params['height']} {params['seconds']} s "
                     f"(attempt {job['attempts']})")
            source = self._source(params)
            if params.get("input_path"):
                params["input_image"] = str(self.storage.resolve(params["input_path"]))
            for card in params.get("cards") or []:
                if card.get("image_path"):
                    card["image_path"] = str(self.storage.resolve(card["image_path"]))
            result = run_job(self.pipe, job, params, source=source, callback=on_step)
            work_dir = self.storage.new_work_dir(vid)
            try:
                digest, made = self._write_outputs(work_dir, job, params, result)  # generation happens here
                if lost.is_set():
                    raise _Lost("lease lost")
                out_dir = self.storage.new_attempt_dir(vid)
                for f in work_dir.iterdir():  # each file whole, by rename (same file system)
                    os.replace(f, out_dir / f.name)
            finally:
                _rmtree(work_dir)
            took = time.perf_counter() - t0
            if jobs.complete(self.db, vid, owner, assets=self.storage.relative(out_dir), content_hash=digest,
                             gen_seconds=took, note=result.note, ttl_seconds=self.cfg.ttl_seconds or None,
                             weights_sha256=self.weights_digest(), seconds=seconds_text(made / result.fps)):
                self.storage.remove_work(vid)  # what an earlier, killed attempt left behind
                self.storage.remove_other_attempts(vid, out_dir)
                self.log(f"{vid}: completed in {took:.1f} s (sha256 {digest[:12]})")
            else:
                raise _Lost("lease lost before completion")
        except _Lost as e:
            if out_dir is not None:
                _rmtree(out_dir)
            if str(e) == "stopping":
                jobs.release(self.db, vid, owner)
                self.log(f"{vid}: given back to the queue (worker stopping)")
            else:
                self.log(f"{vid}: abandoned ({e}: taken over, deleted or its key revoked)")
        except JobFailure as e:
            jobs.fail(self.db, vid, owner, e.code, str(e))
            self.log(f"{vid}: failed ({e.code}: {e})")
        except (ValueError, FileNotFoundError, VideoError) as e:  # GenerationError, a bad upload: the request's
            if out_dir is not None:
                _rmtree(out_dir)
            # A file's problem without its path here: clients see this message, not where the server keeps files
            message = f"the source file: {e.problem}" if isinstance(e, VideoError) else str(e)
            jobs.fail(self.db, vid, owner, "invalid_request", message)
            self.log(f"{vid}: failed ({e})")
        except (OSError, DatabaseError) as e:  # the storage or the database, not the request: try it again later
            if out_dir is not None:
                _rmtree(out_dir)
            if lost.is_set() or not self._still_mine(vid):  # deleted or revoked under it: its files went with it
                self.log(f"{vid}: abandoned (taken over, deleted or its key revoked while it ran)")
                return
            traceback.print_exc(file=sys.stderr)
            code = "storage_error" if isinstance(e, OSError) else "database_error"
            what = (e.strerror or type(e).__name__) if isinstance(e, OSError) else str(e)  # no server paths
            message = f"{code.replace('_', ' ')}: {what}"
            try:
                if job["attempts"] >= jobs.MAX_ATTEMPTS:  # the last try: fail it now, not after a wait
                    jobs.fail(self.db, vid, owner, code, f"{message} (after {job['attempts']} tries)")
                    self.log(f"{vid}: failed ({message}, {job['attempts']} tries)")
                elif jobs.retry(self.db, vid, owner, code, message, RETRY_SECONDS):
                    self.log(f"{vid}: {code} ({what}); back in the queue in {RETRY_SECONDS:g} s")
                else:
                    self.log(f"{vid}: {code} ({what}); the job is no longer this worker's")
            except Exception as e2:  # the database itself: the lease runs out and another claim retries it
                self.log(f"{vid}: {code} ({what}); could not requeue ({e2})")
        except Exception as e:
            if out_dir is not None:
                _rmtree(out_dir)
            traceback.print_exc(file=sys.stderr)
            if type(e).__module__.startswith(("sqlite3", "psycopg")):  # a database error below our wrapper
                try:
                    jobs.retry(self.db, vid, owner, "database_error", f"database error: {e}", RETRY_SECONDS)
                    return
                except Exception:
                    return  # the lease runs out; another claim retries it
            jobs.fail(self.db, vid, owner, "generation_failed", f"{type(e).__name__}: {e}")
        finally:
            beat_stop.set()
            hb.join(timeout=5)

    def _still_mine(self, vid: str) -> bool:
        """Whether the job is still this worker's to finish (True when the database can't say)."""
        try:
            return jobs.heartbeat(self.db, vid, self.owner, self.cfg.lease_seconds)
        except Exception:
            return True

    def _source(self, params: dict[str, Any]) -> Path | None:
        rel = params.get("source_path")
        if not rel:
            return None
        p = self.storage.resolve(rel)
        if not p.is_file():
            raise JobFailure("source_unavailable", "the source video's file is gone (deleted or expired)")
        return p

    def weights_digest(self) -> str:
        """SHA-256 over the served model's weight files (names and bytes), computed once: which weights made a
        video, without telling clients where the server keeps them."""
        if getattr(self, "_weights_digest", None) is None:
            h = hashlib.sha256()
            for f in sorted(self.model.directory.rglob("*.safetensors")):
                h.update(f.relative_to(self.model.directory).as_posix().encode() + b"\0")
                with open(f, "rb") as fh:  # in chunks: a large model's weights never sit in memory twice
                    h.update(hashlib.file_digest(fh, "sha256").digest())
            self._weights_digest = h.hexdigest()
        return self._weights_digest

    def _write_outputs(self, out_dir: Path, job: dict[str, Any], params: dict[str, Any], result
                       ) -> tuple[str, int]:
        """Write the video as its chunks come (this is where a streamed generation runs), then the thumbnail
        and sprite sheet from the few frames kept; every file atomic. Returns (the video's SHA-256, its frames)."""
        from moviola.video_io import VideoWriter, encode_image, sprite_sheet

        meta = {"comment": "generated by moviola", "moviola_model": job["model"],
                "moviola_weights_sha256": self.weights_digest(), "moviola_video_id": job["id"],
                "moviola_kind": job["kind"], "moviola_prompt": job["prompt"] or "",
                "moviola_negative_prompt": params.get("negative_prompt", ""), "moviola_seed": str(params["seed"]),
                "moviola_steps": str(params["steps"]), "moviola_guidance": str(params["guidance"]),
                "moviola_sampler": params["sampler"],
                "creation_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if params.get("source_video_id"):
            meta["moviola_source_video_id"] = params["source_video_id"]
        if params.get("strength") is not None:
            meta["moviola_strength"] = str(params["strength"])
        if params.get("input_sha256"):
            meta["moviola_input_image_sha256"] = params["input_sha256"]
        if params.get("source_sha256"):
            meta["moviola_source_sha256"] = params["source_sha256"]
        if params.get("extension_seconds") is not None:
            meta["moviola_extension_seconds"] = str(params["extension_seconds"])
            meta["moviola_backward"] = str(bool(params.get("backward"))).lower()
        if params.get("cards"):
            meta["moviola_storyboard"] = json.dumps([{"start": c["start"], "prompt": c["prompt"],
                                                      **({"image_sha256": c["image_sha256"]}
                                                         if c.get("image_sha256") else {})}
                                                     for c in params["cards"]])
        if result.note:
            meta["moviola_note"] = result.note
        picker = FramePicker(result.total)
        try:
            with VideoWriter(out_dir / "video.mp4", result.fps, metadata=meta, keep_partial=False) as w:
                for chunk in result.chunks():
                    w.write(chunk)
                    picker.add(chunk)
        except VideoError as e:  # the output could not be written (a full disk): the storage's fault, not the
            # request's, so the job is retried and then fails as storage_error (it had failed at once as
            # invalid_request, blaming "the source file")
            raise OSError(errno.EIO, e.problem) from None
        video = out_dir / "video.mp4"
        write_atomic(out_dir / "thumbnail.webp", encode_image(picker.middle(), "webp"))
        write_atomic(out_dir / "spritesheet.jpg", encode_image(sprite_sheet(picker.sheet_frames(), count=16), "jpeg"))
        return hashlib.sha256(video.read_bytes()).hexdigest(), picker.seen


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(cfg: WorkerConfig) -> int:
    """``moviola worker``: run until SIGTERM/SIGINT (the current job goes back to the queue)."""
    w = Worker(cfg)
    if cfg.nice:  # here, not in Worker.run: a worker embedded in another process leaves its priority alone
        try:
            os.nice(cfg.nice)
        except OSError as e:  # not permitted (a negative value without privileges): run as we are
            w.log(f"cannot change niceness by {cfg.nice} ({e}); running at the current priority")

    def stop(signum, frame):
        w.log(f"signal {signum}: stopping")
        w.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    w.run()
    return 0
