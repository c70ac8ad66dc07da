"""Build the Bolt app: Web API client, service, listeners."""

from __future__ import annotations

import logging

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
    process_before_response: bool = False,
) -> tuple[App, Bot]:
    """The Bolt app and the bot behind it.

    `verify_requests=False` is only for the local shell, which has no Slack.
    """
    client = web_client(settings)
    app = App(
        client=client,
        signing_secret=settings.signing_secret or "",
        request_verification_enabled=verify_requests,
        token_verification_enabled=False,
        process_before_response=process_before_response,
        logger=logging.getLogger("stormlock.bot.bolt"),
        # Lease ids travel in slash command text; Bolt's own warnings must not echo it.
        raise_error_for_unhandled_request=False,
    )
    bot = Bot(service, settings, client)
    bot.reminders = Reminders(bot)
    register(app, bot)
    return app, bot
