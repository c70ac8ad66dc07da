"""The `http` backend passes the conformance kit, against the API as users
run it (`stormlock serve` under gunicorn) in front of each real store. Its
fault tests are in test_faults.py, test_hold.py and test_outages.py with the
other network backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stormlock.testing.backends import BACKENDS, BackendConfig, isolated_options
from stormlock.testing.conformance import *  # noqa: F403 - the kit's tests
from stormlock.testing.servers import ApiServer, run_api


@pytest.fixture(scope="session", params=BACKENDS)
def store_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """One API server per store, for the session."""
    name: str = request.param
    if name == "sqlite":
        yield request.getfixturevalue("api_server")
        return
    workdir = tmp_path_factory.mktemp(f"api-{name}")
    options = isolated_options(name, request, workdir)
    with run_api(workdir, store=(name, options)) as api:
        yield api


@pytest.fixture
def backend_config(store_api: ApiServer, tmp_path: Path) -> BackendConfig:
    # Emptied for each test, with a delegate token of its own: the kit names
    # its principals, as a bridge such as the bot does.
    store_api.reset()
    token = tmp_path / "token"
    token.write_text(
        store_api.token(f"kit-{uuid.uuid4().hex[:8]}", "kit", delegate=True)
    )
    return BackendConfig("http", {"url": store_api.url, "token_file": str(token)})


@pytest.fixture(name="set_race_seconds")
def short_set_race() -> float:
    # Five stores behind the API: the direct kit runs the full 30 s on each.
    return 10.0
