"""Durable records, kept as leases in the lease backend itself.

The bot's wait lists, "already sent" markers, board message ids and expiry
watches, and the API's tokens and request ids, live under the reserved
prefix `.stormlock/`. An acquire is an atomic
put-if-absent, so a marker can be claimed by exactly one replica; this works
on every backend, plugins included, and survives restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from .backend import current_many
from .contract import Backend, Lease, LockExpiredException, LockHeldException
from .names import RECORD_PREFIX

OWNER = "stormlock-bot"


class Records:
    def __init__(self, backend: Backend, owner: str = OWNER) -> None:
        self.backend = backend
        self.owner = owner
        """The principal the records are held by (who wrote them)."""

    def claim(self, key: str, ttl: timedelta, value: str | None = None) -> Lease | None:
        """Create `key` if absent; None if it exists (someone else has it)."""
        try:
            return self.backend.acquire_lease(
                RECORD_PREFIX + key, self.owner, ttl, value
            )
        except LockHeldException:
            return None

    def claim_all(self, keys: Sequence[str], ttl: timedelta) -> list[Lease] | None:
        """Create every key, in one change where the store has sets; None
        if any exists (then none is created). At most `sets.MAX_SET` keys."""
        resources = [RECORD_PREFIX + key for key in keys]
        try:  # sorted: one lock order for every replica (no deadlocks)
            leases = self.backend.acquire_set(sorted(resources), self.owner, ttl)
        except LockHeldException:
            return None
        by_name = {lease.resource: lease for lease in leases}
        return [by_name[resource] for resource in resources]

    def keep_all(self, records: Sequence[Lease], ttl: timedelta) -> bool:
        """Extend records `claim_all` created together; False if they lapsed."""
        try:
            self.backend.renew_set([r.resource for r in records], records[0].id, ttl)
        except LockExpiredException:
            return False
        return True

    def drop_all(self, records: Sequence[Lease]) -> bool:
        """Delete records `claim_all` created together."""
        resources = [record.resource for record in records]
        return bool(self.backend.release_set(resources, records[0].id))

    def keep(self, record: Lease, ttl: timedelta) -> bool:
        """Extend a record we created; False if it is gone (it lapsed)."""
        try:
            self.backend.renew_lease(record.resource, record.id, ttl)
        except LockExpiredException:
            return False
        return True

    def drop(self, record: Lease) -> bool:
        """Delete a record; True only for the one caller that deleted it."""
        return bool(self.backend.release_lease(record.resource, record.id))

    def get(self, key: str) -> Lease | None:
        return self.backend.current(RECORD_PREFIX + key)

    def get_many(self, keys: Sequence[str]) -> list[Lease | None]:
        """`get` of each key, in one read where the store reads several."""
        return current_many(self.backend, [RECORD_PREFIX + key for key in keys])

    def put(self, key: str, value: str, ttl: timedelta) -> Lease:
        """Set `key` to `value`, replacing what was there."""
        for _ in range(5):
            old = self.get(key)
            if old is not None:
                self.drop(old)
            new = self.claim(key, ttl, value)
            if new is not None:
                return new
        raise LockHeldException(RECORD_PREFIX + key, self.get(key))

    def list(self, prefix: str) -> list[tuple[str, Lease]]:
        """Records whose key starts with `prefix`, sorted by key."""
        full = RECORD_PREFIX + prefix
        return sorted(
            (lease.resource[len(RECORD_PREFIX) :], lease)
            for lease in self.backend.list_prefix(full)
        )
