"""`stormlock run`: hold a lease for exactly as long as a command runs.

The command's whole process tree is stopped (SIGTERM, then SIGKILL after a
grace period) before the lease can expire, even while the store does not
answer (see hold.py for the watchdog, its safety margin and its clock
assumption) and even if this process dies (see guard.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
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


class _Command:
    """The command, run under the guard (stormlock/guard.py), which stops its
    whole process tree by the lease's deadline even if this process dies."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pgid: int | None = None
        self.exit_code: int | None = None
        self._guard: subprocess.Popen[bytes] | None = None
        self._control = -1
        self._report = -1
        self._lock = threading.Lock()
        self._terminal: int | None = None
        self._pending: list[int] = []

    def start(self, command: Sequence[str], env: dict[str, str], held: Hold) -> None:
        control_read, self._control = os.pipe()
        self._report, report_write = os.pipe()
        guard = [sys.executable, "-I", str(Path(__file__).with_name("guard.py"))]
        args = [str(control_read), str(report_write), repr(self.grace)]
        try:
            self._guard = subprocess.Popen(
                [*guard, *args, repr(held.deadline), "--", *command],
                env=env,
                pass_fds=(control_read, report_write),
                process_group=0,  # a Ctrl-C or a kill of run's group spares it
            )
        finally:
            os.close(control_read)
            os.close(report_write)
        self._reader = os.fdopen(self._report, "rb", buffering=0)
        word, _, rest = self._read_line().partition(" ")
        if word == "error":
            number, _, text = rest.partition(" ")
            self._wait_guard()
            code = 127 if int(number or 0) == errno.ENOENT else 126
            raise CommandFailedToStart(
                f"cannot run {command[0]!r}: {text}; check the command", code
            )
        if word != "pid":
            self._wait_guard()
            raise StormlockError(
                "the guard of the command did not start; "
                "rerun with STORMLOCK_DEBUG=1 and report it"
            )
        self.pgid = int(rest)
        self._to_foreground()
        for signum in self._pending:
            self.signal(signum)

    def _read_line(self) -> str:
        line = self._reader.readline()
        return line.decode(errors="replace").strip()

    def _to_foreground(self) -> None:
        """Give the terminal to the command, as a shell gives it to a job, so
        that it can read from it and Ctrl-C reaches it (and only it)."""
        try:
            fd = sys.stdin.fileno()
            if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
                return
            os.tcsetpgrp(fd, self.pgid or 0)
        except (OSError, ValueError, AttributeError):
            return
        self._terminal = fd
        self.signal(signal.SIGCONT)  # it may have stopped reading before it had it

    def _from_foreground(self) -> None:
        if self._terminal is None:
            return
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(self._terminal, os.getpgrp())
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTTOU, previous)

    def _tell(self, line: str) -> bool:
        with self._lock:
            try:
                os.write(self._control, line.encode() + b"\n")
                return True
            except OSError:  # the guard is gone
                return False

    def signal(self, signum: int) -> None:
        if self.pgid is None:
            self._pending.append(signum)  # sent once the command exists
            return
        with contextlib.suppress(OSError):  # the group has ended
            os.killpg(self.pgid, signum)

    def renewed(self, held: Hold) -> None:
        self._tell(f"deadline {held.deadline!r}")

    def stop(self, held: Hold) -> None:
        """The lease is lost or about to be: the guard stops the tree."""
        if not self._tell("stop"):
            self.signal(signal.SIGKILL)

    def wait(self) -> int:
        """The command's exit code, once its whole tree is gone."""
        try:
            while True:
                word, _, rest = self._read_line().partition(" ")
                if word == "exit":
                    self.exit_code = int(rest)
                elif not word:  # the guard has finished (or died)
                    break
        finally:
            self._wait_guard()
        if self.exit_code is None:
            self.signal(signal.SIGKILL)  # the guard died: stop what it guarded
            raise StormlockError(
                "the guard of the command died; the command was stopped"
            )
        return self.exit_code

    def _wait_guard(self) -> None:
        self._from_foreground()
        with self._lock:
            os.close(self._control)
            self._control = -1
        if self._guard is not None:
            self._guard.wait()
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
        else:
            os.close(self._report)


def run_command(
    lock: StormLock,
    command: Sequence[str],
    ttl: timedelta | None = None,
    wait: timedelta | None = None,
    note: str | None = None,
    acquired: Callable[[], None] | None = None,
) -> int:
    """Acquire, run `command` while renewing, release; return its exit code.
    `acquired()` is called once the lease is held, before the command starts.

    The lease is released only once every process of the command's tree has
    ended; see stormlock/guard.py for what stops them.
    """
    ttl = ttl or lock.ttl
    child = _Command(grace_period(ttl))
    _warnings_to_stderr()
    with hold(
        lock,
        ttl,
        note,
        wait,
        on_lost=child.stop,
        lead=child.grace,
        on_renewed=child.renewed,
    ) as held:
        env = dict(os.environ)
        env.update(
            STORMLOCK_LEASE_ID=held.lease.id,
            STORMLOCK_FENCE=str(held.fence),
            STORMLOCK_RESOURCE=held.lease.resource or lock.resource,
        )

        if acquired is not None:
            acquired()

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.signal(signum)

        forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, forward) for sig in forwarded}
        try:
            child.start(command, env, held)
            if held.lost.is_set():  # lost before the command existed
                child.stop(held)
            returncode = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if held.lost_reason is not None:
        raise LeaseLost(
            f"lost the lease on {held.lease.resource or lock.resource!r}: "
            f"{held.lost_reason}; "
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
