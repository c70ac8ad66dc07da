"""gunicorn, run in-process: the production WSGI server of both the bot
(`stormlock-bot serve`) and the API alone (`stormlock serve`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn run in-process, with the app built in the worker after fork."""

    def __init__(self, factory: Callable[[], WSGIApp], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # newer settings, on older gunicorns
                self.cfg.set(key, value)

    def load(self) -> WSGIApp:
        return self.factory()


class RootLogger(Logger):  # type: ignore[misc]
    """gunicorn's own lines go through the root logger's handlers, the ones
    the servers set up (redacted, JSON if asked): its debug line for a client
    that hangs up mid-headers carries the raw bytes, a bearer token among
    them."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.propagate = True


# gunicorn kills a worker this long after asking it to stop: requests under
# way, then the bot's own shutdown (`SHUTDOWN_BUDGET`), must fit in it.
GRACEFUL_TIMEOUT = 20
# Requests under way finish within Slack's 3 s; then the bot has this long.
SHUTDOWN_BUDGET = GRACEFUL_TIMEOUT - 5


def serve(
    factory: Callable[[], WSGIApp],
    host: str,
    port: int,
    threads: int,
    log_level: str,
    workers: int = 1,
    proc_name: str = "stormlock-bot",
    tls: tuple[str, str] | None = None,
    hooks: dict[str, Callable[..., None]] | None = None,
) -> None:
    """Serve `factory`'s app; `tls` (certificate, key) serves https; `hooks`
    are gunicorn server hooks (`child_exit`, `on_exit`), run in the master."""
    extra: dict[str, Any] = dict(hooks or {})
    if tls is not None:
        extra.update(certfile=tls[0], keyfile=tls[1])
    GunicornServer(
        factory,
        {
            **extra,
            "bind": f"{host}:{port}",
            # Each worker is a process with its own scheduler; their messages
            # are claimed in the backend, so several never send twice.
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 30,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": None,  # no handler of its own: see RootLogger
            "logger_class": RootLogger,
            "loglevel": log_level.lower(),
            "proc_name": proc_name,
            # gunicorn 25+ opens a control socket in $HOME, which the container
            # image cannot write (an ERROR at every start); nothing uses it.
            "control_socket_disable": True,
        },
    ).run()
