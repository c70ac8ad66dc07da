"""The contract for sets (one lease on several resources, all or nothing),
part of the conformance kit: `from stormlock.testing.conformance import *`
brings these in too.

A backend with native sets (`supports(Feature.SETS)`) takes them in one
transaction; a plugin without gets the documented fallback, and these tests
check that instead.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import uuid
from collections import defaultdict
from datetime import timedelta

import pytest

from stormlock import Backend
from stormlock import LockExpiredException as LockExpired
from stormlock.contract import Feature, SetHeld, complete
from stormlock.history import acting
from stormlock.sets import MAX_SET, check_set
from stormlock.testing.backends import BackendConfig, short_ttl, wait_for_expiry
from stormlock.testing.race_worker import race_sets

__all__ = [
    "set_race_seconds",
    "test_a_malformed_or_foreign_id_changes_no_member",
    "test_a_member_names_the_whole_set",
    "test_a_set_is_all_or_nothing",
    "test_a_set_is_one_lease_with_a_fence_per_member",
    "test_a_set_of_the_most_members",
    "test_a_sets_history_is_one_change_announced_once",
    "test_expiry_frees_every_member",
    "test_fences_rise_for_every_member",
    "test_overlapping_sets_race_without_two_holders_or_parts",
    "test_renew_release_and_is_current_act_on_every_member",
]


def members(count: int = 3) -> tuple[str, ...]:
    tag = uuid.uuid4().hex[:8]
    return check_set([f"set-{tag}-{i}" for i in range(count)])


def test_a_set_is_one_lease_with_a_fence_per_member(backend: Backend) -> None:
    names = members()
    leases = backend.acquire_set(names, "alice", timedelta(minutes=5), "migration")
    assert [lease.resource for lease in leases] == list(names)
    assert len({lease.id for lease in leases}) == 1
    assert all(lease.members == names for lease in leases)
    assert all(lease.fence > 0 for lease in leases)
    assert backend.is_current_set(names, leases[0].id)
    for name in names:
        current = backend.current(name)
        assert current is not None and current.principal == "alice"
        if backend.supports(Feature.SETS):
            assert current.id == leases[0].id
            assert current.members == names  # any member shows the whole lease
            assert complete(current, name).fence == next(
                lease.fence for lease in leases if lease.resource == name
            )


def test_a_set_is_all_or_nothing(backend: Backend) -> None:
    names = members(4)
    held = backend.acquire_lease(names[2], "bob", timedelta(minutes=5), "hotfix")
    with pytest.raises(SetHeld) as refused:
        backend.acquire_set(names, "alice", timedelta(minutes=5))
    assert [h.resource for h in refused.value.holders] == [names[2]]
    assert refused.value.holders[0].principal == "bob"
    assert "bob" in str(refused.value) and "nothing taken" in str(refused.value)
    for name in names:
        current = backend.current(name)
        if name == names[2]:
            assert current is not None and current.id == held.id
        else:
            assert current is None, f"{name} was left taken"


def test_renew_release_and_is_current_act_on_every_member(backend: Backend) -> None:
    names = members()
    leases = backend.acquire_set(names, "alice", timedelta(seconds=30))
    lease_id = leases[0].id
    renewed = backend.renew_set(names, lease_id, timedelta(hours=1))
    assert [lease.resource for lease in renewed] == list(names)
    assert all(lease.id == lease_id for lease in renewed)
    for lease, before in zip(renewed, leases, strict=True):
        assert lease.expires is not None and before.expires is not None
        assert lease.expires > before.expires + timedelta(minutes=50)
    assert backend.release_set(names, lease_id) is not False
    assert not backend.is_current_set(names, lease_id)
    assert all(backend.current(name) is None for name in names)
    with pytest.raises(LockExpired):
        backend.renew_set(names, lease_id, timedelta(minutes=5))
    # Released: released again changes nothing, and is no error.
    assert backend.release_set(names, lease_id) in (False, None)


def test_a_member_names_the_whole_set(backend: Backend) -> None:
    """`renew prod-db ID` renews all of prod-db's set, and so on."""
    if not backend.supports(Feature.SETS):
        return  # documented: a plugin's set is addressed by all its members
    names = members()
    lease_id = backend.acquire_set(names, "alice", timedelta(seconds=30))[0].id
    backend.renew_lease(names[1], lease_id, timedelta(hours=1))
    for name in names:
        current = backend.current(name)
        assert current is not None and current.expires is not None
        assert current.expires - current.created > timedelta(minutes=50)
    assert backend.is_current(names[0], lease_id)
    assert backend.release_lease(names[2], lease_id)
    assert all(backend.current(name) is None for name in names)


def test_expiry_frees_every_member(backend: Backend) -> None:
    names = members()
    backend.acquire_set(names, "alice", short_ttl(backend))
    for name in names:
        wait_for_expiry(backend, name)
    taken = backend.acquire_set(names, "bob", timedelta(minutes=5))
    assert {lease.principal for lease in taken} == {"bob"}


def test_fences_rise_for_every_member(backend: Backend) -> None:
    names = members()
    first = backend.acquire_set(names, "alice", timedelta(minutes=5))
    backend.release_set(names, first[0].id)
    alone = backend.acquire_lease(names[0], "bob", timedelta(minutes=5))
    backend.release_lease(names[0], alone.id)
    second = backend.acquire_set(names, "carol", timedelta(minutes=5))
    for before, after in zip(first, second, strict=True):
        assert after.fence > before.fence
    assert second[0].fence > alone.fence > first[0].fence


def test_a_malformed_or_foreign_id_changes_no_member(backend: Backend) -> None:
    names = members()
    lease_id = backend.acquire_set(names, "alice", timedelta(minutes=5))[0].id
    other = backend.acquire_set(members(), "bob", timedelta(minutes=5))[0].id
    for wrong in ("", "garbage", "'; DROP TABLE x; --", other, "+".join([other] * 3)):
        assert not backend.is_current_set(names, wrong)
        assert backend.release_set(names, wrong) in (False, None)
        with pytest.raises(LockExpired):
            backend.renew_set(names, wrong, timedelta(minutes=5))
    assert backend.is_current_set(names, lease_id)


def test_a_set_of_the_most_members(backend: Backend) -> None:
    names = members(MAX_SET)
    leases = backend.acquire_set(names, "alice", timedelta(minutes=5), "all of it")
    assert len(leases) == MAX_SET
    lease_id = leases[0].id
    assert len(backend.renew_set(names, lease_id, timedelta(minutes=10))) == MAX_SET
    assert backend.release_set(names, lease_id) is not False
    assert all(backend.current(name) is None for name in names)


@pytest.fixture
def set_race_seconds() -> float:
    """How long the overlapping-sets race runs (a kit run may shorten it)."""
    return 30.0


@pytest.mark.slow
def test_overlapping_sets_race_without_two_holders_or_parts(
    backend_config: BackendConfig, backend: Backend, set_race_seconds: float
) -> None:
    """20 processes take random sets of 2-4 of 6 resources for a while: no
    resource ever has two holders, no refused process holds part of its set,
    every try returns (no deadlock: a stuck process fails the test), and each
    resource's fences rise. Without a line, a wide set can lose every race
    to narrower ones; that is [queue]'s to fix, so turns are not counted."""
    racers = 20
    tag = uuid.uuid4().hex[:8]
    pool = [f"ov-{tag}-{i}" for i in range(6)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=race_sets,
            args=(
                backend_config.name,
                backend_config.options,
                pool,
                set_race_seconds,
                barrier,
                results,
                i,
            ),
        )
        for i in range(racers)
    ]
    for proc in procs:
        proc.start()
    held: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
    turns: dict[int, int] = defaultdict(int)
    done = 0
    while done < racers:
        try:
            report = results.get(timeout=set_race_seconds + 120)
        except queue.Empty:
            pytest.fail("a racing process stopped reporting (waits forever?)")
        kind, worker = report[0], report[1]
        if kind == "held":
            _, _, taken, fences, start, end = report
            turns[worker] += 1
            for name in taken:
                held[name].append((start, end, fences[name], worker))
        elif kind == "part":
            pytest.fail(f"worker {worker} was refused but held {report[2]}")
        elif kind == "done":
            done += 1
        else:
            pytest.fail(f"worker {worker} failed: {report[2]}")
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    # Liveness only: behind the API, moto manages about one set a second.
    assert turns, "no set ever went through"
    for name, spans in held.items():
        spans.sort()
        for (_, end, fence, who), (start, _, later, whom) in itertools.pairwise(spans):
            assert start >= end, f"{name}: workers {who} and {whom} held it at once"
            assert later > fence, f"{name}: the fence fell from {fence} to {later}"
    assert all(backend.current(name) is None for name in pool)


def test_a_sets_history_is_one_change_announced_once(backend: Backend) -> None:
    """Every member's event is written with the change; only the first
    member's carries the channel, so the bot owes one announcement."""
    if not backend.supports(Feature.HISTORY):
        return  # documented: a plugin without history records nothing
    names = members()
    with acting("alice", "slack", channel="C0SETS"):
        lease_id = backend.acquire_set(names, "alice", timedelta(minutes=5))[0].id
        backend.release_set(names, lease_id)
    events = [e for e in backend.history() if e.resource in names]
    assert sorted((e.resource, e.event) for e in events) == sorted(
        (name, event) for name in names for event in ("acquired", "released")
    )
    announced = {(e.resource, e.event) for e in events if e.channel == "C0SETS"}
    assert announced == {(names[0], "acquired"), (names[0], "released")}
    assert {e.source for e in events} == {"slack"}
