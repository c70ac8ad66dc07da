"""PostgreSQL backend.

One row per resource in a `timestamptz` table; expiry is decided by the
server's `clock_timestamp()`, so clients in any time zone (or with skewed
clocks) agree. Acquire is one INSERT ... ON CONFLICT DO UPDATE that only takes
over a released or expired row, which PostgreSQL makes atomic. Rows are kept
on release, so the fence counter survives release and expiry.

The table is created on first use, or up front with `stormlock setup`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.abc import PQGen
from psycopg.connection import _WAIT_INTERVAL
from psycopg.errors import _WaitTimeout
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ..backend import ONE_TRIP, Capabilities, Clock, Finding, Lease, LeaseBackend
from ..budget import budget
from ..errors import BackendUnavailable, ConfigError, InvalidInput, StormlockError
from ..history import ACQUIRED, CHANNEL_MARK, RENEWED, Event, from_row
from ..names import LINE_MARK

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_T = TypeVar("_T")

_CREATE = (
    """CREATE TABLE IF NOT EXISTS {table} (
        resource  text COLLATE "C" PRIMARY KEY,
        lease_id  uuid,
        principal text,
        created   timestamptz,
        expires   timestamptz,
        note      text,
        fence     bigint NOT NULL,
        members   text[]
    )""",
    # A table from before sets: every member of a set's lease, on each row.
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS members text[]",
    "CREATE INDEX IF NOT EXISTS {index} ON {table} (expires) "
    "WHERE lease_id IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS {history} (
        id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at        timestamptz NOT NULL,
        resource  text COLLATE "C" NOT NULL,
        event     text NOT NULL,
        principal text,
        actor     text,
        note      text,
        fence     bigint,
        source    text,
        until     timestamptz
    )""",
    # (.., at, id): the last N events are the first N of a backward index
    # scan, ties in the order they were written.
    "CREATE INDEX IF NOT EXISTS {history_resource} ON {history} (resource, at, id)",
    "CREATE INDEX IF NOT EXISTS {history_at} ON {history} (at, id)",
)

# Settings that make a committed acquire durable, and how to fix each.
_DURABILITY = {
    "synchronous_commit": "set synchronous_commit = on",
    "fsync": "set fsync = on",
    "full_page_writes": "set full_page_writes = on",
}

_COLUMNS = "resource, principal, created, lease_id, expires, note, fence, members"
# The server clock in microseconds: a fence never falls below it, so a table
# restored from an old backup still never hands out a fence it gave before.
_CLOCK_FENCE = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"

# One round trip: take the row if free, else return the holder. The holder
# query sees the statement's snapshot, so a row inserted by a concurrent
# winner can be invisible; then the caller asks once more.
_ACQUIRE = """
WITH taken AS (
    INSERT INTO {table} AS l
        (resource, lease_id, principal, created, expires, note, fence, members)
    VALUES (%(resource)s, %(lease_id)s, %(principal)s, clock_timestamp(),
            clock_timestamp() + make_interval(secs => %(ttl)s), %(note)s,
            {clock_fence}, NULL)
    ON CONFLICT (resource) DO UPDATE SET
        (lease_id, principal, created, expires, note, fence, members) = (
            excluded.lease_id, excluded.principal, excluded.created,
            excluded.expires, excluded.note, greatest(l.fence + 1, {clock_fence}),
            NULL
        )
    WHERE l.lease_id IS NULL OR l.expires <= clock_timestamp()
    RETURNING {columns}
)
SELECT true AS acquired, {columns} FROM taken
UNION ALL
SELECT false, {columns} FROM {table}
WHERE resource = %(resource)s AND NOT EXISTS (SELECT 1 FROM taken)
"""

# With history on, each change writes its event in the same statement (a
# data-modifying CTE): no extra round trip, and no event without the change.
_LOG = """
INSERT INTO {history} (at, resource, event, principal, actor, note, fence, source,
                       until)
SELECT clock_timestamp(), resource, %(event)s, principal,
       coalesce(%(actor)s, principal), note, fence, %(source)s, {until}
FROM {changed}
"""

# Old events go a hundred at a time, with one acquire in TRIM_EVERY.
_TRIM = """
DELETE FROM {history} WHERE id IN (
    SELECT id FROM {history}
    WHERE %(trim)s AND at < clock_timestamp() - make_interval(secs => %(keep)s)
    LIMIT 100
)
"""
TRIM_EVERY = 32

_ACQUIRE_LOGGED = _ACQUIRE.replace(
    "\nSELECT true", ",\nlogged AS (__LOG__),\ntrimmed AS (__TRIM__)\nSELECT true", 1
)

_RENEW_LOGGED = """
WITH renewed AS (
    UPDATE {table} SET expires = clock_timestamp() + make_interval(secs => %(ttl)s)
    WHERE resource = %(resource)s AND lease_id = %(lease_id)s
      AND expires > clock_timestamp()
    RETURNING {columns}
),
logged AS (__LOG__)
SELECT {columns} FROM renewed
"""

_RELEASE_LOGGED = """
WITH released AS (
    UPDATE {table} SET lease_id = NULL
    WHERE resource = %(resource)s AND lease_id = %(lease_id)s
      AND expires > clock_timestamp()
    RETURNING resource, principal, note, fence
),
logged AS (__LOG__)
SELECT fence, {notify} FROM released
"""

# Sets: one statement takes every member, in the array's (sorted) order, so
# two overlapping sets lock their rows in one order and never deadlock. The
# caller rolls back unless it took them all.
_ACQUIRE_SET = """
WITH taken AS (
    INSERT INTO {table} AS l
        (resource, lease_id, principal, created, expires, note, fence, members)
    SELECT m.resource, %(lease_id)s, %(principal)s, now.t,
           now.t + make_interval(secs => %(ttl)s), %(note)s, {clock_fence},
           %(members)s::text[]
    FROM unnest(%(members)s::text[]) WITH ORDINALITY AS m(resource, i),
         (SELECT clock_timestamp() AS t) AS now
    ORDER BY m.i
    ON CONFLICT (resource) DO UPDATE SET
        (lease_id, principal, created, expires, note, fence, members) = (
            excluded.lease_id, excluded.principal, excluded.created,
            excluded.expires, excluded.note, greatest(l.fence + 1, {clock_fence}),
            excluded.members
        )
    WHERE l.lease_id IS NULL OR l.expires <= excluded.created
    RETURNING {columns}
)__LOGGED__
SELECT {columns} FROM taken
"""

# The members' rows are locked in sorted order first, for the same reason.
_RENEW_SET = """
WITH locked AS MATERIALIZED (
    SELECT resource FROM {table} WHERE resource = ANY(%(members)s::text[])
    ORDER BY resource FOR UPDATE
),
renewed AS (
    UPDATE {table} SET expires = clock_timestamp() + make_interval(secs => %(ttl)s)
    WHERE resource IN (SELECT resource FROM locked) AND lease_id = %(lease_id)s
      AND expires > clock_timestamp()
    RETURNING {columns}
)__LOGGED__
SELECT {columns} FROM renewed
"""

_RELEASE_SET = """
WITH locked AS MATERIALIZED (
    SELECT resource FROM {table} WHERE resource = ANY(%(members)s::text[])
    ORDER BY resource FOR UPDATE
),
released AS (
    UPDATE {table} SET lease_id = NULL
    WHERE resource IN (SELECT resource FROM locked) AND lease_id = %(lease_id)s
      AND expires > clock_timestamp()
    RETURNING resource, principal, note, fence
)__LOGGED__
SELECT fence, {notify} FROM released
"""

_HELD_SET = """
SELECT {columns} FROM {table}
WHERE resource = ANY(%(members)s::text[]) AND lease_id IS NOT NULL
  AND expires > clock_timestamp()
"""


def _set_statement(statement: str, changed: str, until: str, log: bool) -> str:
    if not log:
        return statement.replace("__LOGGED__", "")
    logged = ",\nlogged AS (__LOG__),\ntrimmed AS (__TRIM__)"
    text = _logged(statement.replace("__LOGGED__", logged), changed, until)
    # The channel goes with the first member's event only (Story.quiet).
    quiet = "CASE WHEN resource = %(first)s THEN %(source)s ELSE %(quiet)s END"
    return text.replace("%(source)s", quiet)


_HISTORY_OF = """
SELECT at, resource, event, principal, actor, note, fence, source, until
FROM {history} WHERE resource = %(resource)s AND at >= %(since)s
ORDER BY at DESC, id DESC LIMIT %(limit)s
"""
_HISTORY_ALL = """
SELECT at, resource, event, principal, actor, note, fence, source, until
FROM {history} WHERE at >= %(since)s ORDER BY at DESC, id DESC LIMIT %(limit)s
"""


def _logged(statement: str, changed: str, until: str) -> str:
    log = _LOG.replace("{changed}", changed).replace("{until}", until)
    return statement.replace("__LOG__", log).replace("__TRIM__", _TRIM)


_RENEW = """
UPDATE {table} SET expires = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE resource = %(resource)s AND lease_id = %(lease_id)s
  AND expires > clock_timestamp()
RETURNING {columns}
"""

_RELEASE = """
WITH released AS (
    UPDATE {table} SET lease_id = NULL
    WHERE resource = %(resource)s AND lease_id = %(lease_id)s
      AND expires > clock_timestamp()
    RETURNING resource, fence
)
SELECT fence, {notify} FROM released
"""

# A release wakes the first in the resource's line (stormlock/line.py) where
# the line's mark says someone waits: NOTIFY serialises commits, so it is
# not paid by releases nobody waits for.
_NOTIFY = """
CASE WHEN EXISTS (
    SELECT 1 FROM {table} AS mark
    WHERE mark.resource = {lined} || released.resource
      AND mark.lease_id IS NOT NULL AND mark.expires > clock_timestamp()
) THEN pg_notify({freed}, released.resource) END"""

_CURRENT = """
SELECT {columns} FROM {table}
WHERE resource = %(resource)s AND lease_id IS NOT NULL
  AND expires > clock_timestamp()
"""

_CURRENT_MANY = """
SELECT {columns} FROM {table}
WHERE resource = ANY(%(resources)s) AND lease_id IS NOT NULL
  AND expires > clock_timestamp()
"""

_IS_CURRENT = """
SELECT 1 FROM {table}
WHERE resource = %(resource)s AND lease_id = %(lease_id)s
  AND expires > clock_timestamp()
"""

_PREFIX = """
SELECT {columns} FROM {table}
WHERE resource >= %(start)s AND resource < %(end)s
  AND lease_id IS NOT NULL AND expires > clock_timestamp()
ORDER BY resource
"""

_EXPIRING = """
SELECT {columns} FROM {table}
WHERE lease_id IS NOT NULL AND expires > clock_timestamp() AND expires <= %(before)s
ORDER BY expires
"""

_LIST = """
SELECT {columns} FROM {table}
WHERE lease_id IS NOT NULL AND expires > clock_timestamp()
ORDER BY resource
"""


def _event(row: dict[str, Any]) -> Event:
    return from_row(row, lambda moment: moment)  # psycopg gives datetimes


def _lease(row: dict[str, Any]) -> Lease:
    return Lease(
        principal=row["principal"],
        created=row["created"],
        id=str(row["lease_id"]),
        resource=row["resource"],
        expires=row["expires"],
        note=row["note"],
        fence=row["fence"],
        members=tuple(row.get("members") or ()),
    )


def _plain_identifier(table: str) -> str:
    if not _IDENTIFIER.match(table):
        raise ConfigError(
            f"[backend.postgresql] table {table!r} is not a plain SQL identifier; "
            "use letters, digits and underscores"
        )
    return table


class _BoundedConnection(psycopg.Connection[Any]):
    """A connection whose every wait on the server ends with the budget.

    libpq has no read timeout: without this, a server that stops answering
    mid-connection (a partition, a frozen host) blocks a query for ever.
    """

    def wait(
        self,
        gen: PQGen[_T],
        interval: float = _WAIT_INTERVAL,
        timeout: float | None = None,
    ) -> _T:
        left = LeaseBackend.time_left()
        if left is None:  # no budget (a watch's own timed wait): psycopg's
            return super().wait(gen, interval, timeout)
        timeout = max(0.0, left) if timeout is None else min(timeout, left)
        try:
            return super().wait(gen, interval, timeout)
        except _WaitTimeout:
            self.close()  # a query is in flight: the connection is unusable
            raise LeaseBackend.OutOfTime from None


# Where fences come from, as the capability table says.
_FENCES = "per-row counter or the server clock (µs), whichever is larger"


class Postgresql(LeaseBackend):
    """Leases in a PostgreSQL table.

    Options: `connection` (a libpq connection string or URL), `table`
    (default `stormlock_leases`), `timeout` (seconds that bound every
    operation: the wait for a pooled connection and every read; default 5),
    `pool_size` (default 10).
    """

    def __init__(
        self,
        connection: str = "",
        table: str = "stormlock_leases",
        timeout: float = 5.0,
        pool_size: int = 10,
    ) -> None:
        self.table = _plain_identifier(table)
        self._set_timeout(timeout)
        # A release NOTIFYs here (the payload is the resource), so the first
        # in its line takes it at once instead of at its next poll.
        self.freed_channel = f"{self.table}_freed"[:63]
        self._connection = connection
        names = {
            "table": sql.Identifier(table),
            "index": sql.Identifier(f"{table}_expires"),
            "history": sql.Identifier(f"{table}_history"),
            "history_resource": sql.Identifier(f"{table}_history_recent"),
            "history_at": sql.Identifier(f"{table}_history_all"),
            "columns": sql.SQL(_COLUMNS),
            "clock_fence": sql.SQL(_CLOCK_FENCE),
            "notify": sql.SQL(_NOTIFY).format(
                table=sql.Identifier(table),
                lined=sql.Literal(LINE_MARK),
                freed=sql.Literal(self.freed_channel),
            ),
        }
        self._sql: dict[str, sql.Composed] = {
            name: sql.SQL(text).format(**names)
            for name, text in (
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("current", _CURRENT),
                ("current_many", _CURRENT_MANY),
                ("is_current", _IS_CURRENT),
                ("list", _LIST),
                ("expiring", _EXPIRING),
                ("prefix", _PREFIX),
                ("acquire_logged", _logged(_ACQUIRE_LOGGED, "taken", "expires")),
                ("renew_logged", _logged(_RENEW_LOGGED, "renewed", "expires")),
                ("release_logged", _logged(_RELEASE_LOGGED, "released", "NULL")),
                ("history_of", _HISTORY_OF),
                ("held_set", _HELD_SET),
                *(
                    (name + suffix, _set_statement(text, changed, until, log))
                    for name, text, changed, until in (
                        ("acquire_set", _ACQUIRE_SET, "taken", "expires"),
                        ("renew_set", _RENEW_SET, "renewed", "expires"),
                        ("release_set", _RELEASE_SET, "released", "NULL"),
                    )
                    for suffix, log in (("", False), ("_logged", True))
                ),
                ("history_all", _HISTORY_ALL),
            )
        }
        self._create = [sql.SQL(text).format(**names) for text in _CREATE]
        try:
            psycopg.conninfo.conninfo_to_dict(connection)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"[backend.postgresql] connection is invalid: {exc}"
            ) from None
        self.pool = ConnectionPool(
            connection,
            connection_class=_BoundedConnection,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=self.timeout,
            kwargs={
                "autocommit": True,
                # libpq rounds below 2 s up to 2 s; the pool connects in the
                # background, so callers still wait at most `timeout`.
                "connect_timeout": max(2, round(self.timeout)),
                "row_factory": dict_row,
            },
            reconnect_timeout=self.timeout,
            open=False,
            name="stormlock",
        )
        self._opened = False
        self._schema_ready = False

    capabilities = Capabilities(
        Clock.SERVER,
        timedelta(seconds=1),
        _FENCES,
        ONE_TRIP,
        history="same statement",
        sets="one statement in a transaction",
        wake="the release (NOTIFY), else polls every 50 ms",
    )

    def watch_freed(self, resource: str) -> FreedWatch:
        """Woken when a release frees `resource` while its line has anyone
        in it (the release NOTIFYs); an expiry notifies nobody, so the line
        still polls, only no longer waits out its poll on a release."""
        return FreedWatch(self._connection, self.freed_channel, resource, self.timeout)

    client_errors = (
        PoolTimeout,
        LeaseBackend.OutOfTime,
        psycopg.OperationalError,
        psycopg.DataError,
    )

    def _failure(self, error: Exception) -> StormlockError:
        if isinstance(error, PoolTimeout | LeaseBackend.OutOfTime):
            return BackendUnavailable(
                f"PostgreSQL did not answer within {self.timeout:g}s; "
                "check that it is up and [backend.postgresql] connection"
            )
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, psycopg.DataError):
            return InvalidInput(f"PostgreSQL refused the value: {first}")
        return BackendUnavailable(
            f"PostgreSQL failed: {first.rstrip(' .')}; check that it is up and "
            "[backend.postgresql] connection"
        )

    def _run(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run `fn` on a pooled connection; create the table if it is missing.

        A connection that a server restart broke fails at once: it is dropped
        and the operation retried once on a fresh one, within the budget.
        """
        if not self._opened:
            self.pool.open(wait=False)
            self._opened = True
        ready = self._schema_ready  # as this call began
        for attempt in range(3):
            started = time.monotonic()
            try:
                with self.pool.connection(timeout=self._checkout_timeout()) as conn:
                    return fn(conn)
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                if attempt or ready:
                    raise
                if not self._schema_ready:  # else another thread just made it
                    self.setup()
            except psycopg.OperationalError:
                if attempt or not self.failed_fast(started):
                    raise
        raise AssertionError("unreachable")

    def _checkout_timeout(self) -> float:
        left = self.time_left()
        if left is not None and left <= 0:
            raise LeaseBackend.OutOfTime
        return left if left is not None else 5.0

    def _rows(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cursor:
                cursor.execute(self._sql[name], params)
                return cursor.fetchall()

        return self._run(query)

    def setup(self) -> list[str]:
        def create(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                # Serialise concurrent first uses: CREATE ... IF NOT EXISTS races.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.table])
                for statement in self._create:
                    conn.execute(statement)

        if not self._opened:
            self.pool.open(wait=False)
            self._opened = True
        with (
            self._operation(),
            self.pool.connection(timeout=self._checkout_timeout()) as conn,
        ):
            create(conn)
        self._schema_ready = True
        return [
            f"postgresql: tables {self.table} and {self.table}_history and their "
            "indexes ready"
        ]

    def _acquire(
        self, resource: str, principal: str, ttl: timedelta, note: str | None
    ) -> tuple[bool, Lease | None]:
        params = {
            "resource": resource,
            "lease_id": self.new_id(),
            "principal": principal,
            "ttl": ttl.total_seconds(),
            "note": note,
        }
        rows = self._rows(*self._with_story("acquire", resource, params, ACQUIRED))
        if not rows:
            return False, None
        return bool(rows[0]["acquired"]), _lease(rows[0])

    def _renew(self, resource: str, lease_id: str, ttl: timedelta) -> Lease | None:
        seconds = ttl.total_seconds()
        params = {"resource": resource, "lease_id": lease_id, "ttl": seconds}
        rows = self._rows(*self._with_story("renew", resource, params, RENEWED))
        return _lease(rows[0]) if rows else None

    def _release(self, resource: str, lease_id: str) -> bool:
        params = {"resource": resource, "lease_id": lease_id}
        return bool(self._rows(*self._with_story("release", resource, params, None)))

    def _in_transaction(
        self,
        name: str,
        resource: str,
        params: dict[str, Any],
        event: str | None,
        want: int,
    ) -> list[dict[str, Any]] | None:
        """Run a set's statement in a transaction: committed if it changed
        `want` rows, else rolled back (None)."""
        statement, params = self._with_story(name, resource, params, event)
        self._quiet(params, resource)

        def run(conn: psycopg.Connection[Any]) -> list[dict[str, Any]] | None:
            rows: list[dict[str, Any]] = []
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
                cursor.execute(self._sql[statement], params)
                rows = cursor.fetchall()
                if len(rows) != want:
                    raise psycopg.Rollback  # nothing of it is kept
            return rows if len(rows) == want else None

        return self._run(run)

    def _acquire_set(
        self,
        resources: Sequence[str],
        lease_id: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool, list[Lease]]:
        params = {
            "members": list(resources),
            "lease_id": lease_id,
            "principal": principal,
            "ttl": ttl.total_seconds(),
            "note": note,
        }
        rows = self._in_transaction(
            "acquire_set", resources[0], params, ACQUIRED, len(resources)
        )
        if rows is not None:
            return True, [_lease(row) for row in rows]
        held = self._rows("held_set", {"members": list(resources)})
        return False, [_lease(row) for row in held]

    def _renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease] | None:
        params = {
            "members": list(resources),
            "lease_id": lease_id,
            "ttl": ttl.total_seconds(),
        }
        rows = self._in_transaction(
            "renew_set", resources[0], params, RENEWED, len(resources)
        )
        return None if rows is None else [_lease(row) for row in rows]

    def _release_set(self, resources: Sequence[str], lease_id: str) -> bool:
        params = {"members": list(resources), "lease_id": lease_id}
        statement, params = self._with_story("release_set", resources[0], params, None)
        self._quiet(params, resources[0])
        return bool(self._rows(statement, params))

    def _quiet(self, params: dict[str, Any], first: str) -> None:
        if "source" in params:
            params["first"] = first
            params["quiet"] = str(params["source"]).partition(CHANNEL_MARK)[0]

    def _with_story(
        self, name: str, resource: str, params: dict[str, Any], event: str | None
    ) -> tuple[str, dict[str, Any]]:
        """The statement to run: with history on, the one that also logs."""
        told = self._story(resource)
        if told is None:
            return name, params
        return f"{name}_logged", {
            **params,
            "event": event or told.released_as(),
            "actor": told.actor,
            "source": told.source,
            "keep": told.retention.total_seconds(),
            "trim": secrets.randbelow(TRIM_EVERY) == 0,
        }

    def _history(
        self, resource: str | None, since: datetime | None, limit: int | None
    ) -> list[Event]:
        params = {
            "resource": resource,
            "since": since or datetime(1970, 1, 1, tzinfo=UTC),
            "limit": limit,
        }
        name = "history_of" if resource is not None else "history_all"
        return [_event(row) for row in self._rows(name, params)]

    def _current(self, resource: str) -> Lease | None:
        rows = self._rows("current", {"resource": resource})
        return _lease(rows[0]) if rows else None

    def _current_many(self, resources: Sequence[str]) -> list[Lease | None]:
        rows = self._rows("current_many", {"resources": list(resources)})
        found = {lease.resource: lease for lease in map(_lease, rows)}
        return [found.get(resource) for resource in resources]

    def _is_current(self, resource: str, lease_id: str) -> bool:
        return bool(
            self._rows("is_current", {"resource": resource, "lease_id": lease_id})
        )

    def _list_leases(self) -> list[Lease]:
        return [_lease(row) for row in self._rows("list", {})]

    def _list_prefix(self, prefix: str) -> list[Lease]:
        params = {"start": prefix, "end": prefix + "\U0010ffff"}
        leases = [_lease(row) for row in self._rows("prefix", params)]
        return [lease for lease in leases if lease.resource.startswith(prefix)]

    def _list_expiring(self, before: datetime) -> list[Lease]:
        return [_lease(row) for row in self._rows("expiring", {"before": before})]

    def doctor(self) -> list[Finding]:
        def settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('synchronous_commit', 'fsync', 'full_page_writes')"
            ).fetchall()
            return {row["name"]: row["setting"] for row in rows}

        with self._operation():
            found = self._run(settings)
        findings = []
        for name, fix in _DURABILITY.items():
            value = found.get(name, "on")
            if value == "off":
                findings.append(
                    Finding(
                        "unsafe",
                        f"postgresql: {name} = off: a crash can lose or corrupt "
                        f"acquires that clients saw succeed; {fix}",
                    )
                )
            else:
                findings.append(Finding("ok", f"postgresql: {name} = {value}"))
        return findings

    def close(self) -> None:
        if self._opened:
            # Not waiting for the pool's workers: one may be in a connect to
            # a silent server, which libpq holds for at least 2 s whatever
            # `timeout` says. It is a daemon thread, and gives up on its own.
            pool_log = logging.getLogger("psycopg.pool")
            level = pool_log.level
            pool_log.setLevel(logging.ERROR)  # "couldn't stop thread": expected
            try:
                self.pool.close(timeout=0)
            finally:
                pool_log.setLevel(level)
            self._opened = False


BACKEND = Postgresql


class FreedWatch:
    """LISTEN on the releases' channel, on a connection of its own (a pooled
    one would hand its LISTEN to whoever takes it next)."""

    def __init__(
        self, connection: str, channel: str, resource: str, timeout: float
    ) -> None:
        self._resource = resource
        with budget(timeout):  # connecting and LISTEN end with the budget
            self._conn = _BoundedConnection.connect(
                connection, autocommit=True, connect_timeout=max(2, round(timeout))
            )
            try:
                self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            except BaseException:
                self._conn.close()
                raise

    def wait(self, timeout: float) -> bool:
        """Whether `resource` was released within `timeout` seconds."""
        end = time.monotonic() + timeout
        try:
            while (left := end - time.monotonic()) > 0:
                for notice in self._conn.notifies(timeout=left, stop_after=1):
                    if notice.payload == self._resource:
                        return True
        except psycopg.Error:
            pass  # the caller polls the store itself anyway
        return False

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()
