"""The bot's own state kept in the lease store: wait lists and the channel
each lease was taken in. Chat-free: a waiter is an opaque user id."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import NamedTuple

from ..contract import Lease
from ..line import Line
from ..names import RECORD_PREFIX
from ..records import Records
from ..times import utcnow

_WAIT_TTL = timedelta(days=30)
# An origin outlives its lease by a day, so its expiry can still be told.
_ORIGIN_GRACE = timedelta(days=1)
# An owed notice is kept as long as recovery ever looks back (an hour).
_OWED_TTL = timedelta(hours=1)
# An ask outlives its lease by this, so an unanswered one can still be told.
_ASK_GRACE = timedelta(hours=1)


class AskRecord(NamedTuple):
    """Someone asked the holder of a lease to release it."""

    resource: str
    fence: int
    asker: str
    holder: str
    """The holder's principal."""
    holder_id: str
    """The holder's Slack user id (the DM's recipient)."""
    at: datetime
    record: Lease

    @property
    def suffix(self) -> str:
        return f"{self.fence}/{self.asker}/{self.resource}"


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

    def waiting_key(self, resource: str) -> str:
        """The record `anyone_waiting` reads (to read it with others)."""
        return RECORD_PREFIX + f"waiting/{resource}"

    def waiter_keys(self, line: Line) -> list[str] | None:
        """What says whether anyone waits for `line`'s resource (its mark,
        the wait list's marker), to read in one call; None where the line
        and these records are in different stores."""
        if line.backend is not self.records.backend:
            return None
        return [line.mark_key, self.waiting_key(line.resource)]

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

    # -- notices owed where history cannot give them back -------------------------

    def owe(self, key: str, notice: str) -> None:
        """Keep a change's notice (`core.notice_record`) until it is sent."""
        self.records.claim(f"owed/{key}", _OWED_TTL, notice)

    def owed(self) -> list[tuple[str, Lease]]:
        """The notices kept, by key; each record's `note` is the notice."""
        return [
            (key[len("owed/") :], record) for key, record in self.records.list("owed/")
        ]

    # -- asks to release ----------------------------------------------------------

    def ask(self, lease: Lease, asker: str, holder_id: str, timeout: timedelta) -> bool:
        """Record that `asker` asked the holder of `lease` to release it;
        False if they had already (one ask per asker per lease)."""
        left = (lease.expires - utcnow()) if lease.expires else timedelta(days=1)
        ttl = max(left, timedelta(0)) + timeout + _ASK_GRACE
        value = json.dumps(
            {"holder": lease.principal, "id": holder_id, "at": utcnow().isoformat()}
        )
        key = f"ask/{lease.fence}/{asker}/{lease.resource}"
        return self.records.claim(key, ttl, value) is not None

    def asks(self) -> list[AskRecord]:
        """Every ask on record, answered or not."""
        found = []
        for key, record in self.records.list("ask/"):
            asked = _ask_of(key, record)
            if asked is None:
                self.records.drop(record)  # not one this version wrote
            else:
                found.append(asked)
        return found

    def asked(self, fence: int, asker: str, resource: str) -> AskRecord | None:
        key = f"ask/{fence}/{asker}/{resource}"
        record = self.records.get(key)
        return _ask_of(key, record) if record is not None else None

    def answer(self, asked: AskRecord, reply: str) -> Lease | None:
        """Claim the one answer to an ask; None if it has one already."""
        ttl = asked.record.expires - utcnow() if asked.record.expires else _ASK_GRACE
        return self.records.claim(
            f"answered/{asked.suffix}", max(ttl, timedelta(minutes=1)), reply
        )

    def answer_of(self, asked: AskRecord) -> str | None:
        record = self.records.get(f"answered/{asked.suffix}")
        return record.note if record is not None else None

    def unanswer(self, claim: Lease) -> None:
        """The answer did not take effect: the holder may answer again."""
        self.records.drop(claim)

    def forget_ask(self, asked: AskRecord) -> None:
        answered = self.records.get(f"answered/{asked.suffix}")
        if answered is not None:
            self.records.drop(answered)
        self.records.drop(asked.record)


def _ask_of(key: str, record: Lease) -> AskRecord | None:
    try:
        fence, asker, resource = key[len("ask/") :].split("/", 2)
        data = json.loads(record.note or "")
        at = datetime.fromisoformat(data["at"])
        holder, holder_id = str(data["holder"]), str(data["id"])
        return AskRecord(resource, int(fence), asker, holder, holder_id, at, record)
    except (ValueError, KeyError, TypeError):
        return None
