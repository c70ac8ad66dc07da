"""`stormlock history` and `lease_history`, run as users and scripts do. The
backends' side of history is in the conformance kit (every backend)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from stormlock import lease_history
from stormlock.config import load_config
from stormlock.history import FIELDS
from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.env import CliRunner
from tests.support import one_line_error


@pytest.fixture(params=["sqlite", "redis"])
def config_env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    write_config: Callable[[str], Path],
) -> dict[str, str]:
    name = request.param
    config = BackendConfig(name, isolated_options(name, request, tmp_path))
    return {"STORMLOCK_CONFIG": str(write_config(config.ini("ops@example.com")))}


def test_history_tells_who_held_what_when_and_why(
    cli: CliRunner, config_env: dict[str, str]
) -> None:
    lease_id = cli("acquire", "db", "-n", "apply", env=config_env).stdout.strip()
    assert cli("renew", "db", lease_id, "-t", "2h", env=config_env).returncode == 0
    assert cli("release", "db", lease_id, env=config_env).returncode == 0
    cli("acquire", "cache", env=config_env)
    result = cli("history", "db", "-f", "json", env=config_env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["acquired", "renewed", "released"]
    for event in events:
        assert list(event) == list(FIELDS)
        assert (event["resource"], event["principal"], event["actor"]) == (
            "db",
            "ops@example.com",
            "ops@example.com",
        )
        assert (event["note"], event["source"]) == ("apply", "cli")
    assert lease_id not in result.stdout
    # All resources, in a table; and as CSV for spreadsheets.
    table = cli("history", env=config_env).stdout
    assert "cache" in table and "released" in table and lease_id not in table
    rows = list(
        csv.reader(io.StringIO(cli("history", "-f", "csv", env=config_env).stdout))
    )
    assert rows[0] == list(FIELDS) and len(rows) == 5


def test_history_filters_by_time_and_principal(
    cli: CliRunner, config_env: dict[str, str]
) -> None:
    cli("acquire", "db", env=config_env)
    assert cli("history", "--since", "1h", "-f", "json", env=config_env).stdout
    future = cli("history", "--since", "2999-01-01T00:00Z", env=config_env)
    assert future.returncode == 0 and future.stdout == ""
    assert "no history" in future.stderr
    nobody = cli("history", "--principal", "nobody@example.com", env=config_env)
    assert nobody.stdout == "" and nobody.returncode == 0
    mine = cli(
        "history", "--principal", "OPS@example.com", "-f", "json", env=config_env
    )
    assert json.loads(mine.stdout.splitlines()[0])["principal"] == "ops@example.com"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--since", "yesterday"], 66, "neither a duration"),
        (["-n", "-1"], 64, "--limit"),
        (["-f", "xml"], 64, "invalid choice"),
        (["-bad"], 64, ""),
        (["--", "-bad"], 65, "starts with '-'"),
    ],
)
def test_bad_history_arguments_are_one_line_errors(
    cli: CliRunner, args: list[str], code: int, words: str
) -> None:
    result = cli("history", *args)
    assert result.returncode == code, result.stderr
    assert words in one_line_error(result.stderr)


def test_history_setting_in_the_config(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    env = {"STORMLOCK_CONFIG": str(write_config("[default]\nhistory = forever\n"))}
    result = cli("history", env=env)
    assert result.returncode == 68
    assert "history" in one_line_error(result.stderr)
    env = {"STORMLOCK_CONFIG": str(write_config("[default]\nhistory = none\n"))}
    cli("acquire", "db", env=env)
    result = cli("history", "db", env=env)
    assert result.returncode == 0 and result.stdout == ""


def test_a_plugin_without_history_still_works_and_history_says_so(
    cli: CliRunner, home: Path, write_config: Callable[[str], Path]
) -> None:
    path = write_config(
        "[default]\nbackend = jsonfile\n"
        f"[backend.jsonfile]\npath = {home / 'leases.json'}\n"
    )
    env = {"STORMLOCK_CONFIG": str(path)}
    assert cli("acquire", "db", env=env).returncode == 0
    result = cli("history", "db", env=env)
    assert result.returncode == 72
    assert "keeps no history" in one_line_error(result.stderr)


def test_the_library_merges_history_of_every_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    redis = BackendConfig("redis", isolated_options("redis", request, tmp_path))
    ini = BackendConfig("sqlite", {"path": str(tmp_path / "l.db")}).ini("lib")
    ini += "\n[cache]\nbackend = redis\n[backend.redis]\n"
    ini += "".join(f"{key} = {value}\n" for key, value in redis.options.items())
    path = tmp_path / "stormlock.cfg"
    path.write_text(ini)
    config = load_config(path)
    from stormlock.lock import load_lock

    for resource in ("db", "cache", "db"):
        with load_lock(resource, path) as lock:
            lock.release(lock.acquire())
    events = lease_history(config=config)
    assert [(e.resource, e.event) for e in events] == [
        ("db", "acquired"),
        ("db", "released"),
        ("cache", "acquired"),
        ("cache", "released"),
        ("db", "acquired"),
        ("db", "released"),
    ]
    assert {e.source for e in events} == {"library"}
    with load_lock("cache", path) as lock:
        assert [e.event for e in lock.history(limit=1)] == ["released"]
    assert len(lease_history("db", limit=3, config=config)) == 3


def test_a_database_from_before_history_is_brought_up_to_date(
    cli: CliRunner, home: Path, write_config: Callable[[str], Path]
) -> None:
    import sqlite3

    path = home / "old.db"
    with sqlite3.connect(path) as conn:  # the schema of the previous release
        conn.execute(
            "CREATE TABLE stormlock_leases (resource TEXT PRIMARY KEY, lease_id TEXT,"
            " principal TEXT, created REAL, expires REAL, note TEXT,"
            " fence INTEGER NOT NULL)"
        )
        conn.execute(
            "INSERT INTO stormlock_leases VALUES ('db', NULL, 'x', 0, 0, NULL, 41)"
        )
    env = {"STORMLOCK_CONFIG": str(write_config(f"[backend.sqlite]\npath = {path}\n"))}
    lease_id = cli("acquire", "db", env=env).stdout.strip()
    assert cli("release", "db", lease_id, env=env).returncode == 0
    events = cli("history", "db", "-f", "json", env=env).stdout.splitlines()
    assert [json.loads(e)["event"] for e in events] == ["acquired", "released"]
    assert json.loads(events[0])["fence"] > 41, "the fence kept counting"


def test_history_of_all_skips_a_backend_without_it(
    cli: CliRunner, home: Path, write_config: Callable[[str], Path]
) -> None:
    path = write_config(
        f"[backend.sqlite]\npath = {home / 'l.db'}\n"
        "[legacy]\nbackend = jsonfile\n"
        f"[backend.jsonfile]\npath = {home / 'leases.json'}\n"
    )
    env = {"STORMLOCK_CONFIG": str(path)}
    assert cli("acquire", "legacy", env=env).returncode == 0
    assert cli("acquire", "db", env=env).returncode == 0
    result = cli("history", "-f", "json", env=env)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["resource"] for line in result.stdout.splitlines()] == [
        "db"
    ]
    assert cli("history", "legacy", env=env).returncode == 72
