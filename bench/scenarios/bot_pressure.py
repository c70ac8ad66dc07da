"""Slack and API answers while the server is pressed, against the same
server left alone, in one run: 200 CI jobs waiting in line through the API
(`stormlock.testing.clients.wait_in_line`), and 100 connections sending
their requests 4 bytes every 250 ms (`trickle`). One person sends
`/stormlock current` and `GET /v1/whoami` in turn, one at a time; the time
is to the answer (the ack carries it)."""

from __future__ import annotations

import contextlib
import http.client
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.scenarios.bot_latency import Client, fake_slack, signed_command, spec
from stormlock.testing.backends import BackendConfig
from stormlock.testing.clients import slow_request, trickle, wait_in_line
from stormlock.testing.servers import Server
from stormlock.testing.slack import ALICE, BOB, running_bot

RESOURCES = 4  # lines hold 100: 200 waiters over 4 resources


def _answers(
    url: str, token: str, base: str, count: int
) -> tuple[list[float], list[float]]:
    """`count` Slack answers and `count` API answers, one at a time."""
    slack = Client(url + "/slack/events")
    parts = urllib.parse.urlsplit(url)
    api = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    said, answered = [], []
    try:
        for n in range(count):
            body, signed = signed_command(
                ALICE.id, ALICE.name, f"current r{n % 50}", f"{base}/respond/p{n}"
            )
            start = time.perf_counter()
            reply = slack.post(body, signed)
            said.append(time.perf_counter() - start)
            assert reply is not None and reply[0] == 200, reply
            assert f"*r{n % 50}*" in reply[1], reply
            start = time.perf_counter()
            api.request("GET", "/v1/whoami", headers=headers)
            api.getresponse().read()
            answered.append(time.perf_counter() - start)
    finally:
        slack.close()
        api.close()
    return said, answered


@contextlib.contextmanager
def _pressing(target: Callable[[threading.Event], None], count: int) -> Iterator[None]:
    stop = threading.Event()
    threads = [threading.Thread(target=target, args=(stop,)) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)  # every client under way before measuring
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    count: int,
    waiters: int,
    slow: int,
) -> str:
    from bench.run import ms, percentile, table

    name = "redis" if "redis" in running else "sqlite"
    options = options_for(name, running, "pressure")
    assert options is not None
    rows = []
    with (
        fake_slack([spec(ALICE), spec(BOB)]) as slack,
        running_bot(
            slack,
            BackendConfig(name, options),
            Path(tempfile.mkdtemp()),
            "warn_before = none",
            log_level="WARNING",
            workers=None,  # as it runs by default: one worker per usable core
        ) as bot,
    ):
        made = Client(bot.url + "/slack/events").post(
            *signed_command(
                ALICE.id, ALICE.name, "token create bench", f"{slack.base}/respond/t"
            )
        )
        assert made is not None
        token = "stl_" + made[1].split("stl_", 1)[1][:43]
        for n in range(RESOURCES):
            Client(bot.url + "/slack/events").post(
                *signed_command(
                    BOB.id,
                    BOB.name,
                    f"acquire line-{n} 1h",
                    f"{slack.base}/respond/b{n}",
                )
            )
        port = int(urllib.parse.urlsplit(bot.url).port or 0)
        seen: list[dict[str, object]] = []
        counter = iter(range(10**9))

        def waiter(stop: threading.Event) -> None:
            wait_in_line(
                bot.url, token, f"line-{next(counter) % RESOURCES}", stop, seen
            )

        def trickler(stop: threading.Event) -> None:
            kind = "headers" if next(counter) % 2 else "body"
            while not stop.is_set():  # a new one when the server closes one
                trickle(port, slow_request(kind, token), stop)

        conditions: list[tuple[str, Callable[[threading.Event], None] | None, int]] = [
            ("alone", None, 0),
            (f"{waiters} API clients waiting in line", waiter, waiters),
            (f"{slow} slow connections", trickler, slow),
        ]
        baseline: tuple[float, float] | None = None
        for label, target, clients in conditions:
            pressing = (
                _pressing(target, clients) if target else contextlib.nullcontext()
            )
            with pressing:
                said, answered = _answers(bot.url, token, slack.base, count)
            p99s = (percentile(said, 99), percentile(answered, 99))
            baseline = baseline or p99s
            rows.append(
                [
                    label,
                    ms(statistics.median(said)),
                    ms(p99s[0]),
                    f"{p99s[0] / baseline[0]:.1f}",
                    ms(statistics.median(answered)),
                    ms(p99s[1]),
                    f"{p99s[1] / baseline[1]:.1f}",
                    "met" if max(p99s) < 3.0 else "missed",
                ]
            )
    return (
        f"### Answers while the server is pressed ({count} Slack and {count} API answers a row, {name} store, the bot's default workers)\n\n"
        + table(
            [
                "meanwhile",
                "Slack p50 ms",
                "Slack p99 ms",
                "x alone",
                "API p50 ms",
                "API p99 ms",
                "x alone",
                "within 3 s",
            ],
            rows,
        )
        + "\n\n"
        + (__doc__ or "").replace("\n", " ")
    )
