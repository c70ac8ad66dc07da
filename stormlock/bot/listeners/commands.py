"""The `/stormlock` slash command."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack, App

from ..pipeline import Pipeline


def register(app: App, pipeline: Pipeline) -> None:
    @app.command("/stormlock")
    def stormlock(ack: Ack, body: dict[str, Any]) -> None:
        # The answer in the ack when the core is done within the answer
        # budget; else an empty ack, well within Slack's 3 s, and the answer
        # follows through the response_url.
        answer = pipeline.command(body)
        if answer is None:
            ack()
        else:
            ack(text=answer.text, blocks=answer.blocks, response_type="ephemeral")
