"""`stormlock-bot`: the Slack bot in HTTP mode, Socket Mode, or a local shell."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from ..backends import configured_backend
from ..config import BOT_SECTION, Config, load_config
from ..errors import (
    EXIT_CONFIG,
    EXIT_INTERNAL,
    EXIT_UNAVAILABLE,
    EXIT_UNKNOWN_BACKEND,
    EXIT_USAGE,
    ConfigError,
    missing_extra,
    run_main,
)
from ..version import VersionAction
from ..workers import MAX_WORKERS, default_workers, share_metrics, worker_count
from .settings import BotSettings

if TYPE_CHECKING:
    from ..wsgi import WSGIApp
    from .app import Bot
    from .reminders import Scheduler

PROG = "stormlock-bot"

EPILOG = f"""\
environment:
  SLACK_BOT_TOKEN       bot token (xoxb-...), for serve and socket
  SLACK_SIGNING_SECRET  signing secret, for serve (requests are always verified)
  SLACK_APP_TOKEN       app-level token (xapp-...), for socket
  SLACK_API_URL         Web API base URL (default https://slack.com/api/)
  STORMLOCK_CONFIG      the config file (same as the CLI's; bot settings in [bot])
  PORT                  serve's port when --port is not given (default 3000)

exit codes: 0 ok, {EXIT_USAGE} bad command line, {EXIT_CONFIG} missing setting
  or bad config, {EXIT_UNKNOWN_BACKEND} unknown backend or packages not installed
  (pip install 'stormlock-leases[bot]'), {EXIT_UNAVAILABLE} backend
  unreachable, {EXIT_INTERNAL} unexpected error
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Stormlock's Slack bot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", help="config file (default: as the CLI)")
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    parser.add_argument("--log-json", action="store_true", help="log JSON lines")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    serve = sub.add_parser("serve", help="HTTP mode: Slack posts to /slack/events")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))  # noqa: S104
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 3000))
    serve.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        help="worker processes (default $WEB_CONCURRENCY, else one per usable "
        f"core, up to {MAX_WORKERS}); /metrics adds up all of them",
    )
    serve.add_argument(
        "--threads", type=int, default=16, help="concurrent requests per worker"
    )
    socket = sub.add_parser("socket", help="Socket Mode: no public URL needed")
    socket.add_argument(
        "--host",
        default=os.environ.get("HOST", "0.0.0.0"),  # noqa: S104
        help="where /healthz, /readyz and /metrics are served",
    )
    socket.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 3000))
    shell = sub.add_parser(
        "shell", help="try the bot in your terminal, no Slack needed"
    )
    shell.add_argument("--user", default=None, help="who you are (default: $USER)")
    shell.add_argument("--channel", default="general", help="the channel you type in")
    return parser


def _require(value: str | None, name: str, why: str) -> str:
    if not value:
        raise ConfigError(f"{name} is not set; {why}")
    return value


def _settings(args: argparse.Namespace) -> BotSettings:
    """The bot's settings; the bot token is required in every Slack mode."""
    settings = BotSettings.load(load_config(args.config))
    settings.answer_budget  # noqa: B018 - a bad value fails now, in one line
    _require(
        settings.bot_token,
        "SLACK_BOT_TOKEN",
        "set it to the app's bot token (xoxb-...)",
    )
    return settings


def _start_scheduler(bot: Bot) -> Scheduler:
    from .reminders import Scheduler

    scheduler = Scheduler(bot.reminders)
    scheduler.start()
    return scheduler


def _serve(args: argparse.Namespace) -> int:
    workers = _workers(args.workers)
    # Before the imports below: they bring prometheus_client in.
    hooks = share_metrics(workers)
    from . import logs
    from .app import build_app
    from .service import LeaseService
    from .web import SHUTDOWN_BUDGET, serve, wsgi_app

    settings = _settings(args)
    _require(
        settings.signing_secret,
        "SLACK_SIGNING_SECRET",
        "set it to the app's signing secret; serve always verifies requests",
    )
    config = settings.config
    # A bad store config fails now, not at the first request.
    configured_backend(config, config.default_backend).close()

    def factory() -> WSGIApp:
        # Runs in gunicorn's worker, after the fork: pools and threads start here.
        logs.configure(args.log_level, args.log_json)
        # Hand the GIL over more often: acks are short and must not wait for
        # a background thread's 5 ms slice.
        sys.setswitchinterval(0.001)
        service = LeaseService(settings)
        # web.slack_endpoint verifies every request before Bolt sees it.
        bot = build_app(settings, service, verify_requests=False)
        # atexit runs last-registered first: the scheduler stops, then what
        # the outbox still holds is sent, before gunicorn's kill.
        atexit.register(bot.close, SHUTDOWN_BUDGET)
        atexit.register(_start_scheduler(bot).stop)
        return wsgi_app(
            bot.app,
            service.ready,
            settings.signing_secret or "",
            details=settings.readyz_details,
            api=_api(config, bot, workers, args.threads),
        )

    logs.configure(args.log_level, args.log_json)
    serve(
        factory,
        args.host,
        args.port,
        args.threads,
        args.log_level,
        workers,
        hooks=hooks,
    )
    return 0


def _workers(given: int | None) -> int:
    """--workers, else the default; a bad WEB_CONCURRENCY fails either way
    (gunicorn reads it too)."""
    default = default_workers()
    return given or default


def _api(config: Config, bot: Bot, workers: int, threads: int) -> WSGIApp | None:
    """The HTTP API beside the Slack endpoint, its changes announced by this
    bot at once (`[bot] api = no` turns it off)."""
    if (config.value(None, "api", BOT_SECTION) or "yes").lower() in ("no", "off"):
        return None
    from ..api.app import create_app
    from ..api.service import ApiService

    return create_app(
        config,
        ApiService(
            config, bot.pipeline.announce_change, workers=workers, threads=threads
        ),
    )


def _socket(args: argparse.Namespace) -> int:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from . import logs
    from .app import build_app
    from .service import LeaseService
    from .web import serve_operators, wsgi_app

    settings = _settings(args)
    app_token = _require(
        settings.app_token,
        "SLACK_APP_TOKEN",
        "set it to an app-level token (xapp-...) with connections:write",
    )
    logs.configure(args.log_level, args.log_json)
    service = LeaseService(settings)
    bot = build_app(settings, service, verify_requests=False)
    # Health, readiness and metrics on a port, as in HTTP mode (the image's
    # health check and Prometheus find them); Slack comes over the socket.
    route = wsgi_app(bot.app, service.ready, "", details=settings.readyz_details)
    try:
        operators = serve_operators(route, args.host, args.port)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve /healthz on {args.host}:{args.port}: {exc.strerror}; "
            "pick another --port (or $PORT)"
        ) from None
    scheduler = _start_scheduler(bot)
    try:
        SocketModeHandler(bot.app, app_token).start()  # type: ignore[no-untyped-call]
    finally:
        operators.shutdown()
        scheduler.stop()
        bot.close()
    return 0


# What `pip install 'stormlock-leases[bot]'` adds (import names).
_BOT_EXTRA = frozenset(
    {
        "slack_bolt",
        "slack_sdk",
        "apscheduler",
        "gunicorn",
        "prometheus_client",
        "flask",
        "flask_openapi3",
        "pydantic",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_main(PROG, lambda: _with_extra(args))


def _with_extra(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, _BOT_EXTRA, "the bot", "bot") from None


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "socket":
        return _socket(args)
    from .shell import run_shell

    return run_shell(load_config(args.config), args.user, args.channel)
