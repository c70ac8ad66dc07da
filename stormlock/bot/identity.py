"""Who a Slack user is, as a principal, and how a principal is shown."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from .blocks import escape
from .service import Person, PersonUnknown
from .settings import USER_ID

log = logging.getLogger(__name__)
_CACHE_SECONDS = 600.0


# Answers that are final, and so are cached like a found user.
_NOT_FOUND = frozenset({"user_not_found", "users_not_found"})


# Answers that mean Stormlock's own token is refused: for the admins to fix.
_TOKEN_REFUSED = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"}
)


class WhoUnknown(PersonUnknown):
    """Slack could not say who someone is right now (not that they are unknown)."""


class Directory:
    """Slack users by id and by email, cached for ten minutes, "not found"
    too. A failure (an HTTP 500, a time-out) is never cached: the next
    request asks again."""

    def __init__(self, client: WebClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._by_id: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._by_email: dict[str, tuple[float, str | None]] = {}

    def _user(self, user_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._by_id.get(user_id)
        if hit and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        try:
            user: dict[str, Any] | None = self.client.users_info(user=user_id)["user"]
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in _TOKEN_REFUSED:
                log.error("Slack refused the bot token (%s): replace it", error)
                raise WhoUnknown(
                    f"Slack refused Stormlock's token ({error}), so I cannot tell "
                    "who you are; tell your Stormlock admins"
                ) from None
            if error not in _NOT_FOUND:
                log.warning("users.info failed for %s: %s", user_id, error)
                raise WhoUnknown(
                    "Slack could not tell me who you are just now; try again"
                ) from None
            user = None
        except OSError as exc:  # timed out or unreachable
            log.warning("users.info failed for %s: %s", user_id, type(exc).__name__)
            raise WhoUnknown(
                "Slack could not tell me who you are just now; try again"
            ) from None
        with self._lock:
            self._by_id[user_id] = (now, user)
        return user

    def known(self, user_id: str) -> bool:
        """Whether `user_id` is cached: `person` answers without asking Slack."""
        with self._lock:
            hit = self._by_id.get(user_id)
        return hit is not None and time.monotonic() - hit[0] < _CACHE_SECONDS

    def person(self, user_id: str) -> Person:
        """The principal is the user's email when Slack shares it, else the id."""
        user = self._user(user_id) or {}
        email = (user.get("profile") or {}).get("email")
        if email:
            with self._lock:
                self._by_email[email.lower()] = (time.monotonic(), user_id)
            return Person(user_id, email, frozenset({user_id}))
        return Person(user_id, user_id)

    def user_id_for(self, principal: str, strict: bool = False) -> str | None:
        """The Slack user a principal names, if any. If Slack cannot say just
        now: None, or with `strict` a `WhoUnknown` (so a message is retried,
        not dropped)."""
        if USER_ID.match(principal):
            return principal
        if "@" not in principal:
            return None
        key = principal.lower()
        now = time.monotonic()
        with self._lock:
            hit = self._by_email.get(key)
        if hit and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        try:
            found: str | None = self.client.users_lookupByEmail(email=principal)[
                "user"
            ]["id"]
        except SlackApiError as exc:
            if exc.response.get("error") not in _NOT_FOUND:
                return self._unknown(principal, strict)
            found = None
        except OSError:
            return self._unknown(principal, strict)
        with self._lock:
            self._by_email[key] = (now, found)
        return found

    @staticmethod
    def _unknown(principal: str, strict: bool) -> None:
        if strict:
            raise WhoUnknown(f"Slack could not say who {principal} is just now")
        return None  # shown as plain text this time, asked again next time

    def display(self, principal: str) -> str:
        """A mention when the principal is a Slack user, else plain text."""
        user_id = self.user_id_for(principal)
        return f"<@{user_id}>" if user_id else escape(principal)
