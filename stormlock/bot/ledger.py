"""Which notices went out, across replicas and restarts.

A notice has a key (`told/<fence>/<event>/<resource>` for a change's
announcement). Before sending, a sender claims the key's marker with an
atomic put-if-absent in the lease store (`Records.claim`): only one sender,
thread or replica, can hold it. The claim is short-lived (`claim_ttl`), kept
alive while Slack takes its time (`keeping`), then kept for a week once the
message is sent. So a notice goes out once; a sender that dies after
claiming delays it by at most `claim_ttl`, and only a sender that dies
between sending and recording can make it arrive twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta

from ..contract import Lease
from ..errors import StormlockError
from ..names import RECORD_PREFIX
from ..records import Records
from ..sets import MAX_SET
from ..times import utcnow

log = logging.getLogger(__name__)

SENT_TTL = timedelta(days=7)
_PREFIX = "sent/"
# What this process recorded as sent in the last two minutes: the recovery
# pass asks about the changes between about 75 s and 15 s old (defaults:
# a 30 s interval, 30 s of overlap, recover_after 15 s), and need not read
# the store for the ones it sent itself. Older ones (a longer interval, a
# pass that fell behind) are read, as before; memory stays bounded by it.
RECENT = 120.0
# Markers read in one store call (a Redis pipeline, one SQL statement).
READ_TOGETHER = 500


class Ledger:
    def __init__(self, records: Records, claim_ttl: timedelta) -> None:
        self.records = records
        self.claim_ttl = claim_ttl
        self._lock = threading.Lock()
        self._recent: dict[str, float] = {}  # key -> when (monotonic), oldest first
        self._kept: dict[str, Lease] = {}  # claims whose sends are under way
        self._keep_lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    def _remember(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent.pop(key, None)
            self._recent[key] = now
            while True:
                old, when = next(iter(self._recent.items()))
                if now - when <= RECENT:
                    break
                del self._recent[old]

    @contextlib.contextmanager
    def keeping(self, claims: Sequence[Lease | bool]) -> Iterator[None]:
        """Keep `claims` (the leases among them) from lapsing while the block
        runs, however long Slack takes to answer the send they are for: one
        keeper thread renews every claim in use each `claim_ttl / 3`."""
        held = [claim for claim in claims if isinstance(claim, Lease)]
        if not held:
            yield
            return
        with self._keep_lock:
            for claim in held:
                self._kept[claim.resource] = claim
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep, name="stormlock-claims", daemon=True
                )
                self._keeper.start()
        try:
            yield
        finally:  # after this, the keeper never renews them (sent() may)
            with self._keep_lock:
                for claim in held:
                    self._kept.pop(claim.resource, None)

    def _keep(self) -> None:
        every = max(0.2, self.claim_ttl.total_seconds() / 3)
        while True:
            time.sleep(every)
            with self._keep_lock:
                claims = list(self._kept.values())
            for claim in claims:
                with self._keep_lock:  # its send may have ended meanwhile
                    if claim.resource not in self._kept:
                        continue
                    try:
                        kept = self.records.keep(claim, self.claim_ttl)
                    except StormlockError as exc:  # said; it may lapse
                        log.warning("could not keep a notice's claim: %s", exc)
                        continue
                if not kept:
                    log.warning("a notice's claim lapsed while it was being sent")

    def claim(self, key: str) -> Lease | None:
        """The right to send `key`'s notice now; None if it is sent or being
        sent (by another thread or replica)."""
        return self.records.claim(_PREFIX + key, self.claim_ttl)

    def sent(self, claim: Lease) -> None:
        """It went out (or Slack refused it for good): nobody sends it again.
        A claim that lapsed while Slack took its time is recorded anew (a
        sender that claimed it meanwhile may have sent it too)."""
        key = claim.resource[len(RECORD_PREFIX + _PREFIX) :]
        if not self.records.keep(claim, SENT_TTL):
            self.records.claim(_PREFIX + key, SENT_TTL)
        self._remember(key)

    def mark(self, key: str) -> None:
        """Record as sent what went out without a claim (a fresh change's
        announcement, which nobody else sends yet: see outbox.fast_window)."""
        self.records.claim(_PREFIX + key, SENT_TTL)
        self._remember(key)

    def unclaim(self, claim: Lease) -> None:
        """It did not go out: let a later try, here or elsewhere, send it."""
        self.records.drop(claim)

    # A post names many changes: their markers go in one store change per
    # MAX_SET keys (a set) instead of one each, where nobody else has any.

    def claim_all(self, keys: Sequence[str]) -> list[Lease | None]:
        """`claim` for each key (a key named twice is claimed once)."""
        got: dict[str, Lease | None] = {}
        for group in _groups(keys):
            together: Sequence[Lease | None] | None = None
            if len(group) > 1:
                names = [_PREFIX + key for key in group]
                together = self.records.claim_all(names, self.claim_ttl)
            if together is None:  # one, or one is claimed elsewhere
                together = [self.claim(key) for key in group]
            got.update(zip(group, together, strict=True))
        return [got.pop(key, None) for key in keys]

    def sent_all(self, claims: Sequence[Lease]) -> None:
        """`sent` for each claim."""
        for group in _together(claims):
            if len(group) > 1 and self.records.keep_all(group, SENT_TTL):
                for claim in group:
                    self._remember(claim.resource[len(RECORD_PREFIX + _PREFIX) :])
                continue
            for claim in group:
                self.sent(claim)

    def unclaim_all(self, claims: Sequence[Lease]) -> None:
        """`unclaim` for each claim."""
        for group in _together(claims):
            if len(group) > 1:
                self.records.drop_all(group)
            else:
                self.unclaim(group[0])

    def mark_all(self, keys: Sequence[str]) -> None:
        """`mark` for each key."""
        for group in _groups(keys):
            names = [_PREFIX + key for key in group]
            if len(group) > 1 and self.records.claim_all(names, SENT_TTL) is not None:
                for key in group:
                    self._remember(key)
                continue
            for key in group:  # one, or one is marked already (a rare race)
                self.mark(key)

    def done(self, key: str) -> bool:
        """Whether `key`'s notice went out (not merely claimed by a sender
        that may yet fail)."""
        return self.done_many([key])[0]

    def done_many(self, keys: Sequence[str]) -> list[bool]:
        """`done` of each key: this process's own sends from memory, the
        rest read from the store together, `READ_TOGETHER` at a time (the
        recovery pass asks about every change of a minute or more, and
        another replica's, or worker's, are not in memory)."""
        with self._lock:
            answers = {key: True for key in keys if key in self._recent}
        unknown = [key for key in dict.fromkeys(keys) if key not in answers]
        horizon = utcnow() + self.claim_ttl
        for start in range(0, len(unknown), READ_TOGETHER):
            chunk = unknown[start : start + READ_TOGETHER]
            markers = self.records.get_many([_PREFIX + key for key in chunk])
            for key, marker in zip(chunk, markers, strict=True):
                answers[key] = (
                    marker is not None
                    and marker.expires is not None
                    and marker.expires > horizon
                )
        return [answers[key] for key in keys]

    def claimed(self, prefix: str) -> list[tuple[str, Lease]]:
        """Markers under `prefix`, sent or being sent, by key."""
        return [
            (key[len(_PREFIX) :], marker)
            for key, marker in self.records.list(_PREFIX + prefix)
        ]


def _groups(keys: Sequence[str]) -> list[list[str]]:
    """Distinct keys, at most MAX_SET a group (a set's limit on every store)."""
    unique = list(dict.fromkeys(keys))
    return [unique[i : i + MAX_SET] for i in range(0, len(unique), MAX_SET)]


def _together(claims: Sequence[Lease]) -> list[list[Lease]]:
    """Claims by the change that made them (one id for a set's members)."""
    groups: dict[str, list[Lease]] = {}
    for claim in claims:
        groups.setdefault(claim.id, []).append(claim)
    return list(groups.values())
