"""Text that users control (principals, notes, names) can neither rewrite a
terminal, split a tab- or line-separated format, run in a spreadsheet, nor
make two locks of one name."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from stormlock import Backend, LockHeldException, StormLock
from stormlock.errors import EXIT_CONFIG, EXIT_USAGE, InvalidInput
from stormlock.testing.env import CliRunner
from tests.support import one_line_error

ESCAPES = "\x1b]0;owned\x07\x1b[2J"
PLANTED = "evil\tplanted-id\nresource: fake"


def test_a_control_character_in_a_note_is_refused(cli: CliRunner) -> None:
    result = cli("acquire", "term", "-n", f"hi {ESCAPES}")
    assert result.returncode == EXIT_USAGE
    assert "control character" in one_line_error(result.stderr)
    assert cli("current", "term").returncode == 1, "nothing was taken"


def test_a_note_is_kept_on_one_line(cli: CliRunner) -> None:
    assert cli("acquire", "nl", "-n", "patch\nresource: prod-db").returncode == 0
    rows = cli("current", "nl", "-f", "rows").stdout.splitlines()
    assert [row for row in rows if row.startswith("resource:")] == ["resource: nl"]
    assert "note: patch resource: prod-db" in rows


def test_a_note_over_the_limit_is_refused_not_cut(cli: CliRunner) -> None:
    result = cli("acquire", "long", "-n", "x" * 1001)
    assert result.returncode == EXIT_USAGE
    assert "1001 characters" in one_line_error(result.stderr)


def test_a_principal_with_a_tab_in_the_config_is_a_config_error(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config("[default]\nprincipal = a\tb\n")
    result = cli("-c", str(path), "acquire", "p")
    assert result.returncode == EXIT_CONFIG
    assert "control character" in one_line_error(result.stderr)


def test_the_library_refuses_control_characters(backend: Backend) -> None:
    with pytest.raises(InvalidInput):
        StormLock(backend, "lib", "eve\nmallory")
    with pytest.raises(InvalidInput):
        StormLock(backend, "lib", "eve").acquire(note=ESCAPES)


def test_stored_hostile_text_is_shown_escaped(
    cli: CliRunner, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    """A value another client wrote past the checks (an old version, a plugin)
    still cannot reach the terminal raw."""
    from stormlock.backends.sqlite import SQLite

    db = tmp_path / "hostile.db"
    path = write_config(f"[default]\nbackend = sqlite\n[backend.sqlite]\npath = {db}\n")
    with SQLite(str(db)) as store:
        lease = store.acquire_lease("x", PLANTED, timedelta(hours=1), ESCAPES)
    env = {"STORMLOCK_CONFIG": str(path)}
    outputs = {
        fmt: cli("current", "x", "-f", fmt, env=env).stdout
        for fmt in ("oneline", "rows", "cols", "lines")
    }
    outputs["list"] = cli("list", env=env).stdout
    outputs["history"] = cli("history", "x", env=env).stdout
    for name, shown in outputs.items():
        assert "\x1b" not in shown and "\x07" not in shown, name
    assert outputs["oneline"].rstrip("\n").split("\t")[2] == lease.id
    assert len(outputs["oneline"].splitlines()) == 1
    assert outputs["lines"].splitlines()[1] == lease.id
    header, values = outputs["cols"].splitlines()
    assert len(values.split("\t")) == len(header.split("\t"))
    assert json.loads(cli("current", "x", "-f", "json", env=env).stdout)["note"] == (
        ESCAPES
    ), "JSON keeps the value exactly (it escapes control characters itself)"
    held = cli("acquire", "x", env=env)
    assert held.returncode == 2
    assert "\x1b" not in one_line_error(held.stderr)


def test_csv_cells_never_start_a_formula(cli: CliRunner) -> None:
    formula = '=HYPERLINK("https://evil.example","click")'
    assert cli("acquire", "sheet", "-n", formula).returncode == 0
    table = cli("history", "sheet", "-f", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    assert rows[0]["note"] == "'" + formula
    for row in rows:
        for cell in row.values():
            assert cell[:1] not in ("=", "+", "-", "@"), cell


NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def test_look_alike_names_are_one_lock(backend: Backend) -> None:
    assert NFC != NFD
    StormLock(backend, NFD, "alice").acquire(timedelta(minutes=5))
    with pytest.raises(LockHeldException):
        StormLock(backend, NFC, "bob").acquire(timedelta(minutes=5))
    lease = StormLock(backend, NFC, "bob").current()
    assert lease is not None and lease.resource == NFC
    assert [e.resource for e in StormLock(backend, NFD, "x").history()] == [NFC]


def test_look_alike_names_are_one_lock_from_the_cli(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    # The config spells the section in NFD; the TTL applies to the NFC name.
    path = write_config(f"[{NFD}]\nttl = 7m\n")
    env = {"STORMLOCK_CONFIG": str(path)}
    assert cli("acquire", NFC, env=env).returncode == 0
    assert cli("acquire", NFD, env=env).returncode == 2
    lease = json.loads(cli("current", NFD, "-f", "json", env=env).stdout)
    assert lease["resource"] == NFC
    expires = datetime.fromisoformat(lease["expires"])
    created = datetime.fromisoformat(lease["created"])
    assert expires - created == timedelta(minutes=7)
    history = cli("history", NFD, "-f", "json", env=env).stdout.splitlines()
    assert [json.loads(line)["resource"] for line in history] == [NFC]
