"""Sets: acquiring one lease on 1, 5 and 25 resources, all or nothing, per
backend, against acquiring one named resource on the same backend in the
same run (the ratio is what compares: this machine is noisy)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from bench.scenarios.pools import single_run
from stormlock.backends import build_backend
from stormlock.testing.backends import BACKENDS
from stormlock.testing.servers import Server

SIZES = (1, 5, 25)


def _set_run(name: str, options: dict[str, str], size: int, n: int) -> list[float]:
    backend = build_backend(name, options)
    try:
        backend.setup()
        tag = uuid.uuid4().hex[:6]
        members = tuple(sorted(f"set{size}-{tag}-{i:02d}" for i in range(size)))
        ttl = timedelta(minutes=10)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            leases = backend.acquire_set(members, "bench", ttl)
            samples.append(time.perf_counter() - start)
            backend.release_set(members, leases[0].id)
        return samples
    finally:
        backend.close()


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    n: int,
) -> str:
    from bench.run import ms, percentile, table

    rows = []
    for name in BACKENDS:
        options = options_for(name, running, "sets")
        if options is None:
            continue
        base = single_run(name, options, n)
        base50 = statistics.median(base)
        rows.append(
            [
                name,
                "one resource (acquire_lease)",
                ms(base50),
                ms(percentile(base, 99)),
                "1.0",
            ]
        )
        for size in SIZES:
            samples = _set_run(name, options, size, n)
            p50 = statistics.median(samples)
            rows.append(
                [
                    name,
                    f"a set of {size}",
                    ms(p50),
                    ms(percentile(samples, 99)),
                    f"{p50 / base50:.1f}",
                ]
            )
    return (
        f"### Sets: one lease on several resources ({n} acquires each, "
        "released between)\n\n"
        + table(["backend", "acquire of", "p50 ms", "p99 ms", "x one resource"], rows)
        + "\n\n"
        + SETS_NOTE
    )


SETS_NOTE = (
    "Each set is taken in one atomic step: a Lua script (Redis), one statement "
    "in a transaction (PostgreSQL), one transaction (SQLite), one etcd "
    "transaction after granting one etcd lease, or TransactWriteItems then "
    "TransactGetItems for the fences (DynamoDB, whose history events are "
    "written after, one per member). A set of 1 pays the set path's extra "
    "work (the members list, the transaction) over a plain acquire."
)
