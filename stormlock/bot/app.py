"""Build the Bolt app and the pipeline behind it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slack_bolt import App

from ..records import Records
from .core import Core
from .identity import Directory
from .ledger import Ledger
from .listeners import register
from .outbox import SLACK_TIMEOUT, Outbox, RetryAfter, fast_window, web_client
from .pipeline import Pipeline
from .reminders import Reminders
from .service import LeaseService
from .settings import BotSettings
from .state import BotState


@dataclass
class Bot:
    """The parts of a running bot."""

    app: App
    pipeline: Pipeline
    reminders: Reminders

    def close(self, timeout: float = 15.0) -> None:
        self.pipeline.close(timeout)


def build_app(
    settings: BotSettings,
    service: LeaseService,
    *,
    verify_requests: bool = True,
    answer_threads: int = 4,
) -> Bot:
    """The Bolt app and what it hands requests to.

    Listeners ack in the request's own thread (Bolt's process_before_response)
    and hand the payload to the pipeline, so the HTTP response leaves at once.
    `verify_requests=False` is for Socket Mode, whose requests come over the
    app's own authenticated websocket, and for HTTP mode behind
    `web.slack_endpoint`, which verifies every request before Bolt sees it.
    """
    client = web_client(settings.bot_token, settings.api_url)
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
    directory = Directory(client)
    state = BotState(Records(service.backend(service.config.default_backend)))
    core = Core(service, settings, directory, state)
    # Reminders send from the scheduler's thread under a claim of claim_ttl:
    # their client gives up well before the claim could lapse, and does not
    # retry (the next pass does, and the other reminders go on meanwhile).
    bound = min(SLACK_TIMEOUT, settings.claim_ttl.total_seconds() / 10)
    reminder_client = web_client(
        settings.bot_token, settings.api_url, timeout=bound, max_wait=bound, retries=0
    )
    ledger = Ledger(state.records, settings.claim_ttl)
    retry_after = RetryAfter()  # one per process: Slack limits the app
    outbox = Outbox(
        client,
        ledger=ledger,
        directory=directory,
        fast_within=fast_window(settings.recover_after),
        retry_after=retry_after,
    )
    now = Outbox(reminder_client, threads=0, ledger=ledger, retry_after=retry_after)
    reminders = Reminders(core, directory, now, notices=outbox)
    pipeline = Pipeline(core, directory, outbox, reminders, answer_threads)
    register(app, pipeline)
    return Bot(app, pipeline, reminders)
