"""The base class of the built-in backends, and the names plugins import.

The contract itself (`Backend`, `Lease`, the exceptions, `Feature`) lives in
stormlock/contract.py; it is re-exported here, where plugins have always
found it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from .budget import OutOfTime, budget, check_timeout, failed_fast, remaining_budget
from .contract import (
    MAX_NOTE_LENGTH,
    MAX_RESOURCE_LENGTH,
    ONE_TRIP,
    Backend,
    Capabilities,
    Clock,
    Feature,
    Finding,
    InLine,
    Lease,
    LockExpiredException,
    LockHeldException,
    SetHeld,
    complete,
    describe_holder,
    trips,
)
from .errors import BackendUnavailable, StormlockError, UnsupportedOperation
from .ids import canonical_lease_id, is_set_id, new_lease_id, new_set_id
from .times import iso, retained_since, utcnow
from .ttl import check_floor

if TYPE_CHECKING:
    from .history import Event, Story

__all__ = [
    "MAX_NOTE_LENGTH",
    "MAX_RESOURCE_LENGTH",
    "ONE_TRIP",
    "Backend",
    "Capabilities",
    "Clock",
    "Feature",
    "Finding",
    "InLine",
    "Lease",
    "LeaseBackend",
    "LockExpiredException",
    "LockHeldException",
    "SetHeld",
    "complete",
    "describe_holder",
    "iso",
    "trips",
    "utcnow",
]


class LeaseBackend(Backend):
    """Base of the built-in backends: the shared work, done once.

    The public operations canonicalise lease ids (a malformed id never reaches
    a store), run under one `timeout` budget, map the store's errors to
    `BackendUnavailable` (through `_errors`), and retry an acquire that lost a
    race to a release. Subclasses write only their store's statements: the
    `_acquire`, `_renew`, `_release`, `_current`, `_is_current` and
    `_list_leases` hooks.
    """

    timeout: float = 5.0

    # -- for subclasses -----------------------------------------------------

    def _set_timeout(self, timeout: float) -> None:
        """Check and keep the `timeout` option (seconds per operation)."""
        self.timeout = check_timeout(
            timeout, f"[backend.{type(self).__name__.lower()}]"
        )

    new_id = staticmethod(new_lease_id)
    """A fresh lease id."""
    time_left = staticmethod(remaining_budget)
    """Seconds left of the running operation's budget (see `remaining_budget`)."""
    failed_fast = staticmethod(failed_fast)
    """Whether an attempt failed too fast to be a silent server (retry once)."""
    OutOfTime = OutOfTime

    # -- hooks: one store's statements ------------------------------------

    @abstractmethod
    def _acquire(
        self, resource: str, principal: str, ttl: timedelta, note: str | None
    ) -> tuple[bool, Lease | None]:
        """Take the resource if free: (True, the new lease), else (False,
        the holder, or None if the store could not say in the same call)."""

    @abstractmethod
    def _renew(self, resource: str, lease_id: str, ttl: timedelta) -> Lease | None:
        """Renew the canonical `lease_id`; None unless it is the active lease."""

    @abstractmethod
    def _release(self, resource: str, lease_id: str) -> bool:
        """Release the canonical `lease_id`; whether it was the active lease."""

    @abstractmethod
    def _current(self, resource: str) -> Lease | None: ...

    def _is_current(self, resource: str, lease_id: str) -> bool:
        lease = self._current(resource)
        return lease is not None and lease.id == lease_id

    @abstractmethod
    def _list_leases(self) -> list[Lease]: ...

    def _list_prefix(self, prefix: str) -> list[Lease]:
        leases = self._list_leases()
        return [lease for lease in leases if lease.resource.startswith(prefix)]

    def _list_expiring(self, before: datetime) -> list[Lease]:
        return Backend.list_expiring(self, before)

    # Sets, natively: one script or transaction each. A backend without them
    # falls back to Backend's one-by-one (and `supports(Feature.SETS)` is no).

    def _acquire_set(
        self,
        resources: Sequence[str],
        lease_id: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool, list[Lease]]:
        """Take every resource if all are free, with `lease_id` and `members`
        set: (True, their leases), else (False, the holders found) and
        nothing changed."""
        raise NotImplementedError

    def _renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease] | None:
        """Renew every member, or none (None) unless all hold `lease_id`."""
        raise NotImplementedError

    def _release_set(self, resources: Sequence[str], lease_id: str) -> bool:
        """Release every member that holds `lease_id`, in one change."""
        raise NotImplementedError

    def _story(self, resource: str) -> Story | None:
        """What to record with a change of `resource`; None: record nothing
        (history is off, or the resource is one of the bot's own records)."""
        if resource.startswith(".stormlock/"):  # names.RECORD_PREFIX
            return None
        from .history import story

        return story(self.history_retention)

    def _history(
        self, resource: str | None, since: datetime | None, limit: int | None
    ) -> list[Event]:
        """Stored events, newest first: at most `limit`, none before `since`."""
        raise UnsupportedOperation(
            f"the {type(self).__name__} backend keeps no history"
        )

    #: Whether `acquire_unless` checks its guard in the change's own round
    #: trip (else it reads the guard first, as a caller could).
    guards_in_one_step: ClassVar[bool] = False

    #: The store client's exceptions that `_failure` turns into ours.
    client_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def _failure(self, error: Exception) -> StormlockError:
        """The error to raise for one of `client_errors`: one line that says
        what failed and what to check."""
        return BackendUnavailable(f"{type(self).__name__} failed: {error}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self.client_errors as error:
            raise self._failure(error) from None

    @contextmanager
    def _operation(self) -> Iterator[None]:
        with budget(self.timeout), self._errors():
            yield

    @classmethod
    def supports(cls, feature: Feature | str) -> bool:
        # Every LeaseBackend has acquire_set (the fallback); native only with
        # its own hook.
        if Feature(feature) is Feature.SETS:
            return cls._acquire_set is not LeaseBackend._acquire_set
        return super().supports(feature)

    # -- the contract, over the hooks -------------------------------------

    def _check_ttl(self, ttl: timedelta) -> None:
        """Refuse a TTL below the store's floor before any store call: a
        renewal the store cannot honour must not reach it (Redis would drop
        the lease it was renewing)."""
        check_floor(ttl, self.capabilities.min_ttl)

    def _native_sets(self) -> bool:
        return type(self).supports(Feature.SETS)

    def _members(self, resource: str, canonical: str) -> tuple[str, ...] | None:
        """The set a member's lease covers, if `canonical` is a set's id and
        `resource`'s active lease: so `renew db ID` renews the whole set."""
        if not is_set_id(canonical) or not self._native_sets():
            return None
        with self._operation():
            lease = self._current(resource)
        if lease is None or lease.id != canonical or not lease.members:
            return None
        return lease.members

    def acquire_set(
        self,
        resources: Sequence[str],
        principal: str,
        ttl: timedelta,
        note: str | None = None,
    ) -> list[Lease]:
        self._check_ttl(ttl)
        if not self._native_sets():
            return super().acquire_set(resources, principal, ttl, note)
        name = ",".join(resources)
        with self._operation():
            for _ in range(3):
                acquired, leases = self._acquire_set(
                    resources, new_set_id(), principal, ttl, note
                )
                if acquired:
                    return sorted(leases, key=lambda lease: lease.resource)
                holders = [h for h in map(self._current, resources) if h is not None]
                if holders or leases:
                    found = holders or sorted(leases, key=lambda x: x.resource)
                    raise SetHeld(name, found, principal)
                # Released between the attempt and the lookup: try again.
        raise SetHeld(name, [])

    def renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease]:
        self._check_ttl(ttl)
        if not self._native_sets():
            return super().renew_set(resources, lease_id, ttl)
        canonical = canonical_lease_id(lease_id)
        leases = None
        if canonical is not None:
            with self._operation():
                leases = self._renew_set(resources, canonical, ttl)
        if not leases:
            raise LockExpiredException(",".join(resources))
        return sorted(leases, key=lambda lease: lease.resource)

    def release_set(self, resources: Sequence[str], lease_id: str) -> bool | None:
        if not self._native_sets():
            return super().release_set(resources, lease_id)
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        with self._operation():
            return self._release_set(resources, canonical)

    def is_current_set(self, resources: Sequence[str], lease_id: str) -> bool:
        if not self._native_sets():
            return super().is_current_set(resources, lease_id)
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        with self._operation():
            return all(self._is_current(r, canonical) for r in resources)

    def acquire_lease(
        self, resource: str, principal: str, ttl: timedelta, note: str | None = None
    ) -> Lease:
        lease = self._acquire_guarded(resource, None, principal, ttl, note)
        assert lease is not None  # no guard: taken, or LockHeldException
        return lease

    def acquire_unless(
        self,
        resource: str,
        guard: str,
        principal: str,
        ttl: timedelta,
        note: str | None = None,
    ) -> Lease | None:
        """`acquire_lease`, unless `guard` (another resource: a line's mark)
        is held: then None and nothing changed. In one round trip where the
        store has a hook for it (`_acquire_unless`)."""
        return self._acquire_guarded(resource, guard, principal, ttl, note)

    def _acquire_guarded(
        self,
        resource: str,
        guard: str | None,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> Lease | None:
        self._check_ttl(ttl)
        with self._operation():
            for _ in range(3):
                if guard is None:
                    acquired, lease = self._acquire(resource, principal, ttl, note)
                else:
                    outcome, lease = self._acquire_unless(
                        resource, guard, principal, ttl, note
                    )
                    if outcome is None:
                        return None
                    acquired = outcome
                if acquired and lease is not None:
                    return lease
                holder = lease or self._current(resource)
                if holder is not None:
                    raise LockHeldException(resource, holder)
                # Released between the attempt and the lookup: try again.
        raise LockHeldException(resource, None)

    def _acquire_unless(
        self,
        resource: str,
        guard: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool | None, Lease | None]:
        """`_acquire`, or (None, None) if `guard` is held; this default reads
        the guard first (two round trips)."""
        if self._current(guard) is not None:
            return None, None
        return self._acquire(resource, principal, ttl, note)

    def renew_lease(self, resource: str, lease_id: str, ttl: timedelta) -> Lease:
        self._check_ttl(ttl)
        canonical = canonical_lease_id(lease_id)
        lease = None
        if canonical is not None and is_set_id(canonical):
            with self._operation():  # one budget for the lookup and the change
                members = self._members(resource, canonical)
                if members:
                    leases = self.renew_set(members, canonical, ttl)
                    return next(x for x in leases if x.resource == resource)
        if canonical is not None:
            with self._operation():
                lease = self._renew(resource, canonical, ttl)
        if lease is None:
            raise LockExpiredException(resource)
        return lease

    def release_lease(self, resource: str, lease_id: str) -> bool:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        with self._operation():
            members = self._members(resource, canonical)
            if members:
                return self.release_set(members, canonical) is not False
            return self._release(resource, canonical)

    def release_and_look(
        self, resource: str, lease_id: str, look: Sequence[str]
    ) -> tuple[bool, list[Lease | None]]:
        """`release_lease`, then `current` of each of `look` as the store has
        them after the release (a line's mark: does anyone wait?), within
        one time-out; in one round trip where the store has a hook for it
        (`_release_and_look`)."""
        canonical = canonical_lease_id(lease_id)
        with self._operation():
            if canonical is None:
                released = False
            elif members := self._members(resource, canonical):
                released = self.release_set(members, canonical) is not False
            else:
                return self._release_and_look(resource, canonical, look)
            return released, self._current_many(look)

    def _release_and_look(
        self, resource: str, lease_id: str, look: Sequence[str]
    ) -> tuple[bool, list[Lease | None]]:
        released = self._release(resource, lease_id)
        return released, self._current_many(look)

    def current(self, resource: str) -> Lease | None:
        with self._operation():
            return self._current(resource)

    def current_many(self, resources: Sequence[str]) -> list[Lease | None]:
        """`current` of each, in order: in one round trip, within one
        time-out, where the store has a hook for it (`_current_many`);
        elsewhere one read at a time, each within its own (hundreds of
        markers, say, read in turn can take longer than one time-out)."""
        if type(self)._current_many is LeaseBackend._current_many:
            return [self.current(resource) for resource in resources]
        with self._operation():
            return self._current_many(resources)

    def _current_many(self, resources: Sequence[str]) -> list[Lease | None]:
        return [self._current(resource) for resource in resources]

    def is_current(self, resource: str, lease_id: str) -> bool:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        with self._operation():
            members = self._members(resource, canonical)
            if members:
                return self.is_current_set(members, canonical)
            return self._is_current(resource, canonical)

    def list_leases(self) -> list[Lease]:
        with self._operation():
            return sorted(self._list_leases(), key=lambda lease: lease.resource)

    def list_prefix(self, prefix: str) -> list[Lease]:
        with self._operation():
            found = self._list_prefix(prefix)
        return sorted(found, key=lambda lease: lease.resource)

    def list_expiring(self, before: datetime) -> list[Lease]:
        with self._operation():
            return self._list_expiring(before)

    def history(
        self,
        resource: str | None = None,
        since: datetime | None = None,
        principal: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        from .history import filtered, with_channel, with_expiries

        # A derived expiry needs the event before it: read one more. With a
        # principal, the last N about them may lie further back: read all.
        want = None if limit is None or principal else limit + 1
        since = retained_since(since, self.history_retention)
        with self._operation():
            stored = self._history(resource, since, want)
        events = with_expiries(map(with_channel, reversed(stored)), utcnow())
        return filtered(events, since, principal, limit)

    def lock(self, resource: str, principal: str, ttl: timedelta) -> str:
        return self.acquire_lease(resource, principal, ttl).id

    def unlock(self, resource: str, lease_id: str) -> None:
        self.release_lease(resource, lease_id)

    def renew(self, resource: str, lease_id: str, ttl: timedelta) -> None:
        self.renew_lease(resource, lease_id, ttl)


def release_and_look(
    backend: Backend, resource: str, lease_id: str, look: Sequence[str]
) -> tuple[bool | None, list[Lease | None]]:
    """Release `lease_id`, then `current` of each of `look`, read after the
    release: one call where the backend does both (every built-in one)."""
    both = getattr(backend, "release_and_look", None)
    if both is not None:
        released, found = both(resource, lease_id, look)
        return released, list(found)
    return backend.release_lease(resource, lease_id), current_many(backend, look)


def current_many(backend: Backend, resources: Sequence[str]) -> list[Lease | None]:
    """`current` of each resource: one call where the backend reads several
    at once (every built-in one; a plugin need not)."""
    many = getattr(backend, "current_many", None)
    if many is not None:
        return list(many(resources))
    return [backend.current(resource) for resource in resources]
