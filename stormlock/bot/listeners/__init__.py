"""Slack listeners, one module per surface. Each only acks and hands over."""

from __future__ import annotations

from slack_bolt import App

from ..pipeline import Pipeline
from . import actions, commands, events


def register(app: App, pipeline: Pipeline) -> None:
    commands.register(app, pipeline)
    actions.register(app, pipeline)
    events.register(app, pipeline)
