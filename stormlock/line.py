"""A fair line per resource: first in, first out, in the order the store
numbers the tickets.

A ticket is a record in the lease backend itself (`.stormlock/line/...`),
held by the waiter with a short TTL that the waiter keeps renewing: a waiter
that dies drops out within that TTL. Tickets are numbered by the fence of a
counter record, taken for a moment to number each ticket, so arrival order
is decided by the store (its fences rise), never by client clocks. This works
on every backend that can list leases by prefix, plugins included; only the
head of the line may take a free resource (`StormLock` checks).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .contract import (
    Backend,
    Feature,
    InLine,
    Lease,
    LockExpiredException,
    LockHeldException,
    same_principal,
)
from .errors import (
    EXIT_RATE_LIMITED,
    BackendUnavailable,
    InvalidInput,
    StormlockError,
)
from .names import LINE_MARK, RECORD_PREFIX
from .times import iso, utcnow

if TYPE_CHECKING:
    from .history import Event
    from .lock import StormLock

TICKET_TTL = timedelta(seconds=10)
"""How long a waiter that stops renewing (killed, cut off) keeps its place."""
MAX_LINE = 100
"""The longest line: past it, joining is refused (say so, and why)."""
_LINE = RECORD_PREFIX + "line/"
_COUNTER = RECORD_PREFIX + "line-seq/"
# Held while anyone may wait, so that an acquire reads one record, not the
# line, when nobody waits (the common case).
_MARK = LINE_MARK
_COUNTER_TTL = timedelta(seconds=5)  # a numberer that dies blocks joins this long
# The line's history: one record per event, kept as long as `stormlock
# history` shows them (the lease history proper is the backend's own).
_LOG = RECORD_PREFIX + "line-log/"
LOG_TTL = timedelta(days=30)
JOINED = "joined"
LEFT = "left"
HANDED = "handed"
"""The resource was freed and kept for the first in line (a Slack waiter)."""
PASSED = "passed"
TOOK = "took"
"""The first in line took its turn (the lease's own "acquired" follows)."""
LINE_EVENTS = (JOINED, LEFT, HANDED, PASSED, TOOK)
_STAMP = "%Y%m%dT%H%M%S%fZ"
_JOIN_BUDGET = 10.0  # seconds of contention for the counter, at most


class LineFull(StormlockError):
    exit_code = EXIT_RATE_LIMITED  # EX_TEMPFAIL: try again later

    def __init__(self, resource: str) -> None:
        super().__init__(
            f"the line for {resource!r} is full ({MAX_LINE} waiting); "
            "try again later, or ask its holder"
        )


class Ticket(NamedTuple):
    """A place in a resource's line."""

    resource: str
    seq: int
    """The store's number: a lower one arrived first."""
    principal: str
    since: datetime
    note: str | None
    source: str
    record: Lease
    """The ticket's record (its id is the waiter's secret)."""
    user: str | None = None
    """A Slack waiter's user id: who is DMed when it is their turn."""
    channel: str | None = None
    """Where a Slack waiter joined: where their turn is announced."""

    def as_dict(self, position: int) -> dict[str, object]:
        return {
            "position": position,
            "principal": self.principal,
            "since": iso(self.since),
            "source": self.source,
            "note": self.note,
        }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class Place:
    """A ticket kept from one wait to the next: an API client waits in
    requests of at most a minute each and keeps its place between them.
    `ticket` is the ticket to resume (None: join), and after a wait that ran
    out, the ticket still in line (it lapses in TICKET_TTL unless resumed)."""

    def __init__(self, ticket: Ticket | None = None) -> None:
        self.ticket = ticket


def has_line(backend: Backend) -> bool:
    """Whether `backend` keeps lines (it can list its records by prefix)."""
    return backend.supports(Feature.LINE)


class Line:
    """The line for one resource."""

    def __init__(self, backend: Backend, resource: str) -> None:
        self.backend = backend
        self.resource = resource
        self._prefix = f"{_LINE}{resource}/"
        self._mark = f"{_MARK}{resource}"

    def waiting(self) -> list[Ticket]:
        """The tickets still alive, first in line first."""
        tickets = [
            ticket
            for record in self.backend.list_prefix(self._prefix)
            if (ticket := self._ticket(record)) is not None
        ]
        return sorted(tickets, key=lambda ticket: ticket.seq)

    def listed(self) -> list[dict[str, object]]:
        """The line as `stormlock queue` and the API show it (no secrets)."""
        return [ticket.as_dict(n) for n, ticket in enumerate(self.waiting(), 1)]

    def _ticket(self, record: Lease) -> Ticket | None:
        seq = record.resource[len(self._prefix) :]
        if not seq.isdigit():
            return None
        try:
            about = json.loads(record.note or "{}")
            since = datetime.fromisoformat(about.get("since") or iso(record.created))
        except (ValueError, TypeError):
            about, since = {}, record.created
        return Ticket(
            self.resource,
            int(seq),
            record.principal,
            since,
            about.get("note"),
            str(about.get("source") or "library"),
            record,
            _text(about.get("user")),
            _text(about.get("channel")),
        )

    def join(
        self,
        principal: str,
        note: str | None = None,
        source: str = "library",
        ttl: timedelta | None = None,
        deadline: float | None = None,
        user: str | None = None,
        channel: str | None = None,
    ) -> Ticket:
        """A new ticket at the back of the line (kept `ttl`, by default
        TICKET_TTL, unless renewed); waiting for others joining at once
        until `deadline` (monotonic) at most."""
        if len(self.waiting()) >= MAX_LINE:
            raise LineFull(self.resource)
        counter = self._number(principal, deadline)
        try:
            fields = {"since": iso(utcnow()), "source": source, "note": note}
            if user:
                fields |= {"user": user, "channel": channel}
            about = json.dumps(fields, separators=(",", ":"))
            record = self.backend.acquire_lease(
                f"{self._prefix}{counter.fence:015d}",
                principal,
                ttl or TICKET_TTL,
                about,
            )
        finally:
            self._release_quietly(counter)
        ticket = self._ticket(record)
        assert ticket is not None  # its name is ours
        self.mark(principal, ttl or TICKET_TTL)
        self.log(JOINED, ticket)
        return ticket

    def log(self, event: str, ticket: Ticket, actor: str | None = None) -> None:
        """Record `event` of `ticket` in the line's history. Best effort: the
        line has moved either way, and a waiter must not fail for it."""
        retention = getattr(self.backend, "history_retention", None)
        if retention is None or not self.backend.supports(Feature.HISTORY):
            return  # history is off, or this store keeps none
        at = utcnow()
        about = {
            "event": event,
            "at": iso(at),
            "actor": actor or ticket.principal,
            "note": ticket.note,
            "source": ticket.source,
            "channel": ticket.channel,
        }
        name = f"{_LOG}{self.resource}/{at.strftime(_STAMP)}-{ticket.seq}-{event}"
        with contextlib.suppress(StormlockError):
            self.backend.acquire_lease(
                name,
                ticket.principal,
                min(LOG_TTL, retention),
                json.dumps(about, separators=(",", ":")),
            )

    def _number(self, principal: str, deadline: float | None) -> Lease:
        """The counter record, held: its fence numbers the next ticket."""
        if not self.backend.supports(Feature.FENCING):
            raise InvalidInput(
                f"the {type(self.backend).__name__} backend has no fencing "
                "tokens, so it cannot number a line"
            )
        budget = time.monotonic() + _JOIN_BUDGET
        deadline = budget if deadline is None else min(deadline, budget)
        while True:
            try:
                return self.backend.acquire_lease(
                    f"{_COUNTER}{self.resource}", principal, _COUNTER_TTL
                )
            except LockHeldException:
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"could not join the line for {self.resource!r}: too "
                        "many joining at once; try again",
                        nothing_sent=True,
                    ) from None
                import random  # only contention needs it; start-up stays lean

                time.sleep(random.uniform(0.002, 0.02))  # noqa: S311 - jitter

    def _release_quietly(self, record: Lease) -> None:
        with contextlib.suppress(StormlockError):  # else it lapses soon
            self.backend.release_lease(record.resource, record.id)

    def keep(self, ticket: Ticket, ttl: timedelta | None = None) -> bool:
        """Keep a ticket alive; False if it lapsed (the waiter lost its place)."""
        ttl = ttl or TICKET_TTL
        try:
            self.backend.renew_lease(ticket.record.resource, ticket.record.id, ttl)
        except LockExpiredException:
            return False
        self.mark(ticket.principal, ttl)
        return True

    def leave(self, ticket: Ticket, event: str = LEFT) -> bool:
        """Leave the line (recorded as `event`: left, passed, took); whether
        the ticket was still in it. The last to leave takes the mark down (a
        joiner at that moment puts it back with its next keep, or the bot's
        next pass)."""
        left = bool(
            self.backend.release_lease(ticket.record.resource, ticket.record.id)
        )
        if left:
            self.log(event, ticket)
        if not self.waiting():
            mark = self.backend.current(self._mark)
            if mark is not None:
                self.backend.release_lease(self._mark, mark.id)
        return left

    def may_have_waiters(self) -> bool:
        """One read: False means nobody waits (no mark), so an acquire need
        not read the line (on some stores, a scan of every record)."""
        return self.backend.current(self._mark) is not None

    @property
    def mark_key(self) -> str:
        """The record `may_have_waiters` reads (to read it with others)."""
        return self._mark

    def remark(self, tickets: list[Ticket], principal: str) -> None:
        """Put the mark back for `tickets` (the line as just read), in case
        the last to leave took it down while someone joined."""
        ends = [t.record.expires for t in tickets if t.record.expires is not None]
        if ends:
            self.mark(principal, max(ends) - utcnow())

    def mark(self, principal: str, ttl: timedelta) -> None:
        """Make the line's mark outlive `ttl` from now (never shorten it)."""
        for _ in range(3):
            mark = self.backend.current(self._mark)
            try:
                if mark is None:
                    self.backend.acquire_lease(self._mark, principal, ttl)
                elif mark.expires is not None and mark.expires < utcnow() + ttl:
                    self.backend.renew_lease(self._mark, mark.id, ttl)
                return
            except (LockHeldException, LockExpiredException):
                continue  # another waiter marked it, or it just lapsed: look again

    def of(self, principal: str) -> tuple[int, Ticket] | None:
        """`principal`'s place (1: first) and ticket, if in line."""
        for place, ticket in enumerate(self.waiting(), 1):
            if same_principal(ticket.principal, principal):
                return place, ticket
        return None

    def position(self, ticket: Ticket) -> int | None:
        """1 for the head of the line; None if the ticket is not in it."""
        for place, other in enumerate(self.waiting(), 1):
            if other.seq == ticket.seq:
                return place
        return None


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st..."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


# The head of the line polls the resource this often (handoff within it plus a
# round trip); the next few check their place every BEHIND_POLL, those
# further back less often (up to 8 times it: a line holds up to 100).
HEAD_POLL = 0.05
BEHIND_POLL = 0.25


class Wake(Protocol):
    """A store's notice that a resource was freed (Redis: pub/sub)."""

    def wait(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


def wake_for(backend: Backend, resource: str) -> Wake | None:
    """The store's own wake-up on a release of `resource`, where it has one;
    None: poll. Never fails the wait: a watch that cannot open is polling."""
    watch: Callable[[str], Wake] | None = getattr(backend, "watch_freed", None)
    if watch is None:
        return None
    try:
        return watch(resource)
    except Exception:  # any failure: poll instead
        return None


def wait_in_line(
    lock: StormLock,
    line: Line,
    ttl: timedelta,
    note: str | None,
    deadline: float,
    cancel: threading.Event | None,
    place: Place | None = None,
) -> tuple[Lease, float]:
    """Join `line`, keep the ticket alive, and take the lease once first in
    line and the resource is free; leave the line however this ends, except
    with `place`: a wait that runs out then keeps its ticket there.

    Raises the last refusal when `deadline` (monotonic) passes. A store that
    did not answer an acquire is never retried blindly (it may have gone
    through): that `BackendUnavailable` is raised.
    """
    from .history import current_context

    source = current_context().source or "library"
    keep_every = TICKET_TTL.total_seconds() / 3
    ticket: Ticket | None = place.ticket if place is not None else None
    head = False
    ahead = 0
    last: LockHeldException | BackendUnavailable | None = None
    next_keep = 0.0
    took = False
    wake: Wake | None = None
    ran_out = False
    try:
        with _leave_on_sigterm():
            while True:
                now = time.monotonic()
                if now >= deadline:
                    ran_out = True
                    if last is not None:
                        raise last
                    raise InLine(lock.resource, None, ahead)
                try:
                    if ticket is None:
                        ticket = line.join(
                            lock.principal, note, source, deadline=deadline
                        )
                        head = False
                        next_keep = time.monotonic() + keep_every
                    elif now >= next_keep:
                        if not line.keep(ticket):  # lapsed (cut off too long)
                            ticket = None
                            continue  # join again, at the back
                        next_keep = now + keep_every
                    if not head:
                        seqs = [other.seq for other in line.waiting()]
                        if ticket.seq not in seqs:
                            ticket = None
                            continue
                        ahead = seqs.index(ticket.seq)
                        head = ahead == 0
                        if head and wake is None:
                            wake = lock._wake()
                    if head:
                        started = time.monotonic()
                        try:
                            lease = lock._take_as_head(ttl, note)
                        except BackendUnavailable as failed:
                            if not failed.nothing_sent:
                                raise  # it may have gone through: never blindly again
                            raise _Transient(failed) from failed
                        took = True
                        return lease, started
                except LockHeldException as held:
                    last = held
                except _Transient as failed:
                    last = failed.cause
                except BackendUnavailable as failed:  # joining, keeping, reading
                    last = failed
                # Far back in a long line, look less often: each place
                # moves up only as fast as the turns ahead of it end.
                every = HEAD_POLL if head else BEHIND_POLL * min(max(ahead - 2, 1), 8)
                pause = min(every, deadline - time.monotonic())
                if cancel is not None:
                    if cancel.wait(max(pause, 0)):
                        raise last or InLine(lock.resource, None, ahead)
                elif pause > 0 and head and wake is not None:
                    wake.wait(pause)  # a release ends the pause at once
                elif pause > 0:
                    time.sleep(pause)
    finally:
        if wake is not None:
            wake.close()
        if place is not None:
            place.ticket = ticket if ran_out else None
        if ticket is not None and not (ran_out and place is not None):
            with contextlib.suppress(StormlockError):  # else it lapses
                line.leave(ticket, TOOK if took else LEFT)


class _Transient(Exception):
    def __init__(self, cause: BackendUnavailable) -> None:
        self.cause = cause


@contextlib.contextmanager
def _leave_on_sigterm() -> Iterator[None]:
    """SIGTERM while waiting ends the wait as Ctrl-C does, so the ticket is
    given up at once (where nobody else handles SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def waiting_counts(backend: Backend) -> dict[str, int]:
    """How many wait in each resource's line, in one read of every line."""
    return {resource: len(line) for resource, line in all_lines(backend).items()}


def all_lines(backend: Backend) -> dict[str, list[Ticket]]:
    """Every resource's line, first in line first, in one read."""
    lines: dict[str, list[Ticket]] = {}
    if not has_line(backend):
        return lines
    for record in backend.list_prefix(_LINE):
        resource, _, _seq = record.resource[len(_LINE) :].rpartition("/")
        ticket = Line(backend, resource)._ticket(record) if resource else None
        if ticket is not None:
            lines.setdefault(resource, []).append(ticket)
    for tickets in lines.values():
        tickets.sort(key=lambda ticket: ticket.seq)
    return lines


def line_events(backend: Backend, resource: str | None = None) -> list[Event]:
    """The line's history (of `resource`, or of every line), oldest first."""
    from .history import Event

    if not has_line(backend):
        return []
    prefix = _LOG + (f"{resource}/" if resource is not None else "")
    events = []
    for record in backend.list_prefix(prefix):
        name, _, last = record.resource[len(_LOG) :].rpartition("/")
        _stamp, _, rest = last.partition("-")
        seq, _, _event = rest.partition("-")
        try:
            about = json.loads(record.note or "")
            at = datetime.fromisoformat(about["at"])
            event = str(about["event"])
        except (ValueError, KeyError, TypeError):
            continue  # not one we wrote
        if not name or not seq.isdigit() or event not in LINE_EVENTS:
            continue
        events.append(
            Event(
                at,
                name,
                event,
                record.principal,
                _text(about.get("actor")) or record.principal,
                _text(about.get("note")),
                int(seq),
                _text(about.get("source")) or "library",
                channel=_text(about.get("channel")),
            )
        )
    return sorted(events, key=lambda event: event.time)
