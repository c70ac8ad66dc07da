"""Round trips, counted where the request lands: at the server.

- Redis: `INFO commandstats` deltas. Commands a Lua script runs are counted
  there too, so for an operation that ran a script only the EVAL/EVALSHA
  calls count; otherwise every command.
- PostgreSQL: `pg_stat_statements` calls (the statements the server ran).
- etcd: the gRPC requests the server handled (`grpc_server_handled_total`
  on /metrics), which is what each JSON gateway request becomes.
- DynamoDB: the requests moto served (counted by tests/moto_dynamodb.py).
- SQLite (embedded, no server): statements executed, by sqlite3's trace hook.
"""

from __future__ import annotations

import urllib.request
from typing import Any, Protocol

import psycopg
import redis

from stormlock.contract import Backend
from stormlock.testing.servers import Server

METHOD = (
    "Round trips are counted at the server: Redis `INFO commandstats` "
    "(EVAL/EVALSHA calls for scripted operations), PostgreSQL "
    "`pg_stat_statements`, etcd's `grpc_server_handled_total`, the requests "
    "moto served; SQLite (embedded) counts the statements it executes (a trigger runs "
    "inside the statement that fired it)."
)


class Counter(Protocol):
    def read(self) -> Any: ...

    def trips(self, before: Any, after: Any) -> float: ...


class _Total:
    """Counters whose difference is the number of round trips."""

    def read(self) -> float:
        raise NotImplementedError

    def trips(self, before: float, after: float) -> float:
        return after - before


class _Redis:
    """Top-level commands only: EVAL/EVALSHA for scripted operations (their
    inner commands are counted by Redis too, but are not round trips), else
    every command but our own INFO."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def read(self) -> tuple[int, int]:
        stats: dict[str, Any] = self.client.info("commandstats")
        scripted = sum(
            int(v["calls"])
            for k, v in stats.items()
            if k.startswith(("cmdstat_eval", "cmdstat_script"))
        )
        plain = sum(
            int(v["calls"])
            for k, v in stats.items()
            if not k.startswith(("cmdstat_info", "cmdstat_eval", "cmdstat_script"))
        )
        return scripted, plain

    def trips(self, before: tuple[int, int], after: tuple[int, int]) -> float:
        scripted = after[0] - before[0]
        return float(scripted if scripted else after[1] - before[1])


class _Postgres(_Total):
    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def read(self) -> float:
        row = self.conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat_statements%'"
        ).fetchone()
        assert row is not None
        return float(row[0])


class _Etcd(_Total):
    def __init__(self, host: str, port: str) -> None:
        self.url = f"http://{host}:{port}/metrics"

    def read(self) -> float:
        with urllib.request.urlopen(self.url, timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and (
                'grpc_service="etcdserverpb.KV"' in line
                or 'grpc_service="etcdserverpb.Lease"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total


class _Moto(_Total):
    def __init__(self, endpoint: str) -> None:
        self.url = endpoint + "/__requests"

    def read(self) -> float:
        with urllib.request.urlopen(self.url, timeout=10) as response:  # noqa: S310 - loopback
            return float(response.read().decode())


class _SQLite(_Total):
    """Statements the backend executes (it runs each through `_run`); a
    trigger runs inside the statement that fired it."""

    def __init__(self, backend: Backend) -> None:
        self.count = 0
        run = backend._run  # type: ignore[attr-defined]

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return run(*args, **kwargs)

        backend._run = counted  # type: ignore[attr-defined]

    def read(self) -> float:
        return float(self.count)


def for_backend(name: str, backend: Backend, server: Server | None) -> Counter:
    if name == "sqlite":
        return _SQLite(backend)
    assert server is not None
    if name == "redis":
        return _Redis(server.options["url"])
    if name == "postgresql":
        return _Postgres(server.options["connection"])
    if name == "etcd":
        return _Etcd(server.options["host"], server.options["port"])
    return _Moto(server.options["endpoint"])
