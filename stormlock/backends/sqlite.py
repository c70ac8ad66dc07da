"""Embedded SQLite backend: the zero-configuration default.

One file shared by every process on the machine (WAL mode). Acquire is a
single upsert that only takes over a free or expired row, so it is atomic
across processes. Rows are never deleted, which keeps the fencing counter
through release and expiry.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..backend import ONE_TRIP, Capabilities, Clock, Finding, Lease, LeaseBackend
from ..errors import BackendUnavailable, ConfigError, StormlockError, detail
from ..paths import default_state_dir

# What the statement that changed a row asks its history trigger to record
# (all NULL when history is off): set by every changing statement, so a row
# never carries a stale request.
# Columns added since the first release: a database from before gets them.
_ADDED_COLUMNS = {
    "members": "TEXT",  # a set's lease: every member, JSON, on each member's row
}
_STORY_COLUMNS = {
    "h_event": "TEXT",
    "h_actor": "TEXT",
    "h_source": "TEXT",
    "h_at": "REAL",
    "h_keep": "REAL",
}

# The event row a trigger writes: in the statement of the change itself.
_EVENT_ROW = """
INSERT INTO stormlock_history
    (at, resource, event, principal, actor, note, fence, source, until)
VALUES (NEW.h_at, NEW.resource, NEW.h_event, NEW.principal,
        coalesce(NEW.h_actor, NEW.principal), NEW.note, NEW.fence, NEW.h_source,
        CASE WHEN NEW.lease_id IS NULL THEN NULL ELSE NEW.expires END);
DELETE FROM stormlock_history
WHERE NEW.h_event = 'acquired' AND at < NEW.h_at - NEW.h_keep;
"""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS stormlock_leases (
        resource  TEXT PRIMARY KEY,
        lease_id  TEXT,
        principal TEXT,
        created   REAL,
        expires   REAL,
        note      TEXT,
        fence     INTEGER NOT NULL,
        members   TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS stormlock_leases_expires
        ON stormlock_leases (expires) WHERE lease_id IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS stormlock_history (
        at        REAL NOT NULL,
        resource  TEXT NOT NULL,
        event     TEXT NOT NULL,
        principal TEXT,
        actor     TEXT,
        note      TEXT,
        fence     INTEGER,
        source    TEXT,
        until     REAL
    )""",
    """CREATE INDEX IF NOT EXISTS stormlock_history_resource
        ON stormlock_history (resource, at)""",
    """CREATE INDEX IF NOT EXISTS stormlock_history_at ON stormlock_history (at)""",
    f"""CREATE TRIGGER IF NOT EXISTS stormlock_history_on_insert
        AFTER INSERT ON stormlock_leases WHEN NEW.h_event IS NOT NULL
        BEGIN {_EVENT_ROW} END""",
    f"""CREATE TRIGGER IF NOT EXISTS stormlock_history_on_update
        AFTER UPDATE ON stormlock_leases WHEN NEW.h_event IS NOT NULL
        BEGIN {_EVENT_ROW} END""",
)


# The fence is the counter plus one, or the clock in microseconds if that is
# larger: a database file restored from an old copy never hands out a fence
# below one it gave before. One statement, its history event included.
_ACQUIRE = """
INSERT INTO stormlock_leases
    (resource, lease_id, principal, created, expires, note, fence, members,
     h_event, h_actor, h_source, h_at, h_keep)
VALUES (:resource, :lease_id, :principal, :now, :expires, :note, :clock_fence,
        :members, :h_event, :h_actor, :h_source, :now, :h_keep)
ON CONFLICT (resource) DO UPDATE SET
    (lease_id, principal, created, expires, note, fence, members,
     h_event, h_actor, h_source, h_at, h_keep) = (
        excluded.lease_id, excluded.principal, excluded.created, excluded.expires,
        excluded.note, max(stormlock_leases.fence + 1, :clock_fence),
        excluded.members, excluded.h_event, excluded.h_actor, excluded.h_source,
        excluded.h_at, excluded.h_keep
    )
WHERE stormlock_leases.lease_id IS NULL OR stormlock_leases.expires <= :now
RETURNING fence
"""

_RENEW = """
UPDATE stormlock_leases SET expires = :expires,
    h_event = :h_event, h_actor = :h_actor, h_source = :h_source,
    h_at = :now, h_keep = :h_keep
WHERE resource = :resource AND lease_id = :lease_id AND expires > :now
RETURNING resource, principal, created, lease_id, expires, note, fence, members
"""

_RELEASE = """
UPDATE stormlock_leases SET lease_id = NULL,
    h_event = :h_event, h_actor = :h_actor, h_source = :h_source,
    h_at = :now, h_keep = :h_keep
WHERE resource = :resource AND lease_id = :lease_id AND expires > :now
RETURNING fence
"""

_HISTORY_OF = """
SELECT at, resource, event, principal, actor, note, fence, source, until
FROM stormlock_history WHERE resource = :resource AND at >= :since
ORDER BY at DESC, rowid DESC LIMIT :limit
"""
_HISTORY_ALL = """
SELECT at, resource, event, principal, actor, note, fence, source, until
FROM stormlock_history WHERE at >= :since ORDER BY at DESC, rowid DESC LIMIT :limit
"""

_CURRENT = """
SELECT resource, principal, created, lease_id, expires, note, fence, members
FROM stormlock_leases
WHERE resource = :resource AND lease_id IS NOT NULL AND expires > :now
"""

_IS_CURRENT = """
SELECT 1 FROM stormlock_leases
WHERE resource = :resource AND lease_id = :lease_id AND expires > :now
"""

_LIST = """
SELECT resource, principal, created, lease_id, expires, note, fence, members
FROM stormlock_leases WHERE lease_id IS NOT NULL AND expires > :now
"""

_PREFIX = """
SELECT resource, principal, created, lease_id, expires, note, fence, members
FROM stormlock_leases WHERE resource >= :start AND resource < :end
AND lease_id IS NOT NULL AND expires > :now
"""

_EXPIRING = """
SELECT resource, principal, created, lease_id, expires, note, fence, members
FROM stormlock_leases WHERE lease_id IS NOT NULL
AND expires > :now AND expires <= :before ORDER BY expires
"""


_T = TypeVar("_T")


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


if TYPE_CHECKING:
    from ..history import Event


def _event(row: sqlite3.Row) -> Event:
    from ..history import from_row

    return from_row(row, _moment)


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        principal=row["principal"],
        created=_moment(row["created"]),
        id=row["lease_id"],
        resource=row["resource"],
        expires=_moment(row["expires"]),
        note=row["note"],
        fence=row["fence"],
        members=tuple(json.loads(row["members"])) if row["members"] else (),
    )


# Where fences come from, as the capability table says.
_FENCES = "per-row counter or the clock (µs), whichever is larger"


class SQLite(LeaseBackend):
    """Leases in a local SQLite file.

    Options: `path` (default `$XDG_STATE_HOME/stormlock/locks.db`) and
    `timeout`, the seconds to wait for another process's write.
    """

    def __init__(self, path: str | None = None, timeout: float = 5.0) -> None:
        self.implicit = not path
        """The default file: private to this user, on this host."""
        self.path = (
            Path(path).expanduser() if path else default_state_dir() / "locks.db"
        )
        self._set_timeout(timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._ready = False

    capabilities = Capabilities(
        Clock.HOST,
        timedelta(seconds=1),
        _FENCES,
        ONE_TRIP,
        history="same statement, by trigger",
        sets="one transaction",
    )

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            if self.implicit:
                self._make_private()
            else:
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
            raise self._permission_problem() or BackendUnavailable(
                f"cannot open SQLite database {str(self.path)!r}: {exc}; "
                "check the path and its permissions ([backend.sqlite] path)"
            ) from None
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _make_private(self) -> None:
        """The default store holds lease ids: only its user may read it."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, mode in ((directory, 0o700), (self.path, 0o600)):
            if path == self.path and not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
                path.chmod(mode)  # made by an older version, 0644

    def _permission_problem(self) -> ConfigError | None:
        """What this user may not do to the database file, if that is why it
        failed: a config problem, not an outage."""
        path = self.path
        directory = next((p for p in (path, *path.parents) if p.exists()), path)
        if directory != path and not directory.is_dir():
            return ConfigError(
                f"{str(directory)!r} is not a directory, so the database cannot be "
                "created below it; fix [backend.sqlite] path"
            )
        if directory == path:
            wanted, what = os.R_OK | os.W_OK, "read and write"
        else:
            wanted, what = os.W_OK | os.X_OK, "create files in"
        if os.access(directory, wanted):
            if directory != path or os.access(path.parent, os.W_OK | os.X_OK):
                return None
            directory, what = path.parent, "create files in (for the WAL)"
        return ConfigError(
            f"permission denied: this user may not {what} {str(directory)!r}; "
            "fix its permissions or set [backend.sqlite] path to a file you own"
        )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL and creating tables can fail with "locked" at once
        # (SQLite skips the busy handler to avoid deadlocks): retry until timeout.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(_SCHEMA[0])
                    # A database from before history: add the story columns.
                    have = {
                        row[1]
                        for row in conn.execute("PRAGMA table_info(stormlock_leases)")
                    }
                    for column, kind in {**_ADDED_COLUMNS, **_STORY_COLUMNS}.items():
                        if column not in have:
                            add = f"ADD COLUMN {column} {kind}"
                            conn.execute(f"ALTER TABLE stormlock_leases {add}")
                    for statement in _SCHEMA[1:]:
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
                # The schema is created (or brought up to date) on first use,
                # not checked on every start.
                if "no such table" not in str(exc) and "no such column" not in str(exc):
                    raise
                self._ensure_schema(conn)
                return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise self._permission_problem() or BackendUnavailable(
                f"SQLite database {str(self.path)!r} failed: {detail(exc)}; "
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

    client_errors = (sqlite3.Error,)

    def _failure(self, error: Exception) -> StormlockError:
        return self._permission_problem() or BackendUnavailable(
            f"SQLite database {str(self.path)!r} failed: {detail(error)}; "
            "check the path and its permissions ([backend.sqlite] path)"
        )

    def doctor(self) -> list[Finding]:
        with self._operation():
            conn = self._connect()
            self._ensure_schema(conn)
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":
            return [
                Finding(
                    "warning",
                    f"sqlite: {self.path} is in {mode} mode, not WAL; readers "
                    "may wait on writers",
                )
            ]
        return [
            Finding(
                "ok",
                f"sqlite: {self.path} in WAL mode; a process crash loses nothing, a "
                "power loss can undo the last acquires (one machine only)",
            )
        ]

    def _story_params(
        self, resource: str, event: str | None, quiet: bool = False
    ) -> dict[str, object]:
        """What the history trigger records (all None: nothing); `quiet`: a
        set's member after the first (see Story.quiet)."""
        told = self._story(resource)
        if told is not None and quiet:
            told = told.quiet()
        if told is None:
            return {"h_event": None, "h_actor": None, "h_source": None, "h_keep": None}
        return {
            "h_event": event or told.released_as(),
            "h_actor": told.actor,
            "h_source": told.source,
            "h_keep": told.retention.total_seconds(),
        }

    def _acquire(
        self, resource: str, principal: str, ttl: timedelta, note: str | None
    ) -> tuple[bool, Lease | None]:
        now = time.time()
        lease = Lease(
            principal,
            _moment(now),
            self.new_id(),
            resource,
            _moment(now + ttl.total_seconds()),
            note,
        )
        params: dict[str, object] = {
            "resource": resource,
            "lease_id": lease.id,
            "principal": principal,
            "now": now,
            "expires": now + ttl.total_seconds(),
            "note": note,
            "clock_fence": int(now * 1_000_000),
            "members": None,
            **self._story_params(resource, "acquired"),
        }
        rows = self._run(_ACQUIRE, params)
        if rows:
            return True, lease._replace(fence=rows[0]["fence"])
        return False, None

    def _renew(self, resource: str, lease_id: str, ttl: timedelta) -> Lease | None:
        now = time.time()
        params: dict[str, object] = {
            "resource": resource,
            "lease_id": lease_id,
            "now": now,
            "expires": now + ttl.total_seconds(),
            **self._story_params(resource, "renewed"),
        }
        rows = self._run(_RENEW, params)
        return _lease(rows[0]) if rows else None

    def _release(self, resource: str, lease_id: str) -> bool:
        params: dict[str, object] = {
            "resource": resource,
            "lease_id": lease_id,
            "now": time.time(),
            **self._story_params(resource, None),
        }
        return bool(self._run(_RELEASE, params))

    def _transaction(self, fn: Callable[[sqlite3.Connection], tuple[bool, _T]]) -> _T:
        """Run `fn` in one write transaction: committed if it says so (its
        first value), else rolled back, so that nothing of it is kept."""
        conn = self._connect()
        self._ensure_schema(conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                keep, result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT" if keep else "ROLLBACK")
            return result
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self._permission_problem() or BackendUnavailable(
                f"SQLite database {str(self.path)!r} failed: {detail(exc)}; "
                "retry, or raise [backend.sqlite] timeout"
            ) from None

    def _acquire_set(
        self,
        resources: Sequence[str],
        lease_id: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool, list[Lease]]:
        now = time.time()
        members = json.dumps(list(resources))

        def take(conn: sqlite3.Connection) -> tuple[bool, tuple[bool, list[Lease]]]:
            taken = []
            for n, resource in enumerate(resources):
                params: dict[str, object] = {
                    "resource": resource,
                    "lease_id": lease_id,
                    "principal": principal,
                    "now": now,
                    "expires": now + ttl.total_seconds(),
                    "note": note,
                    "clock_fence": int(now * 1_000_000),
                    "members": members,
                    **self._story_params(resource, "acquired", n > 0),
                }
                row = conn.execute(_ACQUIRE, params).fetchone()
                if row is None:
                    held = conn.execute(_CURRENT, {"resource": resource, "now": now})
                    return False, (False, [_lease(r) for r in held.fetchall()])
                lease = Lease(
                    principal,
                    _moment(now),
                    lease_id,
                    resource,
                    _moment(now + ttl.total_seconds()),
                    note,
                    row["fence"],
                    tuple(resources),
                )
                taken.append(lease)
            return True, (True, taken)

        return self._transaction(take)

    def _renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease] | None:
        now = time.time()

        def renew(conn: sqlite3.Connection) -> tuple[bool, list[Lease] | None]:
            renewed = []
            for n, resource in enumerate(resources):
                params: dict[str, object] = {
                    "resource": resource,
                    "lease_id": lease_id,
                    "now": now,
                    "expires": now + ttl.total_seconds(),
                    **self._story_params(resource, "renewed", n > 0),
                }
                row = conn.execute(_RENEW, params).fetchone()
                if row is None:
                    return False, None
                renewed.append(_lease(row))
            return True, renewed

        return self._transaction(renew)

    def _release_set(self, resources: Sequence[str], lease_id: str) -> bool:
        now = time.time()

        def release(conn: sqlite3.Connection) -> tuple[bool, bool]:
            released = False
            for n, resource in enumerate(resources):
                params: dict[str, object] = {
                    "resource": resource,
                    "lease_id": lease_id,
                    "now": now,
                    **self._story_params(resource, None, n > 0),
                }
                released |= conn.execute(_RELEASE, params).fetchone() is not None
            return True, released

        return self._transaction(release)

    def _history(
        self, resource: str | None, since: datetime | None, limit: int | None
    ) -> list[Event]:
        params: dict[str, object] = {
            "resource": resource,
            "since": since.timestamp() if since else 0,
            "limit": -1 if limit is None else limit,
        }
        rows = self._run(_HISTORY_OF if resource is not None else _HISTORY_ALL, params)
        return [_event(row) for row in rows]

    def _current(self, resource: str) -> Lease | None:
        rows = self._run(
            _CURRENT,
            {"resource": resource, "now": time.time()},
        )
        return _lease(rows[0]) if rows else None

    def _is_current(self, resource: str, lease_id: str) -> bool:
        rows = self._run(
            _IS_CURRENT,
            {"resource": resource, "lease_id": lease_id, "now": time.time()},
        )
        return bool(rows)

    def _list_leases(self) -> list[Lease]:
        rows = self._run(
            _LIST,
            {"now": time.time()},
        )
        return [_lease(row) for row in rows]

    def _list_prefix(self, prefix: str) -> list[Lease]:
        rows = self._run(
            _PREFIX,
            {"start": prefix, "end": prefix + "\U0010ffff", "now": time.time()},
        )
        return [_lease(row) for row in rows]

    def _list_expiring(self, before: datetime) -> list[Lease]:
        rows = self._run(
            _EXPIRING,
            {"now": time.time(), "before": before.timestamp()},
        )
        return [_lease(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


BACKEND = SQLite
