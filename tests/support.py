"""Helpers shared by the test modules (which never import one another)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from stormlock import Backend, LockHeldException
from stormlock.testing.env import CliRunner


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie has ended: only its exit status is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def take_when_free(backend: Backend, resource: str, timeout: float = 30) -> None:
    """Acquire `resource` as bob as soon as its lease has ended."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            backend.acquire_lease(resource, "bob", timedelta(minutes=5))
            return
        except LockHeldException:
            assert time.monotonic() < deadline, "the lease never ended"
            time.sleep(0.02)


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def run_seed_scenario(cli: CliRunner, env: dict[str, str]) -> None:
    """The original tool's own CLI test (tests/test_cli.sh), step by step."""
    r1, r2 = "test1", "test2"
    id1 = cli("acquire", r1, env=env).stdout.strip()
    assert id1
    assert cli("is-held", r1, id1, env=env).returncode == 0
    principal, _created, lease_id = (
        cli("current", r1, env=env).stdout.rstrip("\n").split("\t")
    )
    assert (principal, lease_id) == ("test_user", id1)
    held = cli("acquire", r1, env=env)
    assert held.returncode == 2
    assert "test_user" in one_line_error(held.stderr)
    assert id1 not in held.stderr, "the holder's lease id must stay secret"
    res2 = cli("acquire", r2, env=env)
    assert res2.returncode == 0
    assert cli("release", r1, id1, env=env).returncode == 0
    # Long enough for two CLI runs on a loaded machine; the renew shortens it.
    id2 = cli("acquire", r1, "-t", "20 seconds", env=env).stdout.strip()
    assert id2 and id2 != id1
    assert cli("is-held", r1, id1, env=env).returncode == 1
    assert cli("renew", r1, id2, "-t", "5 seconds", env=env).returncode == 0
    assert cli("acquire", r1, env=env).returncode == 2
    wait_until(lambda: cli("is-held", r1, id2, env=env).returncode == 1)
    renew = cli("renew", r1, id2, "-t", "4 seconds", env=env)
    assert renew.returncode == 3
    one_line_error(renew.stderr)
    assert cli("release", r2, res2.stdout.strip(), env=env).returncode == 0
    assert cli("current", r2, "--id-only", env=env).returncode == 1
