"""Shared fixtures: an empty HOME, the installed `stormlock` as a subprocess,
and (from stormlock.testing, the conformance kit) real backend servers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stormlock.testing.env import STORMLOCK, CliRunner, clean_env
from stormlock.testing.servers import IN_CI

pytest_plugins = ["stormlock.testing.plugin"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME, also the working directory of CLI runs."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cli(home: Path) -> CliRunner:
    """Run the installed `stormlock` in the empty HOME."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = clean_env(home)
        full_env.update(env or {})
        return subprocess.run(
            [STORMLOCK, *args],
            cwd=home,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )

    return run


@pytest.fixture
def write_config(home: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = home / "stormlock.cfg"
        path.write_text(text)
        return path

    return write


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI a skipped test means a backend went untested: that is a failure.
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        print(f"\nCI: {len(skipped)} test(s) skipped; every backend must run in CI")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line naming each backend whose server is not installed here (so
    its tests were skipped) and the command that installs it."""
    from stormlock.testing.servers import NOT_INSTALLED

    missing: dict[str, str] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        reason = reason.removeprefix("Skipped: ")
        if NOT_INSTALLED in reason:
            backend, _, how = reason.partition(": ")
            missing.setdefault(backend, how.rpartition("install it with: ")[2])
    if missing:
        named = "; ".join(f"{name} ({how})" for name, how in sorted(missing.items()))
        terminalreporter.write_line(
            f"not tested here, their servers are not installed: {named}"
        )
