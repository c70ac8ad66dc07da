"""The `http` backend: leases through a Stormlock API server (`stormlock
serve`, or `stormlock-bot serve`), with a token instead of the store's
credentials. For CI jobs: nothing but the URL and a token.

    [default]
    backend = http

    [backend.http]
    url = https://stormlock.example.com
    timeout = 10

The token comes from `$STORMLOCK_TOKEN` or from `token_file`, never from the
config file itself. It is sent only over https, or plain http to loopback
(`insecure = yes` allows more, on a network you trust); TLS is verified, with
`ca_cert` for a private CA.

The principal is the token's (the config's `principal` is ignored), except
for a delegate token, which names the principal of each request and says who
acted and from where (a bridge that authenticates people itself).

A lost response never strands a lease: each acquire carries a request id,
retried once within `timeout` on a broken connection; the server answers a
retry with the lease it already granted. An acquire whose outcome the client
cannot learn is reported as unknown (exit 70), never as "not acquired".
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    SSLError,
)

from ..backend import (
    Capabilities,
    Clock,
    Finding,
    Lease,
    LeaseBackend,
    LockExpiredException,
    LockHeldException,
    trips,
)
from ..budget import budget
from ..contract import same_principal
from ..errors import (
    BackendUnavailable,
    ConfigError,
    InvalidResourceName,
    InvalidTTL,
    NotAllowed,
    RateLimited,
    StormlockError,
    Unauthenticated,
    UnsupportedOperation,
    UsageError,
    one_line,
)
from ..history import Event, current_context
from ..times import iso, retained_since

#: How long one request of a wait in the server's line lasts: short, since
#: the server cannot tell that a client gave up (Ctrl-C) until it ends.
LINE_CHUNK = 5.0

TOKEN_ENV = "STORMLOCK_TOKEN"  # noqa: S105 - a variable name, not a secret
_LOOPBACK_NAMES = ("localhost",)


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _lease(data: dict[str, Any]) -> Lease:
    return Lease(
        principal=data["principal"],
        created=datetime.fromisoformat(data["created"]),
        id=data.get("id") or "",
        resource=data["resource"],
        expires=_time(data.get("expires")),
        note=data.get("note"),
        fence=int(data.get("fence") or 0),
        members=tuple(data.get("members") or ()),
    )


def _event(data: dict[str, Any]) -> Event:
    return Event(
        time=datetime.fromisoformat(data["time"]),
        resource=data["resource"],
        event=data["event"],
        principal=data["principal"],
        actor=data["actor"],
        note=data.get("note"),
        fence=int(data.get("fence") or 0),
        source=data.get("source") or "",
        until=_time(data.get("until")),
        derived=bool(data.get("derived")),
        channel=data.get("channel"),
    )


class _NoAnswer(Exception):
    """The request may have reached the server, but no answer came."""


class _Refused(NamedTuple):
    """An acquire the server refused: who holds it (if told), and the
    ticket of a place it kept in its line (`keep_place`; only its waiter
    gets it)."""

    holder: Lease | None
    ticket: str | None = None
    retry_after: float | None = None
    """The wait was cut short (the server's waiting slots were busy): ask
    again after this long."""


# The server's own errors: what the CLI would have raised with the store's
# credentials (the API's code names map one-to-one onto exit codes).
_RAISE: dict[str, type[StormlockError]] = {
    "usage": UsageError,
    "bad_resource": InvalidResourceName,
    "bad_ttl": InvalidTTL,
    "unsupported": UnsupportedOperation,
    "forbidden": NotAllowed,
    "unauthenticated": Unauthenticated,
    "rate_limited": RateLimited,
}


class Http(LeaseBackend):
    """Leases through Stormlock's HTTP API.

    Options: `url` (required), `timeout` (seconds per operation, default 10),
    `token_file`, `insecure` (allow plain http beyond loopback), `ca_cert`.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        token_file: str | None = None,
        insecure: bool = False,
        ca_cert: str | None = None,
        **unknown: str,
    ) -> None:
        if "token" in unknown:
            raise ConfigError(
                "[backend.http] token: never put the token in the config file; "
                f"set ${TOKEN_ENV} or token_file (a file only you can read)"
            )
        if unknown:
            raise ConfigError(
                f"[backend.http] has unknown option {sorted(unknown)[0]!r}; valid "
                "options: ca_cert, insecure, timeout, token_file, url"
            )
        self._set_timeout(timeout)
        parsed = urllib3.util.parse_url(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(
                f"[backend.http] url = {url!r} is not an http(s) URL; "
                "use e.g. https://stormlock.example.com"
            )
        if parsed.scheme == "http" and not _loopback(parsed.host) and not insecure:
            raise ConfigError(
                f"[backend.http] refusing to send the token in clear to {parsed.host}; "
                "use https:// (or insecure = yes on a network you trust)"
            )
        self.base = url.strip().rstrip("/")
        self._token = self._read_token(token_file)
        self._local = threading.local()
        self._principal: str | None = None
        self.http = urllib3.PoolManager(
            num_pools=2,
            maxsize=32,
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
            retries=False,  # `_request` retries, within the budget
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_cert,
        )

    @staticmethod
    def _read_token(token_file: str | None) -> str:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if token:
            return token
        if token_file:
            path = Path(token_file).expanduser()
            try:
                token = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"[backend.http] cannot read token_file {str(path)!r} "
                    f"({type(exc).__name__}); fix the path or its permissions"
                ) from None
            if token:
                return token
            raise ConfigError(
                f"[backend.http] token_file {str(path)!r} is empty; put the token in it"
            )
        # As documented (exit 78): no token is a missing credential, as a
        # wrong one is, not a fault of the config file.
        raise Unauthenticated(
            f"the http backend needs a token: set ${TOKEN_ENV} or token_file in "
            "[backend.http] (create one with 'stormlock token create' on the server)"
        )

    keeps_lines = False  # the API server keeps the line; its clients back off
    capabilities = Capabilities(
        Clock.SERVER,
        # The server's store is not known here: the largest built-in floor
        # (etcd's), so no TTL that some store would refuse leaves the client.
        timedelta(seconds=2),
        "the API server's store",
        trips(acquire=1, renew=1, release=1, current=1, is_current=1, list=1),
        timedelta(seconds=1),
        history="by the API server's store",
        sets="as the API server's store does",
    )

    # -- transport ------------------------------------------------------------

    def _unreachable(self, why: str, nothing_sent: bool = False) -> BackendUnavailable:
        return BackendUnavailable(
            f"the Stormlock API at {self.base} is unreachable or did not answer "
            f"within {self.timeout:g}s ({why}); check that it is up and "
            "[backend.http] url",
            nothing_sent,
        )

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, query: str
    ) -> urllib3.BaseHTTPResponse:
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        url = self.base + path + (f"?{query}" if query else "")
        for attempt in range(2):
            left = self.time_left()
            if left is not None and left <= 0:
                raise _NoAnswer("no answer in time")
            extra: dict[str, Any] = {}
            if left is not None:
                extra["timeout"] = urllib3.Timeout(total=left)
            started = time.monotonic()
            try:
                return self.http.request(
                    method, url, body=data, headers=headers, **extra
                )
            except SSLError as exc:
                raise BackendUnavailable(
                    f"TLS with the Stormlock API at {self.base} failed "
                    f"({one_line(str(exc))[:200]}); check the certificate or "
                    "[backend.http] ca_cert"
                ) from None
            except (NewConnectionError, ConnectTimeoutError) as exc:
                # Never sent: nothing happened on the server.
                if attempt or not self.failed_fast(started):
                    raise self._unreachable(type(exc).__name__, True) from None
            except HTTPError as exc:
                # Sent, perhaps; a reset at once is worth one more try (an
                # acquire's request id makes it safe), a silence is not.
                if attempt or not self.failed_fast(started):
                    raise _NoAnswer(type(exc).__name__) from None
                self._local.uncertain = True
        raise _NoAnswer("no answer")  # pragma: no cover - the loop returns

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        encoded = urlencode({k: v for k, v in (query or {}).items() if v is not None})
        response = self._send(method, path, body, encoded)
        try:
            data = json.loads(response.data or b"{}")
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:
            raise BackendUnavailable(
                f"the Stormlock API at {self.base} answered HTTP {response.status} "
                "with no JSON; is [backend.http] url a Stormlock API server?"
            ) from None
        if response.status == 200:
            return data
        raise self._error(response.status, data)

    def _error(self, status: int, data: dict[str, Any]) -> StormlockError | _Failure:
        error = data.get("error")
        if not isinstance(error, dict):
            return BackendUnavailable(
                f"the Stormlock API at {self.base} answered HTTP {status}; "
                "is [backend.http] url a Stormlock API server?"
            )
        code = str(error.get("code", ""))
        message = one_line(str(error.get("message", "")))[:500]
        if code in _RAISE:
            return _RAISE[code](message)
        if code in ("held", "expired"):
            ticket = data.get("ticket")
            ticket = ticket if isinstance(ticket, str) else None
            retry = data.get("retry_after")
            failure = _Failure(code, message, data.get("holder"), ticket)
            if isinstance(retry, int | float) and not isinstance(retry, bool):
                failure.retry_after = min(float(retry), 10.0)
            return failure
        return BackendUnavailable(f"the Stormlock API at {self.base} failed: {message}")

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            return self._request(method, path, body, query)
        except _NoAnswer as exc:
            raise self._unreachable(str(exc)) from None

    def _context(self, body: dict[str, Any]) -> dict[str, Any]:
        """Who acts and from where, for a delegate token (others' are ignored)."""
        context = current_context()
        body["record"] = self.history_retention is not None and context.record
        body["context"] = {
            "actor": context.actor,
            "source": context.source,
            "forced": context.forced,
            "channel": context.channel,
        }
        return body

    # -- the hooks ------------------------------------------------------------

    def _acquire(
        self, resource: str, principal: str, ttl: timedelta, note: str | None
    ) -> tuple[bool, Lease | None]:
        answer = self._take(resource, principal, ttl, note)
        if isinstance(answer, dict):
            return True, _lease(answer["lease"])
        return False, answer.holder

    def _acquire_set(
        self,
        resources: Sequence[str],
        lease_id: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool, list[Lease]]:
        # The server takes the set in its store's one transaction, with an
        # id of its own (lease_id is not sent).
        answer = self._take(",".join(resources), principal, ttl, note)
        if isinstance(answer, dict):
            return True, [_lease(each) for each in answer.get("leases") or []]
        return False, [answer.holder] if answer.holder is not None else []

    def _renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease] | None:
        body = self._context(
            {
                "resource": ",".join(resources),
                "id": lease_id,
                "ttl": ttl.total_seconds(),
            }
        )
        try:
            data = self._call("POST", "/v1/renew", body)
        except _Failure as failure:
            if failure.code == "expired":
                return None
            raise
        return [_lease(each) for each in data.get("leases") or []] or None

    def _release_set(self, resources: Sequence[str], lease_id: str) -> bool:
        return self._release(",".join(resources), lease_id)

    def acquire_in_line(
        self,
        resource: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
        wait: timedelta,
        cancel: threading.Event | None = None,
    ) -> Lease:
        """Wait in the server's line for `resource`, up to `wait`, in
        requests of at most LINE_CHUNK seconds that keep the place between
        them (the server hands back the ticket); raises the last refusal."""
        deadline = time.monotonic() + wait.total_seconds()
        ticket: str | None = None
        pause = 0.1
        while True:
            left = max(0.0, deadline - time.monotonic())
            final = left <= LINE_CHUNK or (cancel is not None and cancel.is_set())
            chunk = min(left, LINE_CHUNK)
            extra = {"wait": chunk, "keep_place": not final, "ticket": ticket}
            try:
                # The operation's budget covers the server's wait too.
                with budget(chunk + self.timeout), self._errors():
                    answer = self._take(resource, principal, ttl, note, extra)
            except BackendUnavailable as failed:
                # A server that refused the connection (restarting) changed
                # nothing: wait it out within `wait`; the ticket it kept in
                # the store is resumed if it is back within 10 s.
                left = deadline - time.monotonic()
                if not failed.nothing_sent or left <= 0:
                    raise
                nap = min(pause, left)
                if cancel is not None:
                    if cancel.wait(nap):
                        raise
                else:
                    time.sleep(nap)
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.1
            if isinstance(answer, dict):
                return _lease(answer["lease"])
            cut_short = answer.retry_after or 0.0  # the server could not wait
            again = 0 < cut_short < deadline - time.monotonic()
            if final and not again:
                raise LockHeldException(resource, answer.holder)
            ticket = answer.ticket
            if cut_short:  # ask again when it said
                nap = min(cut_short, max(0.0, deadline - time.monotonic()))
                if cancel is not None:
                    cancel.wait(nap)
                else:
                    time.sleep(nap)

    def waiting_in_line(self, resource: str) -> list[dict[str, Any]]:
        """The server's line for `resource`, first first (`stormlock queue`)."""
        with self._operation():
            data = self._call("GET", "/v1/line", query={"resource": resource})
        waiting = data.get("waiting")
        return (
            [w for w in waiting if isinstance(w, dict)]
            if isinstance(waiting, list)
            else []
        )

    def _take(
        self,
        resource: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any] | _Refused:
        """POST an acquire: the answer if taken, else the refusal."""
        body = self._context(
            {
                "resource": resource,
                "principal": principal,
                "ttl": ttl.total_seconds(),
                "note": note,
                "request_id": str(uuid.uuid4()),
                **(extra or {}),
            }
        )
        self._local.uncertain = False
        try:
            data = self._request("POST", "/v1/acquire", body)
        except _Failure as failure:
            if failure.code != "held":
                raise BackendUnavailable(
                    f"the API refused the acquire: {failure}"
                ) from None
            holder = _lease(failure.holder) if failure.holder else None
            if (
                holder is not None
                and self._local.uncertain
                and (same_principal(holder.principal, principal) or self._mine(holder))
            ):
                # The first try may have landed with its answer lost, and the
                # server not know it (it died before recording the request).
                raise BackendUnavailable(
                    f"cannot tell whether the lease on {resource!r} was acquired: "
                    f"the first try's answer was lost and {resource!r} is held in "
                    f"your name since {iso(holder.created)}; it may be yours "
                    f"(check with 'stormlock current {resource}')"
                ) from None
            return _Refused(holder, failure.ticket, failure.retry_after)
        except _NoAnswer as exc:
            raise BackendUnavailable(
                f"cannot tell whether the lease on {resource!r} was acquired: the "
                f"Stormlock API at {self.base} did not answer within "
                f"{self.timeout:g}s ({exc}); if it was, it is yours until it "
                f"expires: check with 'stormlock current {resource}'"
            ) from None
        return data

    def _renew(self, resource: str, lease_id: str, ttl: timedelta) -> Lease | None:
        body = self._context(
            {"resource": resource, "id": lease_id, "ttl": ttl.total_seconds()}
        )
        try:
            data = self._call("POST", "/v1/renew", body)
        except _Failure as failure:
            if failure.code == "expired":
                return None
            raise
        return _lease(data["lease"])

    def _release(self, resource: str, lease_id: str) -> bool:
        body = self._context({"resource": resource, "id": lease_id})
        data = self._call("POST", "/v1/release", body)
        return bool(data.get("released"))

    def _current(self, resource: str) -> Lease | None:
        data = self._call("GET", "/v1/current", query={"resource": resource})
        lease = data.get("lease")
        return _lease(lease) if lease else None

    def _is_current(self, resource: str, lease_id: str) -> bool:
        data = self._call("POST", "/v1/is-held", {"resource": resource, "id": lease_id})
        return bool(data.get("held"))

    def _list_leases(self) -> list[Lease]:
        return self._list({})

    def _list_prefix(self, prefix: str) -> list[Lease]:
        return self._list({"prefix": prefix})

    def _list_expiring(self, before: datetime) -> list[Lease]:
        return self._list({"expiring_before": iso(before)})

    def _list(self, query: dict[str, Any]) -> list[Lease]:
        data = self._call("GET", "/v1/leases", query=query)
        return [_lease(item) for item in data.get("leases", [])]

    def history(
        self,
        resource: str | None = None,
        since: datetime | None = None,
        principal: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """The API server's history (its store keeps it, for its retention;
        a shorter `history` in this config hides older events)."""
        since = retained_since(since, self.history_retention)
        query = {
            "resource": resource,
            "since": iso(since) if since else None,
            "who": principal,
            "limit": limit,
        }
        with self._operation():
            data = self._call("GET", "/v1/history", query=query)
        return [_event(item) for item in data.get("events", [])]

    def _mine(self, lease: Lease) -> bool:
        """Whether `lease` is held as this token's principal."""
        if self._principal is None:
            self._principal = str(self._call("GET", "/v1/whoami").get("principal"))
        return same_principal(lease.principal, self._principal)

    def whoami(self) -> dict[str, Any]:
        with self._operation():
            return self._call("GET", "/v1/whoami")

    def setup(self) -> list[str]:
        return ["http: nothing to set up here; the API server's store is set up there"]

    def doctor(self) -> list[Finding]:
        token = self.whoami()
        scheme = "https" if self.base.startswith("https://") else "http"
        findings = [
            Finding(
                "ok",
                f"http: token {token.get('name')!r} acts as {token.get('principal')} "
                f"(scope: {','.join(token.get('resources') or ['*'])}"
                f"{', read-only' if token.get('read_only') else ''})",
            )
        ]
        if scheme == "http":
            findings.append(
                Finding("warning", f"http: {self.base} is plain http; use https")
            )
        return findings

    def close(self) -> None:
        self.http.clear()


class _Failure(Exception):
    """A refusal the hooks turn into their own results (held, expired)."""

    def __init__(
        self,
        code: str,
        message: str,
        holder: dict[str, Any] | None = None,
        ticket: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.holder = holder
        self.retry_after: float | None = None
        self.ticket = ticket


BACKEND = Http

__all__ = ["BACKEND", "Http", "LockExpiredException", "LockHeldException"]
