"""The guard of `stormlock run`: a small process that starts the command and
stops its whole process tree when the lease ends, even if `run` itself dies.

`run` starts the guard (standard library only, so it starts fast) and talks to
it over two pipes. The guard starts the command in a process group of its own
and, on Linux, becomes a child subreaper, so that orphaned descendants (a
`worker &` whose parent exited, a double-forked daemon) stay in its tree.
It stops every process of that group and of its tree (SIGTERM, the grace,
then SIGKILL, never later than the deadline) when:

- `run` says so (the lease is lost, or is about to be), or
- the command exits (leftovers must not outlive the lease, which `run`
  releases once the guard has finished), or
- the pipe from `run` closes: `run` died (SIGKILL, the OOM killer), or
- the deadline passes with no newer one from `run`: `run` is frozen.

Messages from `run`, one per line: `deadline T` (monotonic, shared by every
process on the host), `stop`. To `run`: `pid P`, `error ERRNO TEXT`,
`exit CODE` (negative: killed by that signal), then EOF when the tree is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
import time

# Once SIGKILL is sent, how long to wait for the tree to be reaped.
_REAP_WAIT = 5.0
# How often to look for what is left of the tree while stopping it.
_STOP_POLL = 0.05
# Ignored dispositions survive exec: the command gets the defaults back.
_DEFAULT_SIGNALS = tuple(
    sig
    for sig in (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGPIPE,
        getattr(signal, "SIGXFSZ", None),
        signal.SIGCHLD,
    )
    if sig is not None
)


def become_subreaper() -> bool:
    """Keep orphaned descendants as our children (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> set[int]:
    """Every live process below `root`, read from /proc (empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] in (b"Z", b"X"):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def signal_tree(pgid: int, sig: int) -> bool:
    """Send `sig` to the command's group and to the guard's descendants;
    return whether anything of the tree is still alive."""
    alive = False
    for pid in (-pgid, *descendants(os.getpid())):
        try:
            os.kill(pid, sig)
            alive = True
        except ProcessLookupError:
            pass
        except PermissionError:  # it changed user (sudo): it still exists
            alive = True
    return alive


def _reap(child: int) -> int | None:
    """Reap every exited child; the command's exit code if it was among them."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == child:
            code = os.waitstatus_to_exitcode(status)


class Guard:
    def __init__(self, control: int, report: int, grace: float, deadline: float):
        self.control = control
        self.report = report
        self.grace = grace
        self.deadline = deadline
        self.kill_at: float | None = None  # set once stopping began
        self.killed = False
        self.pgid = 0
        self.exit_code: int | None = None
        self._buffer = b""
        self._run_alive = True

    def say(self, line: str) -> None:
        # If run is gone, the work is stopped all the same.
        with contextlib.suppress(OSError):
            os.write(self.report, line.encode() + b"\n")

    def start(self, argv: list[str]) -> bool:
        try:
            pid = os.posix_spawnp(
                argv[0],
                argv,
                os.environ,
                setpgroup=0,
                setsigdef=_DEFAULT_SIGNALS,
                setsigmask=(),
            )
        except OSError as exc:
            self.say(f"error {exc.errno or 0} {exc.strerror or exc}")
            return False
        self.pgid = pid
        self.say(f"pid {pid}")
        return True

    def stop(self) -> None:
        """SIGTERM now; SIGKILL after the grace, never after the deadline."""
        if self.kill_at is None:
            self.kill_at = min(time.monotonic() + self.grace, self.deadline)
            signal_tree(self.pgid, signal.SIGTERM)

    def _read_control(self) -> None:
        try:
            data = os.read(self.control, 4096)
        except OSError:
            data = b""
        if not data:  # run died: nobody renews the lease any more
            self._run_alive = False
            self.stop()
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            word, _, rest = line.decode(errors="replace").partition(" ")
            if word == "deadline":
                try:
                    self.deadline = float(rest)
                except ValueError:
                    continue
                if self.kill_at is not None:
                    self.kill_at = min(self.kill_at, self.deadline)
            elif word == "stop":
                self.stop()

    def loop(self, wakeup: int) -> None:
        child = self.pgid
        while True:
            now = time.monotonic()
            if now >= self.deadline and not self.killed:
                self.kill_at = now  # the lease may be someone else's from now on
            if self.kill_at is not None and now >= self.kill_at and not self.killed:
                signal_tree(self.pgid, signal.SIGKILL)
                self.killed = True
                self.kill_at = now + _REAP_WAIT  # how long to wait for the reaping
            if self.exit_code is None:
                timeout = max(0.0, min(self.deadline, self.kill_at or 1e18) - now)
            else:
                timeout = _STOP_POLL  # the command is gone: watch the rest
            readable = [wakeup] + ([self.control] if self._run_alive else [])
            try:
                ready, _, _ = select.select(readable, [], [], timeout)
            except InterruptedError:
                ready = []
            if wakeup in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup, 4096)
            if self.control in ready:
                self._read_control()
            code = _reap(child)
            if code is not None and self.exit_code is None:
                self.exit_code = code
                self.say(f"exit {code}")
                self.stop()  # what the command left behind goes too
            if self.exit_code is not None or not self._run_alive:
                alive = signal_tree(self.pgid, 0) if self.pgid else False
                if not alive:
                    _reap(child)
                    return
                if self.killed and self.kill_at is not None and now >= self.kill_at:
                    return  # unkillable (stuck in the kernel); nothing more to do


def main(argv: list[str]) -> int:
    control, report = int(argv[0]), int(argv[1])
    grace, deadline = float(argv[2]), float(argv[3])
    command = argv[5:] if argv[4:5] == ["--"] else argv[4:]
    os.set_inheritable(control, False)
    os.set_inheritable(report, False)
    # The guard answers only to run's pipe, never to a terminal's signals.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    become_subreaper()
    guard = Guard(control, report, grace, deadline)
    signal.signal(signal.SIGTERM, lambda *_: guard.stop())
    if not guard.start(command):
        return 0
    guard.loop(wake_read)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is ignored
        sys.exit(130)
    except OSError as exc:  # pragma: no cover - e.g. out of file descriptors
        if exc.errno != errno.EPIPE:
            sys.stderr.write(f"stormlock: guard failed: {exc}\n")
        sys.exit(1)
