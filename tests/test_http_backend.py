"""The `http` backend passes the conformance kit, against the API as users
run it (`stormlock serve` under gunicorn, over SQLite). Its fault tests are
in test_faults.py, test_hold.py and test_outages.py with the other network
backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.conformance import *  # noqa: F403 - the kit's tests


@pytest.fixture
def backend_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig("http", isolated_options("http", request, tmp_path))
