"""The line from the CLI: `acquire --wait` and `run --wait` join it,
`queue` shows it, `current` and `list` count it, and a waiter stopped by
SIGTERM or Ctrl-C leaves it at once. The backend contract of the line is in
the conformance kit (stormlock/testing/conformance_line.py)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from stormlock.backends import find_backend
from stormlock.contract import Feature
from stormlock.errors import EXIT_HELD, EXIT_INTERRUPTED, EXIT_UNSUPPORTED
from stormlock.testing.env import STORMLOCK, CliRunner, clean_env
from tests.support import one_line_error, wait_until

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def configs(home: Path) -> dict[str, Path]:
    paths = {}
    for who in ("alice", "bob", "carol"):
        path = home / f"{who}.cfg"
        path.write_text(
            f"[default]\nprincipal = {who}\n[backend.sqlite]\npath = {home}/l.db\n"
            "[pool.staging]\nmembers = st-1, st-2\n"
        )
        paths[who] = path
    return paths


@pytest.fixture
def run(cli: CliRunner, configs: dict[str, Path]) -> Run:
    def run(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cli("-c", str(configs[who]), *args)

    return run


def start(home: Path, config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [STORMLOCK, "-c", str(config), *args],
        cwd=home,
        env=clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def waiting(run: Run, resource: str = "db") -> list[dict[str, object]]:
    shown = run("carol", "queue", resource, "-f", "json")
    assert shown.returncode == 0, shown.stderr
    line: list[dict[str, object]] = json.loads(shown.stdout)
    return line


def test_a_waiter_is_in_the_line_for_all_to_see_and_takes_it_in_turn(
    run: Run, home: Path, configs: dict[str, Path]
) -> None:
    lease_id = run("alice", "acquire", "db", "-n", "migration").stdout.strip()
    bob = start(home, configs["bob"], "acquire", "db", "--wait", "60s", "-n", "next")
    try:
        wait_until(lambda: len(waiting(run)) == 1)
        [ticket] = waiting(run)
        assert ticket["position"] == 1 and ticket["principal"] == "bob"
        assert ticket["source"] == "cli" and ticket["note"] == "next"
        table = run("carol", "queue", "db").stdout.splitlines()
        assert table[0].split() == ["POSITION", "PRINCIPAL", "SINCE", "SOURCE", "NOTE"]
        assert table[1].split()[:2] == ["1", "bob"]
        # Counted by current (on stderr: stdout stays the original format)...
        current = run("carol", "current", "db")
        assert current.stdout.split("\t")[0] == "alice"
        assert "1 waiting in line" in current.stderr
        assert (
            json.loads(run("carol", "current", "db", "-f", "json").stdout)["waiting"]
            == 1
        )
        # ...and by list.
        listed = run("carol", "list").stdout.splitlines()
        assert listed[0].split()[-1] == "WAITING" and listed[1].split()[-1] == "1"
        # Someone not in line is told how many wait and how to join.
        carol = run("carol", "acquire", "db")
        assert carol.returncode == EXIT_HELD
        message = one_line_error(carol.stderr)
        assert "held by alice" in message and "1 is waiting in line" in message
        assert "--wait" in message
        assert lease_id not in carol.stderr
        assert run("alice", "release", "db", lease_id).returncode == 0
        out, err = bob.communicate(timeout=60)
        assert bob.returncode == 0, err
    finally:
        bob.kill()
    holder = run("carol", "current", "db", "-f", "json")
    assert json.loads(holder.stdout)["principal"] == "bob"
    assert json.loads(holder.stdout)["id"] == out.strip()
    assert waiting(run) == []  # its ticket went with the wait
    assert "nobody is waiting" in run("carol", "queue", "db").stderr
    # History: the lease's events and the line's, merged in order.
    story = run("carol", "history", "db", "-f", "json").stdout.splitlines()
    events = [(e["event"], e["principal"]) for e in map(json.loads, story)]
    assert events == [
        ("acquired", "alice"),
        ("joined", "bob"),
        ("released", "alice"),
        ("took", "bob"),
        ("acquired", "bob"),
    ] or events == [  # the take's record and the lease's may share a tick
        ("acquired", "alice"),
        ("joined", "bob"),
        ("released", "alice"),
        ("acquired", "bob"),
        ("took", "bob"),
    ]
    assert [json.loads(line)["note"] for line in story][1] == "next"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_waiter_leaves_the_line_at_once(
    run: Run, home: Path, configs: dict[str, Path], signum: int
) -> None:
    run("alice", "acquire", "db")
    bob = start(home, configs["bob"], "acquire", "db", "--wait", "60s")
    try:
        wait_until(lambda: len(waiting(run)) == 1)
        bob.send_signal(signum)
        _, err = bob.communicate(timeout=30)
    finally:
        bob.kill()
    assert bob.returncode == EXIT_INTERRUPTED
    assert one_line_error(err) == "stormlock: interrupted"
    assert waiting(run) == []  # gone now, not once its ticket lapses
    left = run("carol", "history", "db", "--principal", "bob", "-f", "json")
    assert [json.loads(e)["event"] for e in left.stdout.splitlines()] == [
        "joined",
        "left",
    ]


def test_run_waits_in_the_same_line(
    run: Run, home: Path, configs: dict[str, Path]
) -> None:
    lease_id = run("alice", "acquire", "db").stdout.strip()
    bob = start(home, configs["bob"], "acquire", "db", "--wait", "60s")
    try:
        wait_until(lambda: len(waiting(run)) == 1)
        carol = start(
            home,
            configs["carol"],
            "run",
            "db",
            "--wait",
            "60s",
            "--",
            "sh",
            "-c",
            'echo "$STORMLOCK_RESOURCE"',
        )
        wait_until(lambda: len(waiting(run)) == 2)
        assert [t["principal"] for t in waiting(run)] == ["bob", "carol"]
        run("alice", "release", "db", lease_id)
        bob_id = bob.communicate(timeout=60)[0].strip()
        assert run("bob", "release", "db", bob_id).returncode == 0
        out, err = carol.communicate(timeout=60)
        assert carol.returncode == 0, err
        assert out.strip() == "db"
    finally:
        bob.kill()
    assert waiting(run) == []


def test_queue_says_what_has_no_line_in_one_line(run: Run) -> None:
    pool = run("carol", "queue", "staging")  # a pool has a line of its own
    assert pool.returncode == 0 and "nobody is waiting" in pool.stderr
    group = run("carol", "queue", "st-1,st-2")
    assert group.returncode == EXIT_UNSUPPORTED
    assert "no line of its own" in one_line_error(group.stderr)
    bad = run("carol", "queue", "bad name!")
    assert bad.returncode == 65
    one_line_error(bad.stderr)
    assert find_backend("sqlite").supports(Feature.LINE)
    assert not find_backend("http").supports(Feature.LINE)
