"""`stormlock run`: hold a lease for exactly as long as a command runs.

The command's whole process tree is stopped (SIGTERM, then SIGKILL after a
grace period) before the lease can expire, even while the store does not
answer (see hold.py for the watchdog, its safety margin and its clock
assumption) and even if this process dies (see guard.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from types import FrameType

from .errors import EXIT_LEASE_LOST, StormlockError
from .hold import Hold, hold
from .lock import StormLock

# How long a child has between SIGTERM and SIGKILL once the lease is lost,
# at most; a short TTL gets a quarter of it, so SIGKILL still comes in time.
KILL_AFTER = 10.0


class CommandFailedToStart(StormlockError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LeaseLost(StormlockError):
    exit_code = EXIT_LEASE_LOST


def grace_period(ttl: timedelta) -> float:
    return min(KILL_AFTER, ttl.total_seconds() / 4)


def _from_terminal(signum: int) -> bool:
    """Whether a SIGINT most likely came from the terminal (and so the child got
    it too: forwarding it would make e.g. terraform see two interrupts)."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


class _Child:
    """The command, and how to stop it by the lease's deadline."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None

    def stop(self, held: Hold) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        # SIGKILL at the deadline, or after the grace period if the lease is
        # already gone (released or taken: nothing to wait for).
        kill_at = min(held.deadline, time.monotonic() + self.grace)
        try:
            process.wait(max(0.0, kill_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def run_command(
    lock: StormLock,
    command: Sequence[str],
    ttl: timedelta | None = None,
    wait: timedelta | None = None,
    note: str | None = None,
) -> int:
    """Acquire, run `command` while renewing, release; return its exit code."""
    ttl = ttl or lock.ttl
    child = _Child(grace_period(ttl))
    _warnings_to_stderr()
    with hold(lock, ttl, note, wait, on_lost=child.stop, lead=child.grace) as held:
        env = dict(os.environ)
        env.update(
            STORMLOCK_LEASE_ID=held.lease.id,
            STORMLOCK_FENCE=str(held.fence),
            STORMLOCK_RESOURCE=lock.resource,
        )
        try:
            child.process = process = subprocess.Popen(list(command), env=env)
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            raise CommandFailedToStart(
                f"cannot run {command[0]!r}: {exc.strerror or exc}; check the command",
                code,
            ) from None
        if held.lost.is_set():  # lost before the child existed
            child.stop(held)

        def forward(signum: int, _frame: FrameType | None) -> None:
            if process.poll() is None and not _from_terminal(signum):
                process.send_signal(signum)

        forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, forward) for sig in forwarded}
        try:
            returncode = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if held.lost_reason is not None:
        raise LeaseLost(
            f"lost the lease on {lock.resource!r}: {held.lost_reason}; "
            "the command was stopped"
        )
    return returncode if returncode >= 0 else 128 - returncode


def _warnings_to_stderr() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stormlock: warning: %(message)s"))
    logger = logging.getLogger("stormlock")
    logger.addHandler(handler)
    logger.propagate = False
