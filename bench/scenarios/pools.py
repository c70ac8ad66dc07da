"""Choosing from a pool: what `acquire POOL` costs with 4 and 100 members,
half of them held, against acquiring one named resource on the same backend
in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from stormlock.backends import build_backend
from stormlock.config import Pool
from stormlock.pool import PoolLock
from stormlock.testing.backends import BACKENDS
from stormlock.testing.servers import Server

SIZES = (4, 100)


def _pool_run(name: str, options: dict[str, str], size: int, n: int) -> list[float]:
    backend = build_backend(name, options)
    try:
        backend.setup()
        members = tuple(f"pool{size}-{i}" for i in range(size))
        lock = PoolLock(backend, Pool("bench", members), "bench", timedelta(minutes=10))
        ttl = timedelta(minutes=10)
        for member in members[: size // 2]:  # half the pool is busy
            backend.acquire_lease(member, "other", ttl)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            lease = lock.acquire_lease()
            samples.append(time.perf_counter() - start)
            lock.release(lease.id)
        return samples
    finally:
        backend.close()


def single_run(name: str, options: dict[str, str], n: int) -> list[float]:
    backend = build_backend(name, options)
    try:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            lease = backend.acquire_lease("single", "bench", timedelta(minutes=10))
            samples.append(time.perf_counter() - start)
            backend.release_lease("single", lease.id)
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
        options = options_for(name, running, "pools")
        if options is None:
            continue
        base = single_run(name, options, n)
        base50 = statistics.median(base)
        rows.append(
            [name, "one named resource", ms(base50), ms(percentile(base, 99)), "1.0"]
        )
        for size in SIZES:
            samples = _pool_run(name, options, size, n)
            p50 = statistics.median(samples)
            rows.append(
                [
                    name,
                    f"pool of {size}, half held",
                    ms(p50),
                    ms(percentile(samples, 99)),
                    f"{p50 / base50:.1f}",
                ]
            )
    return (
        f"### Pools: choosing a member ({n} acquires each, released between)\n\n"
        + table(["backend", "acquire of", "p50 ms", "p99 ms", "x one resource"], rows)
        + "\n\n"
        + POOLS_NOTE
    )


POOLS_NOTE = (
    "Choosing costs one listing of the active leases (to skip held members), "
    "one read of the store's latest events (to take the member free the "
    "longest), then one atomic acquire per try. The listing grows with all "
    "active leases, not only the pool's; the event read with the pool's size."
)
