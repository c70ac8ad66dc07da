"""Warnings, expiry notices, wait lists and boards, with real backends, the
bot over HTTP, and seconds-long TTLs. Synchronised on recorded Slack calls."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stormlock.records import Records
from stormlock.testing.backends import BackendConfig
from stormlock.testing.localslack import Call, LocalSlack
from stormlock.testing.slack import (
    ALICE,
    BOB,
    CAROL,
    BotServer,
    running_bot,
    start_bot,
    text_of,
)
from stormlock.times import utcnow
from tests.support import wait_until

FAST = "warn_before = 2s\nreconcile_interval = 200ms"
INTERVAL = 0.2


def dms_to(slack: LocalSlack, user_id: str, words: str) -> list[Call]:
    return [
        c
        for c in slack.of("chat.postMessage")
        if c.payload["channel"] == "D" + user_id and words in text_of(c)
    ]


def wait_dm(slack: LocalSlack, user_id: str, words: str, count: int = 1) -> list[Call]:
    return slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload["channel"] == "D" + user_id
            and words in text_of(c)
        ),
        count=count,
        timeout=30,
    )


def button(call: Call, label_start: str) -> dict[str, Any]:
    for block in call.payload["blocks"]:
        for element in block.get("elements", []):
            if element.get("type") == "button" and element["text"]["text"].startswith(
                label_start
            ):
                return dict(element)
    raise AssertionError(f"no {label_start!r} button in {text_of(call)}")


@pytest.fixture
def fast_bot(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    yield from start_bot(slack, bot_config, tmp_path, FAST)


def test_warning_arrives_once_before_expiry_with_working_buttons(
    fast_bot: BotServer,
) -> None:
    fast_bot.reply(ALICE, "acquire db 4s")
    [warning] = wait_dm(fast_bot.slack, ALICE.id, "expires")
    backend = fast_bot.config.create()
    assert backend.current("db") is not None, "warned before expiry"
    assert warning.problems == []
    renew = button(warning, "Renew")
    assert button(warning, "Release")
    before = backend.current("db")
    assert before is not None and before.expires is not None
    fast_bot.press(ALICE, renew["action_id"], renew["value"])
    updated = fast_bot.slack.wait_for(
        lambda c: (
            c.method == "response_url" and c.payload.get("replace_original") is True
        )
    )[0]
    assert "You hold" in text_of(updated)
    lease = backend.current("db")
    assert lease is not None and lease.expires is not None
    # The first Renew is the lease's own length (4 s), not the default day.
    assert before.expires < lease.expires <= utcnow() + timedelta(seconds=5)
    fast_bot.settle()
    assert len(dms_to(fast_bot.slack, ALICE.id, "expires")) == 1


@pytest.mark.parametrize("bot_config", ["redis"], indirect=True)
def test_renewing_plans_the_next_warning_from_the_new_expiry(
    fast_bot: BotServer,
) -> None:
    fast_bot.reply(ALICE, "acquire db 3s")
    wait_dm(fast_bot.slack, ALICE.id, "expires")
    fast_bot.reply(ALICE, "renew db 4s")
    wait_dm(fast_bot.slack, ALICE.id, "expires", count=2)
    wait_dm(fast_bot.slack, ALICE.id, "expired")
    fast_bot.settle()
    assert len(dms_to(fast_bot.slack, ALICE.id, "expires")) == 2


def test_expiry_is_told_to_the_holder_and_the_channel(fast_bot: BotServer) -> None:
    fast_bot.reply(ALICE, "acquire db 3s")
    wait_dm(fast_bot.slack, ALICE.id, "expired")
    post = fast_bot.slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload["channel"] == "C0OPS"
            and "expired" in text_of(c)
        ),
        timeout=30,
    )[0]
    assert f"lock held by <@{ALICE.id}> expired" in text_of(post)
    fast_bot.settle()
    assert len(dms_to(fast_bot.slack, ALICE.id, "expired")) == 1


def test_cli_lease_is_warned_even_if_the_bot_starts_later(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    backend = bot_config.create()
    backend.acquire_lease("db", ALICE.email or "", timedelta(seconds=5), "from the CLI")
    backend.acquire_lease("nobody", "ghost@example.com", timedelta(seconds=4))
    for bot in start_bot(slack, bot_config, tmp_path, FAST):
        [warning] = wait_dm(slack, ALICE.id, "expires")
        assert "db" in text_of(warning)
        wait_dm(slack, ALICE.id, "expired")
        logs = bot.logs()
    told = logs.count("no Slack user for principal 'ghost@example.com'")
    assert told == 1, "an unknown principal is logged once, not every run"


# The claim protocol does not depend on the store: Redis, where replicas
# really are separate clients of one server, is enough.
@pytest.mark.parametrize("bot_config", ["redis"], indirect=True)
def test_two_replicas_send_each_message_exactly_once(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    with (
        running_bot(slack, bot_config, tmp_path, FAST, name="replica-1") as one,
        running_bot(slack, bot_config, tmp_path, FAST, name="replica-2") as two,
    ):
        backend = bot_config.create()
        backend.acquire_lease("db", ALICE.email or "", timedelta(seconds=4))
        backend.acquire_lease("cache", BOB.email or "", timedelta(seconds=3))
        wait_dm(slack, ALICE.id, "expired")
        wait_dm(slack, BOB.id, "expired")
        one.settle(15)
        two.settle(15)
    for user in (ALICE, BOB):
        assert len(dms_to(slack, user.id, "expires")) == 1
        assert len(dms_to(slack, user.id, "expired")) == 1


def test_wait_list_notifies_in_order_then_clears(fast_bot: BotServer) -> None:
    fast_bot.reply(ALICE, "acquire db 1h")
    held = fast_bot.reply(BOB, "acquire db")
    notify = button(held, "Notify")
    fast_bot.press(BOB, notify["action_id"], notify["value"])
    fast_bot.slack.wait_for(
        lambda c: c.method == "response_url" and "DM you" in text_of(c)
    )
    assert "DM you" in text_of(fast_bot.reply(CAROL, "notify db"))
    fast_bot.reply(ALICE, "release db")
    bob_dm = wait_dm(fast_bot.slack, BOB.id, "is free now")[0]
    carol_dm = wait_dm(fast_bot.slack, CAROL.id, "is free now")[0]
    calls = fast_bot.slack.calls
    assert calls.index(bob_dm) < calls.index(carol_dm), "in the order they asked"
    records = Records(fast_bot.config.create())
    # Each entry goes once its DM went out.
    wait_until(lambda: records.list("wait/") == [])
    acquire = button(bob_dm, "Acquire")
    fast_bot.press(BOB, acquire["action_id"], acquire["value"])
    fast_bot.slack.wait_for(
        lambda c: (
            c.method == "response_url"
            and c.context["user"] == BOB.id
            and "You hold" in text_of(c)
        )
    )
    lease = fast_bot.config.create().current("db")
    assert lease is not None and lease.principal == BOB.email
    fast_bot.settle()
    assert len(dms_to(fast_bot.slack, BOB.id, "is free now")) == 1


def test_wait_list_cancel(fast_bot: BotServer) -> None:
    fast_bot.reply(ALICE, "acquire db 1h")
    fast_bot.reply(BOB, "notify db")
    assert "off the wait list" in text_of(fast_bot.reply(BOB, "notify db --cancel"))
    fast_bot.reply(ALICE, "release db")
    fast_bot.settle()
    assert dms_to(fast_bot.slack, BOB.id, "is free now") == []


def test_board_stays_true_through_every_kind_of_change(fast_bot: BotServer) -> None:
    slack = fast_bot.slack
    fast_bot.command(ALICE, "board")
    board = slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "held right now" in text_of(c)
    )[0]
    assert board.problems == []

    def updated_with(words: str, absent: str | None = None) -> Call:
        return slack.wait_for(
            lambda c: (
                c.method == "chat.update"
                and words in text_of(c)
                and (absent is None or absent not in text_of(c))
            ),
            timeout=30,
        )[-1]

    fast_bot.reply(ALICE, "acquire db 1h migrating")
    update = updated_with("migrating")
    assert update.payload["channel"] == "C0OPS" and update.problems == []
    assert not any(c in text_of(update) for c in ("lease id",))
    fast_bot.reply(ALICE, "renew db 5h")
    before = len(slack.of("chat.update"))
    fast_bot.reply(ALICE, "release db")
    slack.wait_for(lambda c: c.method == "chat.update", count=before + 1)
    updated_with("Nothing is held")
    fast_bot.reply(BOB, "acquire tiny-job 3s")
    updated_with("tiny-job")
    updated_with("Nothing is held", absent="tiny-job")
    # Every change edited the one board message; none posted a new one.
    assert len({c.payload["ts"] for c in slack.of("chat.update")}) == 1


# The claim protocol does not depend on the store: Redis, where replicas
# really are separate clients of one server, is enough.
@pytest.mark.parametrize("bot_config", ["redis"], indirect=True)
def test_a_replica_that_died_after_claiming_is_covered_by_another(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    backend = bot_config.create()
    records = Records(backend)
    lease = backend.acquire_lease("db", ALICE.email or "", timedelta(seconds=8))
    assert lease.expires is not None
    # What a replica leaves behind if it dies between claiming the warning
    # and sending it: a claim that is never confirmed.
    expires_ms = int(lease.expires.timestamp() * 1000)
    key = f"sent/warn/{lease.fence}/{expires_ms}/6/db"
    stale = records.claim(key, timedelta(seconds=3))
    assert stale is not None
    fast = "warn_before = 6s\nreconcile_interval = 200ms\nclaim_ttl = 3s"
    with running_bot(slack, bot_config, tmp_path, fast) as bot:
        [warning] = wait_dm(slack, ALICE.id, "expires")
        assert backend.current("db") is not None, "still before expiry"
        taken_over = records.get(key)
        assert taken_over is not None and taken_over.id != stale.id
        wait_dm(slack, ALICE.id, "expired")
        bot.settle()
    assert len(dms_to(slack, ALICE.id, "expires")) == 1
    assert "db" in text_of(warning)


def test_a_restarted_bot_keeps_updating_its_boards(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    with running_bot(slack, bot_config, tmp_path, FAST, name="before") as bot:
        bot.command(ALICE, "board")
        board = slack.wait_for(
            lambda c: c.method == "chat.postMessage" and "held right now" in text_of(c)
        )[0]
    with running_bot(slack, bot_config, tmp_path, FAST, name="after") as bot:
        bot.reply(BOB, "acquire after-restart 1h")
        update = slack.wait_for(
            lambda c: c.method == "chat.update" and "after-restart" in text_of(c)
        )[0]
    assert update.payload["channel"] == "C0OPS"
    posted = [c for c in slack.of("chat.postMessage") if "held right now" in text_of(c)]
    assert len(posted) == 1, "the board is edited, not posted again"
    assert update.payload["ts"] == board.context["ts"]


def test_a_lease_outside_the_allowlist_never_blocks_other_notices(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    # A CLI lease on a resource the bot does not offer used to fail the whole
    # expiry step, on every run: nobody else heard of their expiry.
    section = FAST + "\nresources = db"
    with running_bot(slack, bot_config, tmp_path, section):
        backend = bot_config.create()
        backend.acquire_lease("not-offered", BOB.email or "", timedelta(seconds=3))
        backend.acquire_lease("db", ALICE.email or "", timedelta(seconds=3))
        wait_dm(slack, ALICE.id, "expired")
        wait_dm(slack, BOB.id, "expired")


# The claim protocol does not depend on the store: Redis, where replicas
# really are separate clients of one server, is enough.
@pytest.mark.parametrize("bot_config", ["redis"], indirect=True)
def test_one_failing_dm_never_stops_the_others(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    with running_bot(slack, bot_config, tmp_path, FAST) as bot:
        # The first DMs of the pass fail (Slack answers 500, past its retries).
        for _ in range(6):
            slack.fail_next("conversations.open", 500, {}, {"ok": False, "error": "x"})
        backend = bot_config.create()
        backend.acquire_lease("db", ALICE.email or "", timedelta(seconds=4))
        backend.acquire_lease("cache", BOB.email or "", timedelta(seconds=4))
        # Both are warned before expiry (a failed one on a later pass)...
        wait_dm(slack, ALICE.id, "expires")
        wait_dm(slack, BOB.id, "expires")
        wait_dm(slack, ALICE.id, "expired")
        wait_dm(slack, BOB.id, "expired")
        bot.settle()
    # ...and exactly once each.
    for user in (ALICE, BOB):
        assert len(dms_to(slack, user.id, "expires")) == 1
