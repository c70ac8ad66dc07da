"""Servers that go silent: every operation ends within `timeout`, on every
backend, and the same backend object works again once the server answers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock import Backend
from stormlock.contract import Feature, SetHeld
from stormlock.errors import BackendUnavailable, StormlockError
from stormlock.testing.backends import NETWORK_BACKENDS, BackendConfig, network_backend
from stormlock.testing.env import CliRunner
from stormlock.testing.faults import partition_proxy, redirect, silent_server
from tests.support import one_line_error

TIMEOUT = 0.75
# What a bounded wait may add to `timeout`: a broken connection failing at
# once, then the retry's own wait is cut to what is left of the budget.
SLACK = 0.75
ID = str(uuid.uuid4())


SET = ("f-set-1", "f-set-2", "f-set-3")


def operations(
    backend: Backend, lease_id: str, set_id: str | None = None
) -> dict[str, Callable[[], object]]:
    if set_id is None:  # the fallback's ids join the members' (one each)
        set_id = ID if backend.supports(Feature.SETS) else "+".join([ID] * len(SET))
    ops: dict[str, Callable[[], object]] = {
        "acquire_set": lambda: backend.acquire_set(
            ("f-new-1", "f-new-2"), "bob", timedelta(minutes=5)
        ),
        "renew_set": lambda: backend.renew_set(SET, set_id, timedelta(minutes=5)),
        "release_set": lambda: backend.release_set(SET, set_id),
        "acquire": lambda: backend.acquire_lease("f-new", "bob", timedelta(minutes=5)),
        "renew": lambda: backend.renew_lease("f-held", lease_id, timedelta(minutes=5)),
        "release": lambda: backend.release_lease("f-held", lease_id),
        "current": lambda: backend.current("f-held"),
        "is_current": lambda: backend.is_current("f-held", lease_id),
    }
    if backend.supports(Feature.LIST):
        ops["list"] = backend.list_leases
    return ops


def assert_bounded(operation: Callable[[], object]) -> None:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        operation()
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + SLACK, f"took {elapsed:.2f}s with timeout {TIMEOUT}s"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", NETWORK_BACKENDS)
def test_a_silent_server_costs_one_timeout_per_operation(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    options = network_backend(name, request, tmp_path)[0].options
    with silent_server() as silent:
        moved = redirect(name, options, silent.port)
        moved["timeout"] = str(TIMEOUT)
        backend = BackendConfig(name, moved).create()
        try:
            for operation in operations(backend, ID).values():
                assert_bounded(operation)
        finally:
            backend.close()


@pytest.mark.parametrize("name", NETWORK_BACKENDS)
def test_a_server_that_goes_silent_mid_connection_costs_one_timeout(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    config, port = network_backend(name, request, tmp_path)
    options = config.options
    with partition_proxy(port) as proxy:
        moved = redirect(name, options, proxy.port)
        moved["timeout"] = str(TIMEOUT)
        backend = BackendConfig(name, moved).create()
        try:
            held = backend.acquire_lease("f-held", "alice", timedelta(minutes=5))
            taken = backend.acquire_set(SET, "alice", timedelta(minutes=5))
            backend.current("f-held")  # pooled connections are established
            proxy.freeze()
            for operation in operations(backend, held.id, taken[0].id).values():
                assert_bounded(operation)
            proxy.thaw()
            # The same object recovers. (The held requests arrive late, as
            # after a real partition: the release may land now.)
            deadline = time.monotonic() + 30
            while True:
                try:
                    after = backend.acquire_lease(
                        f"f-{uuid.uuid4().hex}", "carol", timedelta(minutes=5)
                    )
                    break
                except BackendUnavailable:
                    assert time.monotonic() < deadline, "did not recover"
            assert backend.is_current(after.resource, after.id)
        finally:
            backend.close()


@pytest.mark.parametrize("name", NETWORK_BACKENDS)
def test_cli_against_a_silent_server_exits_70_within_the_timeout(
    name: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cli: CliRunner,
    write_config: Callable[[str], Path],
) -> None:
    options = network_backend(name, request, tmp_path)[0].options
    with silent_server() as silent:
        moved = redirect(name, options, silent.port)
        moved["timeout"] = str(TIMEOUT)
        path = write_config(BackendConfig(name, moved).ini())
        for args in (["acquire", "x"], ["current", "x"], ["renew", "x", ID]):
            started = time.monotonic()
            result = cli("-c", str(path), *args)
            elapsed = time.monotonic() - started
            assert result.returncode == 70, (args, result.stderr)
            one_line_error(result.stderr)
            # The interpreter's start-up comes on top of the store's budget.
            assert elapsed < TIMEOUT + SLACK + 2.0, f"{args}: {elapsed:.2f}s"


@pytest.mark.parametrize("name", [n for n in NETWORK_BACKENDS if n != "fivemethods"])
def test_an_answer_lost_while_taking_a_set_leaves_all_of_it_or_none(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The store takes the set (or not) and the answer never comes: after,
    every member is held with one id, or none is; never a part. (A plugin's
    fallback cannot promise it: a member whose answer was lost stays taken
    until its TTL, as docs/backends.md says.)"""
    config, port = network_backend(name, request, tmp_path)
    with partition_proxy(port) as proxy:
        moved = redirect(name, config.options, proxy.port)
        moved["timeout"] = str(TIMEOUT)
        backend = BackendConfig(name, moved).create()
        direct = config.create()
        try:
            for round_ in range(4):
                names = tuple(f"lost-{round_}-{i}" for i in range(3))
                backend.current(names[0])  # pooled connections are established
                proxy.lose_answers(round_ + 1)  # the first, or later, exchanges
                try:
                    backend.acquire_set(names, "alice", timedelta(minutes=5))
                except BackendUnavailable:
                    pass  # unknown, and said to be
                except SetHeld as refused:  # a retry found what the first took
                    assert "in your name" in str(refused)
                proxy.lose_answers(0)
                found = [direct.current(n) for n in names]
                held = [lease for lease in found if lease is not None]
                assert len(held) in (0, len(names)), f"part of the set: {held}"
                assert len({lease.id for lease in held}) <= 1
        finally:
            backend.close()
            direct.close()


@pytest.mark.parametrize("name", NETWORK_BACKENDS)
def test_a_partition_while_waiting_in_line_costs_the_wait_and_a_timeout(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The first in line (Redis: subscribed to the release) is cut off:
    its wait ends by its deadline plus one timeout, never a hang."""
    import threading

    from stormlock.line import Line, has_line
    from stormlock.lock import StormLock

    config, port = network_backend(name, request, tmp_path)
    with partition_proxy(port) as proxy:
        moved = redirect(name, config.options, proxy.port)
        moved["timeout"] = str(TIMEOUT)
        backend = BackendConfig(name, moved).create()
        direct = config.create()
        resource = f"f-line-{uuid.uuid4().hex[:8]}"
        try:
            direct.acquire_lease(resource, "alice", timedelta(minutes=5))
            wait = 3.0
            outcome: list[BaseException | object] = []

            def waiter() -> None:
                lock = StormLock(backend, resource, "bob", timedelta(minutes=5))
                try:
                    outcome.append(lock.acquire_lease(wait=timedelta(seconds=wait)))
                except BaseException as exc:  # reported below
                    outcome.append(exc)

            started = time.monotonic()
            thread = threading.Thread(target=waiter)
            thread.start()
            deadline = time.monotonic() + 30
            # (Without a line, as over http, bob retries with backoff.)
            while has_line(direct) and not Line(direct, resource).waiting():
                assert time.monotonic() < deadline, "bob never joined the line"
                time.sleep(0.02)
            proxy.freeze()
            thread.join(timeout=wait + 4 * TIMEOUT + 10)
            elapsed = time.monotonic() - started
            assert not thread.is_alive(), "the wait hung in the partition"
            assert elapsed < wait + 3 * TIMEOUT + SLACK + 1, f"{elapsed:.1f}s"
            assert outcome and isinstance(outcome[0], StormlockError), outcome
            assert "\n" not in str(outcome[0])
            assert direct.current(resource).principal == "alice"  # type: ignore[union-attr]
        finally:
            proxy.thaw()
            backend.close()
            direct.close()


def test_redis_says_nothing_changed_only_when_nothing_reached_it(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A refused connection sent nothing: "nothing changed" is true. An
    acquire whose answer was lost, then whose retry was refused, may have
    gone through (it did): that is unknown, and said to be."""
    config, port = network_backend("redis", request, tmp_path)
    refused = BackendConfig("redis", redirect("redis", config.options, 1)).create()
    with pytest.raises(BackendUnavailable) as never:
        refused.acquire_lease("db", "alice", timedelta(minutes=5))
    assert never.value.nothing_sent
    direct = config.create()
    with partition_proxy(port) as proxy:
        moved = redirect("redis", config.options, proxy.port)
        moved["timeout"] = str(TIMEOUT)
        backend = BackendConfig("redis", moved).create()
        # The pooled connection is made and the script loaded.
        backend.acquire_lease("warm-up", "alice", timedelta(minutes=5))
        proxy.lose_answers(1, then=proxy.refuse_new)
        with pytest.raises(BackendUnavailable) as lost:
            backend.acquire_lease("db", "alice", timedelta(minutes=5))
        assert not lost.value.nothing_sent
        held = direct.current("db")
        assert held is not None and held.principal == "alice"
    for each in (refused, backend, direct):
        each.close()


@pytest.mark.parametrize("name", NETWORK_BACKENDS)
def test_a_wake_opened_into_a_partition_gives_up_within_the_timeout(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The head of a line opens the store's wake-up (a watch, a
    subscription) just as the network goes silent: it polls instead, by
    `timeout`, and never waits on the silence."""
    from stormlock.line import wake_for

    config, port = network_backend(name, request, tmp_path)
    with partition_proxy(port) as proxy:
        moved = redirect(name, config.options, proxy.port)
        moved["timeout"] = str(TIMEOUT)
        backend = BackendConfig(name, moved).create()
        try:
            backend.current("f-wake")  # pooled connections are established
            proxy.freeze()
            started = time.monotonic()
            wake = wake_for(backend, "f-wake")
            elapsed = time.monotonic() - started
            if wake is not None:  # a wake-up that opened without the store
                wake.close()
            # PostgreSQL's LISTEN needs a connection of its own, and libpq
            # connects for at least 2 s (docs/backends.md).
            bound = max(TIMEOUT, 2.0) if name == "postgresql" else TIMEOUT
            assert elapsed < bound + SLACK, f"took {elapsed:.2f}s"
        finally:
            proxy.thaw()
            backend.close()


@pytest.mark.parametrize("name", NETWORK_BACKENDS)
def test_a_wake_outlives_the_timeout_when_nothing_happens(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The timeout bounds opening the wake-up, not the quiet after it: a
    release long after `timeout` still wakes the head."""
    from stormlock.line import Line

    config, _ = network_backend(name, request, tmp_path)
    options = dict(config.options, timeout=str(TIMEOUT))
    backend = BackendConfig(name, options).create()
    watch_freed = getattr(backend, "watch_freed", None)
    try:
        if watch_freed is None:
            return  # documented: the head polls
        resource = f"f-quiet-{uuid.uuid4().hex[:8]}"
        lease = backend.acquire_lease(resource, "alice", timedelta(minutes=5))
        Line(backend, resource).join("carol", None, "library")  # someone waits
        watch = watch_freed(resource)
        try:
            assert not watch.wait(3 * TIMEOUT), "woken with nothing freed"
            assert backend.release_lease(resource, lease.id)
            assert watch.wait(10), "the release did not wake the watch"
        finally:
            watch.close()
    finally:
        backend.close()
