"""Unreachable and restarted servers: a clear error in bounded time, then recovery."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock.errors import BackendUnavailable
from stormlock.testing.backends import SERVER_FIXTURES, BackendConfig, isolated_options
from stormlock.testing.env import CliRunner
from stormlock.testing.servers import Server, free_port
from tests.support import one_line_error

SERVER_BACKENDS = sorted(SERVER_FIXTURES)
TIMEOUT = 2.0
# Generous: this guards against hangs, it does not measure speed.
HANG_GUARD = 30.0


@pytest.mark.parametrize("name", SERVER_BACKENDS)
def test_stopped_server_is_a_clear_error_then_the_same_backend_recovers(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: Server = request.getfixturevalue(SERVER_FIXTURES[name])
    options = isolated_options(name, request, tmp_path)
    options["timeout"] = str(TIMEOUT)
    config = BackendConfig(name, options)
    backend = config.create()
    try:
        before = backend.acquire_lease("outage-a", "alice", timedelta(minutes=5))
        assert backend.is_current("outage-a", before.id)
        server.stop()
        try:
            for operation in (
                lambda: backend.current("outage-a"),
                lambda: backend.acquire_lease("outage-b", "bob", timedelta(minutes=5)),
                lambda: backend.is_current("outage-a", before.id),
            ):
                started = time.monotonic()
                with pytest.raises(BackendUnavailable) as info:
                    operation()
                assert time.monotonic() - started < HANG_GUARD
                assert "\n" not in str(info.value)
        finally:
            server.start()
        probe = config.create()
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    probe.current("probe")
                    break
                except BackendUnavailable:
                    assert time.monotonic() < deadline, "server did not come back"
                    time.sleep(0.1)
        finally:
            probe.close()
        # The very next operation on the same backend object works.
        lease = backend.acquire_lease(
            f"outage-{uuid.uuid4().hex}", "carol", timedelta(minutes=5)
        )
        assert backend.is_current(lease.resource, lease.id)
    finally:
        backend.close()


def _closed_port_options(name: str, tmp_path: Path) -> dict[str, str]:
    port = free_port()  # nothing listens there
    token = tmp_path / "token"
    token.write_text("stl_" + "x" * 43)
    return {
        "redis": {"url": f"redis://127.0.0.1:{port}/0"},
        "postgresql": {
            "connection": f"postgresql://postgres@127.0.0.1:{port}/postgres"
        },
        "dynamodb": {
            "endpoint": f"http://127.0.0.1:{port}",
            "region": "us-east-1",
            "access_key_id": "x",
            "secret_access_key": "x",
        },
        "etcd": {"host": "127.0.0.1", "port": str(port)},
        "http": {"url": f"http://127.0.0.1:{port}", "token_file": str(token)},
    }[name]


@pytest.mark.parametrize("name", SERVER_BACKENDS)
def test_cli_reports_unreachable_backend_in_one_line(
    name: str, cli: CliRunner, write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    options = _closed_port_options(name, tmp_path)
    options["timeout"] = str(TIMEOUT)
    path = write_config(BackendConfig(name, options).ini())
    for args in (
        ["acquire", "x"],
        ["current", "x"],
        ["list"],
        ["is-held", "x", str(uuid.uuid4())],
        ["doctor"],
    ):
        started = time.monotonic()
        result = cli("-c", str(path), *args, timeout=HANG_GUARD * 2)
        assert time.monotonic() - started < HANG_GUARD
        assert result.returncode == 70, (args, result.stderr)
        message = one_line_error(result.stderr)
        assert "check" in message or "unreachable" in message
        assert ".;" not in message, "the driver's full stop, then our advice"
