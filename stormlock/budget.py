"""One `timeout` for a whole operation: connecting, retrying and reading
all come out of the same budget, so no operation waits longer than it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ConfigError


class _Deadline(threading.local):
    at: float | None = None


_deadline = _Deadline()


def remaining_budget() -> float | None:
    """Seconds left of the running operation's `timeout` (None outside one).

    Backends size every wait on the store from it, so that connecting,
    retrying and reading all fit inside one budget.
    """
    if _deadline.at is None:
        return None
    return _deadline.at - time.monotonic()


@contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Run the block under a deadline of `seconds` (an outer budget rules)."""
    if _deadline.at is not None:
        yield
        return
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = None


class OutOfTime(Exception):
    """The running operation's `timeout` is spent (backends map it to
    `BackendUnavailable`)."""


# A failure this fast is a refused or reset connection (a restart broke it),
# not a silent server: worth one more try within the budget.
QUICK_FAILURE = 0.25


def failed_fast(started: float) -> bool:
    """Whether an attempt begun at `started` (monotonic) failed that fast."""
    return time.monotonic() - started < QUICK_FAILURE


def check_timeout(timeout: float, where: str) -> float:
    """`timeout` if it is a usable number of seconds, else a `ConfigError`."""
    if not (isinstance(timeout, int | float) and 0 < timeout <= 3600):
        raise ConfigError(
            f"{where} timeout = {timeout!r} must be a number of seconds "
            "above 0 and at most 3600; fix the value"
        )
    return float(timeout)
