"""The backend contract, as tests: run unchanged against every backend on a
real server, and against plugins (`from stormlock.testing.conformance import *`).

Where a backend lacks an optional feature (notes, listing), the test checks
the documented fallback instead of skipping.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest

from stormlock import Backend, Lease, LockExpiredException, LockHeldException
from stormlock.backend import current_many, release_and_look
from stormlock.contract import Feature, complete
from stormlock.errors import InvalidTTL, UnsupportedOperation
from stormlock.testing.backends import BackendConfig, short_ttl, wait_for_expiry
from stormlock.testing.race_worker import race
from stormlock.times import utcnow


def released(result: bool | None, expected: bool) -> bool:
    """A backend without a native `release_lease` may not know (None)."""
    return result is None or result is expected


def cannot_list(backend: Backend) -> bool:
    """True, having checked the documented fallback, if `backend` cannot list."""
    if backend.supports(Feature.LIST):
        return False
    with pytest.raises(UnsupportedOperation):
        backend.list_leases()
    return True


def unchanged(current: Lease | None, lease: Lease) -> bool:
    """`current` is still `lease` (a five-method plugin may omit the expiry)."""
    return (
        current is not None
        and current.id == lease.id
        and current.expires in (None, lease.expires)
    )


MALFORMED_IDS = [
    "",
    "garbage",
    "not-a-uuid-at-all-0000000000000000",
    "'; DROP TABLE stormlock_leases; --",
    "00" * 100,
    "é",
    "\x00",
    "*",
]


def test_after_the_reported_expiry_the_lease_is_over_and_free_soon(
    make_backend: Callable[[], Backend], resource: str
) -> None:
    holder, other = make_backend(), make_backend()
    lease = holder.acquire_lease(resource, "alice", short_ttl(holder))
    assert lease.expires is not None
    time.sleep(max(0.0, (lease.expires - utcnow()).total_seconds()))
    # Right at the reported expiry the holder's lease is over...
    assert not holder.is_current(resource, lease.id)
    with pytest.raises(LockExpiredException):
        holder.renew_lease(resource, lease.id, timedelta(minutes=5))
    # ...and another client gets the resource within the stated precision.
    limit = (
        lease.expires
        + holder.capabilities.expiry_precision
        + timedelta(milliseconds=500)
    )
    while True:
        try:
            taken = other.acquire_lease(resource, "bob", timedelta(minutes=5))
            break
        except LockHeldException:
            assert utcnow() < limit, "not free within the stated precision"
            time.sleep(0.02)
    assert taken.fence > lease.fence


def test_acquire_returns_the_whole_lease(backend: Backend, resource: str) -> None:
    before = utcnow()
    lease = backend.acquire_lease(resource, "alice", timedelta(hours=1), "terraform")
    notes = backend.supports(Feature.NOTES)
    assert lease.resource == resource
    assert lease.principal == "alice"
    assert lease.note == ("terraform" if notes else None)
    assert lease.fence >= 1
    assert uuid.UUID(lease.id).version == 4
    assert lease.expires is not None
    span = lease.expires - lease.created
    assert timedelta(minutes=59) < span <= timedelta(hours=1, seconds=1)
    assert abs((lease.created - before).total_seconds()) < 30
    current = backend.current(resource)
    assert current is not None
    current = complete(current, resource)
    assert (current.id, current.principal, current.note, current.fence) == (
        lease.id,
        "alice",
        lease.note,
        lease.fence,
    )
    assert backend.is_current(resource, lease.id)


def test_lease_ids_are_unique_random_uuids(backend: Backend) -> None:
    ids = {
        backend.acquire_lease(f"u-{uuid.uuid4().hex}", "a", timedelta(minutes=5)).id
        for _ in range(20)
    }
    assert len(ids) == 20
    assert all(uuid.UUID(lease_id).version == 4 for lease_id in ids)


def test_second_acquire_reports_the_holder(backend: Backend, resource: str) -> None:
    first = backend.acquire_lease(resource, "alice", timedelta(hours=1), "db patch")
    with pytest.raises(LockHeldException) as info:
        backend.acquire_lease(resource, "bob", timedelta(hours=1))
    held = info.value
    assert held.resource == resource
    assert held.lease is not None
    assert held.principal == "alice"
    if backend.supports(Feature.NOTES):
        assert held.lease.note == "db patch"
        assert held.lease.expires == first.expires
    assert abs((held.lease.created - first.created).total_seconds()) < 0.01
    assert backend.is_current(resource, first.id)


def test_seed_lock_returns_a_lease_id(backend: Backend, resource: str) -> None:
    lease_id = backend.lock(resource, "alice", timedelta(minutes=5))
    assert backend.is_current(resource, lease_id)
    backend.renew(resource, lease_id, timedelta(minutes=5))
    backend.unlock(resource, lease_id)
    assert backend.current(resource) is None


def test_expired_lease_can_be_acquired_again(backend: Backend, resource: str) -> None:
    old = backend.acquire_lease(resource, "alice", short_ttl(backend))
    wait_for_expiry(backend, resource)
    assert not backend.is_current(resource, old.id)
    new = backend.acquire_lease(resource, "bob", timedelta(minutes=5))
    assert new.principal == "bob"
    assert new.fence > old.fence
    if keeps_no_history(backend):
        return
    # History derives the expiry (nobody recorded it) from the lease's end.
    acquired, expired, again = backend.history(resource)
    assert [e.event for e in (acquired, expired, again)] == [
        "acquired",
        "expired",
        "acquired",
    ]
    assert expired.derived and expired.time == acquired.until
    assert (expired.principal, expired.fence) == ("alice", old.fence)


def test_renew_extends_the_lease(backend: Backend, resource: str) -> None:
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    renewed = backend.renew_lease(resource, lease.id, timedelta(hours=2))
    assert renewed.id == lease.id
    assert renewed.fence == lease.fence
    assert lease.expires is not None and renewed.expires is not None
    assert renewed.expires - lease.expires > timedelta(minutes=100)
    current = backend.current(resource)
    assert unchanged(current, renewed)


def test_renew_keeps_a_short_lease_alive(backend: Backend, resource: str) -> None:
    ttl = short_ttl(backend) * 2
    lease = backend.acquire_lease(resource, "alice", ttl)
    deadline = time.monotonic() + ttl.total_seconds() * 1.5
    while time.monotonic() < deadline:
        backend.renew_lease(resource, lease.id, ttl)
        time.sleep(ttl.total_seconds() / 4)
    assert backend.is_current(resource, lease.id)


def test_renew_of_expired_lease_fails(backend: Backend, resource: str) -> None:
    lease = backend.acquire_lease(resource, "alice", short_ttl(backend))
    wait_for_expiry(backend, resource)
    with pytest.raises(LockExpiredException):
        backend.renew_lease(resource, lease.id, timedelta(minutes=5))
    assert backend.current(resource) is None


def test_renew_with_another_id_changes_nothing(backend: Backend, resource: str) -> None:
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    with pytest.raises(LockExpiredException):
        backend.renew_lease(resource, str(uuid.uuid4()), timedelta(hours=5))
    current = backend.current(resource)
    assert unchanged(current, lease)


@pytest.mark.parametrize("bad_id", MALFORMED_IDS)
def test_malformed_ids_match_no_lease(
    backend: Backend, resource: str, bad_id: str
) -> None:
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    assert not backend.is_current(resource, bad_id)
    with pytest.raises(LockExpiredException):
        backend.renew_lease(resource, bad_id, timedelta(hours=5))
    assert backend.release_lease(resource, bad_id) in (False, None)
    assert unchanged(backend.current(resource), lease)


def test_release_only_your_own_lease(backend: Backend, resource: str) -> None:
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    assert released(backend.release_lease(resource, str(uuid.uuid4())), False)
    assert backend.is_current(resource, lease.id)
    assert released(backend.release_lease(resource, lease.id), True)
    assert backend.current(resource) is None
    assert released(backend.release_lease(resource, lease.id), False)


def test_release_of_expired_lease_is_not_an_error(
    backend: Backend, resource: str
) -> None:
    lease = backend.acquire_lease(resource, "alice", short_ttl(backend))
    wait_for_expiry(backend, resource)
    assert released(backend.release_lease(resource, lease.id), False)
    backend.unlock(resource, lease.id)


def test_release_of_unknown_resource_is_not_an_error(backend: Backend) -> None:
    assert released(backend.release_lease("never-used", str(uuid.uuid4())), False)


def test_fence_increases_through_release_and_expiry(
    backend: Backend, resource: str
) -> None:
    fences = []
    for _ in range(3):
        lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
        fences.append(lease.fence)
        backend.release_lease(resource, lease.id)
    expiring = backend.acquire_lease(resource, "alice", short_ttl(backend))
    fences.append(expiring.fence)
    wait_for_expiry(backend, resource)
    fences.append(backend.acquire_lease(resource, "bob", timedelta(minutes=5)).fence)
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)


def test_list_shows_exactly_the_active_leases(backend: Backend) -> None:
    if cannot_list(backend):
        return
    assert backend.list_leases() == []
    a = backend.acquire_lease("list-a", "alice", timedelta(minutes=5), "note a")
    b = backend.acquire_lease("list-b", "bob", timedelta(minutes=5))
    c = backend.acquire_lease("list-c", "carol", timedelta(minutes=5))
    short = backend.acquire_lease("list-d", "dave", short_ttl(backend))
    backend.release_lease("list-b", b.id)
    wait_for_expiry(backend, "list-d")
    listed = backend.list_leases()
    assert [lease.resource for lease in listed] == ["list-a", "list-c"]
    assert [lease.id for lease in listed] == [a.id, c.id]
    assert listed[0].note == "note a"
    assert listed[0].principal == "alice"
    assert listed[0].expires == a.expires
    assert short.id not in {lease.id for lease in listed}


@pytest.mark.parametrize(
    "name",
    [
        "prod-db",
        "eu-west-1/terraform",
        "ÄÖÜ-数据库",
        "a*b?[c]",
        "x'; DROP TABLE t; --",
        "%s%d{}",
        "a" * 200,
    ],
)
def test_any_valid_resource_name_works(backend: Backend, name: str) -> None:
    lease = backend.acquire_lease(name, "alice", timedelta(minutes=5), "n")
    assert backend.is_current(name, lease.id)
    current = backend.current(name)
    assert current is not None and complete(current, name).resource == name
    if backend.supports(Feature.LIST):
        assert name in [lease.resource for lease in backend.list_leases()]
    assert released(backend.release_lease(name, lease.id), True)


def test_note_round_trips(backend: Backend, resource: str) -> None:
    note = "applying terraform: ticket #123 — ünïcødé, 'quotes' and \"more\""
    backend.acquire_lease(resource, "alice", timedelta(minutes=5), note)
    current = backend.current(resource)
    assert current is not None
    assert current.note == (note if backend.supports(Feature.NOTES) else None)
    other = "other-" + resource
    backend.acquire_lease(other, "alice", timedelta(minutes=5))
    current = backend.current(other)
    assert current is not None and current.note is None


def test_a_ttl_below_the_floor_is_refused_and_a_refused_renewal_keeps_the_lease(
    backend: Backend, resource: str
) -> None:
    floor = backend.capabilities.min_ttl
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    if floor > timedelta(0):
        for tiny in (timedelta(microseconds=100), floor - timedelta(microseconds=1)):
            with pytest.raises(InvalidTTL):
                backend.renew_lease(resource, lease.id, tiny)
            with pytest.raises(InvalidTTL):
                backend.acquire_lease("other-" + resource, "bob", tiny)
        assert backend.current("other-" + resource) is None
    # A renewal the store refuses (a wrong id) leaves the lease as it was.
    with pytest.raises(LockExpiredException):
        backend.renew_lease(resource, "0" * 32, timedelta(minutes=9))
    assert backend.is_current(resource, lease.id)
    kept = backend.current(resource)
    assert kept is not None
    if kept.expires and lease.expires:  # not moved (a plugin may round it)
        assert abs(kept.expires - lease.expires) < timedelta(seconds=1)
    short = max(floor, timedelta(seconds=1))
    renewed = backend.renew_lease(resource, lease.id, short)
    assert renewed.expires is not None and renewed.expires > renewed.created
    wait_for_expiry(backend, resource)
    backend.acquire_lease(resource, "bob", short)


def race_threads(backend: Backend, resource: str, racers: int) -> list[str]:
    """`racers` threads try to acquire `resource` at once; returns the winners."""
    barrier = threading.Barrier(racers)
    winners: list[str] = []
    errors: list[BaseException] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            winners.append(
                backend.acquire_lease(resource, f"t{i}", timedelta(minutes=5)).id
            )
        except LockHeldException:
            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return winners


def test_backend_is_thread_safe_and_exactly_one_thread_wins(
    backend: Backend,
) -> None:
    for round_ in range(15):
        resource = f"thread-race-{round_}"
        winners = race_threads(backend, resource, 20)
        assert len(winners) == 1, f"round {round_}: {len(winners)} winners"
        assert backend.is_current(resource, winners[0])


@pytest.mark.slow
def test_exactly_one_process_wins_each_round(
    backend_config: BackendConfig, backend: Backend
) -> None:
    """16 processes race for fresh resources, then for expired ones."""
    racers = 16
    fresh = [f"proc-fresh-{i}" for i in range(6)]
    expired = [f"proc-expired-{i}" for i in range(6)]
    for resource in expired:
        backend.acquire_lease(resource, "previous", short_ttl(backend))
    resources = fresh + expired
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=race,
            args=(
                backend_config.name,
                backend_config.options,
                resources,
                barrier,
                results,
                i,
            ),
        )
        for i in range(racers)
    ]
    for resource in expired:
        wait_for_expiry(backend, resource)
    for proc in procs:
        proc.start()
    outcomes: dict[int, list[str]] = {i: [] for i in range(len(resources))}
    fences: dict[int, int] = {}
    for _ in range(racers * len(resources)):
        try:
            round_, _worker, lease_id, fence = results.get(timeout=120)
        except queue.Empty:
            pytest.fail("a racing process stopped reporting")
        if lease_id is not None:
            outcomes[round_].append(lease_id)
            fences[round_] = fence
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    for round_, winners in outcomes.items():
        assert len(winners) == 1, f"{resources[round_]}: {len(winners)} winners"
        assert backend.is_current(resources[round_], winners[0])
    if not cannot_list(backend):
        assert len(backend.list_leases()) == len(resources)


def test_closed_backend_can_be_reopened(
    make_backend: Callable[[], Backend], resource: str
) -> None:
    first = make_backend()
    lease = first.acquire_lease(resource, "alice", timedelta(minutes=5))
    first.close()
    second = make_backend()
    assert second.is_current(resource, lease.id)


def test_list_expiring_returns_only_what_is_due(backend: Backend) -> None:
    if cannot_list(backend):
        return
    soon = backend.acquire_lease("exp-soon", "a", timedelta(minutes=5))
    later = backend.acquire_lease("exp-later", "b", timedelta(hours=5))
    gone = backend.acquire_lease("exp-gone", "c", timedelta(minutes=5))
    backend.release_lease("exp-gone", gone.id)
    due = backend.list_expiring(utcnow() + timedelta(minutes=10))
    assert [lease.id for lease in due] == [soon.id]
    both = backend.list_expiring(utcnow() + timedelta(hours=6))
    assert [lease.id for lease in both] == [soon.id, later.id], "soonest first"
    assert backend.list_expiring(utcnow()) == []


def test_list_prefix_returns_only_matching_leases(backend: Backend) -> None:
    if cannot_list(backend):
        return
    wanted = [
        backend.acquire_lease(name, "a", timedelta(minutes=5))
        for name in (".stormlock/wait/1", ".stormlock/wait/2", ".stormlock/wait/é")
    ]
    for name in (".stormlock/waiting", ".stormlock/sent/1", "wait/1", "plain"):
        backend.acquire_lease(name, "b", timedelta(minutes=5))
    found = backend.list_prefix(".stormlock/wait/")
    assert [lease.id for lease in found] == [lease.id for lease in wanted]
    assert backend.list_prefix(".stormlock/none/") == []


def test_reading_several_at_once_reads_each_as_current_does(
    backend: Backend, resource: str
) -> None:
    gone = f"{resource}-gone"
    backend.acquire_lease(gone, "carol", short_ttl(backend))
    held = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    record = backend.acquire_lease(
        f".stormlock/waiting/{resource}", "bot", timedelta(minutes=5)
    )
    wait_for_expiry(backend, gone)
    names = [
        f".stormlock/line-mark/{resource}",  # never taken
        resource,
        gone,
        f".stormlock/waiting/{resource}",
        resource,  # asked twice: answered twice
    ]
    found = current_many(backend, names)
    assert found == [backend.current(name) for name in names]
    assert [lease.id if lease else None for lease in found] == [
        None,
        held.id,
        None,
        record.id,
        held.id,
    ]
    assert current_many(backend, []) == []


def test_a_release_and_a_look_read_what_the_release_left(
    backend: Backend, resource: str
) -> None:
    """`release_and_look` (the helper: a plugin need not have it) releases,
    then reads each name as `current` would after the release."""
    mark, other = f".stormlock/line-mark/{resource}", f"{resource}-other"
    held = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    marked = backend.acquire_lease(mark, "bob", timedelta(minutes=5))
    done, found = release_and_look(backend, resource, held.id, [resource, mark, other])
    assert released(done, True)
    assert found == [None, backend.current(mark), None]
    assert found[1] is not None and found[1].id == marked.id
    done, found = release_and_look(backend, resource, held.id, [resource])
    assert released(done, False) and found == [None]
    again = backend.acquire_lease(resource, "carol", timedelta(minutes=5))
    done, found = release_and_look(backend, resource, "not-a-lease-id", [resource])
    assert released(done, False) and len(found) == 1 and unchanged(found[0], again)
    if backend.supports(Feature.SETS):  # a member's release is its set's
        names = (f"{resource}-a", f"{resource}-b")
        taken = backend.acquire_set(names, "dave", timedelta(minutes=5))
        done, found = release_and_look(backend, names[0], taken[0].id, names)
        assert released(done, True) and found == [None, None]


def test_acquire_unless_a_guard_is_held_changes_nothing_while_it_is(
    backend: Backend, resource: str
) -> None:
    unless = getattr(backend, "acquire_unless", None)
    if unless is None:
        return  # optional: the lock reads the guard first instead
    guard = f".stormlock/line-mark/{resource}"
    mark = backend.acquire_lease(guard, "waiter", short_ttl(backend))
    assert unless(resource, guard, "alice", timedelta(minutes=5)) is None
    assert backend.current(resource) is None
    if not keeps_no_history(backend):
        assert backend.history(resource) == []
    wait_for_expiry(backend, guard)
    taken = unless(resource, guard, "alice", timedelta(minutes=5), "a note")
    assert taken is not None and backend.current(resource) == taken
    assert backend.supports(Feature.NOTES) is False or taken.note == "a note"
    with pytest.raises(LockHeldException) as held:
        unless(resource, guard, "bob", timedelta(minutes=5))
    assert held.value.lease is not None and held.value.principal == "alice"
    backend.acquire_lease(guard, "waiter", timedelta(minutes=5))
    assert unless(resource, guard, "bob", timedelta(minutes=5)) is None
    assert backend.current(resource) == taken
    assert mark.fence > 0


# -- history ---------------------------------------------------------------------


def keeps_no_history(backend: Backend) -> bool:
    """True, having checked the documented fallback, if `backend` keeps no
    history (a plugin without it keeps working; only history() refuses)."""
    if backend.supports(Feature.HISTORY):
        return False
    with pytest.raises(UnsupportedOperation):
        backend.history()
    return True


def test_history_records_each_change_with_what_it_was(
    backend: Backend, resource: str
) -> None:
    if keeps_no_history(backend):
        return
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5), "deploy")
    renewed = backend.renew_lease(resource, lease.id, timedelta(minutes=10))
    assert backend.release_lease(resource, lease.id)
    events = backend.history(resource)
    assert [e.event for e in events] == ["acquired", "renewed", "released"]
    for event in events:
        assert (event.resource, event.principal, event.actor) == (
            resource,
            "alice",
            "alice",
        )
        assert (event.note, event.fence, event.source) == (
            "deploy",
            lease.fence,
            "library",
        )
        assert lease.id not in repr(event) and lease.id not in str(event.as_dict())
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert abs(events[0].time - lease.created) < timedelta(seconds=2)
    assert events[0].until is not None and lease.expires is not None
    assert abs(events[0].until - lease.expires) < timedelta(seconds=2)
    assert events[1].until is not None and renewed.expires is not None
    assert abs(events[1].until - renewed.expires) < timedelta(seconds=2)


def test_history_names_who_forced_a_release_and_from_where(
    backend: Backend, resource: str
) -> None:
    if keeps_no_history(backend):
        return
    from stormlock.history import acting

    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    with acting(actor="carol", source="slack", forced=True):
        backend.release_lease(resource, lease.id)
    [_, forced] = backend.history(resource)
    assert (forced.event, forced.principal, forced.actor, forced.source) == (
        "forced",
        "alice",
        "carol",
        "slack",
    )


def test_history_keeps_the_channel_a_change_was_announced_in(
    backend: Backend, resource: str
) -> None:
    """The bot recovers an announcement it died before sending from this."""
    if keeps_no_history(backend):
        return
    from stormlock.history import acting

    with acting(actor="alice", source="slack", channel="C0123ABC"):
        lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    backend.release_lease(resource, lease.id)
    taken, released = backend.history(resource)
    assert (taken.source, taken.channel) == ("slack", "C0123ABC")
    assert (released.source, released.channel) == ("library", None)
    assert "channel" not in taken.as_dict()


def test_history_has_nothing_for_changes_that_failed(
    backend: Backend, resource: str
) -> None:
    if keeps_no_history(backend):
        return
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    with pytest.raises(LockHeldException):
        backend.acquire_lease(resource, "bob", timedelta(minutes=5))
    other = str(uuid.uuid4())
    with pytest.raises(LockExpiredException):
        backend.renew_lease(resource, other, timedelta(minutes=5))
    assert released(backend.release_lease(resource, other), False)
    assert [e.event for e in backend.history(resource)] == ["acquired"]
    assert backend.history(resource)[0].fence == lease.fence


def test_history_reads_the_newest_events_and_filters(
    backend: Backend, resource: str
) -> None:
    if keeps_no_history(backend):
        return
    for n in range(12):
        lease = backend.acquire_lease(resource, f"p{n % 3}", timedelta(minutes=5))
        backend.release_lease(resource, lease.id)
    last = backend.history(resource, limit=5)
    everything = backend.history(resource)
    assert len(everything) == 24 and last == everything[-5:]
    mine = backend.history(resource, principal="P1")
    assert len(mine) == 8 and {e.principal for e in mine} == {"p1"}
    assert backend.history(resource, since=utcnow() + timedelta(minutes=1)) == []


def test_history_of_concurrent_changes_has_one_event_each(backend: Backend) -> None:
    if keeps_no_history(backend):
        return
    tag = uuid.uuid4().hex[:6]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(2):
                lease = backend.acquire_lease(
                    f"c{tag}-{n}", f"p{n}", timedelta(minutes=5)
                )
                backend.release_lease(f"c{tag}-{n}", lease.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    everyone = [e for e in backend.history() if e.resource.startswith(f"c{tag}-")]
    assert len(everyone) == 32
    for n in range(8):
        events = backend.history(f"c{tag}-{n}")
        assert [e.event for e in events] == ["acquired", "released"] * 2
        assert {e.principal for e in events} == {f"p{n}"}


def test_history_retention_hides_old_events_and_none_turns_it_off(
    backend: Backend, resource: str
) -> None:
    if keeps_no_history(backend):
        return
    backend.history_retention = timedelta(seconds=0.5)
    lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
    backend.release_lease(resource, lease.id)
    time.sleep(0.6)  # the retention is a span of time: let it pass
    lease = backend.acquire_lease(resource, "bob", timedelta(minutes=5))
    backend.release_lease(resource, lease.id)
    assert [e.principal for e in backend.history(resource)] == ["bob", "bob"]
    backend.history_retention = None
    lease = backend.acquire_lease(resource, "carol", timedelta(minutes=5))
    backend.release_lease(resource, lease.id)
    assert all(e.principal != "carol" for e in backend.history(resource))


# Sets (one lease on several resources) are part of the kit.
# The line (first in, first out, with handoff) too.
from stormlock.testing.conformance_line import *  # noqa: E402, F403
from stormlock.testing.conformance_sets import *  # noqa: E402, F403
