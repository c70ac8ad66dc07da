"""The contract for the line (first in, first out, with handoff), part of
the conformance kit: `from stormlock.testing.conformance import *` brings
these in too.

A backend without lines (`supports(Feature.LINE)` false: the `http`
backend, a plugin that cannot list) keeps waiting with backoff; these tests
then check only that.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from multiprocessing.process import BaseProcess
from typing import Any

import pytest

from stormlock import Backend
from stormlock.contract import Feature, InLine
from stormlock.line import Line, has_line, line_events
from stormlock.lock import StormLock
from stormlock.names import RECORD_PREFIX
from stormlock.sets import SetLock
from stormlock.testing.backends import BackendConfig
from stormlock.testing.race_worker import wait_in_line

__all__ = [
    "test_a_killed_waiter_stalls_the_line_only_until_its_ticket_lapses",
    "test_a_release_wakes_the_first_in_line_where_the_store_can",
    "test_a_set_never_takes_a_member_kept_for_the_first_in_its_line",
    "test_a_wait_in_line_leaves_nothing_behind",
    "test_only_the_head_of_the_line_may_take_a_free_resource",
    "test_the_line_is_in_history",
    "test_waiters_are_served_once_each_in_arrival_order",
]

WAITERS = 20


def _name() -> str:
    return f"line-{uuid.uuid4().hex[:8]}"


def _until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll the store (the event itself) until `check` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


def _leftovers(backend: Backend, resource: str) -> list[str]:
    """The line's records of `resource` still there (its history aside)."""
    return [
        lease.resource
        for lease in backend.list_prefix(RECORD_PREFIX + "line")
        if lease.resource.rstrip("/").split("/")[2] == resource
        and not lease.resource.startswith(RECORD_PREFIX + "line-log/")
    ]


def _waiters(
    config: BackendConfig, resource: str, count: int, ticket_seconds: float | None
) -> tuple[list[BaseProcess], list[Any], Any]:
    """`count` waiting processes, started, each held back until its event."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    gos = [ctx.Event() for _ in range(count)]
    procs: list[BaseProcess] = [
        ctx.Process(
            target=wait_in_line,
            args=(
                config.name,
                config.options,
                resource,
                go,
                results,
                i,
                ticket_seconds,
            ),
        )
        for i, go in enumerate(gos)
    ]
    for proc in procs:
        proc.start()
    return procs, gos, results


def _arrive(line: Line, gos: list[Any]) -> None:
    """Let each waiter in, one after the other, once the one before is in."""
    for i, go in enumerate(gos):
        go.set()
        _until(partial(_in_line, line, i + 1), f"waiter {i} is in line")


def _in_line(line: Line, count: int) -> bool:
    return len(line.waiting()) == count


def _stop(procs: list[BaseProcess]) -> None:
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()


def test_only_the_head_of_the_line_may_take_a_free_resource(backend: Backend) -> None:
    if not has_line(backend):
        return  # documented: no line, so nobody is refused for one
    resource = _name()
    line = Line(backend, resource)
    bob = line.join("bob", "after alice", "cli")
    assert [t.principal for t in line.waiting()] == ["bob"]
    carol = StormLock(backend, resource, "carol")
    with pytest.raises(InLine) as refused:
        carol.acquire_lease()
    assert refused.value.waiting == 1
    assert "kept for the line" in str(refused.value)
    assert "--wait" in str(refused.value)
    assert backend.current(resource) is None  # nothing taken
    # Held and with a line: the holder is named, and the line counted.
    alice = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    second = line.join("dave")
    with pytest.raises(InLine) as held:
        carol.acquire_lease()
    assert held.value.waiting == 2 and "held by alice" in str(held.value)
    assert alice.id not in str(held.value)
    backend.release_lease(resource, alice.id)
    assert line.leave(bob) and line.leave(second)
    assert not line.leave(bob)  # already gone
    assert carol.acquire_lease().principal == "carol"  # an empty line: as before
    assert _leftovers(backend, resource) == []


def test_a_set_never_takes_a_member_kept_for_the_first_in_its_line(
    backend: Backend,
) -> None:
    """bob is first in line for R, which is free and so kept for him: a set
    with R in it is refused, names R and takes nothing, S included."""
    if not has_line(backend):
        return
    first, second = sorted((_name(), _name()))
    line = Line(backend, first)
    bob = line.join("bob", "first in line", "slack")
    carol = SetLock(backend, [first, second], "carol", timedelta(minutes=5))
    with pytest.raises(InLine) as refused:
        carol.acquire_lease()
    assert refused.value.resource == first and refused.value.waiting == 1
    assert backend.current(first) is None and backend.current(second) is None
    assert line.leave(bob)
    taken = carol.acquire_lease()  # nobody waits now: as before
    assert set(taken.members) == {first, second}
    carol.release(taken.id)
    assert _leftovers(backend, first) == []


class _Counted:
    """A backend that notes each store operation made through it."""

    OPERATIONS = frozenset(
        {"acquire_lease", "acquire_unless", "current", "current_many", "list_prefix"}
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.backend, name)
        if name not in self.OPERATIONS:
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return value(*args, **kwargs)

        return counted


def test_an_acquire_nobody_waits_for_asks_the_store_once_where_it_can(
    backend: Backend,
) -> None:
    """The line's mark guards the acquire in the change itself where the
    store can (one round trip); elsewhere it is read first. A mark that is
    up still sends the acquire to the line."""
    if not has_line(backend):
        return
    resource = _name()
    counted = _Counted(backend)
    lease = StormLock(counted, resource, "carol").acquire_lease()  # type: ignore[arg-type]
    one_step = getattr(backend, "guards_in_one_step", False)
    assert counted.calls == (
        ["acquire_unless"] if one_step else ["current", "acquire_lease"]
    )
    backend.release_lease(resource, lease.id)
    line = Line(backend, resource)
    bob = line.join("bob")
    with pytest.raises(InLine):
        StormLock(backend, resource, "carol").acquire_lease()
    assert backend.current(resource) is None
    line.leave(bob)


def test_a_wait_in_line_leaves_nothing_behind(backend: Backend) -> None:
    """A waiter joins, takes the lease on release, and its ticket (and the
    counter that numbered it) is gone; the line is empty again."""
    resource = _name()
    holder = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    lock = StormLock(backend, resource, "bob")
    taken: list[object] = []

    def wait() -> None:
        taken.append(lock.acquire_lease(wait=timedelta(seconds=60)))

    waiter = threading.Thread(target=wait)
    waiter.start()
    if has_line(backend):
        _until(lambda: len(Line(backend, resource).waiting()) == 1, "bob is in line")
    backend.release_lease(resource, holder.id)
    waiter.join(timeout=90)
    assert not waiter.is_alive()
    lease = backend.current(resource)
    assert lease is not None and lease.principal == "bob" and taken
    if has_line(backend):
        assert _leftovers(backend, resource) == []
        assert Line(backend, resource).waiting() == []


def test_the_line_is_in_history(backend: Backend) -> None:
    """Joining, leaving and taking a turn are history: who, when, why."""
    if not has_line(backend) or not backend.supports(Feature.HISTORY):
        return  # documented: no line, or no history to keep it in
    resource = _name()
    holder = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    line = Line(backend, resource)
    dave = line.join("dave", "just looking", "cli")
    assert line.leave(dave)
    taken: list[object] = []
    waiter = threading.Thread(
        target=lambda: taken.append(
            StormLock(backend, resource, "bob").acquire_lease(
                note="deploy", wait=timedelta(seconds=60)
            )
        )
    )
    waiter.start()
    _until(lambda: len(line.waiting()) == 1, "bob is in line")
    backend.release_lease(resource, holder.id)
    waiter.join(timeout=90)
    assert taken
    told = [(e.event, e.principal) for e in line_events(backend, resource)]
    assert told == [
        ("joined", "dave"),
        ("left", "dave"),
        ("joined", "bob"),
        ("took", "bob"),
    ]
    events = line_events(backend, resource)
    assert events[0].note == "just looking" and events[0].source == "cli"
    assert events[2].fence == events[3].fence > events[0].fence  # ticket numbers
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert line_events(backend, _name()) == []  # another resource's: none


def test_a_release_wakes_the_first_in_line_where_the_store_can(
    backend: Backend,
) -> None:
    """A store with its own notice (`watch_freed`: Redis pub/sub, PostgreSQL
    NOTIFY, an etcd watch) wakes the head on a release of its resource while
    someone is in its line, not on its next poll; only on that release."""
    watch_freed = getattr(backend, "watch_freed", None)
    if watch_freed is None:
        return  # documented: the head polls every 50 ms
    resource, other = _name(), _name()
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    unrelated = backend.acquire_lease(other, "bob", timedelta(minutes=5))
    for name in (resource, other):  # someone waits for each
        Line(backend, name).join("carol", None, "library")
    watch = watch_freed(resource)
    try:
        assert not watch.wait(0.2), "woken with nothing freed"
        assert backend.release_lease(other, unrelated.id)
        assert not watch.wait(0.2), "woken by another resource's release"
        assert backend.release_lease(resource, lease.id)
        assert watch.wait(10), "the release did not wake the watch"
    finally:
        watch.close()


def test_waiters_are_served_once_each_in_arrival_order(
    backend_config: BackendConfig, backend: Backend
) -> None:
    """20 processes join the line one after another while the resource is
    held; on release each takes it exactly once, in arrival order, never two
    at once, with rising fences."""
    if not has_line(backend):
        return  # documented: backoff, in no particular order
    resource = _name()
    holder = backend.acquire_lease(resource, "holder", timedelta(minutes=5))
    procs, gos, results = _waiters(backend_config, resource, WAITERS, None)
    line = Line(backend, resource)
    try:
        _arrive(line, gos)
        arrival = [ticket.principal for ticket in line.waiting()]
        assert arrival == [f"waiter-{i}" for i in range(WAITERS)]
        backend.release_lease(resource, holder.id)
        reports: list[tuple[Any, ...]] = []
        while len(reports) < 2 * WAITERS:
            try:
                report = results.get(timeout=120)
            except queue.Empty:
                pytest.fail(f"the line stalled after {len(reports)} reports")
            if report[0] == "failed":
                pytest.fail(f"waiter {report[1]} failed: {report[2]}")
            reports.append(report)
    finally:
        _stop(procs)
    took = sorted((r for r in reports if r[0] == "took"), key=lambda r: r[2])
    released = {r[1]: r[2] for r in reports if r[0] == "released"}
    assert [r[1] for r in took] == list(range(WAITERS)), "not in arrival order"
    fences = [r[3] for r in took]
    assert fences == sorted(fences) and len(set(fences)) == WAITERS
    for before, after in itertools.pairwise(took):
        assert after[2] >= released[before[1]], "two holders at once"
    assert backend.current(resource) is None
    assert _leftovers(backend, resource) == []


def test_a_killed_waiter_stalls_the_line_only_until_its_ticket_lapses(
    backend_config: BackendConfig, backend: Backend
) -> None:
    """The first in line is SIGKILLed: once its ticket (2 s here) lapses,
    the next takes the lease."""
    if not has_line(backend):
        return
    resource = _name()
    holder = backend.acquire_lease(resource, "holder", timedelta(minutes=5))
    procs, gos, results = _waiters(backend_config, resource, 2, 2.0)
    line = Line(backend, resource)
    try:
        _arrive(line, gos)
        assert procs[0].pid is not None
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(timeout=30)
        backend.release_lease(resource, holder.id)
        try:
            report = results.get(timeout=60)  # far past the 2 s ticket
        except queue.Empty:
            pytest.fail("the line stayed stuck behind a dead waiter")
        assert report[:2] == ("took", 1), report
        assert results.get(timeout=60)[:2] == ("released", 1)
    finally:
        _stop(procs)
    _until(lambda: _leftovers(backend, resource) == [], "the dead ticket lapsed")
