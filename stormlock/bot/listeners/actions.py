"""Buttons: Renew, Release, Notify me when free."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App, Respond

from ..flows import Bot


def register(app: App, bot: Bot) -> None:
    @app.action(re.compile(r"^lease_(renew|release|notify|acquire)"))
    def lease_button(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        ack()
        bot.later(bot.button, body, action, respond)
