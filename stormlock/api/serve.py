"""`stormlock serve`: the API alone, under gunicorn, for teams without Slack."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..backends import configured_backend
from ..config import Config
from ..errors import ConfigError, UnknownBackendError, UsageError, missing_extra
from ..workers import default_workers

if TYPE_CHECKING:
    from ..wsgi import WSGIApp

_EXTRA = frozenset({"flask", "flask_openapi3", "pydantic", "gunicorn", "werkzeug"})


def serve_api(config: Config, args: argparse.Namespace) -> int:
    # Before gunicorn is imported: it reads WEB_CONCURRENCY too.
    workers = args.workers or default_workers(1)
    try:
        from ..bot import logs
        from ..wsgi import serve
        from .app import create_app
        from .service import ApiService
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, _EXTRA, "the API", "api") from None
    if config.default_backend == "http":
        raise UnknownBackendError(
            "the API cannot serve from the http backend (it would call itself); "
            "configure the store's backend on the server"
        )
    # A bad store config fails now, not at the first request.
    configured_backend(config, config.default_backend).close()
    if bool(args.certfile) != bool(args.keyfile):
        raise UsageError("--certfile and --keyfile go together; give both or neither")
    tls = None
    if args.certfile:
        for path in (args.certfile, args.keyfile):
            if not os.access(path, os.R_OK):
                raise ConfigError(f"cannot read {path!r}; fix the path or permissions")
        tls = (args.certfile, args.keyfile)

    def factory() -> WSGIApp:
        # In gunicorn's worker, after the fork: connection pools start here.
        logs.configure(args.log_level, args.log_json)
        return create_app(
            config, ApiService(config, workers=workers, threads=args.threads)
        )

    logs.configure(args.log_level, args.log_json)
    serve(
        factory,
        args.host,
        args.port,
        args.threads,
        args.log_level,
        workers,
        proc_name="stormlock-api",
        tls=tls,
    )
    return 0
