"""moto's DynamoDB server, with each request applied atomically.

moto's own `moto_server` serves requests on parallel threads without locking
its tables, so two conditional writes can both succeed, which real DynamoDB
never allows. Serialising request handling (connections stay concurrent)
restores DynamoDB's per-request atomicity, so races test our code, not moto's.

Run: python -m stormlock.testing.moto_dynamodb HOST PORT
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


class Serialised:
    """Also counts the API requests it serves (GET /__requests), for bench/."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.served = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") == "/__requests":
            body = str(self.served).encode()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [body]
        with self.lock:
            self.served += 1
            return list(self.app(environ, start_response))


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        host,
        port,
        Serialised(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
