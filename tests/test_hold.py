"""Holding a lease while work runs: `with`, `hold()`, and `stormlock run`
stopping its command before the lease can be anyone else's."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock import Backend, LockHeldException, StormLock, load_lock
from stormlock.hold import Hold
from stormlock.testing.backends import NETWORK_BACKENDS, BackendConfig, network_backend
from stormlock.testing.env import STORMLOCK, clean_env
from stormlock.testing.faults import partition_proxy, redirect
from tests.support import alive, take_when_free, wait_until


def test_with_load_lock_closes_the_backend(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    with load_lock("with-db") as lock:
        lease = lock.acquire_lease()
        connection = lock.backend._connect()  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")
    with load_lock("with-db") as again:
        assert again.is_current(lease.id), "closing releases nothing"


def test_a_backend_is_a_context_manager(
    make_backend: Callable[[], Backend], resource: str
) -> None:
    with make_backend() as backend:
        lease = backend.acquire_lease(resource, "alice", timedelta(minutes=1))
    with make_backend() as other:  # what one closed is still there for others
        assert other.is_current(resource, lease.id)


def test_hold_renews_while_the_block_runs_and_releases_after(
    make_backend: Callable[[], Backend], resource: str
) -> None:
    ttl = max(timedelta(seconds=2), make_backend().capabilities.min_ttl)
    lock = StormLock(make_backend(), resource, "alice", ttl)
    observer = make_backend()
    with lock.hold(note="long job") as held:
        assert held.lease.note == "long job"
        first_expiry = held.lease.expires
        # Outlive the TTL twice; the lease must stay ours throughout.
        until = time.monotonic() + 2 * ttl.total_seconds()
        while time.monotonic() < until:
            assert observer.is_current(resource, held.lease.id)
            time.sleep(0.1)
        assert not held.lost.is_set()
        assert held.lease.expires is not None and first_expiry is not None
        assert held.lease.expires > first_expiry
        assert held.fence == held.lease.fence >= 1
    assert observer.current(resource) is None


def test_hold_tells_the_block_when_the_lease_is_lost(
    make_backend: Callable[[], Backend], resource: str
) -> None:
    ttl = max(timedelta(seconds=3), make_backend().capabilities.min_ttl)
    lock = StormLock(make_backend(), resource, "alice", ttl)
    called = threading.Event()
    reasons: list[str | None] = []

    def on_lost(held: Hold) -> None:
        reasons.append(held.lost_reason)
        called.set()

    with lock.hold(on_lost=on_lost) as held:
        # An admin force-releases it, and bob takes it.
        make_backend().release_lease(resource, held.lease.id)
        make_backend().acquire_lease(resource, "bob", timedelta(minutes=5))
        assert held.lost.wait(ttl.total_seconds() * 2)
        assert called.wait(5)
    assert reasons and "no longer the active lease" in (reasons[0] or "")
    # Leaving the block released nothing of bob's.
    holder = make_backend().current(resource)
    assert holder is not None and holder.principal == "bob"


def test_hold_on_a_held_resource_raises_and_holds_nothing(
    make_backend: Callable[[], Backend], resource: str
) -> None:
    make_backend().acquire_lease(resource, "bob", timedelta(minutes=5))
    lock = StormLock(make_backend(), resource, "alice", timedelta(minutes=1))
    with pytest.raises(LockHeldException), lock.hold():
        pytest.fail("the block must not run")


# A child that records its pid and ignores SIGTERM: only SIGKILL stops it.
STUBBORN = (
    "echo $$ > pid.tmp && mv pid.tmp pid; trap '' TERM; while :; do sleep 0.05; done"
)


@pytest.mark.parametrize(
    ("target", "probe"), [("part", "part"), ("part-a,part-b,part-c", "part-b")]
)
@pytest.mark.parametrize("name", NETWORK_BACKENDS)
def test_run_stops_the_command_before_another_client_can_acquire(
    name: str,
    target: str,
    probe: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    home: Path,
) -> None:
    """Over one resource or a set: before any member is someone else's."""
    config_, port = network_backend(name, request, tmp_path)
    options = config_.options
    direct = config_.create()
    with partition_proxy(port) as proxy:
        via_proxy = redirect(name, options, proxy.port)
        via_proxy["timeout"] = "1"
        config = home / "stormlock.cfg"
        config.write_text(BackendConfig(name, via_proxy).ini())
        run = subprocess.Popen(
            [
                STORMLOCK,
                "-c",
                str(config),
                "run",
                "-t",
                "4s",
                target,
                "--",
                "sh",
                "-c",
                STUBBORN,
            ],
            cwd=home,
            env=clean_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: (home / "pid").exists(), timeout=30)
            pid = int((home / "pid").read_text())
            proxy.freeze()  # the holder's renewals go nowhere from now on
            take_when_free(direct, probe)
            assert not alive(pid), "the command still ran when bob took the lease"
            _, stderr = run.communicate(timeout=30)
            assert run.returncode == 71, stderr
            assert "lost the lease" in stderr
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
            if (home / "pid").exists() and alive(
                pid := int((home / "pid").read_text())
            ):
                os.kill(pid, signal.SIGKILL)  # a failed run left it behind
            direct.close()
