"""Sets: one lease on several resources, all or nothing.

`stormlock acquire prod-db prod-api cache` (or `[group.prod]` with `members =
...` and `acquire prod`) takes one lease whose id covers every member. Each
member keeps its own fence; renew, release, is-held and run act on all of
them.

The built-in backends take a set in one script or transaction (see the
capability table), so no client ever sees part of it taken, and two clients
taking overlapping sets in any order never deadlock and never both win. A
plugin falls back to `acquire_each`: the members one by one in their sorted
order, what was taken released if one is held. Its lease id is the members'
ids joined with "+", in that order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .backend import current_many
from .contract import (
    Backend,
    InLine,
    Lease,
    LockExpiredException,
    LockHeldException,
    SetHeld,
    complete,
)
from .errors import InvalidResourceName, StormlockError
from .ids import plausible_lease_id
from .line import Line, has_line
from .lock import StormLock
from .names import validate_resource

if TYPE_CHECKING:
    from .config import Config
    from .history import Event as HistoryEvent

#: The most resources one lease may cover: DynamoDB's TransactWriteItems took
#: at most 25 items for years, and a set wider than that is a sign that a
#: group is missing.
MAX_SET = 25

_JOIN = "+"


def split_names(names: Iterable[str]) -> list[str]:
    """Resource names as typed: separate words, or "a,b,c" in one."""
    return [part for name in names for part in name.split(",") if part]


def check_set(resources: Sequence[str]) -> tuple[str, ...]:
    """The members of a set as every backend takes them: valid, distinct,
    at most MAX_SET, sorted (one canonical order for everyone)."""
    members = [validate_resource(resource) for resource in resources]
    if not members:
        raise InvalidResourceName("name at least one resource to lock")
    seen: set[str] = set()
    for member in members:
        if member in seen:
            raise InvalidResourceName(
                f"{member!r} is named twice; name each resource once"
            )
        seen.add(member)
    if len(members) > MAX_SET:
        raise InvalidResourceName(
            f"{len(members)} resources in one lease; at most {MAX_SET} (one "
            "lease is one transaction of the store, and DynamoDB takes at most "
            f"{MAX_SET} items in one): split the work or lock fewer"
        )
    return tuple(sorted(members))


def group_labels(config: Config, leases: Iterable[Lease]) -> dict[str, str]:
    """Member -> the pool it is in, or the group (else "a,b,...") whose one
    lease holds it: what listings group by."""
    labels = {m: pool.name for pool in config.pools().values() for m in pool.members}
    named = {group.members: group.name for group in config.groups().values()}
    for lease in leases:
        if lease.members:
            labels[lease.resource] = named.get(lease.members, ",".join(lease.members))
    return labels


def one_per_lease(leases: Iterable[Lease], labels: dict[str, str]) -> list[Lease]:
    """A set's leases as one (its first member's, named as the set): so a
    reminder warns once per lease, not once per member."""
    seen: set[str] = set()
    out = []
    for lease in leases:
        if not lease.members:
            out.append(lease)
        elif lease.id not in seen and lease.members[0] == lease.resource:
            seen.add(lease.id)
            out.append(
                lease._replace(resource=labels.get(lease.resource, lease.resource))
            )
    return out


# -- the fallback, for plugins: one member at a time -----------------------


def _give_back(backend: Backend, taken: list[Lease]) -> None:
    for lease in reversed(taken):
        # What cannot be given back now expires at its TTL.
        with contextlib.suppress(StormlockError):
            backend.release_lease(lease.resource, lease.id)


def acquire_each(
    backend: Backend,
    resources: Sequence[str],
    principal: str,
    ttl: timedelta,
    note: str | None,
) -> list[Lease]:
    taken: list[Lease] = []
    resource = ""
    try:
        for resource in resources:
            lease = backend.acquire_lease(resource, principal, ttl, note)
            taken.append(complete(lease, resource))
    except LockHeldException as held:
        _give_back(backend, taken)
        holders = [complete(held.lease, resource)] if held.lease is not None else []
        raise SetHeld(",".join(resources), holders) from None
    except BaseException:
        _give_back(backend, taken)
        raise
    joined = _JOIN.join(lease.id for lease in taken)
    members = tuple(resources)
    return [lease._replace(id=joined, members=members) for lease in taken]


def _ids(resources: Sequence[str], lease_id: str) -> list[str] | None:
    ids = lease_id.split(_JOIN)
    if len(ids) != len(resources) or not all(map(plausible_lease_id, ids)):
        return None
    return ids


def renew_each(
    backend: Backend, resources: Sequence[str], lease_id: str, ttl: timedelta
) -> list[Lease]:
    ids = _ids(resources, lease_id)
    if ids is None:
        raise LockExpiredException(",".join(resources))
    members = tuple(resources)
    return [
        complete(backend.renew_lease(r, i, ttl), r)._replace(
            id=lease_id, members=members
        )
        for r, i in zip(resources, ids, strict=True)
    ]


def release_each(
    backend: Backend, resources: Sequence[str], lease_id: str
) -> bool | None:
    ids = _ids(resources, lease_id)
    if ids is None:
        return False
    results = [backend.release_lease(r, i) for r, i in zip(resources, ids, strict=True)]
    if any(results):
        return True
    return None if None in results else False


def is_current_each(backend: Backend, resources: Sequence[str], lease_id: str) -> bool:
    ids = _ids(resources, lease_id)
    return ids is not None and all(
        backend.is_current(r, i) for r, i in zip(resources, ids, strict=True)
    )


# -- the lock ----------------------------------------------------------------


class SetLock(StormLock):
    """A lock on several resources at once: one lease, all or nothing.

    `resource` is the set's name: the group's, or the members joined by
    commas. `acquire_lease` returns the first member's lease with `members`
    set (and `resource` the set's name); `leases` has each member's own.
    """

    _line_served = False  # the server's line is one resource's

    def __init__(
        self,
        backend: Backend,
        members: Sequence[str],
        principal: str,
        ttl: timedelta,
        max_ttl: timedelta | None = None,
        name: str | None = None,
    ) -> None:
        self.members = check_set(members)
        self.group = name
        super().__init__(backend, self.members[0], principal, ttl, max_ttl)
        self.resource = name or ",".join(self.members)
        self.leases: list[Lease] = []

    def _whole(self, leases: list[Lease]) -> Lease:
        self.leases = leases
        expires = [lease.expires for lease in leases if lease.expires is not None]
        return leases[0]._replace(
            resource=self.resource,
            members=self.members,
            expires=min(expires) if expires else None,
        )

    def _line(self) -> None:
        """A set waits with backoff: its line is not built yet."""
        return None

    def _attempt(self, ttl: timedelta, note: str | None) -> Lease:
        self._guard()
        leases = self.backend.acquire_set(self.members, self.principal, ttl, note)
        return self._whole(leases)

    def _guard(self) -> None:
        """The line's guard, member by member: a set never takes a member
        that others wait for, or that is kept for the first in its line
        (one read of every member's mark; a line only where one is up). As
        a single resource's guard where the store has no one-step guard:
        read first, then the change."""
        if not has_line(self.backend):
            return
        lines = [Line(self.backend, member) for member in self.members]
        marks = current_many(self.backend, [line.mark_key for line in lines])
        for line, mark in zip(lines, marks, strict=True):
            waiting = line.waiting() if mark is not None else []
            if waiting:
                holder = self.backend.current(line.resource)
                raise InLine(line.resource, holder, len(waiting))

    def renew(self, lease_id: str, ttl: timedelta | None = None) -> Lease:
        ttl = self._ttl(ttl)
        if not plausible_lease_id(lease_id):
            raise LockExpiredException(self.resource)
        try:
            leases = self.backend.renew_set(self.members, lease_id, ttl)
        except LockExpiredException:
            raise LockExpiredException(self.resource) from None
        return self._whole(leases)

    def release(self, lease_id: str) -> bool | None:
        if not plausible_lease_id(lease_id):
            return False
        return self.backend.release_set(self.members, lease_id)

    def is_current(self, lease_id: str) -> bool:
        if not plausible_lease_id(lease_id):
            return False
        return self.backend.is_current_set(self.members, lease_id)

    def held(self) -> list[Lease]:
        """The members' active leases (theirs or anyone's), by member."""
        found = (self.backend.current(member) for member in self.members)
        return [
            complete(lease, member)
            for lease, member in zip(found, self.members, strict=True)
            if lease is not None
        ]

    def current(self) -> Lease | None:
        """The set's lease if one lease holds every member, else None
        (`held()` says who holds which)."""
        held = self.held()
        if len(held) != len(self.members) or len({h.id for h in held}) != 1:
            return None
        return self._whole(held)

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
