"""Prometheus metrics of the bot (served on /metrics in HTTP mode)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from ..errors import BackendUnavailable
from .parsing import USAGE

REQUESTS = Counter(
    "stormlock_requests_total",
    "Slash commands and button presses handled, by command and outcome.",
    ["command", "outcome"],
)
BACKEND_LATENCY = Histogram(
    "stormlock_backend_operation_seconds",
    "Latency of lease backend operations.",
    ["backend", "operation"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
    ),
)
SLACK_ERRORS = Counter(
    "stormlock_slack_api_errors_total",
    "Slack Web API calls that failed, by method and error.",
    ["method", "error"],
)
NOTIFICATIONS = Counter(
    "stormlock_notifications_sent_total",
    "Messages the scheduler sent: warnings, expiry notices, wait-list DMs, turns.",
    ["kind"],
)

OUTBOX_WAITING = Gauge(
    "stormlock_outbox_waiting",
    "What the outbox holds unsent: queued sends, and announcements waiting "
    "for their channel's turn.",
    multiprocess_mode="livesum",  # with several workers: theirs added up
)

RECONCILE_RUNS = Counter(
    "stormlock_reconcile_runs_total",
    "Reconcile passes completed (warnings, expiry notices, wait lists, boards).",
)

_TIMED = frozenset(
    {
        "acquire_lease",
        "acquire_unless",
        "renew_lease",
        "release_lease",
        "release_and_look",
        "current",
        "current_many",
        "is_current",
        "list_leases",
        "list_expiring",
        "list_prefix",
        "history",
    }
)


# After the store fails to answer, the bot fails at once for this long
# instead of making every person wait out the whole timeout in turn.
COOL_DOWN = 2.0


class CoolingDown(BackendUnavailable):
    """Refused without asking the store (it failed just before): so nothing
    can have changed."""


class TimedBackend:
    """A backend whose operations are timed into BACKEND_LATENCY, and that
    fails fast for `COOL_DOWN` seconds after the store failed to answer."""

    def __init__(self, name: str, backend: Any) -> None:
        self._name = name
        self.wrapped = backend
        """The backend itself (what it is, for isinstance checks)."""
        self._failing_until = 0.0
        self._failure: BackendUnavailable | None = None

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self.wrapped, attribute)
        if attribute not in _TIMED:
            return value
        histogram = BACKEND_LATENCY.labels(self._name, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            failure = self._failure
            if failure is not None and time.monotonic() < self._failing_until:
                raise CoolingDown(failure.message)
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            except BackendUnavailable as exc:
                self._failure = exc
                self._failing_until = time.monotonic() + COOL_DOWN
                raise
            finally:
                histogram.observe(time.perf_counter() - start)

        self.__dict__[attribute] = timed  # found there next time, built once
        return timed


def count_request(command: str) -> Callable[[str], None]:
    """Returns a function recording the outcome of one request. The label is
    one of our command names or `other`, never the user's text (each distinct
    value would be a new series, and could hold a lease id)."""
    label = command if command in USAGE else "other"

    def done(outcome: str) -> None:
        REQUESTS.labels(label, outcome).inc()

    return done
