"""gunicorn, run in-process: the production WSGI server of both the bot
(`stormlock-bot serve`) and the API alone (`stormlock serve`)."""

from __future__ import annotations

import contextlib
import re
import selectors
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

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


# A request must arrive whole within this long of its first byte (or of the
# last answer on its connection), else the connection is closed.
REQUEST_DEADLINE = 10.0
# Bodies up to this size are read whole before a thread takes the request;
# a larger one goes to a thread at once (the apps refuse it on its length).
BUFFERED = 256 * 1024
_HEADERS_AT_MOST = 64 * 1024  # gunicorn's own limits refuse longer ones
_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r]*chunked", re.IGNORECASE)


def arrived_whole(data: bytes | bytearray) -> bool:
    """Whether `data` holds a whole HTTP/1 request (or enough that a thread
    may take it: headers too long, or a body over `BUFFERED`)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > _HEADERS_AT_MOST
    head, body = bytes(data[:end]), len(data) - end - 4
    if _CHUNKED.search(head):
        return body > BUFFERED or data.endswith(b"0\r\n\r\n")
    length = _LENGTH.search(head)
    if length is None:
        return True
    wanted = int(length.group(1))
    return wanted > BUFFERED or body >= wanted


class BufferingWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, except that a request reaches one of its
    threads only once it has arrived whole, read by the worker's event loop
    within `REQUEST_DEADLINE`. gthread reads headers and body in the thread:
    a few clients sending a byte a second held every thread, and Slack and
    the API went unanswered. Here a slow client holds a socket, and only
    until its deadline. (TLS sockets, for `--certfile`, go to a thread as
    gthread does: put the TLS front in front, as docs/deploy.md says.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arriving: deque[Any] = deque()

    def enqueue_req(self, conn: Any) -> None:
        if self.cfg.is_ssl or getattr(conn, "arrived_whole", False):
            conn.arrived_whole = False
            super().enqueue_req(conn)
            return
        # Bytes of this request a previous one read ahead come first.
        conn.arrived = bytearray(
            conn.parser.unreader.take_buffered() if conn.parser else b""
        )
        conn.read_by = time.monotonic() + REQUEST_DEADLINE
        if arrived_whole(conn.arrived):
            self._hand_over(conn)
            return
        conn.sock.setblocking(False)
        self.arriving.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self._readable, conn)
        )

    def _readable(self, conn: Any, _sock: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            conn.arrived += data
            if not arrived_whole(conn.arrived):
                return
        self.poller.unregister(conn.sock)
        self.arriving.remove(conn)
        if data:
            self._hand_over(conn)
        else:  # the client went away before its request was whole
            self.nr_conns -= 1
            conn.close()

    def _hand_over(self, conn: Any) -> None:
        if conn.parser is None:
            conn.sock.setblocking(True)
            conn.init()  # a plain socket: makes the parser, reads nothing
        conn.parser.unreader.unread(bytes(conn.arrived))
        conn.arrived = bytearray()
        conn.data_ready = conn.arrived_whole = True
        self.enqueue_req(conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.arriving and self.arriving[0].read_by <= now:
            conn = self.arriving.popleft()
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)  # unless closed already
            self.nr_conns -= 1
            conn.close()


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
            "worker_class": BufferingWorker,
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
