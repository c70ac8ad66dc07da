"""The `/stormlock` slash command."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App

from ..pipeline import Pipeline


def register(app: App, pipeline: Pipeline) -> None:
    @app.command("/stormlock")
    def stormlock(ack: Ack, body: dict[str, Any]) -> None:
        ack()  # within Slack's 3 seconds, whatever the backend does
        pipeline.command(body)
