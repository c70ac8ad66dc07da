"""Contention throughput: N threads racing for one resource, or each for its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

from stormlock import LockHeldException
from stormlock.backends import build_backend
from stormlock.testing.backends import BACKENDS
from stormlock.testing.servers import Server

THREADS = (1, 4, 16)


def _rounds(
    backend_name: str, options: dict[str, str], threads: int, rounds: int, shared: bool
) -> tuple[float, int, int]:
    """Each round: every thread tries once (after a barrier); winners release.

    Returns attempts per second, rounds, and rounds with a wrong winner count.
    """
    backend = build_backend(backend_name, options)
    ttl = timedelta(minutes=5)
    barrier = threading.Barrier(threads)
    wins: list[list[int]] = [[0] * threads for _ in range(rounds)]

    def worker(index: int) -> None:
        for round_ in range(rounds):
            resource = "hot" if shared else f"own-{index}"
            barrier.wait()
            try:
                lease = backend.acquire_lease(resource, f"t{index}", ttl)
            except LockHeldException:
                lease = None
            if lease is not None:
                wins[round_][index] = 1
            barrier.wait()  # everyone tried before anyone lets go
            if lease is not None:
                backend.release_lease(resource, lease.id)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    backend.close()
    expected = 1 if shared else threads
    wrong = sum(1 for round_ in wins if sum(round_) != expected)
    return threads * rounds / elapsed, rounds, wrong


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    rounds: int,
) -> str:
    from bench.run import table

    rows = []
    for name in BACKENDS:
        for threads in THREADS:
            for shared in (True, False):
                options = options_for(name, running, f"race{threads}{int(shared)}")
                if options is None:
                    continue
                setup = build_backend(name, options)
                setup.setup()
                setup.close()
                rate, done, wrong = _rounds(name, options, threads, rounds, shared)
                rows.append(
                    [
                        name,
                        str(threads),
                        "one resource" if shared else "own resources",
                        f"{rate:.0f}",
                        f"{done - wrong}/{done}" + ("" if not wrong else " (WRONG)"),
                    ]
                )
    return (
        f"### Contention ({rounds} rounds; each round every thread tries once)\n\n"
        + table(
            [
                "backend",
                "threads",
                "resources",
                "attempts/s",
                "rounds with the right winner count",
            ],
            rows,
        )
        + "\n\nThe right winner count is exactly one per round for one resource, "
        "and one per thread for their own resources."
    )
