"""A process that races for leases; importable so `spawn` can start it."""

from __future__ import annotations

from datetime import timedelta
from multiprocessing.synchronize import Barrier
from typing import Any

from stormlock import LockHeldException
from stormlock.backends import build_backend


def race(
    name: str,
    options: dict[str, str],
    resources: list[str],
    barrier: Barrier,
    results: Any,
    worker: int,
) -> None:
    """For each resource: wait for every racer, try once, report the outcome."""
    backend = build_backend(name, options)
    try:
        for round_, resource in enumerate(resources):
            barrier.wait(timeout=120)
            try:
                lease = backend.acquire_lease(
                    resource, f"worker-{worker}", timedelta(minutes=10)
                )
                results.put((round_, worker, lease.id, lease.fence))
            except LockHeldException:
                results.put((round_, worker, None, None))
    finally:
        backend.close()


def race_pool(
    config: str, pool: str, barrier: Barrier, results: Any, worker: int
) -> None:
    """Wait for every racer, then try once to take any member of `pool`."""
    from stormlock.lock import load_lock

    lock = load_lock(pool, config)
    try:
        barrier.wait(timeout=120)
        try:
            lease = lock.acquire_lease(timedelta(minutes=10))
            results.put((worker, lease.resource, lease.id))
        except LockHeldException:
            results.put((worker, None, None))
    finally:
        lock.close()
