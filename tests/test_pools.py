"""Pools: `[pool.NAME]` members, any free one taken, on every backend."""

from __future__ import annotations

import json
import multiprocessing
import queue
import subprocess
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest

from stormlock.line import Line
from stormlock.lock import load_lock
from stormlock.pool import PoolHeld, PoolLock
from stormlock.testing.backends import BackendConfig, wait_for_expiry
from stormlock.testing.env import CliRunner
from stormlock.testing.race_worker import race_pool
from tests.support import one_line_error, wait_until

POOL = "\n[pool.staging]\nmembers = staging-1, staging-2, staging-3\nttl = 1h\n"


@pytest.fixture
def pool_config(backend_config: BackendConfig, tmp_path: Path) -> Path:
    path = tmp_path / "pools.cfg"
    path.write_text(backend_config.ini("alice") + POOL)
    return path


def test_ten_processes_take_a_pool_of_three_exactly_three_win(
    pool_config: Path,
) -> None:
    racers = 10
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=race_pool, args=(str(pool_config), "staging", barrier, results, i)
        )
        for i in range(racers)
    ]
    for proc in procs:
        proc.start()
    outcomes = []
    for _ in range(racers):
        try:
            outcomes.append(results.get(timeout=120))
        except queue.Empty:
            pytest.fail("a racing process stopped reporting")
    for proc in procs:
        proc.join(timeout=60)
    winners = [member for _, member, _ in outcomes if member is not None]
    assert sorted(winners) == ["staging-1", "staging-2", "staging-3"]
    with load_lock("staging", pool_config) as lock:
        assert isinstance(lock, PoolLock)
        held = lock.held()
        assert sorted(lease.resource for lease in held) == sorted(winners)
        with pytest.raises(PoolHeld) as info:
            lock.acquire_lease()
        assert len(info.value.holders) == 3
        assert "every member of pool 'staging' is held" in str(info.value)


def test_the_member_free_the_longest_goes_first_and_release_frees_it(
    pool_config: Path,
) -> None:
    with load_lock("staging", pool_config) as lock:
        leases = {}
        for _ in range(3):
            lease = lock.acquire_lease()
            leases[lease.resource] = lease
        assert lock.release(leases["staging-2"].id)  # through the pool's name
        assert lock.release(leases["staging-3"].id)
        if lock.backend.supports("history"):
            assert lock.acquire_lease().resource == "staging-2"
            assert lock.acquire_lease().resource == "staging-3"
        else:
            taken = {lock.acquire_lease().resource, lock.acquire_lease().resource}
            assert taken == {"staging-2", "staging-3"}
        renewed = lock.renew(leases["staging-1"].id, timedelta(hours=2))
        assert renewed.resource == "staging-1" and lock.is_current(renewed.id)


def test_expiry_frees_a_member(pool_config: Path) -> None:
    with load_lock("staging", pool_config) as lock:
        short = max(timedelta(seconds=1), lock.backend.capabilities.min_ttl)
        first = lock.acquire_lease(short)
        others = [lock.acquire_lease() for _ in range(2)]
        assert {first.resource, *(o.resource for o in others)} == {
            "staging-1",
            "staging-2",
            "staging-3",
        }
        wait_for_expiry(lock.backend, first.resource)
        assert lock.acquire_lease().resource == first.resource


def test_the_cli_takes_a_pool(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config(
        "[default]\nprincipal = alice\n[backend.sqlite]\npath = locks.db\n" + POOL
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("-c", str(path), *args)

    first = run("acquire", "staging", "-f", "json", "-n", "deploy")
    assert first.returncode == 0, first.stderr
    taken = json.loads(first.stdout)
    assert set(taken) >= {"id", "resource", "fence", "expires", "members"}
    assert taken["resource"].startswith("staging-") and taken["members"] == [
        taken["resource"]
    ]
    plain = run("acquire", "staging")
    assert plain.returncode == 0 and len(plain.stdout.split()) == 1  # the id alone
    ran = run("run", "staging", "--", "sh", "-c", "echo $STORMLOCK_RESOURCE")
    assert ran.returncode == 0 and ran.stdout.strip().startswith("staging-")
    run("acquire", "staging")
    full = run("acquire", "staging")
    assert full.returncode == 2
    message = one_line_error(full.stderr)
    assert all(f"staging-{n}" in message for n in (1, 2, 3))
    listed = run("list").stdout
    assert "GROUP" in listed and listed.count("staging ") >= 3
    current = run("current", "staging")
    assert current.returncode == 0 and len(current.stdout.splitlines()) == 3
    assert run("release", "staging", taken["id"]).returncode == 0
    assert run("is-held", "staging", taken["id"]).returncode == 1
    again = json.loads(run("acquire", "staging", "-f", "json").stdout)
    assert again["resource"] == taken["resource"]


@pytest.mark.parametrize(
    ("sections", "says"),
    [
        ("[pool.p]\nmembers =\n", "has no members"),
        ("[pool.p]\nmembers = a, b\n[pool.q]\nmembers = b, c\n", "already a member"),
        ("[p]\nttl = 1h\n[pool.p]\nmembers = a, b\n", "is also a resource"),
        ("[a]\nbackend = redis\n[pool.p]\nmembers = a, b\n", "share one backend"),
        ("[pool.p]\nmembers = a, a\n", "twice"),
        ("[pool.p]\nmembers = a, -b\n", "starts with '-'"),
    ],
)
def test_bad_pools_are_one_line_with_exit_68(
    cli: CliRunner, write_config: Callable[[str], Path], sections: str, says: str
) -> None:
    path = write_config(sections)
    result = cli("-c", str(path), "acquire", "p")
    assert result.returncode == 68, result.stderr
    assert says in one_line_error(result.stderr)


def test_a_wait_on_a_full_pool_gets_the_first_member_freed(pool_config: Path) -> None:
    import threading

    with load_lock("staging", pool_config) as lock:
        leases = [lock.acquire_lease() for _ in range(3)]
        got: list[str] = []

        def wait() -> None:
            with load_lock("staging", pool_config) as other:
                got.append(other.acquire_lease(wait=timedelta(seconds=30)).resource)

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert lock.release(leases[1].id)
        waiter.join(timeout=60)
        assert got == [leases[1].resource]


def test_a_full_pool_serves_its_line_in_order(pool_config: Path) -> None:
    """Waiters on a full pool join the pool's line; each member freed goes
    to the first in it; someone not in line is refused, holders named."""
    import threading

    from stormlock.contract import InLine

    with load_lock("staging", pool_config) as lock:
        assert isinstance(lock, PoolLock)
        held = [lock.acquire_lease() for _ in range(3)]
        line = lock._line()
        assert line is not None, "every built-in backend keeps lines"
        got: list[tuple[int, str]] = []
        threads = []

        def wait(i: int) -> None:
            with load_lock("staging", pool_config) as other:
                lease = other.acquire_lease(wait=timedelta(seconds=60))
                got.append((i, lease.resource))

        for i in range(4):
            threads.append(threading.Thread(target=wait, args=(i,)))
            threads[-1].start()
            wait_until(partial(_in_line, line, i + 1))
        with pytest.raises(InLine) as refused:
            lock.acquire_lease()
        message = str(refused.value)
        assert "every member of pool 'staging' is held" in message
        assert "4 are waiting in line" in message
        for n, lease in enumerate(held):
            assert lock.release(lease.id)
            wait_until(partial(_served, got, n + 1))
        assert [i for i, _ in got] == [0, 1, 2]
        assert [member for _, member in got] == [lease.resource for lease in held]
        with load_lock(got[0][1], pool_config) as member:
            lease0 = member.current()
            assert lease0 is not None
            assert member.backend.release_lease(got[0][1], lease0.id)
        for thread in threads:
            thread.join(timeout=60)
        assert [i for i, _ in got] == [0, 1, 2, 3]
        assert line.waiting() == []


def _in_line(line: Line, count: int) -> bool:
    return len(line.waiting()) == count


def _served(got: list[tuple[int, str]], count: int) -> bool:
    return len(got) == count
