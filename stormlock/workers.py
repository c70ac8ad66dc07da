"""How many gunicorn workers `stormlock-bot serve` runs, and how their
metrics add up (no third-party imports: gunicorn reads WEB_CONCURRENCY when
imported, and prometheus_client its directory).

Python runs one thread at a time per process, so one worker uses one core at
most; the bot runs one per usable core (up to `MAX_WORKERS`). Each worker is
a whole bot, like a replica: its messages are claimed in the store, so two
never send the same one. Their Prometheus counts are kept in files under one
directory (prometheus_client's multiprocess mode) that `/metrics` adds up, so
a scrape sees every worker, not whichever one answered it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError

MAX_WORKERS = 4
"""Each worker runs its own reconcile pass and keeps its own caches: past a
few, more workers mostly add load on the store."""
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity, and a cgroup v2 CPU
    limit (a Kubernetes `limits.cpu`), rounded up."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the affinity is the bound
    return count


def default_workers(fallback: int | None = None) -> int:
    """`WEB_CONCURRENCY` if set (`ConfigError` if it is not a count), else
    `fallback`, else one per usable core, up to 4."""
    given = os.environ.get("WEB_CONCURRENCY", "").strip()
    if given:
        try:
            return worker_count(given, "WEB_CONCURRENCY")
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{exc}; fix or unset it") from None
    return fallback or min(MAX_WORKERS, usable_cpus())


def worker_count(text: str, name: str = "--workers") -> int:
    """A worker count from the command line or the environment."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"{name} must be a whole number of worker processes, 1 or more "
            f"(got {text!r})"
        )
    return count


def share_metrics(workers: int) -> dict[str, Callable[..., None]]:
    """With several workers, point prometheus_client at one directory of
    counts for all of them; the gunicorn hooks that keep it right (a dead
    worker's gauges dropped, the directory removed at exit)."""
    if workers < 2:
        return {}
    import shutil
    import tempfile

    given = os.environ.get(METRICS_DIR)
    try:
        if given:
            path = Path(given)
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):  # a previous run's, as asked
                stale.unlink()
        else:
            path = Path(tempfile.mkdtemp(prefix="stormlock-metrics-"))
    except OSError as exc:
        raise ConfigError(
            f"{workers} workers need a writable directory for their metrics "
            f"({exc.strerror}: {exc.filename or tempfile.gettempdir()}); make "
            f"$TMPDIR writable, set {METRICS_DIR}, or run --workers 1"
        ) from None
    os.environ[METRICS_DIR] = str(path)

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(path))  # type: ignore[no-untyped-call]

    def on_exit(_server: Any) -> None:
        if not given:
            shutil.rmtree(path, ignore_errors=True)

    return {"child_exit": child_exit, "on_exit": on_exit}
