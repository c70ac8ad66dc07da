"""Build the Bolt app: Web API client, service, listeners."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from .flows import Bot
from .listeners import register
from .reminders import Reminders
from .service import LeaseService
from .settings import BotSettings


def web_client(settings: BotSettings) -> WebClient:
    return WebClient(
        token=settings.bot_token,
        base_url=settings.api_url,
        timeout=10,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=1),
            # Slack's 429 with Retry-After: wait as told, then retry.
            RateLimitErrorRetryHandler(max_retry_count=3),
        ],
    )


def build_app(
    settings: BotSettings,
    service: LeaseService,
    *,
    verify_requests: bool = True,
    background: bool = True,
    work_threads: int = 4,
) -> tuple[App, Bot]:
    """The Bolt app and the bot behind it.

    Listeners ack in the request's own thread (Bolt's process_before_response)
    and hand the rest to the bot's work pool, so the HTTP response leaves at
    once. `background=False` does the work inline (the shell shows it in
    order); `verify_requests=False` is only for the shell, which has no Slack.
    """
    client = web_client(settings)
    app = App(
        client=client,
        signing_secret=settings.signing_secret or "",
        request_verification_enabled=verify_requests,
        token_verification_enabled=False,
        process_before_response=True,
        logger=logging.getLogger("stormlock.bot.bolt"),
        # Lease ids travel in slash command text; Bolt's own warnings must not echo it.
        raise_error_for_unhandled_request=False,
    )
    work = ThreadPoolExecutor(work_threads, "stormlock-work") if background else None
    bot = Bot(service, settings, client, work=work)
    bot.reminders = Reminders(bot)
    register(app, bot)
    return app, bot
