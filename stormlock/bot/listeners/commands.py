"""The `/stormlock` slash command."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App, Respond

from ..flows import Bot


def register(app: App, bot: Bot) -> None:
    @app.command("/stormlock")
    def stormlock(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()  # within Slack's 3 seconds, whatever the backend does
        bot.later(bot.command, body, respond)
