"""The HTTP API's cost: the same operations through the `http` backend (a CI
job's path: HTTP to `stormlock serve`, which calls Redis) and straight on
Redis (a client with the store's credentials), in the same run."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from stormlock import Backend, LockHeldException
from stormlock.backends import build_backend
from stormlock.testing.servers import Server, run_api

OPS = ("acquire", "renew", "current", "release")
CLIENTS = (16, 64)


def _latencies(backend: Backend, n: int, tag: str) -> dict[str, list[float]]:
    ttl = timedelta(minutes=10)
    samples: dict[str, list[float]] = {op: [] for op in OPS}
    warm = backend.acquire_lease(f"{tag}-warm", "bench", ttl)
    backend.release_lease(f"{tag}-warm", warm.id)
    for i in range(n):
        resource = f"{tag}-{i}"
        start = time.perf_counter()
        lease = backend.acquire_lease(resource, "bench", ttl)
        samples["acquire"].append(time.perf_counter() - start)
        start = time.perf_counter()
        backend.renew_lease(resource, lease.id, ttl)
        samples["renew"].append(time.perf_counter() - start)
        start = time.perf_counter()
        backend.current(resource)
        samples["current"].append(time.perf_counter() - start)
        start = time.perf_counter()
        backend.release_lease(resource, lease.id)
        samples["release"].append(time.perf_counter() - start)
    return samples


def _throughput(
    make: Callable[[], Backend], seconds: float, tag: str, clients: int
) -> float:
    """Acquire-and-release cycles a second, `clients` on their own resources."""
    done = [0] * clients
    stop = threading.Event()

    def worker(index: int) -> None:
        backend = make()
        ttl = timedelta(minutes=5)
        try:
            while not stop.is_set():
                try:
                    lease = backend.acquire_lease(f"{tag}-t{index}", "bench", ttl)
                except LockHeldException:
                    continue
                backend.release_lease(lease.resource, lease.id)
                done[index] += 1
        finally:
            backend.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    n: int,
    seconds: float,
    repeats: int = 10,
) -> str:
    from bench.run import ms, percentile, table

    options = options_for("redis", running, "api")
    if options is None:
        return "### The HTTP API\n\nRedis is not installed: not measured."
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    with run_api(workdir, store=("redis", options)) as api:
        url = api.url
        from stormlock.tokens import Tokens

        tokens = Tokens(build_backend("redis", options))
        secret = tokens.create("bench", "ci-bench")[0]
        tokens.backend.close()
        os.environ["STORMLOCK_TOKEN"] = secret
        try:

            def http() -> Backend:
                return build_backend("http", {"url": url})

            def direct() -> Backend:
                return build_backend("redis", options)

            paths = {"redis, direct": direct, "http backend -> API -> redis": http}
            rows = []
            results: dict[str, dict[str, list[float]]] = {}
            for label, make in paths.items():
                backend = make()
                try:
                    results[label] = _latencies(backend, n, label.split()[0])
                finally:
                    backend.close()
            for op in OPS:
                direct_samples = results["redis, direct"][op]
                base50 = statistics.median(direct_samples)
                base99 = percentile(direct_samples, 99)
                for label in paths:
                    samples = results[label][op]
                    p50, p99 = statistics.median(samples), percentile(samples, 99)
                    rows.append(
                        [
                            op,
                            label,
                            ms(p50),
                            ms(p99),
                            f"{p50 / base50:.1f}",
                            f"{p99 / base99:.1f}",
                        ]
                    )
            rates = {
                (label, clients): _throughput(
                    make, seconds, f"tp{clients}-{label.split()[0]}", clients
                )
                for clients in CLIENTS
                for label, make in paths.items()
            }
            startup = _startup(url, workdir, repeats)
        finally:
            del os.environ["STORMLOCK_TOKEN"]
    rate_rows = [
        [
            str(clients),
            label,
            f"{rate:.0f}",
            f"{rate / rates[('redis, direct', clients)]:.2f}",
        ]
        for (label, clients), rate in rates.items()
    ]
    return (
        f"### The HTTP API ({n} of each operation, one client; then 16 and 64 "
        f"clients for {seconds:g} s each)\n\n"
        + table(
            ["operation", "path", "p50 ms", "p99 ms", "p50 x direct", "p99 x direct"],
            rows,
        )
        + "\n\n"
        + table(["clients", "path", "acquire+release cycles/s", "x direct"], rate_rows)
        + "\n\n"
        + table(["command", "wall ms (median)", "x floor"], startup)
        + "\n\n"
        + API_NOTE
    )


def _startup(url: str, workdir: Path, repeats: int) -> list[list[str]]:
    """`stormlock current` on the http backend against a floor: Python plus
    one HTTP request with the same client library (urllib3)."""
    import subprocess
    import sys

    from bench.run import ms

    config = workdir / "cli.cfg"
    config.write_text(f"[default]\nbackend = http\n[backend.http]\nurl = {url}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    stormlock = str(Path(sys.executable).parent / "stormlock")
    floor_code = (
        f"import urllib3; urllib3.PoolManager().request('GET', {url + '/healthz'!r})"
    )

    def wall(command: list[str]) -> float:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(command, env=env, capture_output=True, check=False)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    floor = wall([sys.executable, "-c", floor_code])
    took = wall([stormlock, "-c", str(config), "current", "nothing-here"])
    return [
        ["`python -c 'import urllib3; one GET'` (floor)", ms(floor), "1.00"],
        ["`stormlock current` on the http backend", ms(took), f"{took / floor:.2f}"],
    ]


API_NOTE = (
    "`stormlock serve` runs as users run it: gunicorn, one worker, 16 threads, "
    "on the same 2 cores as the clients. Each API call is one HTTP round trip "
    "plus the server's work: the token check (one store read), then the same "
    "store calls as a direct client (an acquire with a request id adds one "
    "write, its replay record). A CI job pays this once per "
    "operation; `run` renews at a third of the TTL. With many clients one "
    "worker is CPU-bound (Flask, pydantic and the token check per request, on "
    "cores the clients share): `stormlock serve --workers N` adds processes."
)
