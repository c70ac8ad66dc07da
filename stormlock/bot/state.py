"""The bot's own state kept in the lease store: wait lists and the channel
each lease was taken in. Chat-free: a waiter is an opaque user id."""

from __future__ import annotations

from datetime import timedelta

from ..backend import Lease, utcnow
from ..records import Records

_WAIT_TTL = timedelta(days=30)
# An origin outlives its lease by a day, so its expiry can still be told.
_ORIGIN_GRACE = timedelta(days=1)


class BotState:
    def __init__(self, records: Records) -> None:
        self.records = records

    # -- wait lists -------------------------------------------------------------

    def wait(self, user_id: str, resource: str) -> None:
        key = f"wait/{utcnow().timestamp():020.6f}/{user_id}/{resource}"
        self.records.claim(key, _WAIT_TTL)
        # A marker per resource, so a release learns whether anyone waits in
        # one read instead of listing every wait entry.
        marker = f"waiting/{resource}"
        if self.records.claim(marker, _WAIT_TTL) is None:
            existing = self.records.get(marker)
            if existing is not None:
                self.records.keep(existing, _WAIT_TTL)

    def anyone_waiting(self, resource: str) -> bool:
        return self.records.get(f"waiting/{resource}") is not None

    def nobody_waiting(self, resource: str) -> None:
        """Drop the marker once its list is empty (an entry added meanwhile
        is still found by the reconcile pass)."""
        marker = self.records.get(f"waiting/{resource}")
        if marker is not None and not self.waiting().get(resource):
            self.records.drop(marker)

    def waiting(self) -> dict[str, list[tuple[str, Lease]]]:
        """Wait lists by resource: (user id, entry) in the order they asked."""
        waiting: dict[str, list[tuple[str, Lease]]] = {}
        for key, record in self.records.list("wait/"):
            _stamp, user, resource = key[len("wait/") :].split("/", 2)
            waiting.setdefault(resource, []).append((user, record))
        return waiting

    def cancel_wait(self, user_id: str, resource: str) -> int:
        entries = self.waiting().get(resource, [])
        return sum(
            1
            for user, record in entries
            if user == user_id and self.records.drop(record)
        )

    # -- where leases were taken ------------------------------------------------

    def remember_origin(self, lease: Lease, channel: str) -> None:
        if lease.expires is None:
            return
        ttl = lease.expires - lease.created + _ORIGIN_GRACE
        self.records.claim(f"origin/{lease.fence}/{lease.resource}", ttl, channel)

    def origin(self, fence: int, resource: str) -> str | None:
        record = self.records.get(f"origin/{fence}/{resource}")
        return record.note if record is not None else None
