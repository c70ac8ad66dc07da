"""The bot's acknowledgement latency: signed slash commands to `serve`."""

from __future__ import annotations

import contextlib
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from stormlock.testing.backends import BackendConfig
from stormlock.testing.localslack import LocalSlack, User
from stormlock.testing.servers import Server
from stormlock.testing.slack import ALICE, BOB, CAROL, DAVE, running_bot, sign

CONCURRENCY = (1, 16, 64)

MISS_NOTE = (
    "The ack carries the answer whenever the core is done within"
    " `answer_budget` (1.5 s), so this times the answer itself, not an empty"
    " ack. Each sending thread keeps one connection open (plain http.client,"
    " light on the shared CPU). The bot runs one worker here (`stormlock-bot"
    " serve` runs one per usable core by default). Where p99 misses at"
    " concurrency 16 it is `list`: its answer reads every active lease and"
    " every line (at most 500 here) and renders them, so 16 at once take turns"
    " at one worker's GIL (about 260 lists a second: 16 in flight over a 62 ms"
    " p50 in the run of 2026-12-07); acquire and release meet the target."
)


def spec(user: User) -> str:
    """A person as the fake Slack's command line takes them."""
    return f"{user.id}:{user.name}:{user.email or ''}"


@contextlib.contextmanager
def fake_slack(specs: list[str]) -> Iterator[LocalSlack]:
    """The fake Slack in its own process (sharing this process's GIL with
    the load generator would add its work to every measured latency): what
    `running_bot` needs of it (`token`, `api_url`), its `base` and `pid`."""
    fake = subprocess.Popen(
        [sys.executable, "-m", "stormlock.testing.localslack", *specs],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    api_url = fake.stdout.readline().strip()
    token = "xoxb-local"  # noqa: S105 - LocalSlack's fake token
    base = api_url.removesuffix("/api/")
    found = SimpleNamespace(token=token, api_url=api_url, base=base, pid=fake.pid)
    try:
        yield cast(LocalSlack, found)
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def signed_command(
    user_id: str, user_name: str, text: str, response_url: str
) -> tuple[str, dict[str, str]]:
    """A `/stormlock TEXT` request as Slack sends it: body and headers."""
    form = {
        "token": "x",
        "team_id": "T0TEAM",
        "channel_id": "C0OPS",
        "channel_name": "ops",
        "user_id": user_id,
        "user_name": user_name,
        "command": "/stormlock",
        "text": text,
        "response_url": response_url,
        "trigger_id": "t",
    }
    body = urllib.parse.urlencode(form)
    return body, {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}


class Client:
    """One simulated person's keep-alive connection to a bot. Plain
    http.client: requests costs the generator about 2 ms of CPU a call and
    http.client about 0.5, and that CPU is taken from the bots under test on
    the same 2 cores."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._path = parts.path or "/"
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """Status and body; None if the exchange failed."""
        for attempt in range(2):
            reused = self._connection is not None
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            try:
                self._connection.request("POST", self._path, body, headers)
                response = self._connection.getresponse()
                text = response.read().decode()
            except (http.client.RemoteDisconnected, BrokenPipeError):
                self.close()
                # The server closed an idle kept-alive connection before
                # reading this request: send it once more on a new one.
                if not reused or attempt:
                    return None
                continue
            except (OSError, http.client.HTTPException):
                self.close()
                return None
            if response.will_close:
                self.close()
            return response.status, text
        return None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _with_children(pid: int) -> list[int]:
    """A process and its children (a gunicorn master and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return (
        [pid, *(int(p) for p in children.read_text().split())]
        if children.exists()
        else [pid]
    )


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of a process and its children so far."""
    total = 0.0
    for each in _with_children(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def process_memory_kb(pid: int, field: str = "VmHWM") -> int:
    """A /proc status field (VmHWM: peak RSS, VmRSS: now) of a process and
    its children (a gunicorn master and its workers), in KiB."""
    total = 0
    for each in _with_children(pid):
        status = Path(f"/proc/{each}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
    return total


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    requests_per_level: int,
) -> str:
    from bench.run import ms, percentile, table

    options = options_for("redis", running, "bot")
    if options is None:
        return "### Bot acknowledgement latency\n\nRedis is not installed: skipped."
    users = [ALICE, BOB, CAROL, DAVE]
    rows = []
    peak = 0
    with (
        fake_slack([spec(u) for u in users]) as slack,
        running_bot(
            slack,
            BackendConfig("redis", options),
            Path(tempfile.mkdtemp()),
            "warn_before = none",
            log_level="WARNING",
        ) as bot,
    ):
        url = bot.url + "/slack/events"
        counter = iter(range(10**9))
        lock = threading.Lock()
        local = threading.local()  # each sending thread's keep-alive Client

        def send(kind: str) -> tuple[float, bool]:
            with lock:
                n = next(counter)
            user = users[n % len(users)]
            text = {
                "acquire": f"acquire r{n % 500} 1h",
                "release": f"release r{n % 500}",
                "list": "list",
            }[kind]
            body, headers = signed_command(
                user.id, user.name, text, f"{slack.base}/respond/bench-{n}"
            )
            if not hasattr(local, "client"):
                local.client = Client(url)
            start = time.perf_counter()
            response = local.client.post(body, headers)
            took = time.perf_counter() - start
            return took, response is not None and response[0] == 200

        for concurrency in CONCURRENCY:
            for kind in ("acquire", "release", "list"):
                with ThreadPoolExecutor(concurrency) as pool:
                    results = list(pool.map(send, [kind] * requests_per_level))
                times = [t for t, _ in results]
                errors = sum(1 for _, ok in results if not ok)
                peak = max(peak, process_memory_kb(bot.process.pid))
                p99 = percentile(times, 99)
                verdict = ""
                if concurrency == 16:
                    verdict = "meets" if p99 < 0.050 else "misses"
                if concurrency == 64:
                    verdict = "meets" if errors == 0 else "misses"
                rows.append(
                    [
                        str(concurrency),
                        kind,
                        ms(statistics.median(times)),
                        ms(p99),
                        ms(max(times)),
                        str(errors),
                        verdict,
                    ]
                )
    return (
        f"### Bot acknowledgement latency ({requests_per_level} signed requests per row, Redis backend)\n\n"
        + table(
            [
                "concurrency",
                "command",
                "p50 ms",
                "p99 ms",
                "max ms",
                "errors",
                "target",
            ],
            rows,
        )
        + f"\n\nTime to the HTTP response (the ack). Peak RSS of the bot (gunicorn master and worker): "
        f"{peak / 1024:.0f} MiB. Targets: p99 < 50 ms at concurrency 16; no errors at 64.\n\n"
        + MISS_NOTE
    )
