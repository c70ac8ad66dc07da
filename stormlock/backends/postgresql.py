"""PostgreSQL backend.

One row per resource in a `timestamptz` table; expiry is decided by the
server's `clock_timestamp()`, so clients in any time zone (or with skewed
clocks) agree. Acquire is one INSERT ... ON CONFLICT DO UPDATE that only takes
over a released or expired row, which PostgreSQL makes atomic. Rows are kept
on release, so the fence counter survives release and expiry.

The table is created on first use, or up front with `stormlock setup`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ..backend import (
    Lease,
    LeaseBackend,
    LockExpiredException,
    LockHeldException,
    canonical_lease_id,
    new_lease_id,
    trips,
)
from ..errors import BackendUnavailable, ConfigError

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
        fence     bigint NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS {index} ON {table} (expires) "
    "WHERE lease_id IS NOT NULL",
)

_COLUMNS = "resource, principal, created, lease_id, expires, note, fence"

# One round trip: take the row if free, else return the holder. The holder
# query sees the statement's snapshot, so a row inserted by a concurrent
# winner can be invisible; then the caller asks once more.
_ACQUIRE = """
WITH taken AS (
    INSERT INTO {table} AS l
        (resource, lease_id, principal, created, expires, note, fence)
    VALUES (%(resource)s, %(lease_id)s, %(principal)s, clock_timestamp(),
            clock_timestamp() + make_interval(secs => %(ttl)s), %(note)s, 1)
    ON CONFLICT (resource) DO UPDATE SET
        lease_id = excluded.lease_id,
        principal = excluded.principal,
        created = excluded.created,
        expires = excluded.expires,
        note = excluded.note,
        fence = l.fence + 1
    WHERE l.lease_id IS NULL OR l.expires <= clock_timestamp()
    RETURNING {columns}
)
SELECT true AS acquired, {columns} FROM taken
UNION ALL
SELECT false, {columns} FROM {table}
WHERE resource = %(resource)s AND NOT EXISTS (SELECT 1 FROM taken)
"""

_RENEW = """
UPDATE {table} SET expires = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE resource = %(resource)s AND lease_id = %(lease_id)s
  AND expires > clock_timestamp()
RETURNING {columns}
"""

_RELEASE = """
UPDATE {table} SET lease_id = NULL
WHERE resource = %(resource)s AND lease_id = %(lease_id)s
  AND expires > clock_timestamp()
RETURNING fence
"""

_CURRENT = """
SELECT {columns} FROM {table}
WHERE resource = %(resource)s AND lease_id IS NOT NULL
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


def _lease(row: dict[str, Any]) -> Lease:
    return Lease(
        principal=row["principal"],
        created=row["created"],
        id=str(row["lease_id"]),
        resource=row["resource"],
        expires=row["expires"],
        note=row["note"],
        fence=row["fence"],
    )


class Postgresql(LeaseBackend):
    """Leases in a PostgreSQL table.

    Options: `connection` (a libpq connection string or URL), `table`
    (default `stormlock_leases`), `timeout` (seconds to connect or wait for
    a pooled connection, default 5), `pool_size` (default 10).
    """

    clock = "server"
    min_ttl = timedelta(microseconds=1)
    fence_source = "per-row counter, rows kept on release"
    round_trips = trips(acquire=1, renew=1, release=1, current=1, is_current=1, list=1)

    def __init__(
        self,
        connection: str = "",
        table: str = "stormlock_leases",
        timeout: float = 5.0,
        pool_size: int = 10,
    ) -> None:
        if not _IDENTIFIER.match(table):
            raise ConfigError(
                f"[backend.postgresql] table {table!r} is not a plain SQL identifier; "
                "use letters, digits and underscores"
            )
        self.table = table
        self.timeout = timeout
        names = {
            "table": sql.Identifier(table),
            "index": sql.Identifier(f"{table}_expires"),
            "columns": sql.SQL(_COLUMNS),
        }
        self._sql: dict[str, sql.Composed] = {
            name: sql.SQL(text).format(**names)
            for name, text in (
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("current", _CURRENT),
                ("is_current", _IS_CURRENT),
                ("list", _LIST),
                ("expiring", _EXPIRING),
                ("prefix", _PREFIX),
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
            min_size=1,
            max_size=max(1, pool_size),
            timeout=timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(timeout)),
                "row_factory": dict_row,
            },
            reconnect_timeout=timeout,
            open=False,
            name="stormlock",
        )
        self._opened = False
        self._schema_ready = False

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except PoolTimeout:
            raise BackendUnavailable(
                f"PostgreSQL did not accept a connection within {self.timeout:g}s; "
                "check that it is up and [backend.postgresql] connection"
            ) from None
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BackendUnavailable(
                f"PostgreSQL failed: {first}; check that it is up and "
                "[backend.postgresql] connection"
            ) from None

    def _run(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run `fn` on a pooled connection; create the table if it is missing.

        A connection broken by a server restart is dropped by the pool and
        the operation retried once on a fresh one.
        """
        if not self._opened:
            self.pool.open(wait=False)
            self._opened = True
        for attempt in range(3):
            with self._errors():
                try:
                    with self.pool.connection() as conn:
                        return fn(conn)
                except psycopg.errors.UndefinedTable:
                    if attempt or self._schema_ready:
                        raise
                    self.setup()
                except PoolTimeout:
                    raise  # no connection within the timeout: do not wait twice
                except psycopg.OperationalError:
                    if attempt:
                        raise
                    self.pool.check()
        raise AssertionError("unreachable")

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
        with self._errors(), self.pool.connection() as conn:
            create(conn)
        self._schema_ready = True
        return [f"postgresql: table {self.table} and index {self.table}_expires ready"]

    def acquire_lease(
        self, resource: str, principal: str, ttl: timedelta, note: str | None = None
    ) -> Lease:
        params = {
            "resource": resource,
            "lease_id": new_lease_id(),
            "principal": principal,
            "ttl": ttl.total_seconds(),
            "note": note,
        }
        for _ in range(3):
            rows = self._rows("acquire", params)
            if rows and rows[0]["acquired"]:
                return _lease(rows[0])
            if rows:
                raise LockHeldException(resource, _lease(rows[0]))
            holder = self.current(resource)
            if holder is not None:
                raise LockHeldException(resource, holder)
        raise LockHeldException(resource, None)

    def renew_lease(self, resource: str, lease_id: str, ttl: timedelta) -> Lease:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            raise LockExpiredException(resource)
        rows = self._rows(
            "renew",
            {"resource": resource, "lease_id": canonical, "ttl": ttl.total_seconds()},
        )
        if not rows:
            raise LockExpiredException(resource)
        return _lease(rows[0])

    def release_lease(self, resource: str, lease_id: str) -> bool:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        rows = self._rows("release", {"resource": resource, "lease_id": canonical})
        return bool(rows)

    def current(self, resource: str) -> Lease | None:
        rows = self._rows("current", {"resource": resource})
        return _lease(rows[0]) if rows else None

    def is_current(self, resource: str, lease_id: str) -> bool:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        return bool(
            self._rows("is_current", {"resource": resource, "lease_id": canonical})
        )

    def list_leases(self) -> list[Lease]:
        return [_lease(row) for row in self._rows("list", {})]

    def list_prefix(self, prefix: str) -> list[Lease]:
        params = {"start": prefix, "end": prefix + "\U0010ffff"}
        leases = [_lease(row) for row in self._rows("prefix", params)]
        return [lease for lease in leases if lease.resource.startswith(prefix)]

    def list_expiring(self, before: datetime) -> list[Lease]:
        return [_lease(row) for row in self._rows("expiring", {"before": before})]

    def close(self) -> None:
        if self._opened:
            self.pool.close()
            self._opened = False
