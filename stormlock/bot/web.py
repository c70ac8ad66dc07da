"""HTTP mode: Bolt behind gunicorn (a production WSGI server), plus health,
readiness and metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from slack_bolt import App, BoltContext, BoltRequest
from slack_bolt.request.internals import build_context
from slack_sdk.signature import SignatureVerifier

from ..wsgi import GRACEFUL_TIMEOUT, SHUTDOWN_BUDGET, WSGIApp, serve

__all__ = ["GRACEFUL_TIMEOUT", "SHUTDOWN_BUDGET", "WSGIApp", "serve", "wsgi_app"]

EVENTS_PATH = "/slack/events"
# Slack's requests are a few kilobytes; a view submission stays far below this.
MAX_BODY = 1 << 20
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")

log = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = str(environ[key])
    return headers


def _read_signed(
    environ: dict[str, Any], headers: dict[str, str], verifier: SignatureVerifier
) -> str:
    """The body, once its size, signature and encoding are right."""
    length = headers.get("content-length", "")
    if not length.isascii() or not length.isdigit():
        raise _Refused(HTTPStatus.LENGTH_REQUIRED, "no Content-Length")
    if int(length) > MAX_BODY:
        # Refused before reading: a large body never reaches memory.
        raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length} bytes")
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not timestamp or not signature:
        raise _Refused(HTTPStatus.UNAUTHORIZED, "unsigned")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise _Refused(HTTPStatus.BAD_REQUEST, "malformed X-Slack-Request-Timestamp")
    if not _SIGNATURE.fullmatch(signature):
        raise _Refused(HTTPStatus.UNAUTHORIZED, "malformed X-Slack-Signature")
    raw = environ["wsgi.input"].read(int(length))
    if not verifier.is_valid(raw, timestamp, signature):
        raise _Refused(HTTPStatus.UNAUTHORIZED, "bad or stale signature")
    try:
        return str(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Refused(HTTPStatus.BAD_REQUEST, "body is not UTF-8") from None


def _parsed(body: str, content_type: str) -> dict[str, Any]:
    """The body as Slack means it: JSON, a form, or a form with a JSON
    `payload` (not any form that merely contains the word "payload")."""
    try:
        if content_type.startswith("application/json") or body.startswith("{"):
            parsed = json.loads(body)
        else:
            form = dict(parse_qsl(body, keep_blank_values=True))
            parsed = json.loads(form["payload"]) if "payload" in form else form
    except ValueError:
        raise _Refused(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _Refused(HTTPStatus.BAD_REQUEST, "body is not a JSON object")
    return parsed


def slack_endpoint(app: App, signing_secret: str) -> WSGIApp:
    """`/slack/events`: Bolt behind a guard that refuses, in one log line and
    before Bolt sees them, oversized, unsigned and malformed requests (so
    the app need not verify signatures again: `build_app(verify_requests=
    False)`)."""
    verifier = SignatureVerifier(signing_secret)

    def handle(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        headers = _headers(environ)
        try:
            raw = _read_signed(environ, headers, verifier)
            body = _parsed(raw, headers.get("content-type", ""))
        except _Refused as refused:
            log.warning("refused a request: %s", refused.reason)
            status = f"{refused.status.value} {refused.status.phrase}"
            return _plain(start_response, status, f"{refused.reason}\n".encode())
        bolt_headers: dict[str, str | Sequence[str]] = {**headers}
        # The body as parsed above, not as Bolt would parse it again (it
        # misreads forms that mention "payload").
        request = BoltRequest(
            body="", query=environ.get("QUERY_STRING", ""), headers=bolt_headers
        )
        request.raw_body = raw
        request.body = body
        request.context = build_context(BoltContext(), body)
        response = app.dispatch(request)
        data = response.body.encode()
        pairs = [
            (name, value)
            for name, values in response.headers.items()
            if name.lower() != "content-length"
            for value in values
        ]
        pairs.append(("Content-Length", str(len(data))))
        phrase = HTTPStatus(response.status).phrase
        start_response(f"{response.status} {phrase}", pairs)
        return [data]

    return handle


def _plain(
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    kind: str = "text/plain",
) -> list[bytes]:
    headers = [("Content-Type", kind), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


def _registry() -> CollectorRegistry:
    """What /metrics shows: with several workers (bot.workers), the counts
    of all of them, read from their shared directory; else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        return shared
    from prometheus_client import REGISTRY

    return REGISTRY


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("operator endpoint: " + format, *args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_operators(route: WSGIApp, host: str, port: int) -> WSGIServer:
    """Serve `route`'s `/healthz`, `/readyz` and `/metrics` beside Socket
    Mode, in threads of their own (stdlib wsgiref: a health check and a
    scrape, not the public internet). Returns the server (call shutdown())."""
    server = make_server(
        host, port, route, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    threading.Thread(
        target=server.serve_forever, name="stormlock-operators", daemon=True
    ).start()
    return server


def wsgi_app(
    app: App,
    ready: Callable[[], tuple[bool, list[str]]],
    signing_secret: str,
    details: bool = False,
    api: WSGIApp | None = None,
) -> WSGIApp:
    """`/slack/events` for Slack; `/healthz` (alive), `/readyz` (the backend
    answers: `ready` or `not ready`; with `details`, the store's unsafe
    settings too, which do not fail it) and `/metrics` (Prometheus) for
    operators; the HTTP API under `/v1/` if given (stormlock.api); 404
    elsewhere. The details are always in the bot's log."""
    # Socket Mode (no signing secret) has no /slack/events: Slack's events
    # come over its websocket.
    slack = slack_endpoint(app, signing_secret) if signing_secret else None
    registry = _registry()

    def route(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if api is not None and path.startswith("/v1/"):
            return api(environ, start_response)
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            if path == "/healthz":
                return _plain(start_response, "200 OK", b"ok\n")
            if path == "/readyz":
                answers, notes = ready()
                if answers:
                    shown = ["ready", *notes] if details else ["ready"]
                    body = "".join(f"{note}\n" for note in shown)
                    return _plain(start_response, "200 OK", body.encode())
                unready = b"not ready\n"
                return _plain(start_response, "503 Service Unavailable", unready)
            if path == "/metrics":
                metrics = generate_latest(registry)
                return _plain(start_response, "200 OK", metrics, CONTENT_TYPE_LATEST)
        if slack and environ.get("REQUEST_METHOD") == "POST" and path == EVENTS_PATH:
            return slack(environ, start_response)
        return _plain(start_response, "404 Not Found", b"not found\n")

    return route
