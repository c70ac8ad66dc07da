"""The high-level object: a lock on one resource, as the CLI and scripts use it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

from .backends import configured_backend
from .config import DEFAULT_TTL, Config, Pool, ResourceSettings, load_config
from .contract import (
    MAX_NOTE_LENGTH,
    Backend,
    InLine,
    Lease,
    LockExpiredException,
    LockHeldException,
    complete,
)
from .errors import (
    BackendUnavailable,
    InvalidInput,
    InvalidResourceName,
    StormlockError,
    UnsupportedOperation,
)
from .ids import plausible_lease_id
from .names import (
    RECORD_PREFIX,
    control_characters,
    validate_principal,
    validate_resource,
)
from .times import utcnow
from .ttl import check_ttl

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager
    from datetime import datetime
    from threading import Event

    from .history import Event as HistoryEvent
    from .hold import Hold
    from .line import Line, Place, Ticket, Wake

# Backoff for `acquire(wait=...)`: from 100 ms, doubling, at most 5 s.
_FIRST_RETRY = 0.1
_MAX_RETRY = 5.0


def check_note(note: str | None) -> str | None:
    """The note as stored: one line (whitespace runs become one space), at
    most MAX_NOTE_LENGTH, or None; raise for what no store should hold."""
    if note is None:
        return None
    if "\x00" in note or not _encodable(note):
        raise InvalidInput(
            "the note is not valid UTF-8 text (or holds a NUL byte); "
            "write it in plain text"
        )
    note = " ".join(note.split())  # one line: a newline could fake an output line
    if control_characters(note):
        raise InvalidInput(
            "the note contains a control character (an escape sequence?); "
            "write it in plain text"
        )
    if len(note) > MAX_NOTE_LENGTH:
        raise InvalidInput(
            f"the note is {len(note)} characters long; "
            f"keep it to {MAX_NOTE_LENGTH} (a link can say the rest)"
        )
    return note or None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from argv (surrogates)
        return False
    return True


class StormLock:
    """A lock on a single resource, stored in a backend.

    Usually built with `load_lock`.
    """

    _line_served = True
    """Whether a backend whose server keeps the line (`acquire_in_line`:
    the http backend) may wait in it for this lock (not a pool's or set's)."""
    _guarded = True
    """Whether `_attempt` is one acquire of `resource`, which the store can
    guard with the line's mark (a pool's tries its members instead)."""

    def __init__(
        self,
        backend: Backend,
        resource: str,
        principal: str,
        ttl: timedelta = DEFAULT_TTL,
        max_ttl: timedelta | None = None,
    ) -> None:
        self.backend = backend
        self.resource = validate_resource(resource)
        self.principal = validate_principal(principal)
        self.ttl = check_ttl(ttl, max_ttl)
        self.max_ttl = max_ttl

    def _ttl(self, ttl: timedelta | None) -> timedelta:
        return self.ttl if ttl is None else check_ttl(ttl, self.max_ttl)

    def acquire(self, ttl: timedelta | None = None, note: str | None = None) -> str:
        """Acquire the lock and return the lease id.

        Raises `LockHeldException` if someone else holds it.
        """
        return self.acquire_lease(ttl, note).id

    def __enter__(self) -> StormLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the backend (as the original tool's `with` did)."""
        self.backend.close()

    def acquire_lease(
        self,
        ttl: timedelta | None = None,
        note: str | None = None,
        wait: timedelta | None = None,
        cancel: Event | None = None,
        place: Place | None = None,
    ) -> Lease:
        """Acquire the lock and return the whole lease.

        With `wait`, keep trying (backoff with jitter, never sooner than the
        holder's expiry would allow) until the lock is free or `wait` runs
        out; then raise the last `LockHeldException`. A store that refused the
        connection (nothing sent) is waited out too, within `wait`. Setting
        `cancel` stops the wait early. With `place` (the API's), a wait in
        line that runs out keeps its ticket there, for the next to resume.
        """
        return self.acquire_timed(ttl, note, wait, cancel, place)[0]

    def acquire_timed(
        self,
        ttl: timedelta | None = None,
        note: str | None = None,
        wait: timedelta | None = None,
        cancel: Event | None = None,
        place: Place | None = None,
    ) -> tuple[Lease, float]:
        """`acquire_lease`, and the monotonic time the winning attempt began
        (the lease cannot expire sooner than that plus its TTL)."""
        ttl = self._ttl(ttl)
        note = check_note(note)
        line = self._line()
        if line is not None:
            return self._acquire_in_line(line, ttl, note, wait, cancel, place)
        if wait and self._line_served:
            serve = getattr(self.backend, "acquire_in_line", None)
            if serve is not None:  # the API server keeps the line (http)
                started = time.monotonic()
                lease = serve(self.resource, self.principal, ttl, note, wait, cancel)
                return lease, started
        deadline = time.monotonic() + wait.total_seconds() if wait else None
        delay = _FIRST_RETRY
        while True:
            started = time.monotonic()
            try:
                return self._attempt(ttl, note), started
            except (LockHeldException, BackendUnavailable) as failed:
                if deadline is None:
                    raise
                if isinstance(failed, BackendUnavailable) and not failed.nothing_sent:
                    raise  # it may have gone through: never try blindly again
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                import random  # only waiting needs it; start-up stays lean

                pause = random.uniform(delay / 2, delay)  # noqa: S311 - jitter
                held = failed.lease if isinstance(failed, LockHeldException) else None
                expires = held.expires if held else None
                if expires is not None:
                    # No point polling long before the holder's lease can end...
                    until_free = (expires - utcnow()).total_seconds()
                    if 0 < until_free < pause:
                        pause = until_free + random.uniform(0, 0.05)  # noqa: S311
                pause = min(pause, remaining)
                if cancel is not None:
                    if cancel.wait(pause):
                        raise
                else:
                    time.sleep(pause)
                delay = min(delay * 2, _MAX_RETRY)

    def _line(self) -> Line | None:
        """The resource's line, where the backend keeps lines."""
        from .line import Line, has_line

        return Line(self.backend, self.resource) if has_line(self.backend) else None

    def _acquire_in_line(
        self,
        line: Line,
        ttl: timedelta,
        note: str | None,
        wait: timedelta | None,
        cancel: Event | None,
        place: Place | None = None,
    ) -> tuple[Lease, float]:
        """Take the lease if nobody waits for it; else, with `wait`, join
        the line and take it in turn."""
        started = time.monotonic()
        try:
            marked = None
            if self._guarded and getattr(self.backend, "guards_in_one_step", False):
                # Taken unless the line's mark is up, in one round trip.
                lease = self.backend.acquire_unless(  # type: ignore[attr-defined]
                    self.resource, line.mark_key, self.principal, ttl, note
                )
                if lease is not None:
                    return lease, started
                marked = True
            try:
                if marked is None:
                    marked = line.may_have_waiters()
                waiting = line.waiting() if marked else []
            except BackendUnavailable as failed:  # a read: nothing changed
                raise BackendUnavailable(failed.message, nothing_sent=True) from failed
            if not waiting:
                return self._attempt(ttl, note), started
            if not wait:
                raise self._in_line(len(waiting))
        except LockHeldException:
            if not wait:
                raise
        except BackendUnavailable as failed:
            if not wait or not failed.nothing_sent:
                raise  # it may have gone through: never try blindly again
        from .line import wait_in_line

        assert wait is not None
        return wait_in_line(
            self, line, ttl, note, started + wait.total_seconds(), cancel, place
        )

    def take_turn(
        self, ticket: Ticket, ttl: timedelta | None = None, note: str | None = None
    ) -> Lease:
        """Take the lease with the ticket of the first in line (a Slack
        waiter's "Take it"), and leave the line. Raises `InLine` if the
        ticket is not first (it lapsed, or someone is ahead), or
        `LockHeldException` if the resource is held."""
        line = self._line()
        ttl, note = self._ttl(ttl), check_note(note)
        waiting = line.waiting() if line is not None else []
        if not waiting or waiting[0].seq != ticket.seq:
            ahead = next(
                (n for n, t in enumerate(waiting) if t.seq == ticket.seq), None
            )
            holder = self.backend.current(self.resource)
            raise InLine(
                self.resource, holder, len(waiting) if ahead is None else ahead
            )
        lease = self.backend.acquire_lease(self.resource, self.principal, ttl, note)
        assert line is not None
        from .line import TOOK

        with contextlib.suppress(StormlockError):  # else it lapses soon
            line.leave(ticket, TOOK)
        return lease

    def _wake(self) -> Wake | None:
        """What wakes the first in line when the resource is released."""
        from .line import wake_for

        return wake_for(self.backend, self.resource)

    def _in_line(self, waiting: int) -> InLine:
        """The refusal of someone not in line while `waiting` wait."""
        return InLine(self.resource, self.backend.current(self.resource), waiting)

    def _take_as_head(self, ttl: timedelta, note: str | None) -> Lease:
        """The first in line's try at the lease (polled: keep it cheap)."""
        return self.backend.acquire_lease(self.resource, self.principal, ttl, note)

    def _attempt(self, ttl: timedelta, note: str | None) -> Lease:
        """One try at the lease (a pool tries its members)."""
        return self.backend.acquire_lease(self.resource, self.principal, ttl, note)

    def hold(
        self,
        ttl: timedelta | None = None,
        note: str | None = None,
        wait: timedelta | None = None,
        on_lost: Callable[[Hold], None] | None = None,
    ) -> AbstractContextManager[Hold]:
        """Hold the lease while a `with` block runs, renewing it in the
        background; release it at the end.

        `hold.lost` is set (and `on_lost(hold)` called) as soon as the lease is
        lost or can no longer be counted on, before it expires; pass
        `hold.fence` to the resource you protect.
        """
        from .hold import hold

        return hold(self, ttl, note, wait, on_lost)

    def release(self, lease_id: str) -> bool | None:
        """Release the lease. Idempotent: an inactive id changes nothing.

        Returns whether a lease was released (None if the backend cannot say).
        """
        if not plausible_lease_id(lease_id):
            return False
        return self.backend.release_lease(self.resource, lease_id)

    def renew(self, lease_id: str, ttl: timedelta | None = None) -> Lease:
        """Make the lease expire `ttl` (default: the configured TTL) from now.

        Raises `LockExpiredException` unless it is the active lease.
        """
        ttl = self._ttl(ttl)
        if not plausible_lease_id(lease_id):
            raise LockExpiredException(self.resource)
        return self.backend.renew_lease(self.resource, lease_id, ttl)

    def current(self) -> Lease | None:
        """The active lease, or None."""
        lease = self.backend.current(self.resource)
        return complete(lease, self.resource) if lease else None

    def is_current(self, lease_id: str) -> bool:
        """Whether `lease_id` is the active lease."""
        if not plausible_lease_id(lease_id):
            return False
        return self.backend.is_current(self.resource, lease_id)

    def history(
        self,
        since: datetime | None = None,
        principal: str | None = None,
        limit: int | None = None,
    ) -> list[HistoryEvent]:
        """The resource's last `limit` events (oldest first): who held it,
        when and why, and who forced it. See `stormlock.history`."""
        return self.backend.history(self.resource, since, principal, limit)


def load_lock(
    resource: str, conf_file: str | os.PathLike[str] | None = None
) -> StormLock:
    """Build a `StormLock` for `resource` from the config file.

    `conf_file` defaults to $STORMLOCK_CONFIG, then the search path; with no
    file at all, the embedded SQLite backend and built-in defaults are used.
    """
    config = load_config(conf_file)
    target = resolve(config, resource)
    backend = configured_backend(config, target.settings.backend)
    try:
        return lock_for(target, backend)
    except StormlockError:
        backend.close()
        raise


class Target(NamedTuple):
    """What a name means in a config, resolved once per operation: its
    settings, and a set's members or a pool."""

    name: str
    """The resource or pool (checked, NFC), or the set's name."""
    settings: ResourceSettings
    members: tuple[str, ...] | None = None
    """A set's members, sorted; None for a resource or a pool."""
    group: str | None = None
    """The `[group.NAME]` a set came from."""
    pool: Pool | None = None


def resolve(config: Config, name: str) -> Target:
    """What `name` means: "a,b,c" or a group (a set), a pool, or a resource.
    Raises for a bad name, before any backend is built."""
    members = set_members(config, name)
    if members is not None:
        names, group = members
        return Target(
            group or ",".join(names), config.set_settings(names, group), names, group
        )
    name = validate_resource(name)
    return Target(name, config.settings(name), pool=config.pool(name))


def lock_for(
    target: Target, backend: Backend, principal: str | None = None
) -> StormLock:
    """The lock of a resolved name, on an already built backend; `principal`
    overrides the configured one (the bot's users, say)."""
    settings = target.settings
    principal = principal or settings.principal
    if target.members is not None:
        from .sets import SetLock

        return SetLock(
            backend,
            target.members,
            principal,
            settings.ttl,
            settings.max_ttl,
            target.group,
        )
    if target.pool is not None:
        from .pool import PoolLock

        return PoolLock(backend, target.pool, principal, settings.ttl, settings.max_ttl)
    return StormLock(backend, target.name, principal, settings.ttl, settings.max_ttl)


def lock_from_config(
    config: Config, resource: str, backend: Backend, principal: str | None = None
) -> StormLock:
    """A `StormLock` with the resource's settings, on an already built backend.

    `principal` overrides the configured one (the bot's users, say). A
    pool's name gives a `PoolLock`: any one free member. A group's name, or
    names joined by commas, give a `SetLock`: all of them in one lease.
    """
    return lock_for(resolve(config, resource), backend, principal)


def set_members(config: Config, name: str) -> tuple[tuple[str, ...], str | None] | None:
    """The members of the set `name` means (and its group's name), or None
    when it means one resource or a pool: "a,b,c", or a `[group.NAME]`."""
    from .sets import check_set, split_names

    group = config.group(name) if "," not in name else None
    if group is not None:
        return group.members, group.name
    if "," not in name:
        return None
    members = check_set(split_names([name]))
    for member in members:
        if config.pool(member) is not None or config.group(member) is not None:
            kind = "pool" if config.pool(member) is not None else "group"
            raise InvalidResourceName(
                f"{member!r} is a {kind}; a set lists resources, so name them"
            )
    return members, None


def resources_of(config: Config, name: str) -> tuple[str, ...]:
    """The resources `name` stands for: a set's or a pool's members, or the
    one resource it names."""
    members = set_members(config, name)
    if members is not None:
        return members[0]
    pool = config.pool(name)
    if pool is not None:
        return pool.members
    return (validate_resource(name),)


def settings_for(config: Config, name: str) -> ResourceSettings:
    """The settings of what `name` means: a resource, a pool or a set."""
    return resolve(config, name).settings


def list_all(config: Config, backends: Mapping[str, Backend]) -> list[Lease]:
    """Every active lease in the backends the config uses, sorted by resource.

    A backend that cannot list is asked about each resource the config names.
    """
    leases: list[Lease] = []
    for name, backend in backends.items():
        try:
            leases.extend(backend.list_leases())
        except UnsupportedOperation:
            for resource in config.resource_sections():
                if config.settings(resource).backend == name:
                    lease = backend.current(resource)
                    if lease is not None:
                        leases.append(complete(lease, resource))
    leases = [lease for lease in leases if not lease.resource.startswith(RECORD_PREFIX)]
    return sorted(leases, key=lambda lease: lease.resource)


def lease_history(
    resource: str | None = None,
    since: datetime | None = None,
    principal: str | None = None,
    limit: int | None = None,
    config: Config | None = None,
) -> list[HistoryEvent]:
    """Lease history from the config file's backends: of `resource`, or of
    every resource (merged, oldest first), the last `limit` events at or after
    `since`, about `principal` (as holder or actor) if given."""
    config = config or load_config()
    with ExitStack() as opened:
        return read_history(
            config,
            lambda name: opened.enter_context(configured_backend(config, name)),
            resource,
            since,
            principal,
            limit,
        )


def read_history(
    config: Config,
    backend_for: Callable[[str], Backend],
    resource: str | None,
    since: datetime | None,
    principal: str | None,
    limit: int | None,
) -> list[HistoryEvent]:
    """`lease_history` through `backend_for` (which opens, or reuses, the
    backend of a name). A pool's or a set's history is its members', merged."""
    wanted: tuple[str | None, ...] = (None,)
    if resource is not None:
        wanted = resources_of(config, resource)
        names = [settings_for(config, resource).backend]
    else:
        names = config.backend_names()
    from .contract import Feature
    from .history import filtered
    from .line import line_events

    events: list[HistoryEvent] = []
    kept = 0
    for name in names:
        backend = backend_for(name)
        if resource is None and not backend.supports(Feature.HISTORY):
            continue  # a plugin without history: the others still answer
        for one in wanted:
            events += backend.history(one, since, principal, limit)
            events += filtered(line_events(backend, one), since, principal, limit)
        kept += 1
    if not kept:
        raise UnsupportedOperation(f"the {', '.join(names)} backend keeps no history")
    events.sort(key=lambda event: event.time)
    return events[-limit:] if limit else events
