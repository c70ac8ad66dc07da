"""The bot's settings: the `[bot]` section of the config file, and the environment."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta

from ..config import BOT_SECTION, Config
from ..errors import ConfigError, InvalidTTL
from ..names import normal
from ..ttl import parse_duration_list

SLACK_API_DEFAULT = "https://slack.com/api/"
DEFAULT_WARN_BEFORE = (timedelta(hours=1), timedelta(minutes=10))


def _list(raw: str | None) -> list[str]:
    if not raw:
        return []
    return [item.strip() for item in raw.replace("\n", ",").split(",") if item.strip()]


# Slack's ids, the one place they are recognised: users U.../W..., channels
# C... (public), G... (private), D... (a DM).
USER_ID = re.compile(r"^[UW][A-Z0-9]+$")
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
DM_ID = re.compile(r"^D[A-Z0-9]{2,}$")


@dataclass(frozen=True)
class BotSettings:
    """What the bot needs besides the lease configuration."""

    config: Config
    bot_token: str | None = None
    signing_secret: str | None = None
    app_token: str | None = None
    api_url: str = SLACK_API_DEFAULT
    admins: frozenset[str] = field(default_factory=frozenset)
    resources: tuple[str, ...] = ()
    channels: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def load(cls, config: Config, env: dict[str, str] | None = None) -> BotSettings:
        env = dict(os.environ if env is None else env)
        api_url = env.get("SLACK_API_URL") or SLACK_API_DEFAULT
        if not api_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"SLACK_API_URL {api_url!r} is not an http(s) URL; "
                "e.g. https://slack.com/api/"
            )
        return cls(
            config=config,
            bot_token=env.get("SLACK_BOT_TOKEN") or None,
            signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
            app_token=env.get("SLACK_APP_TOKEN") or None,
            api_url=api_url if api_url.endswith("/") else api_url + "/",
            admins=frozenset(_list(config.value(None, "admins", BOT_SECTION))),
            resources=tuple(
                normal(name)
                for name in _list(config.value(None, "resources", BOT_SECTION))
            ),
            channels=frozenset(
                c.lstrip("#")
                for c in _list(config.value(None, "channels", BOT_SECTION))
            ),
        )

    def channel_allowed(self, channel: str | None, name: str | None) -> bool:
        """Whether the `channels` allowlist admits a channel. An id in the
        list matches only that id: a channel's name can be changed by anyone
        in it, so a name matches only a name in the list."""
        if not self.channels:
            return True
        ids = {c for c in self.channels if CHANNEL_ID.match(c)}
        names = self.channels - ids
        return (channel is not None and channel in ids) or (
            name is not None and name in names
        )

    def announce_channel(self, resource: str) -> str | None:
        """A fixed channel for announcements, if configured (else the command's)."""
        return self.config.value(resource, "announce_channel", BOT_SECTION)

    def warn_before(self, resource: str) -> list[timedelta]:
        """Warning offsets before expiry, longest first (per resource or [bot])."""
        raw = self.config.value(resource, "warn_before", BOT_SECTION)
        if raw is None:
            return list(DEFAULT_WARN_BEFORE)
        if raw.strip().lower() in ("none", "off", "never"):
            return []
        try:
            return parse_duration_list(raw)
        except InvalidTTL as exc:
            raise ConfigError(f"{self.config.source}: warn_before: {exc}") from None

    @property
    def readyz_details(self) -> bool:
        """`[bot] readyz_details = yes`: /readyz lists unsafe store settings
        (they are in the log either way; the endpoint may be reachable by more
        people than the log)."""
        raw = self.config.value(None, "readyz_details", BOT_SECTION) or "no"
        return raw.strip().lower() in ("yes", "true", "on", "1")

    @property
    def answer_budget(self) -> timedelta:
        """How long a command's answer may take to go back in the ack itself
        (Slack waits 3 s for the ack); past it, it goes through response_url.
        `none`: always through response_url."""
        text = self.config.value(None, "answer_budget", BOT_SECTION)
        if text is not None and text.strip().lower() in ("none", "off", "no"):
            return timedelta(0)  # every answer through response_url
        raw = self.config.duration(None, "answer_budget", BOT_SECTION)
        budget = raw or timedelta(seconds=1.5)
        if budget > timedelta(seconds=2.5):
            raise ConfigError(
                f"{self.config.source}: [bot] answer_budget = {text} leaves Slack no "
                "time for the ack (it waits 3 s); use 2.5s or less"
            )
        return budget

    @property
    def reconcile_interval(self) -> timedelta:
        raw = self.config.duration(None, "reconcile_interval", BOT_SECTION)
        return raw or timedelta(seconds=30)

    @property
    def backend_timeout(self) -> timedelta:
        """The bot's bound on each store operation: an answer within 3 s even
        when the store is silent (the backend's own `timeout`, if lower, wins)."""
        raw = self.config.duration(None, "backend_timeout", BOT_SECTION)
        return raw or timedelta(seconds=2.5)

    @property
    def recover_after(self) -> timedelta:
        """How long after a change the recovery pass takes over its unsent
        notices (docs/pipeline.md): the live path has sent them by then or
        holds a claim. At least 10 s: a fresh send's window (2 s) plus one
        request of the fast client (5 s), with room for replicas' clocks."""
        text = self.config.value(None, "recover_after", BOT_SECTION)
        raw = self.config.duration(None, "recover_after", BOT_SECTION)
        if raw is not None and raw < timedelta(seconds=10):
            raise ConfigError(
                f"{self.config.source}: [bot] recover_after = {text} is shorter "
                "than a fresh announcement may take; use 10s or more"
            )
        return raw or timedelta(seconds=15)

    def claim_window(self, resource: str) -> timedelta:
        """How long a free resource is kept for the Slack waiter first in
        its line to take it or pass (per resource, or [bot])."""
        raw = self.config.duration(resource, "claim_window", BOT_SECTION)
        return raw or timedelta(minutes=10)

    @property
    def queue_ttl(self) -> timedelta:
        """How long a Slack waiter keeps a place in line before their turn."""
        raw = self.config.duration(None, "queue_ttl", BOT_SECTION)
        return raw or timedelta(hours=8)

    @property
    def ask_timeout(self) -> timedelta:
        """How long a holder asked to release has to answer before the asker
        (and, with `escalate`, the admins) is told they did not."""
        raw = self.config.duration(None, "ask_timeout", BOT_SECTION)
        return raw or timedelta(minutes=30)

    @property
    def escalate(self) -> bool:
        """`[bot] escalate = yes`: admins are DMed about unanswered asks."""
        raw = self.config.value(None, "escalate", BOT_SECTION) or "no"
        return raw.strip().lower() in ("yes", "true", "on", "1")

    @property
    def claim_ttl(self) -> timedelta:
        """How long a replica's claim on a message holds before others retry it."""
        raw = self.config.duration(None, "claim_ttl", BOT_SECTION)
        return raw or timedelta(minutes=2)

    def renew_choices(
        self, resource: str, original: timedelta | None
    ) -> list[timedelta]:
        """The TTLs offered on Renew buttons: the original one and two more."""
        choices = [original] if original else []
        choices += [timedelta(hours=1), timedelta(hours=4)]
        unique: list[timedelta] = []
        for choice in choices:
            if choice not in unique:
                unique.append(choice)
        return unique[:3]
