"""Sets: one lease on several resources, all or nothing, from the CLI and the
library, with `[group.NAME]` naming one. The backend contract for sets is in
the conformance kit (stormlock/testing/conformance_sets.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock.contract import SetHeld
from stormlock.lock import load_lock
from stormlock.sets import MAX_SET, SetLock
from stormlock.testing.backends import BackendConfig
from stormlock.testing.env import CliRunner
from tests.support import one_line_error

GROUP = "\n[group.prod]\nmembers = prod-db, prod-api, cache\nttl = 2h\n"
SQLITE = "[default]\nprincipal = alice\n[backend.sqlite]\npath = locks.db\n"


@pytest.fixture
def run(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    text = SQLITE + GROUP + "\n[pool.staging]\nmembers = st-1, st-2\n"
    path = write_config(text)
    bob = path.with_name("bob.cfg")
    bob.write_text(text.replace("principal = alice", "principal = bob"))

    def run(*args: str, principal: str = "alice") -> subprocess.CompletedProcess[str]:
        chosen = str(path if principal == "alice" else bob)
        return cli("-c", chosen, *args, env={"STORMLOCK_CONFIG": chosen})

    return run


def test_the_cli_takes_several_resources_in_one_lease(
    run: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    taken = run("acquire", "prod-db", "prod-api", "cache", "-n", "migration")
    assert taken.returncode == 0, taken.stderr
    lease_id = taken.stdout.strip()
    assert len(lease_id.split()) == 1  # the id alone, as for one resource
    # Any member shows the whole lease; the group's name too.
    for name in ("prod-api", "prod"):
        current = run("current", name)
        assert current.returncode == 0
        lines = current.stdout.splitlines()
        assert len(lines) == 3 and all(lease_id in line for line in lines)
    assert run("current", "prod-db", "--id-only").stdout.strip() == lease_id
    as_json = json.loads(run("current", "cache", "-f", "json").stdout)
    assert as_json["members"] == ["cache", "prod-api", "prod-db"]
    # Someone else: refused, nothing taken, the holder named.
    other = run("acquire", "cache,st-9", principal="bob")
    assert other.returncode == 2
    message = one_line_error(other.stderr)
    assert "nothing taken" in message and "'cache' is held by alice" in message
    assert run("current", "st-9").returncode == 1
    # is-held, renew and release act on every member, by any of its names.
    assert run("is-held", "prod-db", lease_id).returncode == 0
    assert run("is-held", "prod", lease_id).returncode == 0
    assert run("is-held", "cache,prod-api,prod-db", lease_id).returncode == 0
    assert run("renew", "prod", lease_id, "--ttl", "3h").returncode == 0
    listed = run("list").stdout
    assert "GROUP" in listed
    rows = [line for line in listed.splitlines() if " prod " in line]
    assert len(rows) == 3  # grouped under the group's name
    assert run("release", "prod-api", lease_id).returncode == 0
    assert run("current", "prod").returncode == 1
    for member in ("prod-db", "prod-api", "cache"):
        assert run("current", member).returncode == 1
    # The group's history is its members', merged: one change, three events.
    history = run("history", "prod", "-f", "json")
    assert history.returncode == 0, history.stderr
    events = [json.loads(line) for line in history.stdout.splitlines()]
    assert sorted((e["event"], e["resource"]) for e in events) == sorted(
        (kind, member)
        for kind in ("acquired", "renewed", "released")
        for member in ("cache", "prod-api", "prod-db")
    )
    assert lease_id not in history.stdout
    # A pool's too.
    taken = run("acquire", "staging", "-f", "json")
    member = json.loads(taken.stdout)["resource"]
    pool_events = run("history", "staging", "-f", "json").stdout.splitlines()
    assert [json.loads(line)["resource"] for line in pool_events] == [member]


def test_acquire_json_has_the_members_and_each_fence(
    run: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    first = json.loads(run("acquire", "prod", "-f", "json").stdout)
    assert set(first) >= {"id", "resource", "fence", "expires", "members", "fences"}
    assert first["resource"] == "prod" and first["group"] == "prod"
    assert first["members"] == ["cache", "prod-api", "prod-db"]
    assert set(first["fences"]) == set(first["members"])
    assert run("release", "prod", first["id"]).returncode == 0
    second = json.loads(run("acquire", "db2,cache", "-f", "json").stdout)
    assert second["group"] is None and second["resource"] == "cache,db2"
    assert second["fences"]["cache"] > first["fences"]["cache"]
    # The whole set in your name already: said so, not "nothing taken".
    again = run("acquire", "cache", "db2")
    assert again.returncode == 2
    assert "all of it, in your name" in one_line_error(again.stderr)


def test_run_holds_the_set_while_the_command_runs(
    run: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    script = 'echo "$STORMLOCK_RESOURCE $STORMLOCK_LEASE_ID"; stormlock current prod'
    ran = run("run", "prod", "--", "sh", "-c", script)
    assert ran.returncode == 0, ran.stderr
    first, *held = ran.stdout.splitlines()
    name, lease_id = first.split()
    assert name == "prod"
    assert len(held) == 3 and all(lease_id in line for line in held)
    assert run("current", "prod").returncode == 1  # released at the end


@pytest.mark.parametrize(
    ("sections", "says"),
    [
        ("[group.g]\nmembers =\n", "has no members"),
        ("[group.g]\nmembers = a, a\n", "named twice"),
        ("[g]\nttl = 1h\n[group.g]\nmembers = a, b\n", "is also a resource"),
        ("[pool.g]\nmembers = x, y\n[group.g]\nmembers = a, b\n", "is also a pool"),
        ("[pool.p]\nmembers = x, y\n[group.g]\nmembers = a, p\n", "is a pool"),
        ("[group.h]\nmembers = a\n[group.g]\nmembers = a, h\n", "is a group"),
        ("[a]\nbackend = redis\n[group.g]\nmembers = a, b\n", "one store's"),
        (
            "[group.g]\nmembers = " + ", ".join(f"m{i}" for i in range(26)) + "\n",
            f"at most {MAX_SET}",
        ),
    ],
)
def test_bad_groups_are_one_line_with_exit_68(
    cli: CliRunner, write_config: Callable[[str], Path], sections: str, says: str
) -> None:
    path = write_config(sections)
    result = cli("-c", str(path), "acquire", "g")
    assert result.returncode == 68, result.stderr
    assert says in one_line_error(result.stderr)


@pytest.mark.parametrize(
    ("names", "says"),
    [
        (["db", "api", "db"], "named twice"),
        (["db,api,db"], "named twice"),
        ([",".join(f"r{i}" for i in range(26))], "DynamoDB takes at most 25"),
        (["db", "redis-thing"], "one store's transaction"),
        (["db", "staging"], "is a pool"),
        (["db,-x"], "starts with '-'"),
    ],
)
def test_bad_sets_are_one_line_with_exit_65(
    cli: CliRunner, write_config: Callable[[str], Path], names: list[str], says: str
) -> None:
    path = write_config(
        SQLITE + "[redis-thing]\nbackend = redis\n[pool.staging]\nmembers = s1, s2\n"
    )
    result = cli("-c", str(path), "acquire", *names)
    assert result.returncode == 65, result.stderr
    assert says in one_line_error(result.stderr)


def test_the_library_holds_a_group_and_renews_every_member(
    backend_config: BackendConfig, tmp_path: Path
) -> None:
    path = tmp_path / "sets.cfg"
    path.write_text(backend_config.ini("alice") + GROUP)
    with load_lock("prod", path) as lock:
        assert isinstance(lock, SetLock) and lock.members == (
            "cache",
            "prod-api",
            "prod-db",
        )
        short = timedelta(seconds=3)
        with lock.hold(short) as held:
            assert held.lease.members == lock.members
            renewed = lock.renew(held.lease.id, timedelta(minutes=5))
            assert renewed.resource == "prod" and len(lock.leases) == 3
            with load_lock("cache,other", path) as other:
                other.principal = "bob"
                with pytest.raises(SetHeld):
                    other.acquire_lease()
                assert lock.backend.current("other") is None
        assert lock.current() is None
        assert all(lock.backend.current(m) is None for m in lock.members)
        # History has each member's change, written together.
        if lock.backend.supports("history"):
            events = lock.history()
            acquired = [e for e in events if e.event == "acquired"]
            assert sorted(e.resource for e in acquired) == sorted(lock.members)
            assert len({e.fence for e in acquired if e.resource == "cache"}) == 1
