"""Events: App Home opened."""

from __future__ import annotations

from typing import Any

from slack_bolt import App

from ..pipeline import Pipeline


def register(app: App, pipeline: Pipeline) -> None:
    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any]) -> None:
        if event.get("tab", "home") == "home":
            pipeline.home_opened(str(event["user"]))
