"""A plugin's own repository runs Stormlock's conformance suite with one
fixture: its backend's config."""

from pathlib import Path

import pytest

from stormlock.testing.backends import BackendConfig

pytest_plugins = ["stormlock.testing.plugin"]


@pytest.fixture
def backend_config(tmp_path: Path) -> BackendConfig:
    return BackendConfig("jsonfile", {"path": str(tmp_path / "leases.json")})
