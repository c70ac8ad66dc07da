"""Lease history: what recording costs each change, and what reading costs.

Per backend, in one run: acquire, renew and release with history on and off
(the same backend object, alternating batches, so noise hits both), then the
time to read a resource's last 20 events when it has 100 and when it has
100,000 (seeded straight into the store's history, as the backend writes it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from stormlock.backends import build_backend
from stormlock.contract import Backend
from stormlock.history import DEFAULT_RETENTION
from stormlock.testing.backends import BACKENDS
from stormlock.testing.servers import Server

TTL = timedelta(minutes=10)
SPREAD = 80 * 86400.0
# moto's in-memory tables slow down as they grow (writing 100,000 items takes
# an hour here): DynamoDB is read at this size instead.
MOTO_MAX = 5_000


def _changes(backend: Backend, prefix: str, n: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"acquire": [], "renew": [], "release": []}
    for i in range(n):
        resource = f"{prefix}-{i}"
        start = time.perf_counter()
        lease = backend.acquire_lease(resource, "bench", TTL)
        middle = time.perf_counter()
        backend.renew_lease(resource, lease.id, TTL)
        renewed = time.perf_counter()
        backend.release_lease(resource, lease.id)
        done = time.perf_counter()
        samples["acquire"].append(middle - start)
        samples["renew"].append(renewed - middle)
        samples["release"].append(done - renewed)
    return samples


def _seed(name: str, backend: Any, resource: str, count: int) -> None:
    """`count` events of `resource`, written where the backend keeps them."""
    now = time.time()
    # Spread over 80 days (within the 90-day retention), oldest first: 100,000
    # events is a resource changed every 70 s for months.
    start = now - SPREAD
    step = (SPREAD - 60) / count
    if name == "sqlite":
        backend.setup()
        conn = backend._connect()
        rows = [
            (start + i * step, resource, "renewed", "p", "p", None, 1, "bench", now)
            for i in range(count)
        ]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO stormlock_history (at, resource, event, principal, actor,"
            " note, fence, source, until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
    elif name == "postgresql":
        backend.setup()
        with backend.pool.connection() as conn, conn.cursor() as cursor:
            copy_sql = (
                f"COPY {backend.table}_history (at, resource, event, principal, "
                "actor, fence, source) FROM STDIN"
            )
            with cursor.copy(copy_sql) as copy:
                from datetime import UTC, datetime

                for i in range(count):
                    moment = datetime.fromtimestamp(start + i * step, UTC)
                    copy.write_row((moment, resource, "renewed", "p", "p", 1, "bench"))
            # As autovacuum would, after a bulk load.
            conn.execute(f"ANALYZE {backend.table}_history")
    elif name == "redis":
        key = f"{backend.prefix}history:{resource}"
        pipe = backend.client.pipeline(transaction=False)
        for i in range(count):
            fields = {"resource": resource, "event": "renewed", "principal": "p"}
            fields.update(actor="p", note="", fence="1", source="bench", until="")
            pipe.xadd(key, fields, id=f"{int((start + i * step) * 1000)}-{i}")
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
    elif name == "etcd":
        import base64
        import json

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        from stormlock.backends.etcd import _countdown

        prefix = backend._history_prefix(resource)
        ops = []
        for i in range(count):
            seconds = start + i * step
            value = {"at": seconds, "event": "renewed", "principal": "p", "actor": "p"}
            value.update(fence=1, source="bench", resource=resource)
            key = prefix + _countdown(int(seconds * 1e6)) + f"{i:06d}".encode()
            ops.append(
                {
                    "request_put": {
                        "key": b64(key),
                        "value": b64(json.dumps(value).encode()),
                    }
                }
            )
            if len(ops) == 100 or i == count - 1:
                backend._call("/v3/kv/txn", {"success": ops})
                ops = []
    elif name == "dynamodb":
        backend.setup()
        with backend.history_table.batch_writer() as batch:
            for i in range(count):
                batch.put_item(
                    Item={
                        "resource": resource,
                        "at": int((start + i * step) * 1e9),
                        "all": "1",
                        "event": "renewed",
                        "principal": "p",
                        "actor": "p",
                        "fence": 1,
                        "source": "bench",
                    }
                )


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    n: int,
    sizes: tuple[int, ...] = (100, 100_000),
) -> str:
    from bench.run import ms, percentile, table

    change_rows: list[list[str]] = []
    read_rows: list[list[str]] = []
    for name in BACKENDS:
        options = options_for(name, running, "history")
        if options is None:
            change_rows.append([name, "not installed", "", "", ""])
            continue
        backend = build_backend(name, options)
        try:
            backend.setup()
            _changes(backend, "warm", 5)
            on: dict[str, list[float]] = {"acquire": [], "renew": [], "release": []}
            off: dict[str, list[float]] = {"acquire": [], "renew": [], "release": []}
            for batch in range(4):  # alternate, so drift hits both alike
                for retention, into in ((DEFAULT_RETENTION, on), (None, off)):
                    backend.history_retention = retention
                    got = _changes(backend, f"c{batch}{retention is None}", n // 4)
                    for op, values in got.items():
                        into[op] += values
            backend.history_retention = DEFAULT_RETENTION
            for op in ("acquire", "renew", "release"):
                with_history = statistics.median(on[op])
                without = statistics.median(off[op])
                change_rows.append(
                    [
                        name,
                        op,
                        ms(with_history),
                        ms(without),
                        f"{with_history / without:.2f}",
                    ]
                )
            for size in sizes:
                if name == "dynamodb" and size > MOTO_MAX:
                    read_rows.append([name, f"{size:,}", "see below", ""])
                    size = MOTO_MAX
                resource = f"read-{size}"
                _seed(name, backend, resource, size)
                assert len(backend.history(resource, limit=20)) == 20
                times = []
                for _ in range(30):
                    start = time.perf_counter()
                    backend.history(resource, limit=20)
                    times.append(time.perf_counter() - start)
                read_rows.append(
                    [
                        name,
                        f"{size:,}",
                        ms(statistics.median(times)),
                        ms(percentile(times, 99)),
                    ]
                )
        finally:
            backend.close()
    return (
        f"### History: cost per change ({n} of each, on and off) and reading\n\n"
        + table(
            ["backend", "operation", "history on p50 ms", "off p50 ms", "on / off"],
            change_rows,
        )
        + "\n\nOn and off alternate in batches on the same backend object."
        " SQLite (a trigger), PostgreSQL and Redis write the event in the change's"
        " own statement or script (no extra round trip); etcd adds it to"
        " the change's transaction (release becomes a transaction, 3 round trips);"
        " DynamoDB writes it after the change (one more round trip).\n\n"
        + table(
            ["backend", "events of the resource", "last 20: p50 ms", "p99 ms"],
            read_rows,
        )
        + "\n\nReading the last 20 events of a resource, 30 times, once it has that"
        " many events, spread over the last 80 days (seeded into the store's"
        " history as the backend writes it)."
        f" DynamoDB is measured at {MOTO_MAX:,} events: moto, the local stand-in,"
        " writes ever slower as its table grows (100,000 would take an hour);"
        " the read is one Query with Limit 20 on the table's key, which DynamoDB"
        " answers from the newest end of the resource's partition."
    )
