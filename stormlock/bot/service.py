"""The bot's service layer: a person's request turned into backend calls.

Knows nothing of Slack: a `Person` is whoever asks, with the principal the
lease records. The same calls serve Slack, the local shell and the tests.
"""

from __future__ import annotations

import difflib
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from ..backend import LeaseBackend, current_many, release_and_look
from ..config import Config
from ..contract import (
    Backend,
    Feature,
    Finding,
    Lease,
    LockExpiredException,
    same_principal,
)
from ..errors import (
    EXIT_BAD_RESOURCE,
    EXIT_NOT_HELD,
    StormlockError,
    UnsupportedOperation,
)
from ..history import ACQUIRED, EXPIRED, FORCED, RELEASED, Event, acting
from ..ids import canonical_lease_id
from ..line import LEFT, PASSED, Line, Ticket, all_lines, line_events
from ..lock import (
    StormLock,
    check_note,
    list_all,
    lock_for,
    lock_from_config,
    resolve,
    resources_of,
    set_members,
    settings_for,
)
from ..names import RECORD_PREFIX, validate_resource
from ..pool import PoolLock
from ..times import utcnow
from ..tokens import Tokens
from .metrics import TimedBackend
from .settings import BotSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Person:
    """Someone using the bot."""

    user_id: str
    """The chat user id, e.g. U012AB3CD."""
    principal: str
    """What a lease records: the email when known, else the user id."""
    aliases: frozenset[str] = frozenset()
    """Other principals that are also this person (their user id, email)."""

    def is_principal(self, principal: str) -> bool:
        return any(
            same_principal(principal, name) for name in (self.principal, *self.aliases)
        )


def same_lease_id(given: str, active: str) -> bool:
    """Whether `given` names the `active` lease, in any form the id parser
    accepts (upper case, braces, no hyphens), as `is-held` does."""
    return (canonical_lease_id(given) or given) == (
        canonical_lease_id(active) or active
    )


def check_fence(lease: Lease, fence: int | None) -> None:
    """A button acts only on the lease it was shown for, never a newer one."""
    if fence is not None and lease.fence != fence:
        raise NoLease(
            f"that lease on {lease.resource!r} has ended (this button was for it); "
            "look again with /stormlock current"
        )


# What the bot records as the source of its changes in the lease history.
SOURCE = "slack"

# A lease's announcement channel is found among this many of its last events.
_CHANNEL_SCAN = 50

# The store's settings rarely change: /readyz checks them once a minute.
_DOCTOR_EVERY = 60.0


class NoLease(StormlockError):
    exit_code = EXIT_NOT_HELD


class NotInLine(StormlockError):
    exit_code = EXIT_NOT_HELD


class PersonUnknown(StormlockError):
    """The chat service could not say who someone is just now (not that they
    are unknown): nothing to do with the lease store."""


class UnknownResource(StormlockError):
    exit_code = EXIT_BAD_RESOURCE


@dataclass(frozen=True)
class Released:
    lease: Lease
    forced: bool
    looked: list[Lease | None] | None = None
    """What `look` named, read after the release; None: not read."""


Look = Callable[[str, Backend], "list[str] | None"]
"""For a resource and its store, what to read right after releasing it
(one round trip with the release), or None."""


class LeaseService:
    """Leases for chat users, over the backends the config file names."""

    def __init__(self, settings: BotSettings) -> None:
        self.settings = settings
        self.config: Config = settings.config
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self._doctor_at: float | None = None
        self._doctor_notes: list[str] = []

    # -- plumbing -------------------------------------------------------------

    def backend(self, name: str) -> Backend:
        """One shared (thread-safe) backend object per backend name."""
        with self._lock:
            if name not in self._backends:
                backend = self._build(name)
                self._backends[name] = cast(Backend, TimedBackend(name, backend))
            return self._backends[name]

    def _build(self, name: str) -> Backend:
        """The backend, its `timeout` capped by `[bot] backend_timeout`."""
        import inspect

        from ..backends import build_backend, find_backend

        options = self.config.backend_options(name)
        if "timeout" in inspect.signature(find_backend(name)).parameters:
            cap = self.settings.backend_timeout.total_seconds()
            try:
                configured = float(options.get("timeout") or cap)
            except ValueError:
                configured = None  # building reports the bad value, in one line
            if configured is not None:
                options["timeout"] = str(min(configured, cap))
        return build_backend(name, options, self.config)

    def close(self) -> None:
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()

    def check_resource(self, resource: str) -> str:
        """The name as the bot uses it, if allowed: a resource, a pool, or a
        set (a group's name, or members joined by commas, every one allowed)."""
        members = set_members(self.config, resource)
        if members is None:
            return self._allowed(validate_resource(resource))
        names, group = members
        if group is not None and (
            not self.settings.resources or group in self.settings.resources
        ):
            return group
        for member in names:
            self._allowed(member)
        return group or ",".join(names)

    def _allowed(self, resource: str) -> str:
        allowed = self.settings.resources
        # A listed pool or group admits its members too (its leases' buttons
        # name them).
        pooled = {
            member
            for name in allowed
            if (pool := self.config.pool(name) or self.config.group(name)) is not None
            for member in pool.members
        }
        if allowed and resource not in allowed and resource not in pooled:
            close = difflib.get_close_matches(resource, allowed, n=3, cutoff=0.6)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else f"known resources: {', '.join(allowed[:10])}"
            )
            raise UnknownResource(f"{resource!r} is not a known resource; {hint}")
        return resource

    def lock(self, person: Person, resource: str) -> StormLock:
        target = resolve(self.config, self.check_resource(resource))
        backend = self.backend(target.settings.backend)
        return lock_for(target, backend, person.principal)

    def backend_of(self, resource: str) -> Backend:
        """The backend of a resource, a pool or a set."""
        return self.backend(settings_for(self.config, resource).backend)

    def ready(self) -> tuple[bool, list[str]]:
        """Whether the default backend answers, and what is unsafe about the
        store (for /readyz: an unsafe store is still served, and said so)."""
        backend = self.backend(self.config.default_backend)
        try:
            backend.current(".stormlock/ready")
        except StormlockError as exc:
            log.warning("not ready: %s", exc)
            return False, []
        now = time.monotonic()
        if self._doctor_at is None or now - self._doctor_at > _DOCTOR_EVERY:
            try:
                findings = backend.doctor()
            except StormlockError as exc:
                findings = [Finding("warning", f"safety check failed: {exc}")]
            notes = [f"{f.level}: {f.text}" for f in findings if f.level != "ok"]
            if notes != self._doctor_notes:
                for note in notes:
                    log.warning("store check: %s", note)
            self._doctor_notes = notes
            self._doctor_at = now
        return True, self._doctor_notes

    def tokens(self) -> Tokens:
        """The API tokens, kept in the default backend (as `stormlock token`)."""
        name = self.config.default_backend
        if name == "http":
            raise UnsupportedOperation(
                "tokens live with the store: this bot reaches it through the API; "
                "create tokens where the store's credentials are"
            )
        return Tokens(self.backend(name))

    def is_admin(self, person: Person) -> bool:
        return person.user_id in self.settings.admins

    # -- operations -------------------------------------------------------------

    def acquire(
        self,
        person: Person,
        resource: str,
        ttl: timedelta | None = None,
        note: str | None = None,
        channel: str | None = None,
    ) -> Lease:
        """Raises `LockHeldException` naming the holder if someone has it.
        `channel`: where it is announced (recorded with the change)."""
        with acting(person.principal, SOURCE, channel=channel):
            return self.lock(person, resource).acquire_lease(ttl, note)

    # -- the line ----------------------------------------------------------------

    def line(self, resource: str) -> Line:
        """The line of an allowed resource; `UnsupportedOperation` where the
        store keeps none (or for a pool or a set: not built yet)."""
        resource = self.check_resource(resource)
        lock = lock_from_config(self.config, resource, self.backend_of(resource), "-")
        line = lock._line()
        if line is None:
            raise UnsupportedOperation(
                f"{resource} has no line (a pool, a set, or a store without "
                "lines); /stormlock notify tells you when it is free"
            )
        return line

    def lines(self) -> dict[str, list[Ticket]]:
        """Every line of every store, first in line first (one read each)."""
        found: dict[str, list[Ticket]] = {}
        for name in self.config.backend_names():
            found.update(all_lines(self.backend(name)))
        return found

    def has_line(self, resource: str) -> bool:
        """Whether `resource` has a line to join (no store call)."""
        try:
            self.line(resource)
        except StormlockError:
            return False
        return True

    def join_line(
        self,
        person: Person,
        resource: str,
        note: str | None,
        channel: str | None,
        ttl: timedelta,
    ) -> tuple[int, Ticket, bool]:
        """Join the line (or keep your place): your position, your ticket,
        and whether you were in it already."""
        line = self.line(resource)
        mine = line.of(person.principal)
        if mine is not None:
            return mine[0], mine[1], True
        ticket = line.join(
            person.principal,
            check_note(note),
            SOURCE,
            ttl,
            user=person.user_id,
            channel=channel,
        )
        return line.position(ticket) or len(line.waiting()), ticket, False

    def leave_line(self, person: Person, resource: str, seq: int | None = None) -> bool:
        """Leave the line; with `seq` (a button's), only from that place."""
        line = self.line(resource)
        mine = line.of(person.principal)
        if mine is None or (seq is not None and mine[1].seq != seq):
            return False
        # A turn's Pass names its ticket; leaving from anywhere else does not.
        return line.leave(mine[1], PASSED if seq is not None else LEFT)

    def take_turn(
        self,
        person: Person,
        resource: str,
        seq: int | None,
        ttl: timedelta | None,
        channel: str | None,
    ) -> tuple[Lease, str | None]:
        """Take the lease as the first in line ("Take it"); and where it is
        announced: `channel`, else where the waiter joined the line."""
        line = self.line(resource)
        mine = line.of(person.principal)
        if mine is None or (seq is not None and mine[1].seq != seq):
            raise NotInLine(
                f"your turn for {resource} has passed (you are not in its line "
                "now); /stormlock acquire or /stormlock queue it again"
            )
        lock = self.lock(person, resource)
        channel = channel or mine[1].channel
        with acting(person.principal, SOURCE, channel=channel):
            return lock.take_turn(mine[1], ttl, mine[1].note), channel

    def usual_hold(self, resource: str) -> timedelta | None:
        """The median length of the resource's leases over the last 30 days
        of history, or None where there is none."""
        backend = self.backend_of(resource)
        if not backend.supports(Feature.HISTORY):
            return None
        since = utcnow() - timedelta(days=30)
        began: dict[int, datetime] = {}
        lengths: list[float] = []
        for event in backend.history(resource, since=since):
            if event.event == ACQUIRED:
                began[event.fence] = event.time
            elif event.fence in began and event.event in (RELEASED, FORCED, EXPIRED):
                held = event.time - began.pop(event.fence)
                lengths.append(held.total_seconds())
        return timedelta(seconds=statistics.median(lengths)) if lengths else None

    def release(
        self,
        person: Person,
        resource: str,
        allow: Callable[[Lease], None],
        lease_id: str | None = None,
        fence: int | None = None,
        channel: str | None = None,
        look: Look | None = None,
    ) -> Released:
        """Release `resource`'s lease if `allow(lease)` (the core's rule)
        does not raise; with `lease_id`, only that lease; with `fence`, only
        the lease that fence names (a button's); with `look`, read what it
        names right after the release (`Released.looked`)."""
        resource = self._member(person, resource, lease_id)
        lock = self.lock(person, resource)
        lease = lock.current()
        if lease is None:
            raise NoLease(f"{resource!r} is not held by anyone")
        check_fence(lease, fence)
        if lease_id is not None and not same_lease_id(lease_id, lease.id):
            raise NoLease(f"that lease id is not the active lease of {resource!r}")
        allow(lease)
        forced = lease_id is None and not person.is_principal(lease.principal)
        # History names who acted: the holder, whoever had the lease id, or
        # the admin who forced it.
        actor = lease.principal if person.is_principal(lease.principal) else None
        # A set's or a pool's own release does more than one lease's.
        plain = type(lock) is StormLock
        keys = look(resource, lock.backend) if look and plain else None
        looked = None
        with acting(actor or person.principal, SOURCE, forced, channel):
            if keys:
                done, looked = release_and_look(lock.backend, resource, lease.id, keys)
            else:
                done = lock.release(lease.id)
        if not done and lock.current() is not None:
            raise NoLease(f"{resource!r} changed hands meanwhile; look again")
        return Released(lease, forced, looked)

    def pools(self, leases: Iterable[Lease] = ()) -> dict[str, str]:
        """Member -> pool, for every configured pool; with `leases`, also a
        set's member -> its group's name (or "a,b,...")."""
        from ..sets import group_labels

        return group_labels(self.config, leases)

    def _member(
        self, person: Person, resource: str, lease_id: str | None = None
    ) -> str:
        """For a pool's name, the member meant: the lease id's, else yours."""
        lock = self.lock(person, resource)
        if not isinstance(lock, PoolLock):
            return resource
        if lease_id is not None:
            member = lock.member_of(lease_id)
            if member is None:
                raise NoLease(f"that lease id is not active in pool {resource!r}")
            return member
        for lease in lock.held():
            if person.is_principal(lease.principal):
                return lease.resource
        raise NoLease(
            f"you hold no member of pool {resource!r}; name the member "
            f"({', '.join(lock.members[:5])}...) to act on someone else's"
        )

    def renew(
        self,
        person: Person,
        resource: str,
        allow: Callable[[Lease], None],
        ttl: timedelta | None = None,
        fence: int | None = None,
    ) -> Lease:
        """Renew `resource`'s lease (no lease id needed) if `allow(lease)`
        (the core's rule) does not raise; with `fence`, only the lease that
        fence names (a button's)."""
        resource = self._member(person, resource)
        lock = self.lock(person, resource)
        lease = lock.current()
        if lease is None:
            raise NoLease(f"{resource!r} is not held; acquire it instead")
        check_fence(lease, fence)
        allow(lease)
        try:
            with acting(lease.principal, SOURCE):
                return lock.renew(lease.id, ttl)
        except LockExpiredException:
            raise NoLease(
                f"your lease on {resource!r} just ended; acquire it again"
            ) from None

    def current(self, resource: str) -> Lease | None:
        self.check_resource(resource)
        return self.lease_of(resource)

    def members_now(self, name: str) -> list[tuple[str, Lease | None]] | None:
        """Each member's lease (None: free) if `name` is a pool or a set
        (`a,b` or a group); None for a single resource. One read."""
        name = self.check_resource(name)
        members = resources_of(self.config, name)
        if self.config.pool(name) is None and set_members(self.config, name) is None:
            return None
        found = current_many(self.backend_of(name), list(members))
        return list(zip(members, found, strict=True))

    def lease_of(self, resource: str) -> Lease | None:
        """The active lease on any resource, allowed in the bot or not (the
        scheduler follows leases taken with the CLI too)."""
        if set_members(self.config, resource) is not None:
            lock = lock_from_config(self.config, resource, self.backend_of(resource))
            return lock.current()
        backend = self.backend(self.config.settings(resource).backend)
        return StormLock(backend, resource, "").current()

    def is_held(self, resource: str, lease_id: str) -> bool:
        resource = self.check_resource(resource)
        backend = self.backend_of(resource)
        return lock_from_config(self.config, resource, backend).is_current(lease_id)

    def history(self, resource: str, limit: int) -> list[Event]:
        """The last `limit` events of an allowed resource (of a pool's or a
        set's members, merged)."""
        resource = self.check_resource(resource)
        backend = self.backend_of(resource)
        events = [
            event
            for member in resources_of(self.config, resource)
            for event in backend.history(member, limit=limit)
            + line_events(backend, member)[-limit:]
        ]
        events.sort(key=lambda e: e.time)
        return events[-limit:]

    def recent_of(self, person: Person, scan: int, limit: int) -> list[Event]:
        """`person`'s events among the last `scan` of every backend: bounded,
        for the App Home (a person's whole history is `stormlock history
        --principal`)."""
        events: list[Event] = []
        for name in self.config.backend_names():
            backend = self.backend(name)
            if backend.supports(Feature.HISTORY):
                events += backend.history(limit=scan)
        mine = [
            e
            for e in events
            if person.is_principal(e.principal) or person.is_principal(e.actor)
        ]
        mine.sort(key=lambda e: e.time)
        return mine[-limit:]

    def keeps_channel(self, lease: Lease) -> bool:
        """Whether the history of the lease's backend records the channel a
        change is announced in (`channel_of` finds it)."""
        backend = self.backend_of(lease.resource)
        # The backend itself, not the metrics wrapper around it.
        backend = getattr(backend, "wrapped", backend)
        return (
            isinstance(backend, LeaseBackend)
            and backend.history_retention is not None
            and backend.supports(Feature.HISTORY)
        )

    def channel_of(self, resource: str, fence: int) -> str | None:
        """The channel the bot announced a lease in, from its history (a
        set's: its first member's)."""
        members = set_members(self.config, resource)
        if members is not None:
            resource = members[0][0]
        backend = self.backend(self.config.settings(resource).backend)
        if not backend.supports(Feature.HISTORY):
            return None
        for event in backend.history(resource, limit=_CHANNEL_SCAN):
            if event.fence == fence and event.channel:
                return event.channel
        return None

    def changes_since(
        self,
        since: datetime,
        overlap: timedelta = timedelta(0),
        in_order: timedelta = timedelta(0),
    ) -> list[Event]:
        """Every backend's events at or after `since`, oldest first (the
        bot's notices are recovered from these); backends without history
        give none. Each is read from `overlap` earlier where an event can
        become readable after later ones (a late commit, a client's clock),
        else from `in_order` earlier (what the store's clock and `since`'s
        may be apart)."""
        events: list[Event] = []
        for name in self.config.backend_names():
            backend = self.backend(name)
            if backend.supports(Feature.HISTORY):
                ordered = backend.capabilities.history_in_order
                start = since - (in_order if ordered else overlap)
                events += backend.history(since=start)
        events.sort(key=lambda e: e.time)
        return events

    def list_leases(self) -> list[Lease]:
        names = self.config.backend_names()
        return list_all(self.config, {name: self.backend(name) for name in names})

    def expiring(self, before: datetime) -> list[Lease]:
        """Leases expiring by `before`, from an index where the backend has one."""
        leases: list[Lease] = []
        for name in self.config.backend_names():
            leases += self.backend(name).list_expiring(before)
        return [
            lease for lease in leases if not lease.resource.startswith(RECORD_PREFIX)
        ]
