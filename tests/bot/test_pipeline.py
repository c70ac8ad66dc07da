"""The pipeline through the real endpoint: the answer first, then the outbox,
with Slack misbehaving on purpose (no answer, 500s, 429s)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from stormlock.records import Records
from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import Call, LocalSlack
from stormlock.testing.slack import (
    ALICE,
    BOB,
    BotServer,
    lease_id_in,
    start_bot,
    text_of,
)
from tests.support import wait_until

FAST = "warn_before = 2s\nreconcile_interval = 200ms"


def text_of_all(calls: list[Call]) -> str:
    return "".join(text_of(call) for call in calls)


def announcements(slack: LocalSlack, words: str) -> list[Call]:
    """Channel posts Slack accepted (not the ones it failed on purpose)."""
    return [
        c
        for c in slack.of("chat.postMessage")
        if c.payload["channel"] == "C0OPS"
        and "failed" not in c.context
        and words in text_of(c)
    ]


def dms(slack: LocalSlack, user_id: str, words: str) -> list[Call]:
    return [
        c
        for c in slack.of("chat.postMessage")
        if c.payload["channel"] == "D" + user_id
        and "failed" not in c.context
        and words in text_of(c)
    ]


def backend_calls(bot: BotServer, operation: str) -> float:
    """How often the bot called `operation` on its backend (from /metrics)."""
    metrics = requests.get(bot.url + "/metrics", timeout=10).text
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("stormlock_backend_operation_seconds_count{") and (
            f'operation="{operation}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def sqlite_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    """Slack's faults do not depend on the store: one store is enough."""
    return BackendConfig("sqlite", isolated_options("sqlite", request, tmp_path))


@pytest.fixture
def fast_bot(
    slack: LocalSlack, sqlite_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    yield from start_bot(slack, sqlite_config, tmp_path, FAST)


def test_the_answer_never_waits_for_the_channel(bot: BotServer) -> None:
    # Slack holds every chat.postMessage unanswered: announcements stall.
    go = bot.slack.hold("chat.postMessage")
    answer = bot.reply(ALICE, "acquire db 1h")
    assert lease_id_in(answer)
    # Others' answers do not queue behind the stalled announcements either.
    for user, resource in ((BOB, "cache"), (ALICE, "queue"), (BOB, "web")):
        assert "You hold" in text_of(bot.reply(user, f"acquire {resource} 1h"))
    assert announcements(bot.slack, "took") == [], "they were still held"
    go.set()
    # The first post, then the three that came meanwhile in one (Slack's pace).
    bot.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "*web*" in text_of(c)
    )
    shown = text_of_all(announcements(bot.slack, "took"))
    assert all(shown.count(f"*{r}*") == 1 for r in ("db", "cache", "queue", "web"))


def test_a_long_retry_after_is_honoured_without_blocking_anyone(
    fast_bot: BotServer,
) -> None:
    slack = fast_bot.slack
    slack.fail_next(
        "chat.postMessage",
        429,
        {"Retry-After": "5"},
        {"ok": False, "error": "ratelimited"},
    )
    fast_bot.reply(ALICE, "acquire db 1h")
    # Meanwhile answers and other announcements go on.
    assert "You hold" in text_of(fast_bot.reply(BOB, "acquire cache 1h"))
    slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "took *cache*" in text_of(c)
    )
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and "failed" not in c.context
            and "took *db*" in text_of(c)
        ),
        timeout=30,
    )
    limited = slack.of("chat.postMessage")[0]
    assert limited.context.get("failed") == "429"
    sent = [c for c in slack.of("chat.postMessage") if "took *db*" in text_of(c)]
    assert [c.context.get("failed") for c in sent] == ["429", None]
    assert slack.calls.index(sent[1]) > slack.calls.index(
        announcements(slack, "took *cache*")[0]
    ), "it waited as asked, while the other went out"


def test_actions_never_list_every_lease_or_redraw_the_home(bot: BotServer) -> None:
    backend = bot.config.create()
    for n in range(50):
        backend.acquire_lease(f"other-{n}", "someone@example.com", timedelta(hours=1))
    listed = backend_calls(bot, "list_leases")
    bot.reply(ALICE, "acquire db 1h")
    bot.reply(ALICE, "renew db 2h")
    bot.reply(ALICE, "current db")
    bot.reply(ALICE, "release db")
    bot.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "released" in text_of(c)
    )
    assert backend_calls(bot, "list_leases") == listed
    assert bot.slack.of("views.publish") == []
    # The Home is drawn when opened.
    bot.event({"type": "app_home_opened", "user": ALICE.id, "tab": "home"})
    [home] = bot.slack.wait_for(lambda c: c.method == "views.publish")
    assert "other-1" in text_of(home)


def test_a_button_acquire_remembers_its_channel_like_the_command(
    bot: BotServer,
) -> None:
    value = json.dumps({"resource": "db"})
    bot.press(ALICE, "lease_acquire", value)
    answer = bot.slack.wait_for(
        lambda c: c.method == "response_url" and "You hold" in text_of(c)
    )[0]
    assert answer.payload.get("replace_original") is True
    backend = bot.config.create()
    lease = backend.current("db")
    assert lease is not None
    # With the change itself, for the expiry notice and for recovery.
    [taken] = backend.history("db")
    assert (taken.fence, taken.channel) == (lease.fence, "C0OPS")


def test_a_failed_wait_list_dm_is_retried_and_the_entry_kept_until_sent(
    fast_bot: BotServer,
) -> None:
    slack = fast_bot.slack
    fast_bot.reply(ALICE, "acquire db 1h")
    assert "DM you" in text_of(fast_bot.reply(BOB, "notify db"))
    for _ in range(2):
        slack.fail_next("conversations.open", 500, {}, {"ok": False, "error": "x"})
    fast_bot.reply(ALICE, "release db")
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload["channel"] == "D" + BOB.id
            and "is free now" in text_of(c)
        ),
        timeout=30,
    )
    records = Records(fast_bot.config.create())
    wait_until(lambda: records.list("wait/") == [])
    fast_bot.settle()
    assert len(dms(slack, BOB.id, "is free now")) == 1
    failed = [c for c in slack.of("conversations.open") if "failed" in c.context]
    assert len(failed) == 2, "the failures were on the wait-list DM"


def test_a_failed_expiry_dm_and_channel_post_are_each_retried_once_sent(
    fast_bot: BotServer,
) -> None:
    slack = fast_bot.slack
    fast_bot.reply(ALICE, "acquire db 4s")
    slack.wait_for(lambda c: c.method == "chat.postMessage" and "expires" in text_of(c))
    # The expiry's DM and its channel post both fail at first.
    slack.fail_next("conversations.open", 500, {}, {"ok": False, "error": "x"})
    slack.fail_next("chat.postMessage", 500, {}, {"ok": False, "error": "x"})
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and "failed" not in c.context
            and c.payload["channel"] == "D" + ALICE.id
            and "expired" in text_of(c)
        ),
        timeout=30,
    )
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and "failed" not in c.context
            and c.payload["channel"] == "C0OPS"
            and "expired" in text_of(c)
        ),
        timeout=30,
    )
    fast_bot.settle()
    assert len(dms(slack, ALICE.id, "expired")) == 1
    assert len(announcements(slack, "expired")) == 1
    assert len(dms(slack, ALICE.id, "expires")) == 1


def test_a_retry_after_longer_than_the_claim_never_sends_twice(
    slack: LocalSlack, sqlite_config: BackendConfig, tmp_path: Path
) -> None:
    section = FAST + "\nclaim_ttl = 1s"
    for bot in start_bot(slack, sqlite_config, tmp_path, section):
        # The warning's DM is rate-limited far past the claim's life.
        slack.fail_next(
            "chat.postMessage",
            429,
            {"Retry-After": "30"},
            {"ok": False, "error": "ratelimited"},
        )
        backend = sqlite_config.create()
        backend.acquire_lease("db", ALICE.email or "", timedelta(seconds=5))
        slack.wait_for(
            lambda c: (
                c.method == "chat.postMessage"
                and "failed" not in c.context
                and c.payload["channel"] == "D" + ALICE.id
                and "expired" in text_of(c)
            ),
            timeout=30,
        )
        bot.settle()
        warnings = dms(slack, ALICE.id, "expires")
        [expired] = dms(slack, ALICE.id, "expired")
        assert len(warnings) == 1
        assert all(
            slack.calls.index(w) < slack.calls.index(expired) for w in warnings
        ), "no warning after the expiry notice"
        assert slack.of("chat.postMessage")[0].context.get("failed") == "429"


@pytest.fixture
def late_bot(
    slack: LocalSlack, sqlite_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    """A bot that answers through response_url only (no answer in the ack)."""
    yield from start_bot(slack, sqlite_config, tmp_path, "answer_budget = none")


def test_an_answer_slack_fails_to_take_is_sent_again(late_bot: BotServer) -> None:
    slack = late_bot.slack
    for _ in range(3):  # past the webhook client's own retry
        slack.fail_next("response_url", 500, {}, {})
    late_bot.command(ALICE, "acquire db 1h")
    [answer] = slack.wait_for(
        lambda c: (
            c.method == "response_url"
            and "failed" not in c.context
            and "You hold" in text_of(c)
        )
    )
    assert lease_id_in(answer)
    tries = [c for c in slack.of("response_url") if "You hold" in text_of(c)]
    assert [c.context.get("failed") for c in tries] == ["500", "500", "500", None]


def test_a_shutdown_sends_what_the_outbox_still_holds(
    slack: LocalSlack, sqlite_config: BackendConfig, tmp_path: Path
) -> None:
    slack.fail_next(
        "chat.postMessage", 429, {"Retry-After": "60"}, {"ok": False, "error": "x"}
    )
    for bot in start_bot(slack, sqlite_config, tmp_path):
        bot.reply(ALICE, "acquire db 1h")
        slack.wait_for(lambda c: c.context.get("failed") == "429")
        # The retry waits a minute; the bot is stopped (SIGTERM) long before.
    assert len(announcements(slack, "took *db*")) == 1, "sent on the way out"


def test_announcements_to_one_channel_come_at_slacks_pace(bot: BotServer) -> None:
    """50 acquires in one channel within about 2 s: a few posts, not 50 into
    Slack's limit of about one a second, and every change in them once."""
    names = [f"env-{n:02d}" for n in range(50)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: bot.command(ALICE, f"acquire {name} 1h"), names))
    assert time.monotonic() - started < 2.5, "the burst itself took too long"

    def posts() -> list[Call]:
        return [
            c
            for c in bot.slack.of("chat.postMessage")
            if c.payload.get("channel") == "C0OPS" and "took" in text_of(c)
        ]

    wait_until(
        lambda: all(f"*{n}*" in json.dumps([p.payload for p in posts()]) for n in names)
    )
    sent = posts()
    assert len(sent) <= 5, f"{len(sent)} posts for one burst"
    shown = "".join(json.dumps(p.payload["blocks"]) for p in sent)
    assert all(shown.count(f"*{name}*") == 1 for name in names), "each change once"
    assert all(p.problems == [] for p in sent)


def test_a_slow_users_info_holds_up_only_the_newcomer_and_the_overflow_is_told_busy(
    fast_bot: BotServer,
) -> None:
    slack = fast_bot.slack
    assert "You hold" in text_of(fast_bot.reply(ALICE, "acquire db 1h"))
    go = slack.hold("users.info")  # Slack takes its time telling who Bob is
    with ThreadPoolExecutor(5) as pool:
        acks = [
            pool.submit(fast_bot.command, BOB, f"acquire job-{n} 1h") for n in range(5)
        ]
        slack.wait_in_flight("users.info", 4)
        # Alice is known: her answer still comes at once, in the ack.
        mine = fast_bot.command(ALICE, "acquire cache 1h")
        assert "You hold" in mine.text
        bodies = [ack.result().text for ack in acks]
    # The fifth could not even start within the answer budget: it was not
    # done, and Bob was told so in its ack instead of much later.
    busy = [body for body in bodies if "busy" in body]
    assert len(busy) == 1 and "nothing changed" in busy[0]
    assert bodies.count("") == 4, "the others answer when Slack does"
    go.set()
    slack.wait_for(
        lambda c: c.method == "response_url" and "You hold" in text_of(c), count=4
    )
    backend = fast_bot.config.create()
    held = [n for n in range(5) if backend.current(f"job-{n}") is not None]
    assert len(held) == 4
