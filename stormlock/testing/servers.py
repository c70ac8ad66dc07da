"""Real servers for backend tests, started from the binaries on PATH.

Each fixture starts its server once per session with mirakuru, on a free
loopback port, and gives the test a `Server` that can also be stopped and
started again (for outage tests). A missing binary skips the backend's
tests locally and fails them under CI=true.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mirakuru import HTTPExecutor, TCPExecutor
from mirakuru.base import SimpleExecutor

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HOST = "127.0.0.1"

__all__ = [
    "IN_CI",
    "ApiServer",
    "Server",
    "api_server",
    "dynamodb_server",
    "etcd_server",
    "postgres_server",
    "redis_server",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# What installs each server binary the tests start (Debian's packages, as
# .ci/run installs them; moto's server comes with the dev extra).
INSTALLS = {
    "redis-server": ("redis", "apt-get install redis-server"),
    "initdb": ("postgresql", "apt-get install postgresql"),
    "postgres": ("postgresql", "apt-get install postgresql"),
    "etcd": ("etcd", "apt-get install etcd-server"),
    "moto_server": ("dynamodb", "pip install 'moto[server]'"),
}
NOT_INSTALLED = "is not installed"


def find_binary(name: str, *extra_globs: str) -> str:
    """The path of a server binary, or skip (locally) / fail (in CI)."""
    found = shutil.which(name)
    if not found:
        for pattern in extra_globs:
            matches = sorted(glob.glob(pattern))
            if matches:
                found = matches[-1]
                break
    if not found:
        backend, command = INSTALLS.get(name, (name, "see .ci/run"))
        message = f"{backend}: {name} {NOT_INSTALLED}; install it with: {command}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Server:
    """A running server: where it listens and how to stop and restart it."""

    name: str
    executor: SimpleExecutor
    port: int
    options: dict[str, Any] = field(default_factory=dict)
    """Backend options (the [backend.NAME] section) that reach this server."""
    data_dir: Path | None = None
    """Where the server keeps its data, if on disk."""

    def stop(self) -> None:
        self.executor.stop()

    def start(self) -> None:
        if not self.executor.running():
            self.executor.start()


def _as_service_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@contextlib.contextmanager
def run_redis(*settings: str) -> Iterator[Server]:
    """A Redis without persistence, unless `settings` (e.g. "--appendonly",
    "yes") say otherwise."""
    binary = find_binary("redis-server")
    port = free_port()
    data = tempfile.mkdtemp(prefix="stormlock-redis-")
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        data,
        "--save",
        "",
        "--appendonly",
        "no",
        *settings,
    ]
    executor = TCPExecutor(command, host=HOST, port=port, timeout=30)
    executor.start()
    try:
        yield Server("redis", executor, port, {"url": f"redis://{HOST}:{port}/0"})
    finally:
        executor.stop()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def run_postgres() -> Iterator[Server]:
    pg_glob = "/usr/lib/postgresql/*/bin/"
    initdb = find_binary("initdb", pg_glob + "initdb")
    postgres = find_binary("postgres", pg_glob + "postgres")
    root = Path(tempfile.mkdtemp(prefix="stormlock-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_service_user(
            [
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    command = _as_service_user(
        [
            postgres,
            "-D",
            str(data),
            "-h",
            HOST,
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            "-c",
            "shared_preload_libraries=pg_stat_statements",
        ]
    )
    executor = TCPExecutor(command, host=HOST, port=port, timeout=60)
    executor.start()
    conninfo = f"postgresql://postgres@{HOST}:{port}/postgres"
    try:
        yield Server("postgresql", executor, port, {"connection": conninfo})
    finally:
        executor.stop()
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def run_etcd() -> Iterator[Server]:
    binary = find_binary("etcd")
    data = Path(tempfile.mkdtemp(prefix="stormlock-etcd-"))
    port, peer = free_port(), free_port()
    command = [
        binary,
        "--name",
        "test",
        "--data-dir",
        str(data),
        "--listen-client-urls",
        f"http://{HOST}:{port}",
        "--advertise-client-urls",
        f"http://{HOST}:{port}",
        "--listen-peer-urls",
        f"http://{HOST}:{peer}",
        "--initial-advertise-peer-urls",
        f"http://{HOST}:{peer}",
        "--initial-cluster",
        f"test=http://{HOST}:{peer}",
        "--log-level",
        "error",
        "--unsafe-no-fsync",
    ]
    executor = HTTPExecutor(
        command, url=f"http://{HOST}:{port}/health", method="GET", timeout=60
    )
    executor.start()
    try:
        yield Server("etcd", executor, port, {"host": HOST, "port": str(port)}, data)
    finally:
        executor.stop()
    shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def run_dynamodb() -> Iterator[Server]:
    try:
        import moto.server  # noqa: F401 - moto[server] provides the server
    except ImportError:
        find_binary("moto_server")
    port = free_port()
    command = [sys.executable, "-m", "stormlock.testing.moto_dynamodb", HOST, str(port)]
    executor = TCPExecutor(command, host=HOST, port=port, timeout=60)
    executor.start()
    options = {
        "endpoint": f"http://{HOST}:{port}",
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    try:
        yield Server("dynamodb", executor, port, options)
    finally:
        executor.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Server]:
    with run_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Server]:
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[Server]:
    with run_etcd() as server:
        yield server


@pytest.fixture(scope="session")
def dynamodb_server() -> Iterator[Server]:
    with run_dynamodb() as server:
        yield server


SERVERS = {
    "redis": run_redis,
    "postgresql": run_postgres,
    "etcd": run_etcd,
    "dynamodb": run_dynamodb,
}


@dataclass
class ApiServer(Server):
    """`stormlock serve` (the API under gunicorn) over a store."""

    url: str = ""
    config: Path = field(default_factory=Path)
    store: Path = field(default_factory=Path)
    """The SQLite store's file (when the store is SQLite)."""
    store_name: str = "sqlite"
    store_options: dict[str, str] = field(default_factory=dict)

    def store_backend(self) -> Any:
        """The API's store, reached directly (as whoever set it up)."""
        from stormlock.backends import build_backend

        return build_backend(self.store_name, self.store_options)

    def tokens(self) -> Any:
        """The store's tokens, reached directly."""
        from stormlock.tokens import Tokens

        return Tokens(self.store_backend())

    def token(self, name: str, principal: str = "ci-deploy", **scope: Any) -> str:
        """A new token's secret."""
        tokens = self.tokens()
        try:
            secret: str = tokens.create(name, principal, **scope)[0]
        finally:
            tokens.backend.close()
        return secret

    def log(self) -> str:
        return (self.config.parent / "api.log").read_text(errors="replace")

    def reset(self) -> None:
        """Forget every lease and token (and, on SQLite, every event)."""
        import sqlite3

        if self.store_name != "sqlite":
            from stormlock.names import RECORD_PREFIX

            with self.store_backend() as backend:
                for lease in backend.list_leases() + backend.list_prefix(RECORD_PREFIX):
                    backend.release_lease(lease.resource, lease.id)
            return
        with contextlib.closing(sqlite3.connect(self.store, timeout=10)) as db, db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            for table in ("stormlock_leases", "stormlock_history"):
                if table in tables:  # made at the store's first use
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - our names


@contextlib.contextmanager
def run_api(
    workdir: Path,
    extra: str = "",
    tls: tuple[Path, Path] | None = None,
    store: tuple[str, dict[str, str]] | None = None,
    log_level: str = "WARNING",
) -> Iterator[ApiServer]:
    """The API as users run it, `stormlock serve` under gunicorn, over a
    SQLite store in `workdir`; `extra` is added to its config file; `tls`
    (certificate, key) serves https; `store` (a backend's name and options)
    replaces the SQLite store. Its log goes to `workdir / "api.log"`."""
    port = free_port()
    path = workdir / "api-store.db"
    config = workdir / "api.cfg"
    name, options = store or ("sqlite", {"path": str(path)})
    config.write_text(
        f"[default]\nbackend = {name}\n\n[backend.{name}]\n"
        + "".join(f"{key} = {value}\n" for key, value in options.items())
        + extra
    )
    stormlock = str(Path(sys.executable).parent / "stormlock")
    command = [stormlock, "-c", str(config), "serve", "--host", HOST]
    command += ["--port", str(port), "--log-level", log_level]
    if tls is not None:
        command += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STORMLOCK_", "SLACK_"))
    }
    log = (workdir / "api.log").open("ab")
    executor: SimpleExecutor
    if tls is None:
        executor = HTTPExecutor(
            command,
            url=f"http://{HOST}:{port}/healthz",
            method="GET",
            timeout=60,
            envvars=env,
            stdout=log,
            stderr=log,
        )
    else:  # the health check speaks plain http: wait for the port instead
        executor = TCPExecutor(
            command,
            host=HOST,
            port=port,
            timeout=60,
            envvars=env,
            stdout=log,
            stderr=log,
        )
    executor.start()
    url = f"{'https' if tls else 'http'}://{HOST}:{port}"
    try:
        yield ApiServer(
            "api",
            executor,
            port,
            {"url": url},
            url=url,
            config=config,
            store=path,
            store_name=name,
            store_options=options,
        )
    finally:
        executor.stop()
        log.close()


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One API server for the session; `isolated_options` resets it per test."""
    with run_api(tmp_path_factory.mktemp("api")) as server:
        yield server
