"""HTTP mode: Bolt behind gunicorn (a production WSGI server), plus health,
readiness and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
EVENTS_PATH = "/slack/events"


def _plain(
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    kind: str = "text/plain",
) -> list[bytes]:
    headers = [("Content-Type", kind), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


def wsgi_app(app: App, ready: Callable[[], tuple[bool, list[str]]]) -> WSGIApp:
    """`/slack/events` for Slack; `/healthz` (alive), `/readyz` (the backend
    answers; unsafe store settings are listed, but do not fail it) and
    `/metrics` (Prometheus) for operators; 404 elsewhere."""
    slack = SlackRequestHandler(app, path=EVENTS_PATH)

    def route(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            if path == "/healthz":
                return _plain(start_response, "200 OK", b"ok\n")
            if path == "/readyz":
                answers, notes = ready()
                if answers:
                    body = "".join(f"{note}\n" for note in ["ready", *notes])
                    return _plain(start_response, "200 OK", body.encode())
                unready = b"backend unreachable\n"
                return _plain(start_response, "503 Service Unavailable", unready)
            if path == "/metrics":
                metrics = generate_latest()
                return _plain(start_response, "200 OK", metrics, CONTENT_TYPE_LATEST)
        return slack(environ, start_response)

    return route


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn run in-process, with the app built in the worker after fork."""

    def __init__(self, factory: Callable[[], WSGIApp], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApp:
        return self.factory()


def serve(
    factory: Callable[[], WSGIApp],
    host: str,
    port: int,
    threads: int,
    log_level: str,
    workers: int = 1,
) -> None:
    GunicornServer(
        factory,
        {
            "bind": f"{host}:{port}",
            # Each worker is a process with its own scheduler; their messages
            # are claimed in the backend, so several never send twice.
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": log_level.lower(),
            "proc_name": "stormlock-bot",
        },
    ).run()
