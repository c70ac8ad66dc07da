"""Buttons: Renew, Release, Notify me when free, Acquire, the line's Join
the line, Take it and Pass, and asking the holder (Ask, and the holder's
Release now, Keep it 30 more minutes, I'm on it). Every one of ours starts
with `lease_`; one whose value is not ours gets a clear answer."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt import Ack, App

from ..pipeline import Pipeline


def register(app: App, pipeline: Pipeline) -> None:
    @app.action(re.compile(r"^lease_"))
    def lease_button(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        pipeline.button(body, action)
