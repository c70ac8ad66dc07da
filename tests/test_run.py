"""`stormlock run`: the lease lives exactly as long as the command."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from stormlock.testing.backends import BackendConfig
from stormlock.testing.env import STORMLOCK, CliRunner, clean_env
from tests.support import alive, take_when_free, wait_until

# A child that records its lease, then waits to be signalled.
WAITER = (
    'echo "$STORMLOCK_LEASE_ID" > id.tmp && mv id.tmp id; '
    'trap "echo $1 > got; exit 0" TERM INT; '
    "while :; do sleep 0.05; done"
)


def start_run(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [STORMLOCK, "run", *args],
        cwd=home,
        env=clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_child_gets_lease_and_fence_and_exit_code_passes_through(
    cli: CliRunner, home: Path
) -> None:
    result = cli(
        "run",
        "job",
        "--",
        "sh",
        "-c",
        'echo "$STORMLOCK_LEASE_ID $STORMLOCK_FENCE $STORMLOCK_RESOURCE"; '
        'stormlock is-held job "$STORMLOCK_LEASE_ID" && exit 7',
    )
    assert result.returncode == 7, result.stderr
    lease_id, fence, resource = result.stdout.split()
    assert resource == "job"
    assert int(fence) >= 1
    assert cli("is-held", "job", lease_id).returncode == 1, "released after the command"
    assert cli("current", "job").returncode == 1


def test_fence_increases_between_runs(cli: CliRunner) -> None:
    fences = [
        int(cli("run", "f", "--", "sh", "-c", 'echo "$STORMLOCK_FENCE"').stdout)
        for _ in range(3)
    ]
    assert fences == sorted(set(fences))


def test_lease_is_renewed_while_the_command_outlives_its_ttl(cli: CliRunner) -> None:
    # TTL 1s; the command runs for 3s and checks its lease at the end.
    result = cli(
        "run",
        "long",
        "--ttl",
        "1s",
        "--",
        "sh",
        "-c",
        'sleep 3; stormlock is-held long "$STORMLOCK_LEASE_ID"',
    )
    assert result.returncode == 0, result.stderr


def test_run_reports_held_resource(cli: CliRunner) -> None:
    cli("acquire", "busy")
    result = cli("run", "busy", "--", "true")
    assert result.returncode == 2
    assert "held by" in result.stderr


def test_run_waits_for_the_resource(cli: CliRunner) -> None:
    cli("acquire", "soon", "-t", "1s")
    result = cli("run", "soon", "--wait", "20s", "--", "true")
    assert result.returncode == 0, result.stderr


def test_lost_lease_stops_the_child(cli: CliRunner, home: Path) -> None:
    proc = start_run(
        home, "lost", "--ttl", "3s", "--", "sh", "-c", WAITER, "sh", "term"
    )
    wait_until(lambda: (home / "id").exists())
    lease_id = (home / "id").read_text().strip()
    # Someone else releases it (as an admin's force-release would).
    assert cli("release", "lost", lease_id).returncode == 0
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 71, stderr
    assert "lost the lease" in stderr
    assert (home / "got").read_text().strip() == "term"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_reach_the_child_and_the_lease_is_released(
    cli: CliRunner, home: Path, sig: signal.Signals
) -> None:
    proc = start_run(home, "sig", "--", "sh", "-c", WAITER, "sh", sig.name)
    wait_until(lambda: (home / "id").exists())
    lease_id = (home / "id").read_text().strip()
    assert cli("is-held", "sig", lease_id).returncode == 0
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert (home / "got").read_text().strip() == sig.name
    assert cli("is-held", "sig", lease_id).returncode == 1
    assert cli("current", "sig").returncode == 1


def test_child_killed_by_signal_maps_to_128_plus_signal(cli: CliRunner) -> None:
    result = cli("run", "k", "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == 128 + signal.SIGKILL
    assert cli("current", "k").returncode == 1


def test_missing_command_releases_the_lease(cli: CliRunner) -> None:
    result = cli("run", "nocmd", "--", "/no/such/command")
    assert result.returncode == 127
    assert "cannot run" in result.stderr
    assert cli("current", "nocmd").returncode == 1


# -- the whole process tree ------------------------------------------------------

# The command starts a grandchild that ignores SIGTERM (a provider, a worker),
# records both pids, and waits (or, with "exit", leaves it behind).
TREE = (
    'sh -c \'trap "" TERM; echo $$ > gc.tmp && mv gc.tmp gc; '
    "while :; do sleep 0.05; done' & "
    "echo $$ > pid.tmp && mv pid.tmp pid; while [ ! -e gc ]; do sleep 0.01; done; "
    'echo "$STORMLOCK_LEASE_ID" > id.tmp && mv id.tmp id; '
    '[ "$1" = exit ] || wait'
)


def _kill_left(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)  # a failed test must not leave them


def _run_tree(
    home: Path, config: BackendConfig | None, *args: str
) -> tuple[subprocess.Popen[str], list[int]]:
    """`run ARGS -- sh -c TREE`, once the command and its grandchild run."""
    if config is not None:
        path = home / "stormlock.cfg"
        path.write_text(config.ini())
        args = ("-c", str(path), *args)
    proc = start_run(home, *args)
    wait_until(lambda: (home / "id").exists(), timeout=30)
    return proc, [int((home / name).read_text()) for name in ("pid", "gc")]


def test_a_lost_lease_stops_the_grandchildren_too(
    home: Path, backend_config: BackendConfig
) -> None:
    proc, pids = _run_tree(
        home, backend_config, "tree", "-t", "4s", "--", "sh", "-c", TREE, "sh"
    )
    try:
        lease_id = (home / "id").read_text().strip()
        with backend_config.create() as other:
            assert other.release_lease("tree", lease_id) is not False
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 71, stderr
        assert not any(alive(pid) for pid in pids), "the tree outlived run"
    finally:
        proc.kill()
        _kill_left(pids)


def test_leftovers_are_stopped_before_the_lease_is_released(
    home: Path, cli: CliRunner
) -> None:
    proc, pids = _run_tree(
        home, None, "left", "-t", "8s", "--", "sh", "-c", TREE, "sh", "exit"
    )
    try:
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert not any(alive(pid) for pid in pids), "a leftover outlived run"
        assert cli("current", "left").returncode == 1, "released after the tree"
    finally:
        proc.kill()
        _kill_left(pids)


def test_a_sigkilled_run_still_stops_its_tree_before_the_lease_expires(
    home: Path, backend_config: BackendConfig
) -> None:
    proc, pids = _run_tree(
        home, backend_config, "orphan", "-t", "3s", "--", "sh", "-c", TREE, "sh"
    )
    try:
        proc.kill()  # SIGKILL: no handler of run's runs
        proc.communicate(timeout=30)
        with backend_config.create() as other:
            take_when_free(other, "orphan")
        assert not any(alive(pid) for pid in pids), "it ran when bob took the lease"
    finally:
        _kill_left(pids)


def test_the_command_runs_in_a_process_group_of_its_own(cli: CliRunner) -> None:
    pgid = 'cut -d" " -f5 /proc/$$/stat; cut -d" " -f5 /proc/$PPID/stat'
    result = cli("run", "pg", "--", "sh", "-c", pgid)
    assert result.returncode == 0, result.stderr
    own, parents = result.stdout.split()
    assert own != parents
