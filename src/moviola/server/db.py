"""One small database layer for SQLite (the default) and PostgreSQL, and the server's schema.

    db = Database("sqlite:///data/moviola.db")          # or a bare path, or "postgresql://user:pw@host/db"
    db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))  # -> dict or None
    with db.transaction() as tx:                          # a write transaction (serialised, see below)
        tx.execute("UPDATE jobs SET status = ? WHERE id = ?", ("queued", job_id))

SQL is written once with ``?`` placeholders and translated for psycopg. Rows come back as dicts.
Each thread gets its own connection (FastAPI runs handlers in a thread pool; the worker's heartbeat is
a thread), so no connection is ever shared across threads.

Why the transactions look as they do:

- SQLite runs in WAL mode, so readers never block the writer, and ``transaction()`` starts with
  ``BEGIN IMMEDIATE``: it takes the write lock up front, so two workers claiming a job (or two requests
  checking one key's quota) are serialised instead of both reading "free" and both writing.
  ``synchronous=NORMAL``: a committed job survives a crash of any process; only a power cut can lose
  the last transactions.
- SQLite writers in one process also queue on a lock of their own before asking SQLite. Without it,
  20 request threads writing at once meet SQLite's busy handler, which sleeps 1, 2, 5 ... up to 100 ms
  between tries: the p99 of a create under load was 150 to 200 ms while its median was 20 ms. Queued on
  a Python lock, each writer waits only for the transactions ahead of it (a millisecond or so each).
  Other processes (workers) still meet the busy handler, but they write rarely.
- PostgreSQL uses row locks instead: claims use ``FOR UPDATE SKIP LOCKED`` (``db.skip_locked``), so any
  number of workers on any number of machines take different jobs without waiting on one another.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: audit.target (the key an admin created or revoked)

# Each step brings a database of the version before it up to the next; create_schema runs those it lacks.
MIGRATIONS = {2: ["ALTER TABLE audit ADD COLUMN target TEXT"]}


class DatabaseError(RuntimeError):
    """The database cannot be opened or reached; the message names the URL (password hidden)."""


def _redact(url: str) -> str:
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def sqlite_url(path: str | os.PathLike) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _tables(pk: str) -> list[str]:
    """DDL; ``pk`` is the auto-increment primary key spelling of the dialect."""
    return [
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS keys (
            seq {pk}, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL UNIQUE, hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION,
            quota_seconds_per_day DOUBLE PRECISION, rate_per_minute INTEGER, admin INTEGER NOT NULL DEFAULT 0)""",
        f"""CREATE TABLE IF NOT EXISTS jobs (
            seq {pk}, id TEXT NOT NULL UNIQUE, key_id TEXT NOT NULL, kind TEXT NOT NULL,
            status TEXT NOT NULL, progress INTEGER NOT NULL DEFAULT 0, model TEXT NOT NULL,
            prompt TEXT, seconds TEXT NOT NULL, size TEXT NOT NULL, params TEXT NOT NULL,
            cost_seconds DOUBLE PRECISION NOT NULL, remixed_from TEXT,
            created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION,
            completed_at DOUBLE PRECISION, expires_at DOUBLE PRECISION,
            error_code TEXT, error_message TEXT, note TEXT,
            lease_owner TEXT, lease_until DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT,
            claimed_at DOUBLE PRECISION,
            assets TEXT, content_hash TEXT, gen_seconds DOUBLE PRECISION,
            deleted_at DOUBLE PRECISION, assets_removed_at DOUBLE PRECISION,
            feedback_rating INTEGER, feedback_comment TEXT, feedback_at DOUBLE PRECISION)""",
        "CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_id, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq)",
        f"""CREATE TABLE IF NOT EXISTS audit (
            seq {pk}, at DOUBLE PRECISION NOT NULL, key_name TEXT, action TEXT NOT NULL,
            video_id TEXT, status INTEGER NOT NULL, ms DOUBLE PRECISION, target TEXT)""",
        "CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at)",  # the sweep's prune of old rows
        # Idempotency-Key headers: which job a key's request token queued (its own table, so a database made
        # before it needs no migration; pruned by the sweep after jobs.IDEMPOTENCY_SECONDS)
        """CREATE TABLE IF NOT EXISTS idempotency (
            key_id TEXT NOT NULL, token TEXT NOT NULL, video_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (key_id, token))""",
        "CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency (created_at)",
    ]


class _Tx:
    """Query helpers bound to one connection (inside or outside a transaction)."""

    def __init__(self, db: "Database", conn: Any):
        self.db, self.conn = db, conn

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        if self.db.dialect == "postgresql":
            sql = sql.replace("%", "%%").replace("?", "%s")
        cur = self.conn.cursor()
        cur.execute(sql, tuple(params))
        return cur

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._run(sql, params)
        rows = cur.fetchall()
        if self.db.dialect == "sqlite":
            return [dict(r) for r in rows]
        return list(rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        return self._run(sql, params).rowcount


class Database:
    """A SQLite file or a PostgreSQL database, with one connection per thread.

    Args:
        url: ``sqlite:///abs/path.db``, a bare file path, or ``postgresql://...`` (psycopg 3).
        create: create the tables if they are missing (idempotent; every process may do it).
    """

    def __init__(self, url: str | os.PathLike, *, create: bool = True):
        url = os.fspath(url)
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            try:
                import psycopg  # noqa: F401  (fail now with a clear message, not on first query)
            except ImportError:
                raise DatabaseError("PostgreSQL needs psycopg: pip install 'moviola[server]'") from None
            self.url = url
        else:
            scheme = url.split("://", 1)[0] if "://" in url else ""
            if scheme and scheme != "sqlite":
                raise DatabaseError(f"unknown database URL scheme {scheme + '://'!r}: use sqlite:///PATH, a file path "
                                    "or postgresql://...")
            self.dialect = "sqlite"
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
            if url.startswith("sqlite:///") and not path.startswith("/"):
                path = "/" + path
            self.path = Path(path)
            if not self.path.parent.is_dir():
                raise DatabaseError(f"{self.path.parent}: no such folder for the database")
            self.url = sqlite_url(self.path)
        self._local = threading.local()
        self._write_lock = threading.RLock()  # SQLite: this process's writers queue here (module doc)
        if create:
            self.create_schema()

    @property
    def skip_locked(self) -> str:
        """Suffix for a claim query: row locks skipped by other claimers (PostgreSQL only)."""
        return " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn
        import psycopg
        from psycopg.rows import dict_row

        try:
            return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=10)
        except psycopg.Error as e:
            raise DatabaseError(f"cannot connect to {_redact(self.url)}: {str(e).strip()}") from None

    def conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is not None and self.dialect == "postgresql" and c.closed:
            c = None
        if c is None:
            c = self._local.conn = self._connect()
        return c

    def close(self) -> None:
        """Close this thread's connection (the next query opens a new one)."""
        c = getattr(self._local, "conn", None)
        if c is not None:
            self._local.conn = None
            try:
                c.close()
            except Exception:
                pass

    # --- queries outside a transaction (each statement commits on its own) ----------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._retry(lambda: _Tx(self, self.conn()).query(sql, params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return self._retry(lambda: _Tx(self, self.conn()).one(sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._writer():
            return self._retry(lambda: _Tx(self, self.conn()).execute(sql, params))

    def _writer(self) -> contextlib.AbstractContextManager:
        return self._write_lock if self.dialect == "sqlite" else contextlib.nullcontext()

    def _retry(self, fn):
        """Run fn; on a dropped PostgreSQL connection reconnect once (a restarted database)."""
        try:
            return fn()
        except Exception as e:
            if self.dialect == "postgresql" and type(e).__module__.startswith("psycopg") \
                    and getattr(self._local, "conn", None) is not None and self._local.conn.closed:
                self._local.conn = None
                return fn()
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """A write transaction: all or nothing, serialised against other writers (see module doc)."""
        conn = self.conn()
        if self.dialect == "sqlite":
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield _Tx(self, conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        else:
            with conn.transaction():
                yield _Tx(self, conn)

    # --- schema ---------------------------------------------------------------------------------

    def create_schema(self) -> None:
        pk = ("INTEGER PRIMARY KEY AUTOINCREMENT" if self.dialect == "sqlite"
              else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
        for attempt in range(3):
            try:
                with self.transaction() as tx:
                    if self.dialect == "postgresql":
                        # Two processes creating the schema at once would race on the catalog.
                        tx.execute("SELECT pg_advisory_xact_lock(7270)")
                    for ddl in _tables(pk):
                        tx.execute(ddl)
                    row = tx.one("SELECT value FROM meta WHERE name = 'schema_version'")
                    if row is None:
                        tx.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                                   (str(SCHEMA_VERSION),))
                    elif int(row["value"]) > SCHEMA_VERSION:
                        raise DatabaseError(f"{_redact(self.url)} has schema version {row['value']}; this "
                                            f"Moviola knows up to {SCHEMA_VERSION} (upgrade Moviola)")
                    else:  # an older database: its missing steps, in the same transaction
                        for version in range(int(row["value"]) + 1, SCHEMA_VERSION + 1):
                            for ddl in MIGRATIONS[version]:
                                tx.execute(ddl)
                        tx.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))
                return
            except sqlite3.OperationalError as e:
                if attempt == 2:
                    raise DatabaseError(f"cannot open {self.url}: {e}") from None
                time.sleep(0.2)
