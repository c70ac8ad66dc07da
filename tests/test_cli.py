"""The `stormlock` CLI, run as a subprocess the way users and scripts run it."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from stormlock import Backend, StormLock
from stormlock.errors import (
    EXIT_CODES,
    EXIT_CODES_BEGIN,
    EXIT_CODES_END,
    EXIT_CONFIG,
    InvalidInput,
    exit_code_table,
)
from stormlock.testing.backends import BackendConfig
from stormlock.testing.env import STORMLOCK, CliRunner
from tests.support import one_line_error, run_seed_scenario

UUID = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


# -- zero configuration ------------------------------------------------------


def test_acquire_works_in_an_empty_home_with_no_config(
    cli: CliRunner, home: Path
) -> None:
    result = cli("acquire", "x")
    assert result.returncode == 0, result.stderr
    assert UUID.match(result.stdout.strip())
    # One line says the lease is this user's alone (two people on one bastion
    # host would otherwise both "hold" prod-db).
    note = one_line_error(result.stderr)
    assert "private to this user on this host" in note
    assert "shared backend" in note
    db = home / ".local/state/stormlock/locks.db"
    assert db.is_file()
    assert db.stat().st_mode & 0o777 == 0o600, "lease ids are secrets"
    assert db.parent.stat().st_mode & 0o777 == 0o700
    current = cli("current", "x")
    principal, created, lease_id = current.stdout.rstrip("\n").split("\t")
    assert "@" in principal
    assert lease_id == result.stdout.strip()
    datetime.fromisoformat(created)


def test_an_older_default_store_is_made_private(cli: CliRunner, home: Path) -> None:
    db = home / ".local/state/stormlock/locks.db"
    db.parent.mkdir(parents=True, mode=0o755)
    db.touch(mode=0o644)
    db.chmod(0o644)
    assert cli("acquire", "x").returncode == 0
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700


def test_a_config_file_means_no_private_store_note(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    env = {"STORMLOCK_CONFIG": str(write_config("[default]\nttl = 1h\n"))}
    result = cli("acquire", "x", env=env)
    assert result.returncode == 0
    assert result.stderr == ""


def test_a_store_this_user_may_not_write_is_a_config_error(tmp_path: Path) -> None:
    """Run as `nobody` (the suite runs as root, whom no permission stops)."""
    import os
    import shutil
    import subprocess

    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    shared = Path(tempfile.mkdtemp(prefix="stormlock-shared-"))
    try:
        shared.chmod(0o755)  # root's: nobody may read, not write
        db = shared / "locks.db"
        cfg = shared / "stormlock.cfg"
        cfg.write_text(f"[default]\nbackend = sqlite\n[backend.sqlite]\npath = {db}\n")
        cfg.chmod(0o644)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        env = {"HOME": str(shared), "PATH": os.environ["PATH"]}
        result = subprocess.run(
            [*as_nobody, STORMLOCK, "-c", str(cfg), "acquire", "x"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == EXIT_CONFIG, result.stderr
        line = one_line_error(result.stderr)
        assert "permission denied" in line and str(shared) in line
    finally:
        shutil.rmtree(shared)


# -- the seed README's scenario, on every backend ------------------------------


def test_seed_cli_scenario(
    cli: CliRunner, write_config: Callable[[str], Path], backend_config: BackendConfig
) -> None:
    env = {"STORMLOCK_CONFIG": str(write_config(backend_config.ini("test_user")))}
    run_seed_scenario(cli, env)


# -- output formats ---------------------------------------------------------------


def test_current_formats(cli: CliRunner) -> None:
    lease_id = cli("acquire", "fmt", "--note", "applying terraform").stdout.strip()
    assert cli("current", "fmt", "--id-only").stdout == lease_id + "\n"
    assert cli("current", "--id-only", "fmt").stdout == lease_id + "\n"
    assert cli("current", "fmt", "-f", "id").stdout == lease_id + "\n"
    data = json.loads(cli("current", "fmt", "--format", "json").stdout)
    assert data["id"] == lease_id
    assert data["resource"] == "fmt"
    assert data["note"] == "applying terraform"
    assert data["fence"] >= 1
    assert datetime.fromisoformat(data["expires"]) > datetime.fromisoformat(
        data["created"]
    )
    lines = cli("current", "fmt", "-f", "lines").stdout.splitlines()
    assert lines[1] == lease_id and len(lines) == 3
    rows = dict(
        line.split(": ", 1)
        for line in cli("current", "fmt", "-f", "rows").stdout.splitlines()
    )
    assert rows["id"] == lease_id and rows["note"] == "applying terraform"
    header, values = cli("current", "fmt", "-f", "cols").stdout.splitlines()
    assert (
        dict(zip(header.split("\t"), values.split("\t"), strict=True))["id"] == lease_id
    )


def test_list_shows_leases_without_ids_unless_asked(cli: CliRunner) -> None:
    first = cli("acquire", "alpha", "--note", "db patch").stdout.strip()
    second = cli("acquire", "beta").stdout.strip()
    table = cli("list")
    assert table.returncode == 0
    assert "alpha" in table.stdout and "beta" in table.stdout
    assert "db patch" in table.stdout
    assert first not in table.stdout and second not in table.stdout
    assert first in cli("list", "--ids").stdout
    data = json.loads(cli("list", "--format", "json").stdout)
    assert [entry["resource"] for entry in data] == ["alpha", "beta"]
    assert all("id" not in entry for entry in data)
    with_ids = json.loads(cli("list", "-f", "json", "--ids").stdout)
    assert {entry["id"] for entry in with_ids} == {first, second}


def test_list_with_no_leases_says_so(cli: CliRunner) -> None:
    result = cli("list")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "no active leases" in result.stderr
    assert json.loads(cli("list", "-f", "json").stdout) == []


def test_note_is_shown_to_the_next_acquirer(cli: CliRunner) -> None:
    cli("acquire", "db", "--note", "applying terraform")
    held = cli("acquire", "db")
    assert held.returncode == 2
    assert "applying terraform" in held.stderr


# -- waiting ----------------------------------------------------------------------


def test_acquire_wait_gets_the_lock_when_it_expires(cli: CliRunner) -> None:
    cli("acquire", "w", "-t", "1s")
    started = time.monotonic()
    result = cli("acquire", "w", "--wait", "20s")
    assert result.returncode == 0, result.stderr
    assert UUID.match(result.stdout.strip())
    assert time.monotonic() - started < 15


def test_acquire_wait_times_out_as_held(cli: CliRunner) -> None:
    cli("acquire", "w2", "-t", "1h")
    result = cli("acquire", "w2", "--wait", "1s")
    assert result.returncode == 2
    one_line_error(result.stderr)


# -- errors: one line, documented exit code ---------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "hint"),
    [
        (["acquire", "has space"], 65, "whitespace"),
        (["acquire", "x" * 201], 65, "201 characters"),
        (["acquire", "tab\there"], 65, "whitespace"),
        (["acquire", "--", "-dash"], 65, "starts with '-'"),
        (["acquire", "x", "-t", "0s"], 66, "positive"),
        (["acquire", "x", "--ttl=-5m"], 66, "positive"),
        (["acquire", "x", "-t", "forever"], 66, "30m"),
        (["acquire", "x", "-t", "999 days"], 66, "longer than"),
        (["acquire", "x", "-t", "500ms"], 66, "minimum of 1s"),  # the store's floor
        (["renew", "x", "0c3f", "-t", "1ms"], 66, "minimum of 1s"),
        (["acquire", "x", "--wait", "soon"], 66, "cannot read"),
        (["renew", "x", "0c3f", "-t", "nope"], 66, "cannot read"),
        (["-c", "/no/such.cfg", "acquire", "x"], 68, "does not exist"),
        (["frobnicate"], 64, "invalid choice"),
        (["acquire"], 64, "which resource"),
        (["acquire", "--wait", "10", "x"], 66, "has no unit"),  # a number: a TTL
        (["run", "--wait", "x", "y", "--", "true"], 64, "--wait takes a duration"),
        (["run", "x"], 64, "needs a command"),
    ],
)
def test_bad_input_is_one_line_with_exit_code(
    cli: CliRunner, args: list[str], code: int, hint: str
) -> None:
    result = cli(*args)
    assert result.returncode == code, result.stderr
    assert hint in one_line_error(result.stderr)


@pytest.mark.parametrize(
    "lease_id", ["garbage", "'; DROP TABLE x; --", "00" * 100, "é", "%s"]
)
def test_malformed_lease_id_is_not_the_active_lease(
    cli: CliRunner, lease_id: str
) -> None:
    real = cli("acquire", "m").stdout.strip()
    assert cli("is-held", "m", lease_id).returncode == 1
    renew = cli("renew", "m", lease_id)
    assert renew.returncode == 3
    one_line_error(renew.stderr)
    release = cli("release", "m", lease_id)
    assert release.returncode == 0
    assert "Traceback" not in release.stderr
    assert cli("is-held", "m", real).returncode == 0


def test_a_note_that_is_not_utf8_is_refused_before_acquiring(
    cli: CliRunner, write_config: Callable[[str], Path], backend_config: BackendConfig
) -> None:
    # "x\udcff" reaches the CLI as the bytes x\xff: not UTF-8.
    path = write_config(backend_config.ini())
    result = cli("-c", str(path), "acquire", "noted", "-n", "x\udcff")
    assert result.returncode == 64, result.stderr
    assert "not valid UTF-8" in one_line_error(result.stderr)
    assert cli("-c", str(path), "current", "noted").returncode == 1


def test_a_note_with_a_nul_byte_is_refused_before_acquiring(
    backend: Backend, resource: str
) -> None:
    # argv cannot carry NUL; the library and the bot can.
    lock = StormLock(backend, resource, "alice", timedelta(minutes=5))
    with pytest.raises(InvalidInput) as info:
        lock.acquire_lease(note="nul\x00byte")
    assert info.value.exit_code == 64
    assert lock.current() is None


@pytest.mark.parametrize(
    ("section", "hint"),
    [
        ("[backend.sqlite]\ntimeout = nan\n", "timeout = nan"),
        ("[backend.sqlite]\ntimeout = -1\n", "above 0"),
        ("[backend.sqlite]\ntimeout = inf\n", "at most 3600"),
        ("[backend.etcd]\nport = 99999\n", "1-65535"),
        ("[backend.redis]\ntimeout = 0\n", "above 0"),
    ],
)
def test_config_values_out_of_range_are_config_errors(
    cli: CliRunner, write_config: Callable[[str], Path], section: str, hint: str
) -> None:
    backend = section.split(".")[1].split("]")[0]
    path = write_config(f"[default]\nbackend = {backend}\n\n{section}")
    result = cli("-c", str(path), "current", "x")
    assert result.returncode == 68, result.stderr
    assert hint in one_line_error(result.stderr)


def test_config_path_that_is_a_directory(cli: CliRunner, home: Path) -> None:
    result = cli("-c", str(home), "current", "x")
    assert result.returncode == 68
    assert "is a directory" in one_line_error(result.stderr)


def test_invalid_config_file(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config("this is not ini\n")
    result = cli("-c", str(path), "acquire", "x")
    assert result.returncode == 68
    assert "not valid INI" in one_line_error(result.stderr)


def test_config_from_environment(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config("[default]\nprincipal = from-env\n")
    cli("acquire", "e", env={"STORMLOCK_CONFIG": str(path)})
    assert cli("current", "e").stdout.startswith("from-env\t")


def test_config_in_current_directory(cli: CliRunner, home: Path) -> None:
    (home / ".stormlock.cfg").write_text("[default]\nprincipal = from-cwd\n")
    cli("acquire", "d")
    assert cli("current", "d").stdout.startswith("from-cwd\t")


def test_resource_section_overrides_default(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config(
        "[default]\nprincipal = me\nttl = 1 days\nmax_ttl = 2 days\n"
        "[special]\nttl = 30 minutes\nmax_ttl = 1 hours\n"
    )
    cli("-c", str(path), "acquire", "special")
    data = json.loads(cli("-c", str(path), "current", "special", "-f", "json").stdout)
    span = datetime.fromisoformat(data["expires"]) - datetime.fromisoformat(
        data["created"]
    )
    assert 29 * 60 < span.total_seconds() <= 30 * 60
    too_long = cli("-c", str(path), "acquire", "special2", "-t", "3 days")
    assert too_long.returncode == 66
    assert "max_ttl" in too_long.stderr
    over = cli("-c", str(path), "acquire", "special", "-t", "2h")
    assert over.returncode == 66


def test_unknown_backend_lists_available(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config("[default]\nbackend = nosuch\n")
    result = cli("-c", str(path), "acquire", "x")
    assert result.returncode == 69
    message = one_line_error(result.stderr)
    assert "available:" in message and "sqlite" in message and "jsonfile" in message


def test_unknown_backend_option(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config("[backend.sqlite]\npaht = /tmp/x.db\n")
    result = cli("-c", str(path), "acquire", "x")
    assert result.returncode == 68
    assert "unknown option 'paht'" in one_line_error(result.stderr)


def test_a_path_through_a_file_is_a_config_error(
    cli: CliRunner, write_config: Callable[[str], Path], home: Path
) -> None:
    blocker = home / "file"
    blocker.write_text("")
    path = write_config(f"[backend.sqlite]\npath = {blocker}/sub/locks.db\n")
    result = cli("-c", str(path), "acquire", "x", timeout=20)
    assert result.returncode == EXIT_CONFIG
    assert "is not a directory" in one_line_error(result.stderr)


def test_release_of_unknown_lease_is_idempotent(cli: CliRunner) -> None:
    lease_id = cli("acquire", "r").stdout.strip()
    assert cli("release", "r", lease_id).returncode == 0
    again = cli("release", "r", lease_id)
    assert again.returncode == 0
    assert "nothing released" in again.stderr


def test_setup_creates_the_database(cli: CliRunner, home: Path) -> None:
    result = cli("setup")
    assert result.returncode == 0
    assert "sqlite" in result.stdout
    assert (home / ".local/state/stormlock/locks.db").is_file()
    assert cli("setup", "sqlite").returncode == 0


def test_help_documents_every_exit_code(cli: CliRunner) -> None:
    result = cli("--help")
    assert result.returncode == 0
    listed = result.stdout.split("exit codes:\n", 1)[1]
    codes = [
        line.split()[0].rstrip(",") for line in listed.splitlines() if line[2] != " "
    ]
    assert codes == [entry.code.split(",")[0] for entry in EXIT_CODES]


def test_readme_exit_code_table_matches_the_catalogue() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index(EXIT_CODES_BEGIN) + len(EXIT_CODES_BEGIN)
    end = readme.index(EXIT_CODES_END)
    assert readme[start:end].strip() == exit_code_table(), (
        "the README's exit codes differ from stormlock/errors.py"
    )


def test_sqlite_cli_does_not_import_other_backends_or_the_bot(home: Path) -> None:
    import subprocess
    import sys

    from stormlock.testing.env import clean_env

    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stormlock.cli", "current", "x"],
        cwd=home,
        env=clean_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    modules = {
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    # Built-ins are found by module, not by reading entry points.
    assert "importlib.metadata" not in modules
    for heavy in (
        "redis",
        "psycopg",
        "boto3",
        "botocore",
        "urllib3",
        "slack_sdk",
        "slack_bolt",
        "importlib_metadata",
        "inspect",
        "uuid",
        "logging",
    ):
        assert heavy not in imported, heavy


def test_version_is_the_installed_distributions(cli: CliRunner) -> None:
    from importlib.metadata import version

    from stormlock.testing.env import STORMLOCK

    shown = cli("--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"stormlock {version('stormlock-leases')}"
    bot = subprocess.run(
        [str(Path(STORMLOCK).parent / "stormlock-bot"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bot.returncode == 0 and bot.stdout.strip().endswith(
        version("stormlock-leases")
    )


def test_scripts_run_reads_the_config_of_the_directory_it_is_run_from(
    home: Path, tmp_path: Path
) -> None:
    """Only the config here names `api-only`, on the http backend: exit 70
    (unreachable) says both that this config was read and that the
    environment ./scripts/run sets up has the http backend (69 if not)."""
    from stormlock.testing.env import clean_env

    script = Path(__file__).resolve().parent.parent / "scripts" / "run"
    here = tmp_path / "elsewhere"
    here.mkdir()
    (here / ".stormlock.cfg").write_text(
        "[api-only]\nbackend = http\n[backend.http]\nurl = http://127.0.0.1:9\n"
    )
    env = {**clean_env(home), "STORMLOCK_TOKEN": "stl_" + "x" * 43}
    shown = subprocess.run(
        [str(script), "current", "api-only"],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 70, shown.stderr
    assert "127.0.0.1:9" in shown.stderr


def test_wait_as_people_type_it(cli: CliRunner) -> None:
    """`--wait RESOURCE` is `--wait` alone (10 minutes) then the resource;
    `--wait 1s RESOURCE` waits a second."""
    held = cli("acquire", "busy")
    assert held.returncode == 0, held.stderr
    assert cli("acquire", "--wait", "free-one").returncode == 0
    started = time.monotonic()
    waited = cli("acquire", "--wait", "1s", "busy")
    assert waited.returncode == 2 and "busy" in one_line_error(waited.stderr)
    assert time.monotonic() - started >= 1
    ran = cli("run", "--wait", "free-two", "--", "true")
    assert ran.returncode == 0, ran.stderr
