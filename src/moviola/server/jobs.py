"""Jobs: one row per video, as the Videos API sees it and as the workers see it.

Lifecycle: ``queued`` -> ``in_progress`` (claimed by a worker, with a lease) -> ``completed`` | ``failed``.
A worker renews its lease with heartbeats while it works. When a worker dies (SIGKILL, a lost machine)
its lease runs out and the next claim takes the job again, up to ``MAX_ATTEMPTS`` times; a job that
kills every worker that takes it fails with code ``worker_lost`` instead of looping forever. Every
state change is guarded by the lease owner, so a worker that lost its job can no longer touch it.

Deleting a video keeps a tombstone row (``deleted_at``) so quotas, rate limits and cursors over the
listing stay correct; its files are removed at once. An in-progress job that is deleted is abandoned
by its worker at the next progress step or heartbeat.

Times are unix seconds from the clock of whichever process writes them; workers on several machines
need clocks in sync (NTP) to within a fraction of the lease.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import time
from typing import Any

from moviola.server.db import Database
from moviola.server.keys import check_limits
from moviola.server.storage import Storage

MAX_ATTEMPTS = 3
IDEMPOTENCY_SECONDS = 24 * 3600.0  # how long an Idempotency-Key names its job (as Stripe's and OpenAI's keys)


class IdempotencyConflict(ValueError):
    """An Idempotency-Key reused for a different request."""
STATUSES = ("queued", "in_progress", "completed", "failed")


def new_video_id() -> str:
    return "video_" + secrets.token_hex(16)


def insert_job(db: Database, key: dict[str, Any], *, video_id: str, kind: str, prompt: str, model: str,
               seconds: str, size: str, params: dict[str, Any], cost_seconds: float,
               remixed_from: str | None = None, idempotency_key: str | None = None,
               fingerprint: str | None = None, audit: tuple[str, str, float] | None = None
               ) -> tuple[dict[str, Any], bool]:
    """Queue a job after checking the key's rate limit and quota in the same transaction. Returns (the job's row,
    whether it is new). The row is read inside the transaction: a read after the commit that failed had answered
    503 for a job already queued and charged, which the SDK's retry then queued again.

    ``idempotency_key`` (the request's Idempotency-Key header): a job this key queued under the same token in the
    last IDEMPOTENCY_SECONDS is returned instead (False), nothing queued or charged, so a client's retry of a
    request whose answer it never got makes no second video; the same token with another request (its
    ``fingerprint``: by default kind, prompt, size and length) is IdempotencyConflict.

    ``audit`` (key name, action, milliseconds so far): the request's audit row, written with the job, so a job
    queued and charged always has one (written after the response, it was lost when the API died between)."""
    now = time.time()
    fingerprint = fingerprint or json.dumps([kind, prompt, size, seconds])
    with db.transaction() as tx:
        if idempotency_key is not None:
            if tx.db.dialect == "postgresql":  # the key's row first, as check_limits locks it: two requests
                # with one token had both passed the lookup, and the second failed on the table's key (503)
                tx.one("SELECT id FROM keys WHERE id = ? FOR UPDATE", (key["id"],))
            old = tx.one("SELECT video_id, fingerprint, created_at FROM idempotency WHERE key_id = ? AND token = ?",
                         (key["id"], idempotency_key))
            row = old and tx.one("SELECT * FROM jobs WHERE id = ? AND deleted_at IS NULL", (old["video_id"],))
            if old and row and old["created_at"] > now - IDEMPOTENCY_SECONDS:
                if old["fingerprint"] != fingerprint:
                    raise IdempotencyConflict(f"Idempotency-Key {idempotency_key!r} was used for another request "
                                              f"({row['kind']} {row['id']}): use a new key for a new request")
                return row, False
            if old:  # expired, or its video deleted: the token is free again
                tx.execute("DELETE FROM idempotency WHERE key_id = ? AND token = ?", (key["id"], idempotency_key))
        check_limits(tx, key, cost_seconds, now)
        tx.execute("INSERT INTO jobs (id, key_id, kind, status, progress, model, prompt, seconds, size, params, "
                   "cost_seconds, remixed_from, created_at) VALUES (?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (video_id, key["id"], kind, model, prompt, seconds, size, json.dumps(params), cost_seconds,
                    remixed_from, now))
        if idempotency_key is not None:
            tx.execute("INSERT INTO idempotency (key_id, token, video_id, fingerprint, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", (key["id"], idempotency_key, video_id, fingerprint, now))
        if audit is not None:
            tx.execute("INSERT INTO audit (at, key_name, action, video_id, status, ms) VALUES (?, ?, ?, ?, 200, ?)",
                       (now, audit[0], audit[1], video_id, audit[2]))
        return tx.one("SELECT * FROM jobs WHERE id = ?", (video_id,)), True


def prune_idempotency(db: Database) -> int:
    """Forget Idempotency-Key tokens older than IDEMPOTENCY_SECONDS; returns how many."""
    return db.execute("DELETE FROM idempotency WHERE created_at < ?", (time.time() - IDEMPOTENCY_SECONDS,))


def get_job(db: Database, key_id: str, video_id: str) -> dict[str, Any] | None:
    """The key's own, undeleted job; None for anyone else's (the API answers 404 either way)."""
    return db.one("SELECT * FROM jobs WHERE id = ? AND key_id = ? AND deleted_at IS NULL", (video_id, key_id))


def list_jobs(db: Database, key_id: str, *, after: str | None, limit: int, order: str
              ) -> tuple[list[dict[str, Any]], bool]:
    """One page of the key's videos, newest first for ``desc``; returns (rows, has_more).

    The cursor is a video id; its row's sequence number orders the page, so a cursor stays valid
    even if that video was deleted meanwhile. Raises LookupError for an unknown cursor.
    """
    op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
    sql = "SELECT * FROM jobs WHERE key_id = ? AND deleted_at IS NULL"
    args: list[Any] = [key_id]
    if after:
        row = db.one("SELECT seq FROM jobs WHERE id = ? AND key_id = ?", (after, key_id))
        if row is None:
            raise LookupError(after)
        sql += f" AND seq {op} ?"
        args.append(row["seq"])
    rows = db.query(sql + f" ORDER BY seq {direction} LIMIT ?", (*args, limit + 1))
    return rows[:limit], len(rows) > limit


def delete_job(db: Database, storage: Storage, key_id: str, video_id: str) -> bool:
    n = db.execute("UPDATE jobs SET deleted_at = ?, lease_owner = NULL WHERE id = ? AND key_id = ? "
                   "AND deleted_at IS NULL", (time.time(), video_id, key_id))
    if n:
        storage.remove_all(video_id)
    return bool(n)


def to_video(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI Video object, plus a ``moviola`` object with what Sora's has no field for."""
    params = json.loads(row["params"])
    error = {"code": row["error_code"], "message": row["error_message"]} if row["status"] == "failed" else None
    return {
        "id": row["id"], "object": "video", "created_at": int(row["created_at"]),
        "completed_at": int(row["completed_at"]) if row["completed_at"] else None,
        "expires_at": int(row["expires_at"]) if row["expires_at"] else None,
        "status": row["status"], "progress": int(row["progress"]), "model": row["model"],
        "prompt": row["prompt"], "seconds": row["seconds"], "size": row["size"],
        "remixed_from_video_id": row["remixed_from"], "error": error,
        "moviola": {"kind": row["kind"], "seed": params.get("seed"), "steps": params.get("steps"),
                    "guidance": params.get("guidance"), "sampler": params.get("sampler"),
                    "source_video_id": params.get("source_video_id"), "strength": params.get("strength"),
                    "transition": params.get("transition"), "note": row["note"],
                    "input_image_sha256": params.get("input_sha256"), "source_sha256": params.get("source_sha256"),
                    "card_image_sha256": ([c.get("image_sha256") for c in params["cards"]]
                                          if params.get("cards") else None),
                    "extension_seconds": params.get("extension_seconds"), "backward": params.get("backward"),
                    "content_hash": row["content_hash"], "weights_sha256": params.get("weights_sha256"),
                    "generation_seconds": row["gen_seconds"],
                    "expired": row["status"] == "completed" and (row["assets_removed_at"] is not None or (
                        row["expires_at"] is not None and row["expires_at"] <= time.time())),
                    "feedback": ({"rating": row["feedback_rating"], "comment": row["feedback_comment"]}
                                 if row["feedback_at"] else None)},
    }


# --- the worker's side ------------------------------------------------------------------------------

def _runnable(now: float, model: str | None = None) -> tuple[str, tuple]:
    """The WHERE clause of the jobs a worker may take at ``now`` (queued, or in progress with an expired lease;
    of ``model``, if given) and its parameters: one definition for claims, the idle worker's note and /healthz."""
    clause = "deleted_at IS NULL AND (status = 'queued' OR (status = 'in_progress' AND lease_until < ?))"
    return (clause, (now,)) if model is None else (clause + " AND model = ?", (now, model))


def claim(db: Database, owner: str, lease_seconds: float, model: str | None = None) -> dict[str, Any] | None:
    """Take the oldest runnable job (queued, or in progress with an expired lease) for ``owner``; with ``model``,
    only a job asked of that model (a worker serving other weights than the API's had made clips recorded as
    the API's model)."""
    while True:
        now = time.time()
        with db.transaction() as tx:
            where, params = _runnable(now, model)
            row = tx.one(f"SELECT * FROM jobs WHERE {where} ORDER BY seq LIMIT 1" + db.skip_locked, params)
            if row is None:
                return None
            if row["attempts"] >= MAX_ATTEMPTS:
                last = row["error_message"]  # set by `retry`: what went wrong last time, if a worker said
                tx.execute("UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, "
                           "lease_owner = NULL, completed_at = ? WHERE id = ?",
                           (row["error_code"] or "worker_lost",
                            f"the job was taken {row['attempts']} times and no worker finished it "
                            + (f"(the last try: {last})" if last else
                               "(each one stopped or crashed while running it)"), now, row["id"]))
                continue
            revoked = tx.one("SELECT revoked_at FROM keys WHERE id = ?", (row["key_id"],))
            if revoked is not None and revoked["revoked_at"] is not None:  # nobody may fetch it: don't make it
                tx.execute("UPDATE jobs SET status = 'failed', error_code = 'key_revoked', error_message = ?, "
                           "lease_owner = NULL, completed_at = ? WHERE id = ?",
                           ("the API key that asked for it was revoked before it ran", now, row["id"]))
                continue
            # A new try: what went wrong in the last one (`retry`) no longer describes the job.
            tx.execute("UPDATE jobs SET status = 'in_progress', lease_owner = ?, worker = ?, lease_until = ?, "
                       "attempts = attempts + 1, started_at = COALESCE(started_at, ?), claimed_at = ?, "
                       "error_code = NULL, error_message = NULL WHERE id = ?",
                       (owner, owner, now + lease_seconds, now, now, row["id"]))
        return db.one("SELECT * FROM jobs WHERE id = ?", (row["id"],))


def waiting_models(db: Database) -> list[str]:
    """The models that runnable jobs ask for (what an idle worker serving another one can tell its operator)."""
    where, params = _runnable(time.time())
    return [r["model"] for r in db.query(f"SELECT DISTINCT model FROM jobs WHERE {where}", params)]


def heartbeat(db: Database, video_id: str, owner: str, lease_seconds: float, progress: int | None = None) -> bool:
    """Renew the lease (and record progress); False if the job is no longer this worker's.

    The progress shown never goes back: a job taken over after a worker stopped restarts from its first step,
    and its progress holds where the last attempt reached until the new one passes it."""
    if progress is None:
        n = db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND deleted_at IS NULL "
                       "AND status = 'in_progress'", (time.time() + lease_seconds, video_id, owner))
    else:
        n = db.execute("UPDATE jobs SET lease_until = ?, progress = CASE WHEN progress > ? THEN progress ELSE ? END "
                       "WHERE id = ? AND lease_owner = ? AND deleted_at IS NULL AND status = 'in_progress'",
                       (time.time() + lease_seconds, int(progress), int(progress), video_id, owner))
    return n == 1


def complete(db: Database, video_id: str, owner: str, *, assets: str, content_hash: str, gen_seconds: float,
             note: str | None, ttl_seconds: float | None, weights_sha256: str | None = None,
             seconds: str | None = None) -> bool:
    """Mark a job completed (if it is still ``owner``'s); ``weights_sha256``, the model that made it, joins its
    parameters, so the Video object says which weights made the clip, not only the MP4's tags; ``seconds``, the
    length of the file made, replaces the one reported so far (an upload's header can promise a frame more
    than it decodes to)."""
    now = time.time()
    with db.transaction() as tx:
        row = tx.one("SELECT params FROM jobs WHERE id = ?", (video_id,))
        if row is None:
            return False
        params = json.loads(row["params"])
        if weights_sha256:
            params["weights_sha256"] = weights_sha256
        if seconds is not None:  # what a remix of it reads as its source's length, as the row's
            params["seconds"] = float(seconds)
        return tx.execute("UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?, expires_at = ?, "
                          "assets = ?, content_hash = ?, gen_seconds = ?, note = ?, params = ?, lease_owner = NULL, "
                          "seconds = COALESCE(?, seconds) "
                          "WHERE id = ? AND lease_owner = ? AND deleted_at IS NULL AND status = 'in_progress'",
                          (now, now + ttl_seconds if ttl_seconds else None, assets, content_hash, gen_seconds,
                           note, json.dumps(params), seconds, video_id, owner)) == 1


def fail(db: Database, video_id: str, owner: str, code: str, message: str) -> bool:
    return db.execute("UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, completed_at = ?, "
                      "lease_owner = NULL WHERE id = ? AND lease_owner = ? AND status = 'in_progress'",
                      (code, message[:2000], time.time(), video_id, owner)) == 1


def retry(db: Database, video_id: str, owner: str, code: str, message: str, after_seconds: float) -> bool:
    """Give a job back after a passing problem (storage, database), to be taken again after ``after_seconds``
    (an in-progress job whose lease runs out then); after MAX_ATTEMPTS tries `claim` fails it with this
    code and message."""
    return db.execute("UPDATE jobs SET lease_owner = NULL, lease_until = ?, error_code = ?, error_message = ? "
                      "WHERE id = ? AND lease_owner = ? AND status = 'in_progress'",
                      (time.time() + after_seconds, code, message[:2000], video_id, owner)) == 1


def release(db: Database, video_id: str, owner: str) -> bool:
    """Give a job back to the queue (a worker stopping politely)."""
    return db.execute("UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, "
                      "attempts = attempts - 1 WHERE id = ? AND lease_owner = ? AND status = 'in_progress'",
                      (video_id, owner)) == 1


# --- housekeeping -----------------------------------------------------------------------------------

def sweep_expired(db: Database, storage: Storage) -> int:
    """Remove the files of videos past ``expires_at``, and what failed jobs left (uploads, a killed attempt's
    partial files); the rows stay, marked."""
    now = time.time()
    rows = db.query("SELECT id FROM jobs WHERE assets_removed_at IS NULL AND ((expires_at IS NOT NULL AND "
                    "expires_at <= ?) OR status = 'failed')", (now,))
    for r in rows:
        storage.remove_all(r["id"])
        db.execute("UPDATE jobs SET assets_removed_at = ? WHERE id = ?", (now, r["id"]))
    return len(rows)


ORPHAN_SECONDS = 3600.0  # a video folder with no job row this long after its last change is a dead request's


def sweep_orphans(db: Database, storage: Storage, older_than: float = ORPHAN_SECONDS) -> int:
    """Remove video folders that no job row names (an API process killed between storing an upload and queuing
    its job), once older than ``older_than`` seconds: a request still uploading is younger. Returns how many."""
    now, n = time.time(), 0
    for folders in storage.folders().values():
        for d in folders:
            try:
                if now - d.stat().st_mtime < older_than:
                    continue
            except OSError:
                continue
            if db.one("SELECT 1 AS x FROM jobs WHERE id = ?", (d.name,)) is None:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
    return n


WORKER_SEEN_SECONDS = 30.0  # a worker that has not said it is alive for this long is counted gone
WORKER_BEAT_SECONDS = 5.0  # how often a running worker says so


def worker_alive(db: Database, owner: str, model: str | None = None) -> None:
    """Record that worker ``owner`` is running (a row of ``meta``: "worker:OWNER" -> time), the model it serves
    ("serves:OWNER"), and when any worker, and any worker of that model, was last seen ("workers_seen",
    "workers_seen:MODEL", kept when workers stop)."""
    now = repr(time.time())
    rows = [(f"worker:{owner}", now), ("workers_seen", now)]
    if model:
        rows += [(f"serves:{owner}", model), (f"workers_seen:{model}", now)]
    for name, value in rows:
        db.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = "
                   "excluded.value", (name, value))


def since_a_worker_was_seen(db: Database, model: str | None = None) -> float:
    """Seconds since any worker (of ``model``, if given) last said it was running (infinite if none ever did)."""
    r = db.one("SELECT value FROM meta WHERE name = ?", ("workers_seen" if model is None else f"workers_seen:{model}",))
    return time.time() - float(r["value"]) if r else math.inf


def worker_gone(db: Database, owner: str) -> None:
    db.execute("DELETE FROM meta WHERE name IN (?, ?)", (f"worker:{owner}", f"serves:{owner}"))


def oldest_queued_wait(db: Database, model: str | None = None) -> tuple[int, float]:
    """(jobs waiting for a worker, seconds the oldest has waited): queued ones, and in-progress ones whose
    worker's lease ran out (killed mid-job), timed from when it did; indexed lookups, cheap however long the
    history. With ``model``, only jobs asked of it."""
    where, params = _runnable(time.time(), model)
    r = db.one("SELECT COUNT(*) AS n, MIN(CASE WHEN status = 'queued' THEN created_at ELSE lease_until END) AS first "
               f"FROM jobs WHERE {where}", params)
    n = int(r["n"] or 0)
    return n, (time.time() - float(r["first"])) if n and r["first"] is not None else 0.0


def live_workers(db: Database, model: str | None = None) -> int:
    """Workers seen in the last WORKER_SEEN_SECONDS (busy or idle), those serving ``model`` if given (a worker
    that said no model counts for any); rows of long-dead ones are removed."""
    now, alive = time.time(), 0
    serves = {r["name"][len("serves:"):]: r["value"] for r in db.query("SELECT name, value FROM meta WHERE name "
                                                                       "LIKE 'serves:%'")}
    for r in db.query("SELECT name, value FROM meta WHERE name LIKE 'worker:%'"):
        owner = r["name"][len("worker:"):]
        if now - float(r["value"]) < WORKER_SEEN_SECONDS:
            alive += model is None or serves.get(owner, model) == model
        elif now - float(r["value"]) > 3600:  # killed with -9 an hour ago: forget it
            db.execute("DELETE FROM meta WHERE name IN (?, ?) AND (name <> ? OR value = ?)",
                       (r["name"], f"serves:{owner}", r["name"], r["value"]))
    return alive


def stats(db: Database) -> dict[str, Any]:
    """Counts for /metrics: jobs by status (deleted ones apart), live workers, generation seconds."""
    now = time.time()
    by_status = {s: 0 for s in STATUSES}
    for r in db.query("SELECT status, COUNT(*) AS n FROM jobs WHERE deleted_at IS NULL GROUP BY status"):
        by_status[r["status"]] = int(r["n"])
    gen = db.one("SELECT COUNT(gen_seconds) AS n, COALESCE(SUM(gen_seconds), 0) AS s FROM jobs")
    workers = db.one("SELECT COUNT(DISTINCT lease_owner) AS n FROM jobs WHERE lease_until > ? "
                     "AND status = 'in_progress'", (now,))
    deleted = db.one("SELECT COUNT(*) AS n FROM jobs WHERE deleted_at IS NOT NULL")
    return {"jobs": by_status, "queue_depth": by_status["queued"], "deleted": int(deleted["n"]),
            "busy_workers": int(workers["n"]), "live_workers": live_workers(db), "generation_count": int(gen["n"]),
            "generation_seconds": float(gen["s"])}


def set_feedback(db: Database, key_id: str, video_id: str, rating: int | None, comment: str) -> bool:
    return db.execute("UPDATE jobs SET feedback_rating = ?, feedback_comment = ?, feedback_at = ? "
                      "WHERE id = ? AND key_id = ? AND deleted_at IS NULL",
                      (rating, comment, time.time(), video_id, key_id)) == 1


def export_feedback(db: Database, key_id: str) -> list[dict[str, Any]]:
    rows = db.query("SELECT id, prompt, model, size, seconds, params, content_hash, feedback_rating, "
                    "feedback_comment, feedback_at FROM jobs WHERE key_id = ? AND feedback_at IS NOT NULL "
                    "AND deleted_at IS NULL ORDER BY seq", (key_id,))
    return [{"video_id": r["id"], "prompt": r["prompt"], "model": r["model"], "size": r["size"],
             "seconds": r["seconds"], "seed": json.loads(r["params"]).get("seed"),
             "content_hash": r["content_hash"], "rating": r["feedback_rating"], "comment": r["feedback_comment"],
             "at": int(r["feedback_at"])} for r in rows]
