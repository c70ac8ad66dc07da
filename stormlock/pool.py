"""Pools: `[pool.staging]` with `members = staging-1, staging-2, ...`.

Acquiring the pool's name takes a lease on one free member, chosen fairly:
the member free the longest first (by its last change in history), so that
use spreads over them. Each try is the backend's own atomic acquire of one
member, so a pool of N never has more than N holders, nor two on one member.
The lease is the member's: its id renews and releases it through the pool's
name or the member's.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .contract import (
    Backend,
    Feature,
    InLine,
    Lease,
    LockExpiredException,
    LockHeldException,
    describe_holder,
)
from .errors import UnsupportedOperation
from .ids import plausible_lease_id
from .lock import StormLock

if TYPE_CHECKING:
    from .config import Pool
    from .history import Event as HistoryEvent
    from .line import Line


class PoolHeld(LockHeldException):
    """Every member of the pool is held; `holders` are their leases."""

    def __init__(self, pool: str, holders: list[Lease]) -> None:
        self.holders = holders
        first = holders[0] if holders else None
        super().__init__(pool, first)
        if holders:
            listed = "; ".join(describe_holder(h.resource, h) for h in holders)
            self.message = f"every member of pool {pool!r} is held: {listed}"
        else:
            self.message = f"every member of pool {pool!r} is held; try again"


class PoolLock(StormLock):
    """A lock on any one free member of a pool."""

    _line_served = False  # the server's line is one resource's
    _guarded = False  # its attempt is at the members, not at its name

    def __init__(
        self,
        backend: Backend,
        pool: Pool,
        principal: str,
        ttl: timedelta,
        max_ttl: timedelta | None = None,
    ) -> None:
        super().__init__(backend, pool.name, principal, ttl, max_ttl)
        self.pool = pool
        self.members = pool.members
        self._taken: dict[str, str] = {}  # lease id -> member, for renewals

    # -- choosing -------------------------------------------------------------

    def held(self) -> list[Lease]:
        """The members' active leases, by member."""
        members = set(self.members)
        if self.backend.supports(Feature.LIST):
            try:
                found = [
                    lease
                    for lease in self.backend.list_leases()
                    if lease.resource in members
                ]
                return sorted(found, key=lambda lease: lease.resource)
            except UnsupportedOperation:
                pass
        leases = []
        for member in self.members:
            lease = self.backend.current(member)
            if lease is not None:
                leases.append(lease._replace(resource=lease.resource or member))
        return leases

    def order(self, held: list[Lease]) -> list[str]:
        """The free members, the one free the longest first: from one read of
        the store's latest events (a member absent from them has been free
        longer than any in them). Without history, from a random start, so
        that use still spreads."""
        busy = {lease.resource for lease in held}
        free = [member for member in self.members if member not in busy]
        last: dict[str, datetime] = {}
        if self.backend.supports(Feature.HISTORY):
            try:
                window = max(50, 4 * len(self.members))
                for event in self.backend.history(None, limit=window):
                    if event.resource in busy:
                        continue
                    last[event.resource] = event.time  # oldest first: the last wins
            except UnsupportedOperation:
                pass
        unseen = [member for member in free if member not in last]
        start = random.randrange(len(unseen)) if unseen else 0  # noqa: S311 - spread
        seen = sorted((m for m in free if m in last), key=lambda m: last[m])
        return unseen[start:] + unseen[:start] + seen

    def _line(self) -> Line | None:
        """The pool's own line (under its name): its head takes the first
        member freed."""
        from .line import Line, has_line

        return Line(self.backend, self.pool.name) if has_line(self.backend) else None

    def _members_held(self) -> list[Lease]:
        """One read per member (not a listing of every lease)."""
        held = []
        for member in self.members:
            lease = self.backend.current(member)
            if lease is not None:
                held.append(lease._replace(resource=lease.resource or member))
        return held

    def _wake(self) -> None:
        """The head polls each member: no one release to be woken by."""
        return None

    def _in_line(self, waiting: int) -> InLine:
        held = self._members_held()
        every = None
        if len(held) == len(self.members):  # else a freed one is kept for the line
            every = PoolHeld(self.pool.name, held).message
        return InLine(self.pool.name, None, waiting, every)

    def _take_as_head(self, ttl: timedelta, note: str | None) -> Lease:
        # Polled every 50 ms: cheap reads while every member is held, the
        # fair choice once one is free.
        held = self._members_held()
        if len(held) == len(self.members):
            raise PoolHeld(self.pool.name, held)
        return self._attempt(ttl, note)

    def _attempt(self, ttl: timedelta, note: str | None) -> Lease:
        held = self.held()
        for member in self.order(held):
            try:
                lease = self.backend.acquire_lease(member, self.principal, ttl, note)
            except LockHeldException as taken:
                if taken.lease is not None:
                    held.append(taken.lease)
                continue  # someone took it since we looked: the next one
            lease = lease._replace(resource=lease.resource or member)
            self._taken[lease.id] = lease.resource
            return lease
        raise PoolHeld(self.pool.name, sorted(held, key=lambda lease: lease.resource))

    # -- one lease, through the pool's name ---------------------------------------

    def member_of(self, lease_id: str) -> str | None:
        """The member whose active lease `lease_id` is, if any."""
        if not plausible_lease_id(lease_id):
            return None
        known = self._taken.get(lease_id)
        if known is not None:
            return known
        for member in self.members:
            if self.backend.is_current(member, lease_id):
                return member
        return None

    def renew(self, lease_id: str, ttl: timedelta | None = None) -> Lease:
        ttl = self._ttl(ttl)
        member = self.member_of(lease_id)
        if member is None:
            raise LockExpiredException(self.pool.name)
        lease = self.backend.renew_lease(member, lease_id, ttl)
        return lease._replace(resource=lease.resource or member)

    def release(self, lease_id: str) -> bool | None:
        member = self.member_of(lease_id)
        if member is None:
            return False
        self._taken.pop(lease_id, None)
        return self.backend.release_lease(member, lease_id)

    def is_current(self, lease_id: str) -> bool:
        return self.member_of(lease_id) is not None

    def current(self) -> Lease | None:
        """The first held member's lease (`held()` gives them all)."""
        held = self.held()
        return held[0] if held else None

    def history(
        self,
        since: datetime | None = None,
        principal: str | None = None,
        limit: int | None = None,
    ) -> list[HistoryEvent]:
        events: list[HistoryEvent] = []
        for member in self.members:
            events += self.backend.history(member, since, principal, limit)
        events.sort(key=lambda event: event.time)
        return events[-limit:] if limit else events
