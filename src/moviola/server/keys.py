"""API keys, quotas, rate limits and the audit log.

A key is ``mvl-`` plus 43 characters of ``secrets.token_urlsafe(32)`` (256 random bits). The database
keeps only its SHA-256 and its first characters (to tell keys apart in listings). A plain hash is
enough here, unlike for passwords: a slow KDF (bcrypt, argon2) exists to make guessing a *low-entropy*
secret expensive, and nobody can enumerate 2^256 tokens however fast the hash is; a fast hash also lets
every request look its key up by an indexed equality match in well under a millisecond, with no cache,
which is what makes revocation take effect on the very next request.

Limits, both optional per key and checked inside the write transaction that creates a job, so
concurrent requests cannot slip past them together:

- ``rate_per_minute``: video-creating requests (create, remix, extensions, edits) in the last 60 s.
  Reads and polls are not counted: the SDK's ``create_and_poll`` polls once a second.
- ``quota_seconds_per_day``: seconds of video requested in the last 24 h (a rolling window; failed
  jobs do not count, deleted ones do, so delete-and-retry cannot dodge the quota).

Both answer 429 with ``retry-after`` = seconds until enough of the window has rolled past.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from moviola.server.db import Database, _Tx

KEY_PREFIX = "mvl-"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")  # fullmatch: "$" would let a trailing newline in
MAX_RATE_PER_MINUTE = 1_000_000  # a bound the database's INTEGER holds (a larger one had been a 500)
DAY = 86400.0


class KeyProblem(ValueError):
    """A bad key request (duplicate name, bad name, unknown key); the message says which."""


@dataclass
class LimitExceeded(Exception):
    """A rate limit or quota was hit: ``kind`` is "rate" or "quota", retry after ``retry_after`` s; or
    "too_large": the request alone is more than the whole quota (no wait helps)."""

    kind: str
    message: str
    retry_after: float

    def __str__(self) -> str:
        return self.message


class KeyRevoked(Exception):
    """The key was revoked while its request was being read: nothing is queued."""


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(db: Database, name: str, *, quota_seconds_per_day: float | None = None,
               rate_per_minute: int | None = None, admin: bool = False) -> tuple[str, dict[str, Any]]:
    """Make a key; returns (the token, shown this once; its public record)."""
    check_name(name)
    if quota_seconds_per_day is not None and not (math.isfinite(quota_seconds_per_day) and quota_seconds_per_day > 0):
        # inf had been stored: the key made behind a 500, and every listing of keys a 500 after it
        raise KeyProblem(f"quota_seconds_per_day must be a positive finite number, got {quota_seconds_per_day}")
    if rate_per_minute is not None and not 0 < rate_per_minute <= MAX_RATE_PER_MINUTE:
        raise KeyProblem(f"rate_per_minute must be 1 to {MAX_RATE_PER_MINUTE:,}, got {rate_per_minute}")
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    with db.transaction() as tx:
        if tx.one("SELECT 1 AS x FROM keys WHERE name = ?", (name,)):
            raise KeyProblem(f"a key named {name!r} already exists (names stay taken after revocation)")
        tx.execute("INSERT INTO keys (id, name, hash, prefix, created_at, quota_seconds_per_day, "
                   "rate_per_minute, admin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   ("key_" + secrets.token_hex(8), name, hash_key(token), token[:8], time.time(),
                    quota_seconds_per_day, rate_per_minute, int(admin)))
    return token, public(db.one("SELECT * FROM keys WHERE name = ?", (name,)))


def check_name(name: str) -> None:
    """A KeyProblem unless ``name`` is a key name: 1-64 of letters, digits and ._@-, the first a letter or digit
    (and nothing after: a name ending in a newline had been taken, and listed like the name without it)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KeyProblem(f"key name {name!r} must be 1-64 letters, digits or ._@- and start with a letter or digit")


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A key's record without its hash."""
    return {"name": row["name"], "prefix": row["prefix"], "created_at": int(row["created_at"]),
            "revoked_at": int(row["revoked_at"]) if row["revoked_at"] else None,
            "quota_seconds_per_day": row["quota_seconds_per_day"], "rate_per_minute": row["rate_per_minute"],
            "admin": bool(row["admin"])}


def list_keys(db: Database) -> list[dict[str, Any]]:
    return [public(r) for r in db.query("SELECT * FROM keys ORDER BY seq")]


def revoke_key(db: Database, name: str) -> dict[str, Any]:
    """Revoke by name (idempotent); the key fails from its next request on, and its jobs not yet made fail as
    ``key_revoked`` in the same transaction: a queued one is never taken, and a worker running one loses it at
    its next heartbeat or sampler step (it had gone on to finish a clip nobody could fetch)."""
    now = time.time()
    with db.transaction() as tx:
        row = tx.one("SELECT id FROM keys WHERE name = ?", (name,))
        if row is None:
            raise KeyProblem(f"no key named {name!r}")
        tx.execute("UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, row["id"]))
        tx.execute("UPDATE jobs SET status = 'failed', error_code = 'key_revoked', error_message = ?, "
                   "lease_owner = NULL, completed_at = ? WHERE key_id = ? AND deleted_at IS NULL AND "
                   "status IN ('queued', 'in_progress')",
                   ("the API key that asked for it was revoked before it was made", now, row["id"]))
    return public(db.one("SELECT * FROM keys WHERE name = ?", (name,)))


def lookup(db: Database, token: str) -> dict[str, Any] | None:
    """The key row for a presented token (revoked ones included: the caller says why it fails)."""
    if not token.startswith(KEY_PREFIX):
        return None
    return db.one("SELECT * FROM keys WHERE hash = ?", (hash_key(token),))


def check_limits(tx: _Tx, key: dict[str, Any], cost_seconds: float, now: float) -> None:
    """Raise LimitExceeded if one more job of ``cost_seconds`` breaks the key's rate or quota.

    Call inside the transaction that inserts the job. On PostgreSQL the key's row is locked first so
    concurrent requests of one key queue up here (SQLite's BEGIN IMMEDIATE already serialises them).
    """
    if tx.db.dialect == "postgresql":
        tx.one("SELECT id FROM keys WHERE id = ? FOR UPDATE", (key["id"],))
    now_key = tx.one("SELECT revoked_at FROM keys WHERE id = ?", (key["id"],))
    if now_key is None or now_key["revoked_at"] is not None:  # revoked while a slow upload came in
        raise KeyRevoked(f"this API key ({key['prefix']}...) was revoked")
    if key["rate_per_minute"] is None and key["quota_seconds_per_day"] is None:
        return
    if key["rate_per_minute"] is not None:
        rows = tx.query("SELECT created_at FROM jobs WHERE key_id = ? AND created_at > ? ORDER BY created_at",
                        (key["id"], now - 60.0))
        limit = int(key["rate_per_minute"])
        if len(rows) >= limit:
            # The request fits once the oldest of the last `limit` requests is a minute old.
            wait = rows[len(rows) - limit]["created_at"] + 60.0 - now
            raise LimitExceeded("rate", f"rate limit of {limit} video requests per minute reached for key "
                                        f"{key['name']!r}", max(1.0, wait))
    if key["quota_seconds_per_day"] is not None:
        quota = float(key["quota_seconds_per_day"])
        rows = tx.query("SELECT created_at, cost_seconds FROM jobs WHERE key_id = ? AND created_at > ? "
                        "AND status <> 'failed' ORDER BY created_at", (key["id"], now - DAY))
        used = sum(r["cost_seconds"] for r in rows)
        if cost_seconds > quota + 1e-9:  # waiting would never help
            raise LimitExceeded("too_large", f"this request asks for {cost_seconds:g} s of video, more than key "
                                             f"{key['name']!r}'s whole daily quota of {quota:g} s", 0.0)
        if used + cost_seconds > quota + 1e-9:
            need, wait = used + cost_seconds - quota, DAY  # wait until enough old jobs have left the window
            for r in rows:
                need -= r["cost_seconds"]
                if need <= 1e-9:
                    wait = r["created_at"] + DAY - now
                    break
            raise LimitExceeded("quota", f"daily quota of {quota:g} video seconds reached for key "
                                         f"{key['name']!r} ({used:g} s used in the last 24 h, this request "
                                         f"asks for {cost_seconds:g} s)", max(1.0, wait))


def audit(db: Database, *, key_name: str | None, action: str, video_id: str | None, status: int,
          ms: float, target: str | None = None) -> None:
    """One audit row: who (``key_name``; ``cli:USER`` for the keys command), what (a route name or ``cli.keys.*``),
    on which video or key (``video_id``, ``target``: the key an admin created or revoked), and the outcome."""
    db.execute("INSERT INTO audit (at, key_name, action, video_id, target, status, ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (time.time(), key_name, action, video_id, target, status, ms))


def prune_audit(db: Database, older_than_seconds: float) -> int:
    """Remove audit rows older than ``older_than_seconds`` (the log had grown for ever); returns how many."""
    return db.execute("DELETE FROM audit WHERE at < ?", (time.time() - older_than_seconds,))


def audit_log(db: Database, *, limit: int = 100, key_name: str | None = None) -> list[dict[str, Any]]:
    if key_name:
        rows = db.query("SELECT * FROM audit WHERE key_name = ? ORDER BY seq DESC LIMIT ?", (key_name, limit))
    else:
        rows = db.query("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,))
    return [{"at": r["at"], "key_name": r["key_name"], "action": r["action"], "video_id": r["video_id"],
             "target": r["target"], "status": r["status"], "ms": r["ms"]} for r in rows]
