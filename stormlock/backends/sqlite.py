"""Embedded SQLite backend: the zero-configuration default.

One file shared by every process on the machine (WAL mode). Acquire is a
single upsert that only takes over a free or expired row, so it is atomic
across processes. Rows are never deleted, which keeps the fencing counter
through release and expiry.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..backend import (
    Lease,
    LeaseBackend,
    LockExpiredException,
    LockHeldException,
    canonical_lease_id,
    new_lease_id,
    trips,
)
from ..errors import BackendUnavailable

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS stormlock_leases (
        resource  TEXT PRIMARY KEY,
        lease_id  TEXT,
        principal TEXT,
        created   REAL,
        expires   REAL,
        note      TEXT,
        fence     INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS stormlock_leases_expires
        ON stormlock_leases (expires) WHERE lease_id IS NOT NULL""",
)

_ACQUIRE = """
INSERT INTO stormlock_leases
    (resource, lease_id, principal, created, expires, note, fence)
VALUES (:resource, :lease_id, :principal, :now, :expires, :note, 1)
ON CONFLICT (resource) DO UPDATE SET
    lease_id = excluded.lease_id,
    principal = excluded.principal,
    created = excluded.created,
    expires = excluded.expires,
    note = excluded.note,
    fence = stormlock_leases.fence + 1
WHERE stormlock_leases.lease_id IS NULL OR stormlock_leases.expires <= :now
RETURNING fence
"""


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        principal=row["principal"],
        created=_moment(row["created"]),
        id=row["lease_id"],
        resource=row["resource"],
        expires=_moment(row["expires"]),
        note=row["note"],
        fence=row["fence"],
    )


class SQLite(LeaseBackend):
    """Leases in a local SQLite file.

    Options: `path` (default `$XDG_STATE_HOME/stormlock/locks.db`) and
    `timeout`, the seconds to wait for another process's write.
    """

    clock = "host"
    fence_source = "per-row counter, rows kept on release"
    round_trips = trips(acquire=1, renew=1, release=1, current=1, is_current=1, list=1)

    def __init__(self, path: str | None = None, timeout: float = 5.0) -> None:
        from ..config import default_state_dir

        self.path = (
            Path(path).expanduser() if path else default_state_dir() / "locks.db"
        )
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,  # autocommit: each statement is atomic
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
        except (sqlite3.Error, OSError) as exc:
            raise BackendUnavailable(
                f"cannot open SQLite database {str(self.path)!r}: {exc}; "
                "check the path and its permissions ([backend.sqlite] path)"
            ) from None
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL and creating tables can fail with "locked" at once
        # (SQLite skips the busy handler to avoid deadlocks): retry until timeout.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                finally:
                    conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if not self._ready:
                self._create_schema(conn)
                self._ready = True

    def _run(self, sql: str, params: dict[str, object]) -> list[sqlite3.Row]:
        conn = self._connect()
        try:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                # The schema is created on first use, not checked on every start.
                if "no such table" not in str(exc):
                    raise
                self._ensure_schema(conn)
                return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(
                f"SQLite database {str(self.path)!r} failed: {exc}; "
                "retry, or raise [backend.sqlite] timeout"
            ) from None

    def setup(self) -> list[str]:
        try:
            self._ensure_schema(self._connect())
        except sqlite3.Error as exc:
            raise BackendUnavailable(
                f"cannot set up {str(self.path)!r}: {exc}"
            ) from None
        return [f"sqlite: database ready at {self.path}"]

    def acquire_lease(
        self, resource: str, principal: str, ttl: timedelta, note: str | None = None
    ) -> Lease:
        for _ in range(3):
            now = time.time()
            lease_id = new_lease_id()
            params: dict[str, object] = {
                "resource": resource,
                "lease_id": lease_id,
                "principal": principal,
                "now": now,
                "expires": now + ttl.total_seconds(),
                "note": note,
            }
            rows = self._run(_ACQUIRE, params)
            if rows:
                return Lease(
                    principal,
                    _moment(now),
                    lease_id,
                    resource,
                    _moment(now + ttl.total_seconds()),
                    note,
                    rows[0]["fence"],
                )
            holder = self.current(resource)
            if holder is not None:
                raise LockHeldException(resource, holder)
            # Released between the two statements: try again.
        raise LockHeldException(resource, None)

    def renew_lease(self, resource: str, lease_id: str, ttl: timedelta) -> Lease:
        lease_id_ = canonical_lease_id(lease_id)
        if lease_id_ is None:
            raise LockExpiredException(resource)
        now = time.time()
        rows = self._run(
            "UPDATE stormlock_leases SET expires = :expires "
            "WHERE resource = :resource AND lease_id = :lease_id AND expires > :now "
            "RETURNING resource, principal, created, lease_id, expires, note, fence",
            {
                "resource": resource,
                "lease_id": lease_id_,
                "now": now,
                "expires": now + ttl.total_seconds(),
            },
        )
        if not rows:
            raise LockExpiredException(resource)
        return _lease(rows[0])

    def release_lease(self, resource: str, lease_id: str) -> bool:
        lease_id_ = canonical_lease_id(lease_id)
        if lease_id_ is None:
            return False
        rows = self._run(
            "UPDATE stormlock_leases SET lease_id = NULL "
            "WHERE resource = :resource AND lease_id = :lease_id AND expires > :now "
            "RETURNING fence",
            {"resource": resource, "lease_id": lease_id_, "now": time.time()},
        )
        return bool(rows)

    def current(self, resource: str) -> Lease | None:
        rows = self._run(
            "SELECT resource, principal, created, lease_id, expires, note, fence "
            "FROM stormlock_leases WHERE resource = :resource "
            "AND lease_id IS NOT NULL AND expires > :now",
            {"resource": resource, "now": time.time()},
        )
        return _lease(rows[0]) if rows else None

    def is_current(self, resource: str, lease_id: str) -> bool:
        lease_id_ = canonical_lease_id(lease_id)
        if lease_id_ is None:
            return False
        rows = self._run(
            "SELECT 1 FROM stormlock_leases WHERE resource = :resource "
            "AND lease_id = :lease_id AND expires > :now",
            {"resource": resource, "lease_id": lease_id_, "now": time.time()},
        )
        return bool(rows)

    def list_leases(self) -> list[Lease]:
        rows = self._run(
            "SELECT resource, principal, created, lease_id, expires, note, fence "
            "FROM stormlock_leases "
            "WHERE lease_id IS NOT NULL AND expires > :now ORDER BY resource",
            {"now": time.time()},
        )
        return [_lease(row) for row in rows]

    def list_prefix(self, prefix: str) -> list[Lease]:
        rows = self._run(
            "SELECT resource, principal, created, lease_id, expires, note, fence "
            "FROM stormlock_leases WHERE resource >= :start AND resource < :end "
            "AND lease_id IS NOT NULL AND expires > :now ORDER BY resource",
            {"start": prefix, "end": prefix + "\U0010ffff", "now": time.time()},
        )
        return [_lease(row) for row in rows]

    def list_expiring(self, before: datetime) -> list[Lease]:
        rows = self._run(
            "SELECT resource, principal, created, lease_id, expires, note, fence "
            "FROM stormlock_leases WHERE lease_id IS NOT NULL "
            "AND expires > :now AND expires <= :before ORDER BY expires",
            {"now": time.time(), "before": before.timestamp()},
        )
        return [_lease(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
