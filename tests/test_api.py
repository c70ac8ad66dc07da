"""The HTTP API as CI jobs use it: `stormlock serve` under gunicorn, raw
HTTP with `requests`, and the CLI with the `http` backend."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from stormlock.testing.env import CliRunner
from stormlock.testing.faults import partition_proxy
from stormlock.testing.servers import ApiServer, run_api
from stormlock.tokens import TOKEN_FORM
from tests.support import one_line_error

TIMEOUT = 10


@pytest.fixture
def api(api_server: ApiServer) -> ApiServer:
    api_server.reset()
    return api_server


def call(
    api: ApiServer, method: str, path: str, token: str | None, **kwargs: Any
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(
        method, api.url + path, headers=headers, timeout=TIMEOUT, **kwargs
    )


def error_of(response: requests.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    assert "\n" not in body["message"]
    return body


def http_config(api: ApiServer, url: str | None = None, extra: str = "") -> str:
    return (
        "[default]\nbackend = http\nprincipal = someone@laptop\n\n"
        f"[backend.http]\nurl = {url or api.url}\ntimeout = 5\n{extra}"
    )


# -- the document ------------------------------------------------------------


def test_every_route_is_in_the_openapi_document(api: ApiServer) -> None:
    from stormlock.api.app import create_app
    from stormlock.config import load_config

    app = create_app(load_config(api.config))
    routes = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    served = call(api, "GET", "/v1/openapi.json", None)
    assert served.status_code == 200
    document = served.json()
    assert document["openapi"].startswith("3.")
    documented = {
        (path, method) for path, item in document["paths"].items() for method in item
    }
    assert routes == documented
    assert {"/v1/acquire", "/v1/renew", "/v1/release", "/v1/history"} <= {
        path for path, _ in routes
    }


def test_every_status_a_route_gives_is_in_the_openapi_document(
    api: ApiServer,
) -> None:
    token = api.token("t", "ci")
    big = {"resource": "db", "note": "x" * 70_000}
    seen: set[tuple[str, str, int]] = set()
    requests_made: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/acquire", {}),  # 405
        ("POST", "/v1/acquire", {"json": big}),  # 413
        ("POST", "/v1/acquire", {"json": {"resource": "db", "ttl": True}}),
        ("POST", "/v1/acquire", {"json": {"resource": "db"}}),
        ("POST", "/v1/acquire", {"json": {"resource": "db"}}),  # 409
        ("POST", "/v1/renew", {"json": {"resource": "db", "id": "0" * 32}}),  # 410
        ("GET", "/v1/leases", {"params": {"expiring_before": "0001-01-01T00:00"}}),
        ("GET", "/v1/leases", {"params": {"expiring_before": "yesterday"}}),
        ("GET", "/v1/whoami", {"headers": {"Authorization": "Bearer nope"}}),
    ]
    for method, path, kwargs in requests_made:
        headers = kwargs.pop("headers", {"Authorization": f"Bearer {token}"})
        answer = requests.request(
            method, api.url + path, headers=headers, timeout=TIMEOUT, **kwargs
        )
        assert answer.status_code < 500, (path, answer.text)
        seen.add((path, method.lower(), answer.status_code))
    assert {status for _, _, status in seen} >= {200, 400, 401, 405, 409, 410, 413}
    paths = call(api, "GET", "/v1/openapi.json", None).json()["paths"]
    for path, method, status in seen:
        # A wrong method is answered for the path: any of its methods lists it.
        listed = {
            int(code)
            for name, item in paths[path].items()
            if name == method or status == 405
            for code in item["responses"]
        }
        assert status in listed, (path, method, status)


# -- tokens: who and what ----------------------------------------------------------


def test_a_token_acts_as_its_principal_and_history_names_it(api: ApiServer) -> None:
    token = api.token("deploy", "ci-deploy")
    acquired = call(
        api,
        "POST",
        "/v1/acquire",
        token,
        json={"resource": "prod-db", "ttl": "2h", "note": "apply", "principal": "bob"},
    )
    assert acquired.status_code == 200, acquired.text
    lease = acquired.json()["lease"]
    assert lease["principal"] == "ci-deploy", "a client cannot choose its principal"
    events = call(api, "GET", "/v1/history", token, params={"resource": "prod-db"})
    [event] = events.json()["events"]
    assert (event["principal"], event["actor"], event["source"]) == (
        "ci-deploy",
        "deploy",
        "api",
    )
    assert lease["id"] not in events.text and token not in events.text
    released = call(
        api,
        "POST",
        "/v1/release",
        token,
        json={"resource": "prod-db", "id": lease["id"]},
    )
    assert released.json() == {"released": True}


def test_a_lease_id_is_shown_to_its_holder_only(api: ApiServer) -> None:
    alice, bob = api.token("a", "alice"), api.token("b", "bob")
    lease = call(api, "POST", "/v1/acquire", alice, json={"resource": "db"}).json()
    lease_id = lease["lease"]["id"]
    for token, sees in ((alice, True), (bob, False)):
        current = call(api, "GET", "/v1/current", token, params={"resource": "db"})
        listed = call(api, "GET", "/v1/leases", token)
        assert (lease_id in current.text, lease_id in listed.text) == (sees, sees)
    held = call(api, "POST", "/v1/acquire", bob, json={"resource": "db"})
    assert held.status_code == 409 and error_of(held)["exit_code"] == 2
    assert held.json()["holder"]["principal"] == "alice"
    assert lease_id not in held.text
    stolen = call(api, "POST", "/v1/release", bob, json={"resource": "db", "id": "x"})
    assert stolen.json() == {"released": False}


def test_scope_limits_resources_and_writes(api: ApiServer) -> None:
    staging = api.token("stg", "ci", resources="staging-*")
    reader = api.token("ro", "ci", read_only=True)
    assert call(api, "POST", "/v1/acquire", staging, json={"resource": "staging-1"}).ok
    refused = call(api, "POST", "/v1/acquire", staging, json={"resource": "prod-db"})
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "forbidden"
    assert "staging-*" in error_of(refused)["message"]
    read_only = call(api, "POST", "/v1/acquire", reader, json={"resource": "x"})
    assert (
        read_only.status_code == 403 and "read-only" in error_of(read_only)["message"]
    )
    assert call(
        api, "POST", "/v1/acquire", api.token("w", "w"), json={"resource": "p"}
    ).ok
    seen = [
        lease["resource"]
        for lease in call(api, "GET", "/v1/leases", staging).json()["leases"]
    ]
    assert seen == ["staging-1"], "a scoped token lists only its resources"
    everything = call(api, "GET", "/v1/leases", reader).json()["leases"]
    assert sorted(lease["resource"] for lease in everything) == ["p", "staging-1"]


def test_missing_unknown_revoked_and_expired_tokens_get_401(api: ApiServer) -> None:
    assert call(api, "GET", "/v1/leases", None).status_code == 401
    assert call(api, "GET", "/v1/leases", "stl_" + "A" * 43).status_code == 401
    assert call(api, "GET", "/v1/leases", "not a token").status_code == 401
    token = api.token("gone", "ci")
    assert call(api, "GET", "/v1/whoami", token).json()["name"] == "gone"
    tokens = api.tokens()
    try:
        assert tokens.revoke("gone", "ci")
        short = tokens.create("short", "ci", expires=timedelta(milliseconds=300))[0]
    finally:
        tokens.backend.close()
    revoked = call(api, "GET", "/v1/leases", token)
    assert revoked.status_code == 401 and error_of(revoked)["exit_code"] == 78
    deadline = time.monotonic() + 10
    while call(api, "GET", "/v1/leases", short).status_code == 200:
        assert time.monotonic() < deadline, "an expired token still worked"
        time.sleep(0.1)
    assert call(api, "GET", "/v1/leases", short).status_code == 401


def test_bad_bodies_get_one_line_and_the_usage_code(api: ApiServer) -> None:
    token = api.token("t", "ci")
    for body, code in (
        ({"resource": "prod db"}, "bad_resource"),
        ({"resource": "db", "ttl": "2 fortnights"}, "bad_ttl"),
        ({"resource": "db", "ttl": -5}, "bad_ttl"),
        ({"resource": "db", "ttl": 0.5}, "bad_ttl"),  # below the store's floor
        ({"resource": "db", "ttl": True}, "usage"),  # a boolean is not 1 s
        ({"resource": "db", "wait": False}, "usage"),
        ({"resource": "db", "wait": "5m"}, "usage"),
        ({"resource": "db", "surprise": 1}, "usage"),
        ({}, "usage"),
    ):
        response = call(api, "POST", "/v1/acquire", token, json=body)
        assert response.status_code == 400, (body, response.text)
        assert error_of(response)["code"] == code, body
    not_json = requests.post(
        api.url + "/v1/acquire",
        data=b"{",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        },
        timeout=TIMEOUT,
    )
    assert not_json.status_code == 400 and error_of(not_json)["code"] == "usage"
    nowhere = call(api, "GET", "/v1/nothing-here", token)
    assert nowhere.status_code == 404 and error_of(nowhere)["code"] == "usage"


def test_a_large_body_is_refused_before_it_is_read(api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 50000000\r\n"
            b"Connection: close\r\n\r\n{"
        )
        # No body follows: an answer now means the server did not wait for it.
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413"), answer


def test_a_retried_acquire_returns_the_lease_already_granted(api: ApiServer) -> None:
    token, other = api.token("a", "ci-deploy"), api.token("b", "ci-other")
    body = {"resource": "prod-api", "ttl": 600, "request_id": str(uuid.uuid4())}
    first = call(api, "POST", "/v1/acquire", token, json=body).json()
    again = call(api, "POST", "/v1/acquire", token, json=body).json()
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["lease"]["id"] == first["lease"]["id"]
    # Another principal's try with the same id is not that request.
    theirs = call(api, "POST", "/v1/acquire", other, json=body)
    assert theirs.status_code == 409 and first["lease"]["id"] not in theirs.text


def test_failed_authentication_is_rate_limited_and_valid_tokens_keep_working(
    tmp_path: Path,
) -> None:
    with run_api(tmp_path, "[api]\nfailed_auth_limit = 5\n", log_level="DEBUG") as api:
        token = api.token("good", "ci")
        assert call(api, "GET", "/v1/leases", token).ok
        guesses = [
            call(api, "GET", "/v1/leases", f"stl_{n:043d}").status_code
            for n in range(8)
        ]
        assert guesses == [401] * 5 + [429] * 3
        limited = call(api, "GET", "/v1/leases", "stl_" + "B" * 43)
        assert error_of(limited)["exit_code"] == 75
        assert int(limited.headers["Retry-After"]) > 0
        assert call(api, "GET", "/v1/leases", token).ok, "a valid token still works"
        # A valid token this server has never seen is not refused for others'
        # failures from the same address (an ingress's, in Kubernetes).
        fresh = api.token("fresh", "ci-fresh")
        assert call(api, "GET", "/v1/leases", fresh).ok
        taken = call(api, "POST", "/v1/acquire", token, json={"resource": "db"})
        lease_id = taken.json()["lease"]["id"]
        call(api, "POST", "/v1/release", token, json={"resource": "db", "id": lease_id})
        log = api.log()
    # At DEBUG: neither a token nor a lease id in any line.
    assert token not in log and not re.search(TOKEN_FORM, log)
    assert lease_id not in log
    assert "refused an API request" in log


# -- the http backend, from the CLI --------------------------------------------


@pytest.fixture
def http_cli(
    api: ApiServer, cli: CliRunner, write_config: Callable[[str], Path]
) -> Iterator[Callable[..., Any]]:
    path = write_config(http_config(api))

    def run(*args: str, token: str) -> Any:
        return cli("-c", str(path), *args, env={"STORMLOCK_TOKEN": token})

    yield run


def test_the_cli_works_with_nothing_but_a_url_and_a_token(
    api: ApiServer, http_cli: Callable[..., Any]
) -> None:
    token = api.token("ci", "ci-deploy")
    acquired = http_cli("acquire", "-t", "1h", "-n", "deploy", "prod-db", token=token)
    assert acquired.returncode == 0, acquired.stderr
    lease_id = acquired.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", lease_id)
    current = http_cli("current", "prod-db", token=token)
    assert current.stdout.split("\t")[0] == "ci-deploy" and lease_id in current.stdout
    assert http_cli("renew", "prod-db", lease_id, token=token).returncode == 0
    assert http_cli("is-held", "prod-db", lease_id, token=token).returncode == 0
    assert "prod-db" in http_cli("list", token=token).stdout
    held = http_cli("acquire", "prod-db", token=api.token("other", "bob"))
    assert held.returncode == 2 and "ci-deploy" in one_line_error(held.stderr)
    ran = http_cli(
        "run",
        "-t",
        "30s",
        "db2",
        "--",
        "sh",
        "-c",
        "echo $STORMLOCK_RESOURCE",
        token=token,
    )
    assert (ran.returncode, ran.stdout.strip()) == (0, "db2")
    assert http_cli("release", "prod-db", lease_id, token=token).returncode == 0
    history = http_cli("history", "prod-db", "-f", "json", token=token)
    assert history.returncode == 0 and '"source": "api"' in history.stdout
    assert '"actor": "ci"' in history.stdout
    assert http_cli("is-held", "prod-db", lease_id, token=token).returncode == 1


def test_the_cli_says_401_and_403_in_one_line_with_their_codes(
    api: ApiServer, http_cli: Callable[..., Any]
) -> None:
    unknown = http_cli("acquire", "prod-db", token="stl_" + "C" * 43)
    assert unknown.returncode == 78
    assert "token" in one_line_error(unknown.stderr)
    scoped = api.token("stg", "ci", resources="staging-*")
    refused = http_cli("acquire", "prod-db", token=scoped)
    assert refused.returncode == 77
    assert "staging-*" in one_line_error(refused.stderr)


def test_bad_http_backend_configs_are_one_line_with_exit_68(
    api: ApiServer, cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    token = api.token("ci", "ci")
    for extra_url, extra, env, says in (
        (None, "token = " + token, {"STORMLOCK_TOKEN": token}, "never put the token"),
        ("http://stormlock.example.com", "", {"STORMLOCK_TOKEN": token}, "in clear"),
        (None, "token_file = /nonexistent/token", {}, "cannot read token_file"),
        ("ftp://x", "", {"STORMLOCK_TOKEN": token}, "not an http(s) URL"),
    ):
        path = write_config(http_config(api, extra_url, extra))
        result = cli("-c", str(path), "acquire", "db", env=env)
        assert result.returncode == 68, (extra, result.stderr)
        assert says in one_line_error(result.stderr)
        assert token not in result.stderr
    # No token at all is a missing credential: exit 78, as documented.
    path = write_config(http_config(api))
    missing = cli("-c", str(path), "acquire", "db", env={})
    assert missing.returncode == 78, missing.stderr
    assert "needs a token" in one_line_error(missing.stderr)


def test_a_lost_answer_is_retried_with_the_same_request_and_gets_the_lease(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stormlock.backends.http import Http

    monkeypatch.setenv("STORMLOCK_TOKEN", api.token("ci", "ci-deploy"))
    with partition_proxy(api.port) as proxy:
        backend = Http(url=f"http://127.0.0.1:{proxy.port}", timeout=5)
        try:
            proxy.lose_answers(1)  # the acquire lands; its answer is lost
            lease = backend.acquire_lease("prod-db", "x", timedelta(minutes=5))
            assert lease.principal == "ci-deploy"
            assert backend.is_current("prod-db", lease.id)
            # Only one acquire happened: the retry got the same lease.
            events = backend.history("prod-db")
            assert [event.event for event in events] == ["acquired"]
        finally:
            backend.close()


def test_an_answer_that_never_comes_is_reported_as_unknown(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stormlock.backends.http import Http
    from stormlock.errors import BackendUnavailable

    monkeypatch.setenv("STORMLOCK_TOKEN", api.token("ci", "ci-deploy"))
    with partition_proxy(api.port) as proxy:
        backend = Http(url=f"http://127.0.0.1:{proxy.port}", timeout=1)
        try:
            backend.current("warm-up")  # the connection exists
            proxy.freeze()
            with pytest.raises(BackendUnavailable) as info:
                backend.acquire_lease("prod-db", "x", timedelta(minutes=5))
            assert "cannot tell whether" in str(info.value)
        finally:
            proxy.thaw()
            backend.close()


# -- `stormlock token`, where the store's credentials are ------------------------


def test_token_commands_create_list_and_revoke(
    api: ApiServer, cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config(
        f"[default]\nbackend = sqlite\nprincipal = admin@ops\n"
        f"[backend.sqlite]\npath = {api.store}\n"
    )

    def token(*args: str) -> Any:
        return cli("-c", str(path), "token", *args)

    made = token(
        "create",
        "deploy",
        "--as",
        "ci-deploy",
        "--resources",
        "prod-*",
        "--expires",
        "90d",
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert re.fullmatch(TOKEN_FORM, secret), "stdout is the token alone"
    whoami = call(api, "GET", "/v1/whoami", secret).json()
    assert (whoami["principal"], whoami["resources"]) == ("ci-deploy", ["prod-*"])
    listed = token("list")
    assert "deploy" in listed.stdout and "ci-deploy" in listed.stdout
    assert "prod-*" in listed.stdout and secret not in listed.stdout
    [entry] = __import__("json").loads(token("list", "-f", "json").stdout)
    assert (entry["name"], entry["created_by"]) == ("deploy", "admin@ops")
    assert entry["last_used"] is not None and entry["expires"] is not None
    again = token("create", "deploy", "--as", "ci-deploy")
    assert again.returncode == 64 and "already has a token" in one_line_error(
        again.stderr
    )
    assert token("create", "bad name!").returncode == 64
    assert token("create", "x", "--expires", "soon").returncode == 66
    assert token("revoke", "deploy", "--as", "ci-deploy").returncode == 0
    assert call(api, "GET", "/v1/whoami", secret).status_code == 401
    gone = token("revoke", "deploy", "--as", "ci-deploy")
    assert gone.returncode == 1 and "nothing revoked" in one_line_error(gone.stderr)
    mine = token("create", "laptop")
    assert call(api, "GET", "/v1/whoami", mine.stdout.strip()).json()["principal"] == (
        "admin@ops"
    )


def test_token_commands_refuse_the_http_backend(
    api: ApiServer, cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    path = write_config(http_config(api))
    result = cli(
        "-c", str(path), "token", "list", env={"STORMLOCK_TOKEN": api.token("t", "ci")}
    )
    assert result.returncode == 72 and "/stormlock token" in one_line_error(
        result.stderr
    )


def test_tls_is_verified_and_a_private_ca_can_be_trusted(
    tmp_path: Path, cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    import trustme

    ca = trustme.CA()
    pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert(
        "127.0.0.1", "localhost"
    ).private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    with run_api(tmp_path, tls=(pem, pem)) as api:
        token = api.token("ci", "ci-deploy")
        env = {"STORMLOCK_TOKEN": token}
        untrusted = write_config(http_config(api))
        refused = cli("-c", str(untrusted), "acquire", "db", env=env)
        assert refused.returncode == 70
        assert "TLS" in one_line_error(refused.stderr) and token not in refused.stderr
        trusted = write_config(http_config(api, extra=f"ca_cert = {ca_pem}"))
        taken = cli("-c", str(trusted), "acquire", "db", env=env)
        assert taken.returncode == 0, taken.stderr
        assert api.url.startswith("https://")


def test_a_lost_answer_the_server_cannot_replay_is_unknown_not_held(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from stormlock.backends.http import Http
    from stormlock.errors import BackendUnavailable

    def server_forgot() -> None:
        # As if the server died between granting the lease and recording
        # which request it was for.
        with sqlite3.connect(api.store) as db:
            db.execute(
                "DELETE FROM stormlock_leases WHERE resource LIKE ?",
                (".stormlock/api/request/%",),
            )

    monkeypatch.setenv("STORMLOCK_TOKEN", api.token("ci", "ci-deploy"))
    with partition_proxy(api.port) as proxy:
        backend = Http(url=f"http://127.0.0.1:{proxy.port}", timeout=5)
        try:
            proxy.lose_answers(1, then=server_forgot)
            with pytest.raises(BackendUnavailable) as info:
                backend.acquire_lease("prod-db", "x", timedelta(minutes=5))
            assert "cannot tell whether" in str(info.value)
            # A later acquire of someone else's is plainly held, as ever.
            holder = backend.current("prod-db")
            assert holder is not None and holder.principal == "ci-deploy"
        finally:
            backend.close()


# -- bad weather at the server ----------------------------------------------------


def test_a_silent_store_behind_the_api_is_503_within_its_timeout(
    tmp_path: Path, cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    from stormlock.testing.faults import silent_server

    with silent_server() as silent:
        # Tokens live in the default store (SQLite); prod-db's store is silent.
        extra = (
            "\n[prod-db]\nbackend = redis\n\n[backend.redis]\n"
            f"url = redis://127.0.0.1:{silent.port}/0\ntimeout = 1\n"
        )
        with run_api(tmp_path, extra) as api:
            token = api.token("ci", "ci-deploy")
            started = time.monotonic()
            answer = call(
                api, "POST", "/v1/acquire", token, json={"resource": "prod-db"}
            )
            took = time.monotonic() - started
            assert answer.status_code == 503 and error_of(answer)["exit_code"] == 70
            assert took < 1 + 1.5, f"the API took {took:.1f}s with a 1s store timeout"
            # Where the store lives is for the operator's log, not a token holder.
            said = error_of(answer)["message"]
            assert str(silent.port) not in said and "127.0.0.1" not in said, said
            assert "may or may not" in said
            path = write_config(http_config(api))
            result = cli(
                "-c", str(path), "current", "prod-db", env={"STORMLOCK_TOKEN": token}
            )
            assert result.returncode == 70, result.stderr
            one_line_error(result.stderr)
            # The rest of the API still answers.
            assert call(api, "GET", "/v1/current", token, params={"resource": "x"}).ok


def test_a_wait_goes_on_while_the_api_server_restarts(
    tmp_path: Path, home: Path, write_config: Callable[[str], Path]
) -> None:
    import subprocess

    from stormlock.testing.env import STORMLOCK, clean_env

    with run_api(tmp_path) as api:
        holder = api.token("holder", "alice")
        lease = call(api, "POST", "/v1/acquire", holder, json={"resource": "db"})
        lease_id = lease.json()["lease"]["id"]
        path = write_config(http_config(api))
        env = clean_env(home)
        env["STORMLOCK_TOKEN"] = api.token("ci", "ci-deploy")
        api.stop()
        waiting = subprocess.Popen(
            [STORMLOCK, "-c", str(path), "acquire", "-w", "40s", "db"],
            cwd=home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Refused connections for a while: it keeps waiting, it does not exit 70.
            time.sleep(1.5)
            assert waiting.poll() is None, waiting.communicate()
            api.start()
            released = call(
                api,
                "POST",
                "/v1/release",
                holder,
                json={"resource": "db", "id": lease_id},
            )
            assert released.json() == {"released": True}
            out, err = waiting.communicate(timeout=40)
            assert waiting.returncode == 0, err
            assert re.fullmatch(r"[0-9a-f-]{36}", out.strip())
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.communicate()


def test_a_wrong_content_type_is_400_in_one_line(api: ApiServer) -> None:
    token = api.token("t", "ci")
    answer = call(
        api,
        "POST",
        "/v1/acquire",
        token,
        data="resource=db",
    )
    assert answer.status_code == 400
    assert "application/json" in error_of(answer)["message"]


def test_behind_a_proxy_the_limit_counts_each_forwarded_client(tmp_path: Path) -> None:
    with run_api(tmp_path, "[api]\nfailed_auth_limit = 2\nproxies = 1\n") as api:

        def guess(client: str) -> int:
            return requests.get(
                api.url + "/v1/leases",
                headers={
                    "Authorization": "Bearer stl_" + "D" * 43,
                    "X-Forwarded-For": client,
                },
                timeout=TIMEOUT,
            ).status_code

        assert [guess("10.0.0.1") for _ in range(3)] == [401, 401, 429]
        assert guess("10.0.0.2") == 401, (
            "another client behind the proxy is not limited"
        )
        assert "10.0.0.1" in api.log()
        # A client that reaches the server itself cannot choose its address:
        # its socket's own address is limited too, at ten times the limit.
        # (4 failures so far; 20 is ten times failed_auth_limit.)
        answers = [guess(f"10.1.0.{n}") for n in range(30)]
        assert answers == [401] * 16 + [429] * 14, answers
        # A valid token still passes, from any address.
        token = api.token("ci", "ci-deploy")
        assert call(api, "GET", "/v1/leases", token).ok


def test_a_pool_through_the_api(tmp_path: Path) -> None:
    with run_api(tmp_path, "\n[pool.staging]\nmembers = staging-1, staging-2\n") as api:
        token = api.token("ci", "ci-deploy")
        taken = [
            call(api, "POST", "/v1/acquire", token, json={"resource": "staging"}).json()
            for _ in range(2)
        ]
        members = sorted(t["lease"]["resource"] for t in taken)
        assert members == ["staging-1", "staging-2"]
        full = call(api, "POST", "/v1/acquire", token, json={"resource": "staging"})
        assert (
            full.status_code == 409
            and "every member of pool" in error_of(full)["message"]
        )
        lease = taken[0]["lease"]
        released = call(
            api,
            "POST",
            "/v1/release",
            token,
            json={"resource": "staging", "id": lease["id"]},
        )
        assert released.json() == {"released": True}
        body = {"resource": "staging", "request_id": "retry-1"}
        again = call(api, "POST", "/v1/acquire", token, json=body).json()
        assert again["lease"]["resource"] == lease["resource"]
        # A retry of that request gets the same member back, not the next one.
        other = taken[1]["lease"]
        call(
            api,
            "POST",
            "/v1/release",
            token,
            json={"resource": "staging", "id": other["id"]},
        )
        retried = call(api, "POST", "/v1/acquire", token, json=body).json()
        assert retried["replayed"] and retried["lease"]["id"] == again["lease"]["id"]


def test_a_set_through_the_api_is_one_lease_within_the_tokens_scope(
    tmp_path: Path,
) -> None:
    group = "\n[group.stack]\nmembers = staging-1, staging-db\n"
    with run_api(tmp_path, group) as api:
        scoped = api.token("stg", "ci", resources="staging-*")
        # A glob that covers one member does not cover the set.
        mixed = {"resource": "staging-1,prod-db"}
        refused = call(api, "POST", "/v1/acquire", scoped, json=mixed)
        assert refused.status_code == 403 and "prod-db" in error_of(refused)["message"]
        assert call(api, "GET", "/v1/leases", scoped).json()["leases"] == []
        taken = call(api, "POST", "/v1/acquire", scoped, json={"resource": "stack"})
        assert taken.status_code == 200, taken.text
        body = taken.json()
        lease_id = body["lease"]["id"]
        assert body["lease"]["members"] == ["staging-1", "staging-db"]
        fences = {one["resource"]: one["fence"] for one in body["leases"]}
        assert set(fences) == {"staging-1", "staging-db"}
        assert all(one["id"] == lease_id for one in body["leases"])
        # Any member's name reaches the whole lease.
        held = {"resource": "staging-db", "id": lease_id}
        assert call(api, "POST", "/v1/is-held", scoped, json=held).json()["held"]
        renewed = call(
            api, "POST", "/v1/renew", scoped, json={**held, "ttl": "2h"}
        ).json()
        assert len(renewed["leases"]) == 2
        assert call(api, "POST", "/v1/release", scoped, json=held).json() == {
            "released": True
        }
        current = call(api, "GET", "/v1/current?resource=staging-1", scoped)
        assert current.json()["lease"] is None
        events = call(api, "GET", "/v1/history?resource=stack", scoped).json()["events"]
        assert sorted({e["resource"] for e in events}) == ["staging-1", "staging-db"]
        assert {e["event"] for e in events} == {"acquired", "renewed", "released"}


def test_a_client_that_hangs_up_mid_headers_leaves_no_token_in_the_log(
    tmp_path: Path,
) -> None:
    """gthread logged the raw bytes of a request cut short (a bearer token
    among them) at DEBUG; the server now reads a request whole before
    parsing it, and drops one cut short without a word."""
    with run_api(tmp_path, log_level="DEBUG") as api:
        token = api.token("ci", "ci-deploy")
        for header in (
            f"Authorization: Bearer {token}",
            "Authorization: Bearer stl_cut",
        ):
            with socket.create_connection(
                ("127.0.0.1", api.port), timeout=TIMEOUT
            ) as s:
                s.sendall(f"POST /v1/acquire HTTP/1.1\r\n{header}\r\nHost: x".encode())
        # Served after both: the server has read what they sent.
        assert call(api, "GET", "/v1/whoami", token).ok
        log = api.log()
    assert "stl_" not in log, log[-2000:]


def test_gunicorns_own_lines_are_redacted_like_ours(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Whatever gunicorn logs goes through the servers' handlers (RootLogger):
    a line with a token or a raw Authorization header is redacted."""
    import logging

    from gunicorn.config import Config as GunicornConfig

    from stormlock.bot import logs
    from stormlock.wsgi import RootLogger

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("DEBUG")
        config = GunicornConfig()
        config.set("loglevel", "debug")
        config.set("errorlog", None)
        logger = RootLogger(config)
        secret = "stl_" + "A" * 43
        logger.debug("Ignored premature client disconnection. %s", f"Bearer {secret}")
        raw = b"GET / HTTP/1.1\r\nAuthorization: Basic dXNlcjpw"
        logger.error("No more data after: %r", raw)
        said = capsys.readouterr().err
    finally:
        root.handlers[:], root.level = handlers, level
    assert "premature client disconnection" in said
    assert secret not in said and "dXNlcjpw" not in said and "[redacted]" in said


def test_workers_share_the_failed_login_limit_between_them() -> None:
    from stormlock.api.service import FailureLimiter

    workers = [FailureLimiter(limit=20, workers=2) for _ in range(2)]
    allowed = 0
    for guess in range(100):
        worker = workers[guess % 2]  # the kernel spreads connections
        if worker.limited("203.0.113.9") is None:
            allowed += 1
        worker.failed("203.0.113.9")
    assert allowed == 20


def test_one_person_is_one_principal_whatever_its_case(api: ApiServer) -> None:
    """`Alice@Example.com` holds it from the CLI; the API token of
    `alice@example.com` is the same holder: shown the id, and may release."""
    token = api.token("mine", "alice@example.com")
    with api.store_backend() as store:
        held = store.acquire_lease("pcase", "Alice@Example.com", timedelta(minutes=5))
    shown = call(api, "GET", "/v1/current", token, params={"resource": "pcase"})
    assert shown.json()["lease"]["id"] == held.id
    other = api.token("other", "bob@example.com")
    hidden = call(api, "GET", "/v1/current", other, params={"resource": "pcase"})
    assert hidden.json()["lease"]["id"] is None
    gone = call(
        api, "POST", "/v1/release", token, json={"resource": "pcase", "id": held.id}
    )
    assert gone.json() == {"released": True}


def test_a_tokens_scope_is_checked_on_what_the_name_resolves_to(
    tmp_path: Path,
) -> None:
    """A pool's every member (any may be given), a name in NFC however it
    was typed, and a request id only for the request it was first sent with."""
    import unicodedata

    pool = "\n[pool.runners]\nmembers = ci-1, prod-db2\n"
    with run_api(tmp_path, pool) as api:

        def take(token: str, resource: str, **more: str) -> requests.Response:
            body = {"resource": resource, **more}
            return call(api, "POST", "/v1/acquire", token, json=body)

        refused = take(api.token("by-pool", resources="runners"), "runners")
        assert refused.status_code == 403, refused.text
        assert "may not touch 'ci-1'" in error_of(refused)["message"]
        both = api.token("both", resources="ci-*,prod-db*")
        assert take(both, "runners").status_code == 200

        cafe = "caf\u00e9-prod"
        decomposed = unicodedata.normalize("NFD", cafe)
        plain = api.token("plain", resources="cafe*")
        for spelling in (cafe, decomposed):
            assert take(plain, spelling).status_code == 403, spelling
        accented = take(api.token("accented", resources="caf\u00e9*"), decomposed)
        assert accented.status_code == 200
        assert accented.json()["lease"]["resource"] == cafe

        request = str(uuid.uuid4())
        first = take(both, "ci-2", request_id=request).json()
        other = take(both, "ci-3", request_id=request).json()
        assert not other["replayed"] and other["lease"]["resource"] == "ci-3"
        assert other["lease"]["id"] != first["lease"]["id"]
