"""Nothing the tools take is undocumented: every command, config key and
exit code appears in README.md or docs/ (the depth moved out of the README
must not have lost any of it)."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

from stormlock.backends import builtin_backends, find_backend
from stormlock.bot.parsing import USAGE
from stormlock.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
TEXT = "\n".join(
    path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
)


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


def _config_keys() -> set[str]:
    """Every key the code reads from the config file, by its calls."""
    keys: set[str] = set()
    for path in (ROOT / "stormlock").rglob("*.py"):
        source = path.read_text()
        keys.update(
            re.findall(r"\.(?:value|duration)\(\s*[^,()]+,\s*\"([a-z_]+)\"", source)
        )
    return keys


def test_every_cli_command_is_documented() -> None:
    from stormlock.bot.cli import _parser as bot_parser
    from stormlock.cli import _build_parser

    missing = [
        f"stormlock {name}"
        for name in _subcommands(_build_parser())
        if f"stormlock {name}" not in TEXT
    ]
    missing += [
        f"stormlock-bot {name}"
        for name in _subcommands(bot_parser())
        if f"stormlock-bot {name}" not in TEXT
    ]
    missing += [
        f"/stormlock {name}" for name in USAGE if f"/stormlock {name}" not in TEXT
    ]
    assert not missing, missing


def test_every_config_key_is_documented() -> None:
    keys = _config_keys()
    assert {"ttl", "max_ttl", "backend", "warn_before", "proxies"} <= keys
    missing = sorted(key for key in keys if not re.search(rf"`{key}`|\b{key} =", TEXT))
    assert not missing, missing


@pytest.mark.parametrize("backend", builtin_backends())
def test_every_backend_option_is_documented(backend: str) -> None:
    signature = inspect.signature(find_backend(backend))
    options = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind is parameter.KEYWORD_ONLY
        or parameter.default is not parameter.empty
    ]
    missing = [name for name in options if not re.search(rf"`{name}`|\b{name} =", TEXT)]
    assert not missing, (backend, missing)


def test_every_exit_code_is_documented() -> None:
    for entry in EXIT_CODES:
        assert f"| {entry.code} |" in TEXT, entry.code
