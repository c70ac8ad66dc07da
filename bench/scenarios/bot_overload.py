"""The bot under more than it can do, and over a long run.

Overload: 16 clients send `/stormlock acquire|release` as fast as the bot
acks them (each sends its next command when the last ack is back, not when
the answer is), 20,000 commands in all. Every person must get an answer
within 3 s, a real one or "busy": the time to each answer is measured where
the person sees it (the ack body, or the reply through response_url).

Memory: the bot's RSS after warm-up (until its windows of recent work are
full: 150 s of load) and after 100,000 more answers in a closed loop of 16
people, each the median over the last 30 s.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scenarios.bot_latency import Client, fake_slack, signed_command
from bench.scenarios.bot_reply import Answers, Loop, _rss_mib
from stormlock.testing.backends import BackendConfig
from stormlock.testing.servers import Server
from stormlock.testing.slack import running_bot

WITHIN = 3.0


def flood(url: str, arrivals: Answers, clients: int, total: int) -> dict[str, Any]:
    """Send `total` commands from `clients` as fast as acks come back."""
    sent: dict[str, float] = {}
    acked: dict[str, tuple[float, str]] = {}
    lock = threading.Lock()
    counter = iter(range(total))
    ack_times: list[float] = []

    def client(number: int) -> None:
        client = Client(url)
        resource = f"flood-{number}"
        verbs = ("acquire", "release")
        n = 0
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                client.close()
                return
            token = f"f{index}"
            text = f"{verbs[n % 2]} {resource}" + (" 1h" if n % 2 == 0 else "")
            n += 1
            body, headers = signed_command(
                f"U{number:05d}", f"person{number}", text, f"{arrivals.base}/{token}"
            )
            start = time.perf_counter()
            response = client.post(body, headers)
            if response is None:
                continue
            done = time.perf_counter()
            with lock:
                sent[token] = start
                ack_times.append(done - start)
                if response[1]:
                    acked[token] = (done, response[1])

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        missing = [t for t in sent if t not in acked and t not in arrivals.when]
        if not missing:
            break
        time.sleep(0.2)
    waits: list[float] = []
    busy = real = unanswered = 0
    for token, began in sent.items():
        answer = acked.get(token) or arrivals.when.get(token)
        if answer is None:
            unanswered += 1
            continue
        waits.append(answer[0] - began)
        if "busy" in answer[1]:
            busy += 1
        else:
            real += 1
    return {
        "sent": len(sent),
        "wall": wall,
        "acks": ack_times,
        "waits": waits,
        "busy": busy,
        "real": real,
        "unanswered": unanswered,
    }


def _settled(samples: list[tuple[float, float]], over: float = 30.0) -> float:
    """The median RSS of the samples taken in the last `over` seconds."""
    last = samples[-1][0]
    return statistics.median(rss for at, rss in samples if last - at <= over)


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    total: int,
    answers: int,
    warm_up: float = 150.0,
) -> str:
    from bench.run import ms, percentile, table

    options = options_for("redis", running, "overload")
    if options is None:
        return "### The bot under overload\n\nRedis not installed: skipped."
    config = BackendConfig("redis", options)
    home = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    specs = [f"U{n:05d}:person{n}:person{n}@example.com" for n in range(64)]
    fake = contextlib.ExitStack()
    slack = fake.enter_context(fake_slack(specs))
    arrivals = Answers(keep_all=True)
    lines: list[str] = []
    try:
        with running_bot(slack, config, home, "", log_level="WARNING") as bot:
            Loop(bot.url, None).run(2, 1.0)  # warm up
            result = flood(bot.url + "/slack/events", arrivals, 16, total)
            waits = result["waits"]
            slow = sum(1 for w in waits if w > WITHIN)
            rows = [
                [
                    f"{result['sent']:,}",
                    f"{result['sent'] / result['wall']:.0f}",
                    ms(percentile(result["acks"], 99)),
                    ms(statistics.median(waits)) if waits else "-",
                    ms(percentile(waits, 99)) if waits else "-",
                    ms(max(waits)) if waits else "-",
                    f"{result['real']:,}",
                    f"{result['busy']:,}",
                    str(result["unanswered"]),
                    str(slow),
                ]
            ]
            lines.append(
                table(
                    [
                        "commands",
                        "sent/s",
                        "ack p99 ms",
                        "answer p50 ms",
                        "answer p99 ms",
                        "answer max ms",
                        "real answers",
                        "busy answers",
                        "unanswered",
                        f"answers after {WITHIN:g} s",
                    ],
                    rows,
                )
            )
            verdict = "met" if slow == 0 and result["unanswered"] == 0 else "MISSED"
            lines.append(
                f"\n- every person answered within {WITHIN:g} s, real or busy: {verdict}"
            )
            # Memory over a long run. Warm-up lasts until the bot's windows
            # of recent work are full (the ledger remembers 2 minutes of
            # sends, the reconcile pass reads the last minute of history);
            # each point is the median RSS over the last reconcile interval
            # (30 s), so a pass's passing peak is not compared with a trough.
            loop = Loop(bot.url, None)
            samples: list[tuple[float, float]] = []  # (monotonic, RSS MiB)
            done, started = 0, time.monotonic()
            while done < min(answers, 5_000) or time.monotonic() - started < warm_up:
                times, _failed, _rate = loop.run(16, 5.0)
                done += len(times)
                samples.append((time.monotonic(), _rss_mib(bot.process.pid)))
            warm = _settled(samples)
            start_count, samples = done, []
            while done - start_count < answers:
                times, _failed, _rate = loop.run(16, 5.0)
                done += len(times)
                samples.append((time.monotonic(), _rss_mib(bot.process.pid)))
            end = _settled(samples)
            peak = max(rss for _, rss in samples)
            verdict = "met" if end - warm <= 5 else "MISSED"
            lines.append(
                f"- memory: {warm:.1f} MiB after warm-up ({start_count:,} answers,"
                f" {warm_up:g} s or more), {end:.1f} MiB after {done - start_count:,}"
                f" more ({end - warm:+.1f} MiB; target within 5 MiB: {verdict});"
                f" highest sample {peak:.1f} MiB"
            )
    finally:
        arrivals.close()
        fake.close()
    return (
        "### The bot under overload, and over a long run (Redis)\n\n"
        + "\n".join(lines)
        + "\n\n16 clients send commands as fast as the bot acks them, each its next"
        " when its last ack is back; the answer is timed where the person sees it"
        " (the ack body, or the reply through response_url). A command the answer"
        " threads cannot start within `answer_budget` is answered 'busy, nothing"
        " changed' in its ack."
    )
