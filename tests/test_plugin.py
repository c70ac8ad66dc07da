"""Third-party backends that implement only the original five methods.

`tests/plugin` is installed in the test environment like any plugin package:
`jsonfile` keeps leases in a JSON file, `fivemethods` wraps a real store but
exposes nothing beyond the five methods.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import stormlock.backends as backends_package
from stormlock import get_backend
from stormlock.backends import available_backends, builtin_backends, find_backend
from stormlock.contract import Feature
from stormlock.testing.backends import BackendConfig
from stormlock.testing.env import CliRunner
from tests.support import one_line_error, run_seed_scenario


def jsonfile_config(home: Path, extra: str = "") -> str:
    return (
        "[default]\nbackend = jsonfile\nprincipal = test_user\n"
        f"[backend.jsonfile]\npath = {home / 'leases.json'}\n{extra}"
    )


def test_entry_points_are_the_registry_of_the_builtins_too() -> None:
    from importlib import metadata

    ours = {
        ep.name: ep
        for ep in metadata.entry_points(group="stormlock.backends")
        if ep.value.startswith("stormlock.backends.")
    }
    # Every module in stormlock/backends/ is registered, and nothing else.
    modules = sorted(
        path.stem
        for path in Path(backends_package.__file__).parent.glob("*.py")
        if path.stem != "__init__"
    )
    assert sorted(ours) == modules == builtin_backends()
    for name, entry_point in ours.items():
        # The fast path (module stormlock.backends.NAME) finds the same class.
        assert find_backend(name) is entry_point.load()


def test_plugins_are_discovered_by_entry_point() -> None:
    assert {"jsonfile", "fivemethods"} <= set(available_backends())
    backend = get_backend("jsonfile", path="/tmp/unused.json")
    assert not backend.supports(Feature.LIST)
    assert not backend.supports(Feature.NOTES)
    assert not backend.supports(Feature.DOCTOR)


def test_seed_scenario_on_a_plugin(
    cli: CliRunner, write_config: Callable[[str], Path], home: Path
) -> None:
    env = {"STORMLOCK_CONFIG": str(write_config(jsonfile_config(home)))}
    run_seed_scenario(cli, env)


def test_plugin_gets_fallbacks_for_optional_capabilities(
    cli: CliRunner, write_config: Callable[[str], Path], home: Path
) -> None:
    config = jsonfile_config(home, "[db1]\n[db2]\nttl = 1h\n")
    env = {"STORMLOCK_CONFIG": str(write_config(config))}
    noted = cli("acquire", "db1", "--note", "migrating", env=env)
    assert noted.returncode == 0
    assert "cannot store notes" in one_line_error(noted.stderr)
    cli("acquire", "db2", env=env)
    cli("acquire", "unlisted", env=env)
    data = json.loads(cli("current", "db1", "-f", "json", env=env).stdout)
    assert data["fence"] > 0, "a fence from the clock"
    assert data["note"] is None
    listed = json.loads(cli("list", "-f", "json", env=env).stdout)
    # Without native listing, the resources the config file names are asked.
    assert [entry["resource"] for entry in listed] == ["db1", "db2"]
    result = cli("run", "job", "--", "sh", "-c", 'echo "$STORMLOCK_FENCE"', env=env)
    assert result.returncode == 0
    assert int(result.stdout) > 0


def test_plugin_config_errors_name_the_section(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    env = {"STORMLOCK_CONFIG": str(write_config("[default]\nbackend = jsonfile\n"))}
    result = cli("acquire", "x", env=env)
    assert result.returncode == 68
    assert "[backend.jsonfile] needs option 'path'" in one_line_error(result.stderr)


# The wrapper is the same over every store; these three cover the store
# kinds (embedded, server-clock script, client-driven HTTP transactions).
@pytest.mark.parametrize("backend_config", ["sqlite", "redis", "etcd"], indirect=True)
def test_five_method_plugin_on_each_store(
    cli: CliRunner, write_config: Callable[[str], Path], backend_config: BackendConfig
) -> None:
    options = "\n".join(f"{k} = {v}" for k, v in backend_config.options.items())
    config = (
        "[default]\nbackend = fivemethods\nprincipal = test_user\n"
        f"[backend.fivemethods]\nstore = {backend_config.name}\n{options}\n"
    )
    env = {"STORMLOCK_CONFIG": str(write_config(config))}
    run_seed_scenario(cli, env)
    lease_id = cli("acquire", "fenced", env=env).stdout.strip()
    first = json.loads(cli("current", "fenced", "-f", "json", env=env).stdout)
    cli("release", "fenced", lease_id, env=env)
    cli("acquire", "fenced", env=env)
    second = json.loads(cli("current", "fenced", "-f", "json", env=env).stdout)
    assert second["fence"] > first["fence"]


def test_a_plugin_repository_runs_the_conformance_kit_with_one_fixture() -> None:
    # As the plugin's own CI would: pytest in its repository, whose conftest
    # only names the plugin's backend (tests/plugin/tests/conftest.py).
    plugin_repo = Path(__file__).resolve().parent / "plugin"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=plugin_repo,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary
