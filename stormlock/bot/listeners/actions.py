"""Buttons: Renew, Release, Notify me when free, Acquire, and the line's
Join the line, Take it and Pass."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App

from ..pipeline import Pipeline


def register(app: App, pipeline: Pipeline) -> None:
    @app.action(re.compile(r"^lease_(renew|release|notify|acquire|queue|take|pass)"))
    def lease_button(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        pipeline.button(body, action)
