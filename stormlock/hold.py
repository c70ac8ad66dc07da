"""Holding a lease while work runs: renewal in the background, and a watchdog
that says the lease is lost before anyone else can take it.

The watchdog counts on the local monotonic clock from the *start* of the last
renewal the store confirmed: the store set the new expiry no earlier than
that, so `start + ttl` is never later than the store's expiry. It fires at
that moment minus a safety margin, whatever the renewal call is doing (a
call blocked by a partition cannot delay it).

The margin (`safety_margin`) covers clock drift between this host and the
store (assumed below 1% of the TTL, far above what NTP-disciplined or even
free-running quartz clocks drift) and the time a process takes to stop.
A fencing token covers the rest: pass `lease.fence` to the resource, which
refuses writes with a lower fence than one it has seen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Protocol

from .contract import Lease, LockExpiredException
from .errors import StormlockError


class Holdable(Protocol):
    """What a hold needs of a lock (`StormLock`, a pool's or a set's)."""

    resource: str
    ttl: timedelta

    def acquire_timed(
        self,
        ttl: timedelta | None = None,
        note: str | None = None,
        wait: timedelta | None = None,
    ) -> tuple[Lease, float]: ...

    def renew(self, lease_id: str, ttl: timedelta | None = None) -> Lease: ...

    def release(self, lease_id: str) -> bool | None: ...


# Renew three times per safe window, and at least every minute so a lost
# lease (force-released, say) is noticed soon.
MAX_RENEW_INTERVAL = 60.0
# Assumed bound on clock drift between this host and the store, per TTL.
DRIFT = 0.01
# Time for the holder to notice and stop, on top of the drift (a tenth of
# the TTL for TTLs under 5 s, which leave no room for more).
STOP_TIME = 0.5


def safety_margin(ttl: timedelta) -> float:
    """Seconds before the lease's expiry at which a hold counts as lost."""
    seconds = ttl.total_seconds()
    return min(STOP_TIME, seconds / 10) + DRIFT * seconds


class Hold:
    """A lease held while a block runs. Check `lost`, or pass `on_lost`."""

    def __init__(
        self,
        lock: Holdable,
        lease: Lease,
        ttl: timedelta,
        confirmed_at: float,
        on_lost: Callable[[Hold], None] | None = None,
        lead: float = 0.0,
        on_renewed: Callable[[Hold], None] | None = None,
    ) -> None:
        self.lock = lock
        self.lease = lease
        self.ttl = ttl
        self.lost = threading.Event()
        """Set once the lease is lost, or can no longer be counted on."""
        self.lost_reason: str | None = None
        self._on_lost = on_lost
        self._on_renewed = on_renewed
        self._lead = lead
        self._margin = safety_margin(ttl)
        self._expires_at = confirmed_at + ttl.total_seconds()
        self._changed = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._renew, name="stormlock-renew", daemon=True),
            threading.Thread(target=self._watch, name="stormlock-watch", daemon=True),
        ]

    @property
    def fence(self) -> int:
        return self.lease.fence

    @property
    def deadline(self) -> float:
        """Monotonic time after which the lease may be someone else's."""
        with self._changed:
            return self._expires_at - self._margin

    def _renew(self) -> None:
        window = self.ttl.total_seconds() - self._margin - self._lead
        period = min(max(window, 0.0) / 3, MAX_RENEW_INTERVAL)
        wait = period
        while not self._wait_stop(wait):
            started = time.monotonic()
            try:
                lease = self.lock.renew(self.lease.id, self.ttl)
            except LockExpiredException:
                self._lose("it is no longer the active lease (expired or released)")
                return
            except StormlockError:
                # The store is unreachable: retry while the watchdog allows.
                left = self.deadline - time.monotonic()
                wait = max(min(period, left / 4), 0.05)
                continue
            with self._changed:
                self.lease = lease
                self._expires_at = started + self.ttl.total_seconds()
                self._changed.notify_all()
            if self._on_renewed is not None:
                self._on_renewed(self)
            wait = period

    def _wait_stop(self, seconds: float) -> bool:
        with self._changed:
            self._changed.wait_for(
                lambda: self._stopping or self.lost.is_set(), seconds
            )
            return self._stopping or self.lost.is_set()

    def _watch(self) -> None:
        with self._changed:
            while not (self._stopping or self.lost.is_set()):
                fire_at = self._expires_at - self._margin - self._lead
                left = fire_at - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            else:
                return
        self._lose("renewal did not succeed before it would expire")

    def _lose(self, reason: str) -> None:
        with self._changed:
            if self.lost.is_set() or self._stopping:
                return
            self.lost_reason = reason
            self.lost.set()
            self._changed.notify_all()
        if self._on_lost is not None:
            self._on_lost(self)

    def _start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()


@contextmanager
def hold(
    lock: Holdable,
    ttl: timedelta | None = None,
    note: str | None = None,
    wait: timedelta | None = None,
    on_lost: Callable[[Hold], None] | None = None,
    lead: float = 0.0,
    on_renewed: Callable[[Hold], None] | None = None,
) -> Iterator[Hold]:
    """Acquire, keep renewing while the block runs, then release.

    `on_lost(hold)` runs (in a background thread) when the lease is lost or
    `lead` seconds before it can no longer be counted on; `hold.lost` is set
    then too; `on_renewed(hold)` after each renewal the store confirmed
    (`hold.deadline` has moved). Releasing at the end is attempted even after
    a loss: it frees the resource sooner if the lease is still ours, and
    changes nothing if not.
    """
    ttl = ttl or lock.ttl
    lease, confirmed_at = lock.acquire_timed(ttl, note, wait)
    held = Hold(lock, lease, ttl, confirmed_at, on_lost, lead, on_renewed)
    held._start()
    try:
        yield held
    finally:
        held._stop()
        release_quietly(lock, held.lease)


def release_quietly(lock: Holdable, lease: Lease) -> None:
    """Release after the work; a failure must not hide the work's own result."""
    try:
        lock.release(lease.id)
    except StormlockError as exc:
        import logging

        logging.getLogger("stormlock").warning(
            "could not release %r (%s); it expires by itself at its TTL",
            lock.resource,
            exc,
        )
