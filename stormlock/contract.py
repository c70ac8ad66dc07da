"""The backend contract: what every store of leases must do.

A backend needs only the five operations of the original tool: `lock`,
`unlock`, `renew`, `current` and `is_current`. Everything else is an optional
capability with a fallback built on those five, so a third-party plugin that
implements only them works with the CLI and the bot. Plugins import these
names from `stormlock.backend`, which also holds the built-in backends' base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from .errors import (
    EXIT_EXPIRED,
    EXIT_HELD,
    StormlockError,
    UnsupportedOperation,
    one_line,
)
from .ids import fallback_fence
from .times import iso, utcnow

if TYPE_CHECKING:  # history is imported when a change is recorded, not at start-up
    from .history import Event

MAX_RESOURCE_LENGTH = 200
MAX_NOTE_LENGTH = 1000


class Lease(NamedTuple):
    """An active lease on a resource.

    The first three fields are those of the original tool, in its order, so
    plugins that build `Lease(principal, created, id)` keep working.
    """

    principal: str
    """Who holds the lease, for example an email address or user@host."""
    created: datetime
    """When the lease was acquired (aware, UTC)."""
    id: str
    """The secret that proves ownership: needed to renew or release."""
    resource: str = ""
    expires: datetime | None = None
    """When the lease ends unless renewed (aware, UTC); None if unknown."""
    note: str | None = None
    """Why the holder took the lease."""
    fence: int = 0
    """Fencing token: strictly increases with every acquisition of a resource."""
    members: tuple[str, ...] = ()
    """For a lease on a set of resources: all of them, sorted (each member's
    lease has the same id and its own fence). Empty for one resource."""


def same_principal(one: str, other: str) -> bool:
    """Whether two principals name the same holder: compared ignoring case,
    everywhere (the CLI, the API, the http backend, Slack, history and the
    line), since an email's case is not part of who it is and people type
    `Alice@Example.com` and `alice@example.com` for one person."""
    return one.casefold() == other.casefold()


class Clock(StrEnum):
    """Whose clock decides that a lease has expired."""

    SERVER = "server"
    """The store's own clock: clients' clocks do not matter."""
    HOST = "host"
    """The clock of the one machine that holds the store (SQLite)."""
    CLIENT = "client"
    """The clients' clocks (DynamoDB): keep them synchronised."""


class Feature(StrEnum):
    """Optional features a backend may implement natively."""

    NOTES = "notes"
    FENCING = "fencing"
    LIST = "list"
    SETUP = "setup"
    DOCTOR = "doctor"
    HISTORY = "history"
    SETS = "sets"
    """Several resources in one lease, all or nothing, in one transaction."""
    LINE = "line"
    """A fair line of waiters per resource (stormlock/line.py): kept in the
    store's own records, so wherever records can be listed and fenced."""


_FEATURE_METHODS = {
    Feature.NOTES: "acquire_lease",
    Feature.FENCING: "acquire_lease",
    Feature.LIST: "list_leases",
    Feature.SETUP: "setup",
    Feature.DOCTOR: "doctor",
    Feature.HISTORY: "history",
    Feature.SETS: "acquire_set",
    Feature.LINE: "list_leases",
}


class Capabilities(NamedTuple):
    """What a backend's store guarantees, declared by the backend class."""

    clock: Clock = Clock.CLIENT
    min_ttl: timedelta = timedelta(0)
    """The shortest TTL the store accepts: built-in backends refuse a shorter
    acquire or renewal (`InvalidTTL`) before any store call."""
    fence_source: str = "the acquisition time in microseconds (fallback)"
    round_trips: Mapping[str, int] = MappingProxyType({})
    """Round trips to the store per operation (bench/ measures them)."""
    expiry_precision: timedelta = timedelta(0)
    """How late after a lease's reported expiry another client can take the
    resource, at most (the holder's renew and is_current fail right at it)."""
    history: str = ""
    """How a change's history event is written ("same script", ...)."""
    history_in_order: bool = False
    """Events become readable in the order of their times: a reader that saw
    the history up to T never later finds an event before T (one atomic
    writer stamping by one clock). Else a late commit or a client's clock
    can place one before what was read: readers look back a while."""
    sets: str = ""
    """How a set (several resources in one lease) is taken atomically."""
    wake: str = ""
    """What wakes the first in a line when the resource frees (`watch_freed`);
    empty: it polls every 50 ms."""


class Finding(NamedTuple):
    """One result of `Backend.doctor`: how safe a setting of the store is."""

    level: str
    """"ok", "warning" (worth knowing) or "unsafe" (two holders can happen)."""
    text: str
    """What was found and, unless ok, what to change."""


class LockHeldException(StormlockError):
    """The resource is held by someone else.

    `lease` is the holder's lease, or None when the backend could not tell
    (for example it was released between the attempt and the lookup).
    """

    exit_code = EXIT_HELD
    ticket: str | None = None
    """The API's: the place in line a wait that ran out kept (its holder's
    secret, like a lease id)."""
    retry_after: float | None = None
    """The API's: the wait was cut short (the server's waiting slots were
    busy); ask again in this many seconds."""

    def __init__(self, resource: str, lease: Lease | None) -> None:
        self.resource = resource
        self.lease = lease
        super().__init__(describe_holder(resource, lease))

    @property
    def principal(self) -> str | None:
        return self.lease.principal if self.lease else None


class InLine(LockHeldException):
    """Others are waiting in the resource's line, so only the first of them
    may take it (`lease` is the holder's, if it is held)."""

    def __init__(
        self,
        resource: str,
        lease: Lease | None,
        waiting: int,
        held: str | None = None,
    ) -> None:
        """`held`: who holds it, when not one `lease` (a pool's holders)."""
        self.waiting = waiting
        super().__init__(resource, lease)
        people = "1 is" if waiting == 1 else f"{waiting} are"
        if held is None:
            held = (
                str(self) if lease is not None else f"{resource!r} is kept for the line"
            )
        self.message = (
            f"{held}; {people} waiting in line before you: join it with "
            "`--wait DURATION`"
        )
        self.args = (self.message,)


class LockExpiredException(StormlockError):
    """The lease is not the active lease: it expired, was released, or never was."""

    exit_code = EXIT_EXPIRED

    def __init__(self, resource: str) -> None:
        self.resource = resource
        super().__init__(
            f"the lease is not the active lease of {resource!r} "
            "(expired, released or wrong id); acquire it again"
        )


class SetHeld(LockHeldException):
    """A member of the set is held, so none of it was taken; `holders` are
    the members' leases that were found."""

    def __init__(
        self, name: str, holders: list[Lease], principal: str | None = None
    ) -> None:
        self.holders = holders
        super().__init__(name, holders[0] if holders else None)
        members = {h.resource for h in holders}
        if (
            principal is not None
            and len({h.id for h in holders}) == 1
            and all(same_principal(h.principal, principal) for h in holders)
            and members == set(holders[0].members or members)
            and ",".join(sorted(members)) == name
        ):
            # A retry after a lost answer finds the set it took: not "nothing".
            self.message = (
                f"{name!r} is held, all of it, in your name ({principal}) since "
                f"{iso(holders[0].created)}: by an earlier command, or by this one "
                f"if its answer was lost; check with 'stormlock current "
                f"{holders[0].resource}'"
            )
        elif holders:
            listed = "; ".join(describe_holder(h.resource, h) for h in holders)
            self.message = f"nothing taken: {listed}"
        else:
            self.message = (
                f"nothing taken: a member of {name!r} is held by someone else; "
                "try again"
            )


def describe_holder(resource: str, lease: Lease | None) -> str:
    if lease is None:
        return f"{resource!r} is held by someone else; try again"
    text = f"{resource!r} is held by {lease.principal} since {iso(lease.created)}"
    if lease.expires is not None:
        text += f" until {iso(lease.expires)}"
    if lease.note:
        text += f" ({one_line(lease.note)})"
    return text


def trips(**counts: int) -> Mapping[str, int]:
    """Declared round trips per operation (read-only)."""
    return MappingProxyType(counts)


#: One round trip for every operation: what each store's single atomic
#: statement or script gives.
ONE_TRIP = trips(acquire=1, renew=1, release=1, current=1, is_current=1, list=1)


def complete(lease: Lease, resource: str) -> Lease:
    """Fill in what a plugin's `Lease` may lack: the resource and a fence."""
    return lease._replace(
        resource=lease.resource or resource,
        fence=lease.fence or fallback_fence(lease.created),
    )


class Backend(ABC):
    """A store of leases.

    Configuration: `__init__` takes keyword arguments, annotated with `str`,
    `int`, `float` or `bool` (optionally `| None`); the config loader maps the
    `[backend.NAME]` section onto them. A `**kwargs` parameter receives any
    other keys as strings.

    Required: `lock`, `unlock`, `renew`, `current` (and `is_current`, which
    has a default built on `current`).

    Optional capabilities, each with a fallback: `acquire_lease` (notes,
    fencing tokens, expiry), `renew_lease`, `release_lease`, `list_leases`,
    `setup`, `close`.
    """

    #: What the store guarantees (the capability table is generated from it).
    capabilities: ClassVar[Capabilities] = Capabilities()
    keeps_lines: ClassVar[bool] = True
    """False where the line's records cannot be kept (the `http` backend:
    the API server keeps the line, and its clients wait as before)."""

    #: How long events are kept (`history` in [default]); None: no history.
    history_retention: timedelta | None = timedelta(days=90)  # DEFAULT_RETENTION

    # -- the five operations of the original contract --------------------

    @abstractmethod
    def lock(self, resource: str, principal: str, ttl: timedelta) -> str:
        """Acquire a lease on `resource` for `principal`, for `ttl`.

        Succeeds if the resource is free or its lease has expired, atomically.
        Returns the new lease id. Raises `LockHeldException` if someone holds
        the resource.
        """

    @abstractmethod
    def unlock(self, resource: str, lease_id: str) -> None:
        """Release the lease if `lease_id` is the active lease; else do nothing.

        Idempotent: releasing an expired or unknown lease is not an error.
        """

    @abstractmethod
    def renew(self, resource: str, lease_id: str, ttl: timedelta) -> None:
        """Set the lease to expire `ttl` from now.

        Raises `LockExpiredException` unless `lease_id` is the active lease.
        """

    @abstractmethod
    def current(self, resource: str) -> Lease | None:
        """The active lease on `resource`, or None."""

    def is_current(self, resource: str, lease_id: str) -> bool:
        """Whether `lease_id` is the active lease on `resource`."""
        lease = self.current(resource)
        return lease is not None and lease.id == lease_id

    # -- optional capabilities, with fallbacks ----------------------------

    def acquire_lease(
        self, resource: str, principal: str, ttl: timedelta, note: str | None = None
    ) -> Lease:
        """Like `lock`, but stores `note` and returns the whole `Lease`.

        Fallback: `lock`, then `current` to fill in the details. The note is
        dropped (see `supports`), and the fence comes from the clock. Without
        an expiry from the store, it reports one TTL after `lock` returned:
        never before the store's own.
        """
        lease_id = self.lock(resource, principal, ttl)
        locked = utcnow()
        lease = self.current(resource)
        if lease is None or lease.id != lease_id:
            lease = Lease(principal, locked, lease_id, resource)
        return complete(lease._replace(expires=lease.expires or locked + ttl), resource)

    def renew_lease(self, resource: str, lease_id: str, ttl: timedelta) -> Lease:
        """Like `renew`, but returns the renewed lease."""
        self.renew(resource, lease_id, ttl)
        renewed = utcnow()
        lease = self.current(resource)
        if lease is None or lease.id != lease_id:
            raise LockExpiredException(resource)
        return complete(
            lease._replace(expires=lease.expires or renewed + ttl), resource
        )

    def release_lease(self, resource: str, lease_id: str) -> bool | None:
        """Like `unlock`; returns whether a lease was released (None: unknown)."""
        self.unlock(resource, lease_id)
        return None

    def list_leases(self) -> list[Lease]:
        """Every active lease, sorted by resource. Costs O(active leases)."""
        raise UnsupportedOperation(
            f"the {type(self).__name__} backend cannot list leases"
        )

    def list_prefix(self, prefix: str) -> list[Lease]:
        """Active leases whose resource starts with `prefix`, sorted by resource.

        Fallback: `list_leases`, filtered. SQLite, PostgreSQL and Redis read
        only the matching leases.
        """
        return [
            lease for lease in self.list_leases() if lease.resource.startswith(prefix)
        ]

    def list_expiring(self, before: datetime) -> list[Lease]:
        """Active leases that expire at or before `before`, soonest first.

        Fallback: `list_leases`, filtered. Backends with an index on expiry
        answer in time that grows with the result, not with all leases.
        """
        leases = [
            lease
            for lease in self.list_leases()
            if lease.expires is not None and lease.expires <= before
        ]
        return sorted(leases, key=lambda lease: lease.expires or before)

    def history(
        self,
        resource: str | None = None,
        since: datetime | None = None,
        principal: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """The last `limit` changes of `resource` (of every resource if None)
        at or after `since`, about `principal` if given, oldest first; with
        the expiries derived (see stormlock.history). Reading the last N
        events of a resource costs O(N)."""
        raise UnsupportedOperation(
            f"the {type(self).__name__} backend keeps no history"
        )

    # -- sets: several resources in one lease (see stormlock.sets) ----------
    # `resources` come sorted, distinct and valid (`sets.check_set`). The
    # fallback takes the members one by one in that order and gives back
    # what it took if one is held; its lease id joins the members' ids.

    def acquire_set(
        self,
        resources: Sequence[str],
        principal: str,
        ttl: timedelta,
        note: str | None = None,
    ) -> list[Lease]:
        """One lease on every resource, or `SetHeld` and none: the members'
        leases, sorted, with one id and each its own fence."""
        from .sets import acquire_each

        return acquire_each(self, resources, principal, ttl, note)

    def renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease]:
        """Renew every member; `LockExpiredException` unless all are active."""
        from .sets import renew_each

        return renew_each(self, resources, lease_id, ttl)

    def release_set(self, resources: Sequence[str], lease_id: str) -> bool | None:
        """Release every member (idempotent); whether a lease was released."""
        from .sets import release_each

        return release_each(self, resources, lease_id)

    def is_current_set(self, resources: Sequence[str], lease_id: str) -> bool:
        """Whether `lease_id` is the active lease of every member."""
        from .sets import is_current_each

        return is_current_each(self, resources, lease_id)

    def setup(self) -> list[str]:
        """Create what the store needs (tables, indexes); idempotent.

        Returns one line per thing done or found.
        """
        return [f"{type(self).__name__}: nothing to set up"]

    def doctor(self) -> list[Finding]:
        """Inspect the store's safety settings (persistence, eviction, ...)."""
        return [
            Finding(
                "warning",
                f"{type(self).__name__}: this backend has no safety checks; see "
                "its documentation for what the store must guarantee",
            )
        ]

    def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release connections. The backend may not be used afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def supports(cls, feature: Feature | str) -> bool:
        """Whether the class implements an optional feature natively (else
        the fallback serves it)."""
        feature = Feature(feature)
        method = _FEATURE_METHODS[feature]
        if feature is Feature.LINE:
            return (
                cls.keeps_lines
                and cls.supports(Feature.FENCING)
                and cls.supports(Feature.LIST)
            )
        return getattr(cls, method) is not getattr(Backend, method)
