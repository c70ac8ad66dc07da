"""Slack listeners, one module per surface. Each only acks and hands over."""

from __future__ import annotations

from slack_bolt import App

from ..flows import Bot
from . import actions, commands, events


def register(app: App, bot: Bot) -> None:
    commands.register(app, bot)
    actions.register(app, bot)
    events.register(app, bot)
