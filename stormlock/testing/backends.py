"""One parametrized fixture for every backend, each isolated per test.

Every backend test in the suite takes `backend_config` (or `make_backend`)
and so runs unchanged against each store on a real server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock import Backend
from stormlock.backends import build_backend

BACKENDS = ["sqlite", "redis", "postgresql", "dynamodb", "etcd"]
SERVER_FIXTURES = {
    "redis": "redis_server",
    "postgresql": "postgres_server",
    "dynamodb": "dynamodb_server",
    "etcd": "etcd_server",
    "http": "api_server",
}


@dataclass
class BackendConfig:
    name: str
    options: dict[str, str]

    def ini(self, principal: str = "test_user", extra: str = "") -> str:
        """A config file that selects this backend."""
        lines = ["[default]", f"backend = {self.name}", f"principal = {principal}"]
        lines += [extra, "", f"[backend.{self.name}]"]
        lines += [f"{key} = {value}" for key, value in self.options.items()]
        return "\n".join(lines) + "\n"

    def create(self) -> Backend:
        return build_backend(self.name, self.options)


def isolated_options(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> dict[str, str]:
    """Options reaching the backend's server, in a namespace of this test's own."""
    tag = uuid.uuid4().hex[:12]
    if name == "sqlite":
        return {"path": str(tmp_path / "locks.db")}
    server = request.getfixturevalue(SERVER_FIXTURES[name])
    options = dict(server.options)
    if name == "redis":
        options["prefix"] = f"test-{tag}:"
    elif name == "postgresql":
        options["table"] = f"leases_{tag}"
    elif name == "dynamodb":
        options["table"] = f"stormlock-{tag}"
    elif name == "etcd":
        options["prefix"] = f"/test-{tag}/"
    elif name == "http":
        # One API server for the session: emptied for each test, with a
        # delegate token of its own (the kit names its principals).
        server.reset()
        token = tmp_path / f"token-{tag}"
        token.write_text(server.token(f"kit-{tag}", "kit", delegate=True))
        options["token_file"] = str(token)
    return options


# Backends reached over the network, for the fault tests: every server
# backend, and a third-party plugin with only the five original methods.
NETWORK_BACKENDS = [*sorted(SERVER_FIXTURES), "fivemethods"]


def network_backend(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[BackendConfig, int]:
    """An isolated config of backend `name`, and its server's port."""
    if name == "fivemethods":
        store = "redis"
        options = {"store": store, **isolated_options(store, request, tmp_path)}
    else:
        store = name
        options = isolated_options(name, request, tmp_path)
    server = request.getfixturevalue(SERVER_FIXTURES[store])
    return BackendConfig(name, options), server.port


@pytest.fixture(params=BACKENDS)
def backend_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    name: str = request.param
    return BackendConfig(name, isolated_options(name, request, tmp_path))


@pytest.fixture
def make_backend(backend_config: BackendConfig) -> Iterator[Callable[[], Backend]]:
    """Build backends (several, for several "clients") on one isolated store."""
    made: list[Backend] = []

    def make() -> Backend:
        backend = backend_config.create()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: Callable[[], Backend]) -> Backend:
    return make_backend()


@pytest.fixture
def resource() -> str:
    return f"res-{uuid.uuid4().hex[:8]}"


def short_ttl(backend: Backend) -> timedelta:
    return max(timedelta(seconds=1), backend.capabilities.min_ttl)


def wait_for_expiry(backend: Backend, resource: str, timeout: float = 20) -> None:
    """Until the lease is over and, within the backend's stated precision,
    the store lets another client take the resource."""
    deadline = time.monotonic() + timeout
    while backend.current(resource) is not None:
        assert time.monotonic() < deadline, "lease did not expire in time"
        time.sleep(0.05)
    time.sleep(backend.capabilities.expiry_precision.total_seconds())
