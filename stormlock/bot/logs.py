"""Logging for the bot and the API: never a lease id or a token, optionally
JSON."""

from __future__ import annotations

import json
import logging
import re
import sys

from ..ids import LEASE_ID_FORMS
from ..tokens import TOKEN_FORM

# Lease ids in every form the id parser accepts, API and Slack tokens, and
# response_urls (each lets its holder answer as the bot): as a form field,
# a JSON field, or a bare Slack hooks URL.
_SECRETS = re.compile(
    LEASE_ID_FORMS
    + "|"
    + TOKEN_FORM
    + r"|xox[a-z]-[A-Za-z0-9-]+"
    + r"|xapp-[A-Za-z0-9-]+"
    + r"|response_url(?:=|\\?[\"']\s*:\s*\\?[\"'])[^&\s\"'\\]+"
    + r"|https?(?::|%3A)(?://|%2F%2F)hooks\.slack(?:-gov)?\.com[^\s\"'&]*"
    # A raw header's value, whole or cut short (a request's bytes in a line).
    + r"|(?i:authorization|cookie)\s*:\s*[^\\\r\n\"']+"
)


def redact(text: str) -> str:
    """Lease ids, tokens and response_urls replaced by a marker."""
    return _SECRETS.sub("[redacted]", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry))


def configure(level: str = "INFO", json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_format
        else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
