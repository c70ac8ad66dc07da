"""The `http` backend passes the conformance kit, against the API as users
run it (`stormlock serve` under gunicorn) in front of each real store. Its
fault tests are in test_faults.py, test_hold.py and test_outages.py with the
other network backends."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stormlock.backends import http as http_backend
from stormlock.backends.http import Http
from stormlock.cli import main as cli_main
from stormlock.contract import Lease
from stormlock.line import Line
from stormlock.lock import StormLock
from stormlock.testing.backends import BACKENDS, BackendConfig, isolated_options
from stormlock.testing.conformance import *  # noqa: F403 - the kit's tests
from stormlock.testing.servers import ApiServer, run_api
from tests.support import wait_until


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
    return 5.0


def test_an_api_client_waits_in_the_servers_line_and_keeps_its_place(
    api_server: ApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--wait` over the http backend joins the line the server keeps, in
    requests that hand the ticket on (short ones here, to make several):
    it keeps its place ahead of a later waiter and is served first."""
    monkeypatch.setattr(http_backend, "LINE_CHUNK", 0.5)
    requests: list[float] = []
    take = Http._take

    def counted(self: Http, *args: Any, **kwargs: Any) -> Any:
        requests.append(time.monotonic())
        return take(self, *args, **kwargs)

    monkeypatch.setattr(Http, "_take", counted)
    api_server.reset()
    token = tmp_path / "bob.token"
    token.write_text(api_server.token(f"bob-{uuid.uuid4().hex[:8]}", "bob"))
    store = api_server.store_backend()
    resource = f"deploy-{uuid.uuid4().hex[:8]}"
    holder = store.acquire_lease(resource, "holder", timedelta(minutes=5))
    line = Line(store, resource)
    got: dict[str, Lease] = {}

    def wait_as(name: str, lock: StormLock) -> threading.Thread:
        def run() -> None:
            got[name] = lock.acquire_lease(wait=timedelta(seconds=60))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    api = Http(url=api_server.url, token_file=str(token))
    try:
        bob = wait_as("bob", StormLock(api, resource, "bob"))
        wait_until(lambda: [t.principal for t in line.waiting()] == ["bob"])
        (first,) = line.waiting()
        carol = wait_as("carol", StormLock(store, resource, "carol"))
        wait_until(lambda: len(line.waiting()) == 2)
        asked = len(requests)
        wait_until(lambda: len(requests) >= asked + 3)  # requests came and went
        assert [(t.principal, t.seq) for t in line.waiting()] == [
            ("bob", first.seq),
            ("carol", line.waiting()[1].seq),
        ], "bob lost his place between requests"
        # `stormlock queue` over the http backend shows the server's line.
        shown = api.waiting_in_line(resource)
        assert [(w["position"], w["principal"]) for w in shown] == [
            (1, "bob"),
            (2, "carol"),
        ]
        config = tmp_path / "stormlock.cfg"
        config.write_text(
            f"[default]\nbackend = http\n[backend.http]\nurl = {api_server.url}\n"
            f"token_file = {token}\n"
        )
        capsys.readouterr()
        assert cli_main(["-c", str(config), "queue", resource]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["POSITION", "PRINCIPAL", "SINCE", "SOURCE", "NOTE"]
        assert [row.split()[:2] for row in table[1:]] == [["1", "bob"], ["2", "carol"]]
        assert store.release_lease(resource, holder.id)
        bob.join(30)
        assert got["bob"].principal == "bob" and "carol" not in got
        assert api.release_lease(resource, got["bob"].id)
        carol.join(30)
        assert got["carol"].principal == "carol"
        assert got["bob"].fence < got["carol"].fence
        store.release_lease(resource, got["carol"].id)
        assert line.waiting() == []
    finally:
        api.close()
        store.close()
