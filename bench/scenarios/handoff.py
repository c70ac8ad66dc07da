"""Handoff: from a release to the next holder's acquire returning, when
the next one waits in the line, against waiting with backoff (the `--wait`
of before the line) in the same run, per backend."""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from stormlock.backends import build_backend
from stormlock.line import Line
from stormlock.lock import StormLock
from stormlock.testing.backends import BACKENDS
from stormlock.testing.servers import Server


class _Backoff(StormLock):
    """`--wait` as it was: retry with backoff, no line."""

    def _line(self) -> None:
        return None


def _handoffs(
    name: str, options: dict[str, str], lined: bool, rounds: int, seed: int
) -> list[float]:
    backend = build_backend(name, options)
    chance = random.Random(seed)  # the same waits for both ways
    kind = StormLock if lined else _Backoff
    samples = []
    try:
        backend.setup()
        for _ in range(rounds):
            resource = f"handoff-{uuid.uuid4().hex[:8]}"
            holder = backend.acquire_lease(resource, "holder", timedelta(minutes=5))
            waiter = kind(backend, resource, "waiter", timedelta(minutes=5))
            took: list[float] = []

            def wait(waiter: StormLock = waiter, took: list[float] = took) -> None:
                waiter.acquire_lease(wait=timedelta(seconds=60))
                took.append(time.monotonic())

            thread = threading.Thread(target=wait)
            thread.start()
            if lined:
                line = Line(backend, resource)
                while not line.waiting():
                    time.sleep(0.01)
            time.sleep(chance.uniform(0.5, 2.0))  # the holder works a while
            released = time.monotonic()
            backend.release_lease(resource, holder.id)
            thread.join(timeout=90)
            samples.append(took[0] - released)
    finally:
        backend.close()
    return samples


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    rounds: int,
) -> str:
    from bench.run import ms, percentile, table

    rows = []
    for name in BACKENDS:
        options = options_for(name, running, "handoff")
        if options is None:
            continue
        lined = _handoffs(name, options, True, rounds, seed=1)
        backoff = _handoffs(name, options, False, rounds, seed=1)
        line50, back50 = statistics.median(lined), statistics.median(backoff)
        rows.append(
            [
                name,
                ms(line50),
                ms(percentile(lined, 99)),
                ms(back50),
                ms(percentile(backoff, 99)),
                f"{back50 / line50:.0f}",
            ]
        )
    return (
        f"### Handoff: release to the next holder ({rounds} handoffs each; "
        "the holder works 0.5-2 s first)\n\n"
        + table(
            [
                "backend",
                "line p50 ms",
                "line p99 ms",
                "backoff p50 ms",
                "backoff p99 ms",
                "backoff / line (p50)",
            ],
            rows,
        )
        + "\n\n"
        + HANDOFF_NOTE
    )


HANDOFF_NOTE = (
    "In line, the head polls the resource every 50 ms and takes it with one "
    "acquire; with backoff (before the line), a waiter retries from 100 ms, "
    "doubling to 5 s, so its next try after a release comes when its backoff "
    "says. Both are timed from just before the release call to the waiter's "
    "acquire returning, in one process."
)
