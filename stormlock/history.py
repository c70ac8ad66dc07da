"""Lease history: who held what, when and why.

Every change of a lease (acquired, renewed, released, forced) is written by
the backend together with the change itself: in the same script, statement
or transaction, so a change is never without its event and a failed change
never has one. Lease ids are never recorded.

An expiry is not an action: nobody is there to record it. It is derived when
history is read, from the lease's last `until` (its expiry after the last
acquire or renew) when no release followed; such events say `derived`.

Who acted and from where come from the caller's context: `acting(actor,
source)` around the operation (the bot says who forced a release), and the
process's default source (`set_default_source("cli")` in the CLI).

The bot also says in which channel it announces the change (`acting(...,
channel=)`): it is stored with the source as `slack#C0123` and read back
as `source` "slack" and `channel` "C0123", so the announcement can be
recovered from history if the bot dies before sending it (docs/pipeline.md).
Every backend stores it without knowing; `history -f json` does not show it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from .contract import same_principal

ACQUIRED = "acquired"
RENEWED = "renewed"
RELEASED = "released"
FORCED = "forced"
EXPIRED = "expired"
EVENTS = (ACQUIRED, RENEWED, RELEASED, FORCED, EXPIRED)
SOURCES = ("cli", "slack", "library", "api")

DEFAULT_RETENTION = timedelta(days=90)

#: The fields `stormlock history -f json` prints, in order.
FIELDS = ("time", "resource", "event", "principal", "actor", "note", "fence", "source")


class Event(NamedTuple):
    """One change of a lease."""

    time: datetime
    """When it happened, by the store's clock where it has one (aware, UTC)."""
    resource: str
    event: str
    """acquired, renewed, released, forced or expired."""
    principal: str
    """Whose lease it was."""
    actor: str
    """Who made the change: the holder, or the admin who forced it."""
    note: str | None
    fence: int
    source: str
    """cli, slack or library."""
    until: datetime | None = None
    """The lease's expiry after this event (acquired, renewed)."""
    derived: bool = False
    """An expiry derived when reading, not an action recorded."""
    channel: str | None = None
    """Where the bot announced the change, if it made it."""

    def as_dict(self) -> dict[str, Any]:
        from .times import iso

        record: dict[str, Any] = {
            name: getattr(self, name) for name in FIELDS if name != "time"
        }
        return {"time": iso(self.time), **record}


class Acting(NamedTuple):
    actor: str | None = None
    """Who acts, when not the lease's holder (an admin forcing a release)."""
    source: str | None = None
    forced: bool = False
    channel: str | None = None
    record: bool = True
    """False: record nothing (a delegate API client whose history is off)."""


# Between the source and the channel in the stored source: never in either.
CHANNEL_MARK = "#"

_acting: ContextVar[Acting | None] = ContextVar("stormlock_acting", default=None)
_default_source = ["library"]


def set_default_source(source: str) -> None:
    """The source of this process's changes (threads included): cli, slack."""
    _default_source[0] = source


@contextlib.contextmanager
def acting(
    actor: str | None = None,
    source: str | None = None,
    forced: bool = False,
    channel: str | None = None,
    record: bool = True,
) -> Iterator[None]:
    """Record changes made inside the block as made by `actor`, from `source`,
    announced in `channel`; a release inside it with `forced` is recorded as
    forced; with `record` False, record nothing."""
    token = _acting.set(Acting(actor, source, forced, channel, record))
    try:
        yield
    finally:
        _acting.reset(token)


class Story(NamedTuple):
    """What a backend writes next to the change: the context, resolved."""

    actor: str | None
    source: str
    """As stored: with the channel, if any (`with_channel` splits it)."""
    forced: bool
    retention: timedelta

    def actor_for(self, principal: str) -> str:
        return self.actor or principal

    def released_as(self) -> str:
        return FORCED if self.forced else RELEASED

    def quiet(self) -> Story:
        """The story of a set's other members: without the channel, so the
        bot owes one announcement for the set, the first member's."""
        return self._replace(source=self.source.partition(CHANNEL_MARK)[0])


def current_context() -> Acting:
    """Who acts and from where, as a change made now would be recorded."""
    context = _acting.get() or Acting()
    return context._replace(source=context.source or _default_source[0])


def story(retention: timedelta | None) -> Story | None:
    """The story of the running operation, or None when history is off."""
    context = _acting.get() or Acting()
    if retention is None or not context.record:
        return None
    source = context.source or _default_source[0]
    if context.channel:
        source = f"{source}{CHANNEL_MARK}{context.channel}"
    return Story(context.actor, source, context.forced, retention)


def with_channel(event: Event) -> Event:
    """A stored event as read: its channel split off its source."""
    source, mark, channel = event.source.partition(CHANNEL_MARK)
    if not mark:
        return event
    return event._replace(source=source, channel=channel or None)


def with_expiries(events: Iterable[Event], now: datetime) -> list[Event]:
    """Events (oldest first, as stored) in time order, with an `expired`
    event derived for each lease that ended at its `until` without a
    release. Sorts are stable: events of the same instant keep the store's
    order."""
    ordered = sorted(events, key=lambda e: e.time)
    out: list[Event] = []
    open_: dict[str, Event] = {}  # resource -> last acquired/renewed of a lease

    def close(resource: str, before: datetime | None) -> None:
        last = open_.get(resource)
        if last is None or last.until is None:
            return
        if last.until <= (before or now):
            out.append(
                last._replace(
                    time=last.until,
                    event=EXPIRED,
                    actor=last.principal,
                    until=None,
                    derived=True,
                )
            )
            del open_[resource]

    for event in ordered:
        if event.event in (ACQUIRED, RENEWED):
            last = open_.get(event.resource)
            if last is not None and last.fence != event.fence:
                close(event.resource, event.time)
            open_[event.resource] = event
        elif event.event in (RELEASED, FORCED):
            open_.pop(event.resource, None)
        out.append(event)
    for resource in list(open_):
        close(resource, None)
    out.sort(key=lambda e: e.time)
    return out


def filtered(
    events: Iterable[Event],
    since: datetime | None = None,
    principal: str | None = None,
    limit: int | None = None,
) -> list[Event]:
    """The newest `limit` events at or after `since` about `principal` (as
    holder or actor), oldest first."""
    kept = [
        e
        for e in events
        if (since is None or e.time >= since)
        and (
            principal is None
            or same_principal(principal, e.principal)
            or same_principal(principal, e.actor)
        )
    ]
    return kept[-limit:] if limit else kept


def from_row(row: Any, moment: Callable[[Any], datetime]) -> Event:
    """An event from a SQL row of the history table; `moment` turns the
    row's time values into datetimes."""
    until = row["until"]
    return Event(
        moment(row["at"]),
        row["resource"],
        row["event"],
        row["principal"] or "",
        row["actor"] or "",
        row["note"],
        row["fence"] or 0,
        row["source"] or "",
        moment(until) if until is not None else None,
    )
