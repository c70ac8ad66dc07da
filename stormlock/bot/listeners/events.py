"""Events: App Home opened."""

from __future__ import annotations

from typing import Any

from slack_bolt import App

from ..flows import Bot


def register(app: App, bot: Bot) -> None:
    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any]) -> None:
        if event.get("tab", "home") == "home":
            bot.later(bot.publish_home, str(event["user"]))
