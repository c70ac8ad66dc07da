"""`stormlock run`: hold a lease for exactly as long as a command runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from types import FrameType

from .backend import Lease, LockExpiredException
from .errors import EXIT_LEASE_LOST, StormlockError
from .lock import StormLock

# Renew at a third of the TTL, and at least every minute so a lost lease
# (force-released, say) is noticed soon.
_MAX_RENEW_INTERVAL = 60.0
# How long a child has between SIGTERM and SIGKILL once the lease is lost.
KILL_AFTER = 10.0


class CommandFailedToStart(StormlockError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Renewer(threading.Thread):
    """Keeps the lease alive; on loss, stops the child."""

    def __init__(
        self,
        lock: StormLock,
        lease: Lease,
        ttl: timedelta,
        child: subprocess.Popen[bytes],
    ) -> None:
        super().__init__(name="stormlock-renewer", daemon=True)
        self.lock = lock
        self.lease = lease
        self.ttl = ttl
        self.child = child
        self.stop = threading.Event()
        self.lost_reason: str | None = None

    def run(self) -> None:
        period = min(self.ttl.total_seconds() / 3, _MAX_RENEW_INTERVAL)
        deadline = time.monotonic() + self.ttl.total_seconds()
        wait = period
        while not self.stop.wait(wait):
            try:
                self.lease = self.lock.renew(self.lease.id, self.ttl)
            except LockExpiredException:
                self._lose("it is no longer the active lease (expired or released)")
                return
            except Exception as exc:  # backend trouble: retry while time remains
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._lose(f"renewal kept failing until it expired ({exc})")
                    return
                wait = max(min(period, remaining / 4), 0.05)
                continue
            deadline = time.monotonic() + self.ttl.total_seconds()
            wait = period

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        if self.child.poll() is not None:
            return
        self.child.terminate()
        try:
            self.child.wait(KILL_AFTER)
        except subprocess.TimeoutExpired:
            self.child.kill()


def _from_terminal(signum: int) -> bool:
    """Whether a SIGINT most likely came from the terminal (and so the child got
    it too: forwarding it would make e.g. terraform see two interrupts)."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def run_command(
    lock: StormLock,
    command: Sequence[str],
    ttl: timedelta | None = None,
    wait: timedelta | None = None,
    note: str | None = None,
) -> int:
    """Acquire, run `command` while renewing, release; return its exit code."""
    ttl = ttl or lock.ttl
    lease = lock.acquire_lease(ttl, note, wait)
    env = dict(os.environ)
    env.update(
        STORMLOCK_LEASE_ID=lease.id,
        STORMLOCK_FENCE=str(lease.fence),
        STORMLOCK_RESOURCE=lock.resource,
    )
    try:
        child = subprocess.Popen(list(command), env=env)
    except OSError as exc:
        lock.release(lease.id)
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        raise CommandFailedToStart(
            f"cannot run {command[0]!r}: {exc.strerror or exc}; check the command",
            code,
        ) from None

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None and not _from_terminal(signum):
            child.send_signal(signum)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    renewer = _Renewer(lock, lease, ttl, child)
    renewer.start()
    try:
        returncode = child.wait()
    finally:
        renewer.stop.set()
        renewer.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if renewer.lost_reason is None:
            _release_quietly(lock, renewer.lease)
    if renewer.lost_reason is not None:
        raise LeaseLost(
            f"lost the lease on {lock.resource!r}: {renewer.lost_reason}; "
            "the command was stopped"
        )
    return returncode if returncode >= 0 else 128 - returncode


def _release_quietly(lock: StormLock, lease: Lease) -> None:
    """Release after the command; a failure must not hide the command's result."""
    try:
        lock.release(lease.id)
    except StormlockError as exc:
        print(
            f"stormlock: warning: could not release {lock.resource!r} ({exc}); "
            "it expires by itself at its TTL",
            file=sys.stderr,
        )


class LeaseLost(StormlockError):
    exit_code = EXIT_LEASE_LOST
