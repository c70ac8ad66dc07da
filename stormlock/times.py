"""Moments as the stores and the history keep them: aware, in UTC.

A leaf module (the standard library only), so that anything may use it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds: sortable and free of spaces."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def utcnow() -> datetime:
    return datetime.now(UTC)


def retained_since(
    since: datetime | None, retention: timedelta | None
) -> datetime | None:
    """`since`, no earlier than `retention` ago: older events are gone (or
    about to be) and never shown."""
    if retention is None:
        return since
    oldest = utcnow() - retention
    return max(since, oldest) if since else oldest
