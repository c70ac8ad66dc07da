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


def race_sets(
    name: str,
    options: dict[str, str],
    pool: list[str],
    seconds: float,
    barrier: Barrier,
    results: Any,
    worker: int,
) -> None:
    """Take random sets of 2-4 of `pool` until `seconds` pass, each held a
    few milliseconds; report every hold (monotonic times: from after the
    acquire returned to before the release began) and any refused try that
    left a member of the set in this worker's name."""
    import random
    import time

    from stormlock.contract import SetHeld
    from stormlock.sets import check_set

    backend = build_backend(name, options)
    me = f"worker-{worker}"
    chance = random.Random(worker)
    try:
        barrier.wait(timeout=120)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            wanted = check_set(chance.sample(pool, chance.randint(2, 4)))
            try:
                leases = backend.acquire_set(wanted, me, timedelta(minutes=1))
            except SetHeld:
                mine = [
                    member
                    for member in wanted
                    if (lease := backend.current(member)) is not None
                    and lease.principal == me
                ]
                if mine:
                    results.put(("part", worker, mine))
                time.sleep(chance.uniform(0.001, 0.01))  # back off, as --wait does
                continue
            start = time.monotonic()
            assert backend.is_current_set(wanted, leases[0].id)
            time.sleep(chance.uniform(0.002, 0.02))  # the work under the lease
            end = time.monotonic()
            backend.release_set(wanted, leases[0].id)
            fences = {lease.resource: lease.fence for lease in leases}
            results.put(("held", worker, wanted, fences, start, end))
        results.put(("done", worker))
    except Exception as exc:  # reported, so the test fails with the reason
        results.put(("error", worker, f"{type(exc).__name__}: {exc}"))
    finally:
        backend.close()


def wait_in_line(
    name: str,
    options: dict[str, str],
    resource: str,
    go: Any,
    results: Any,
    worker: int,
    ticket_seconds: float | None = None,
) -> None:
    """When `go` is set, wait in `resource`'s line (the library's `wait`);
    report when the lease was taken (monotonic) and its fence, hold it a
    moment, and report its release."""
    import time

    from stormlock import line
    from stormlock.lock import StormLock

    if ticket_seconds is not None:  # a short ticket, for the killed-waiter test
        line.TICKET_TTL = timedelta(seconds=ticket_seconds)
    backend = build_backend(name, options)
    lock = StormLock(backend, resource, f"waiter-{worker}", timedelta(minutes=5))
    try:
        go.wait(timeout=120)
        lease = lock.acquire_lease(wait=timedelta(minutes=2))
        taken = time.monotonic()
        results.put(("took", worker, taken, lease.fence))
        time.sleep(0.01)  # the work under the lease
        released = time.monotonic()
        lock.release(lease.id)
        results.put(("released", worker, released, lease.fence))
    except Exception as exc:  # reported, so the test fails with it
        results.put(("failed", worker, repr(exc), 0))
    finally:
        backend.close()
