"""Which notices went out, across replicas and restarts.

A notice has a key (`told/<fence>/<event>/<resource>` for a change's
announcement). Before sending, a sender claims the key's marker with an
atomic put-if-absent in the lease store (`Records.claim`): only one sender,
thread or replica, can hold it. The claim is short-lived (`claim_ttl`) until
the message is sent, then kept for a week. So a notice goes out once; a
sender that dies after claiming delays it by at most `claim_ttl`, and only a
sender that dies between sending and recording can make it arrive twice.
"""

from __future__ import annotations

from datetime import timedelta

from ..contract import Lease
from ..names import RECORD_PREFIX
from ..records import Records
from ..times import utcnow

SENT_TTL = timedelta(days=7)
_PREFIX = "sent/"


class Ledger:
    def __init__(self, records: Records, claim_ttl: timedelta) -> None:
        self.records = records
        self.claim_ttl = claim_ttl

    def claim(self, key: str) -> Lease | None:
        """The right to send `key`'s notice now; None if it is sent or being
        sent (by another thread or replica)."""
        return self.records.claim(_PREFIX + key, self.claim_ttl)

    def sent(self, claim: Lease) -> None:
        """It went out (or Slack refused it for good): nobody sends it again.
        A claim that lapsed while Slack took its time is recorded anew (a
        sender that claimed it meanwhile may have sent it too)."""
        if not self.records.keep(claim, SENT_TTL):
            key = claim.resource[len(RECORD_PREFIX + _PREFIX) :]
            self.records.claim(_PREFIX + key, SENT_TTL)

    def mark(self, key: str) -> None:
        """Record as sent what went out without a claim (a fresh change's
        announcement, which nobody else sends yet: see outbox.FAST_WITHIN)."""
        self.records.claim(_PREFIX + key, SENT_TTL)

    def unclaim(self, claim: Lease) -> None:
        """It did not go out: let a later try, here or elsewhere, send it."""
        self.records.drop(claim)

    def done(self, key: str) -> bool:
        """Whether `key`'s notice went out (not merely claimed by a sender
        that may yet fail)."""
        marker = self.records.get(_PREFIX + key)
        horizon = utcnow() + self.claim_ttl
        return (
            marker is not None
            and marker.expires is not None
            and marker.expires > horizon
        )

    def claimed(self, prefix: str) -> list[tuple[str, Lease]]:
        """Markers under `prefix`, sent or being sent, by key."""
        return [
            (key[len(_PREFIX) :], marker)
            for key, marker in self.records.list(_PREFIX + prefix)
        ]
