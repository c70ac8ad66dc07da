"""Asking the holder to release, through the real HTTP endpoint: the asker's
button, the holder's DM and its three answers, one ask per lease, and the
ask that nobody answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.slack import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    BotServer,
    answers,
    running_bot,
    text_of,
)
from stormlock.times import utcnow
from tests.bot.test_line import holder, press
from tests.bot.test_reminders import FAST, button, dms_to, wait_dm


@pytest.fixture
def bot_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig("sqlite", isolated_options("sqlite", request, tmp_path))


@pytest.fixture
def bot(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    with running_bot(slack, bot_config, tmp_path, FAST) as bot:
        yield bot


def ask_alice(bot: BotServer, slack: LocalSlack) -> None:
    """Alice holds db; Bob asks her to release it, from the held answer."""
    assert "You hold" in text_of(bot.reply(ALICE, "acquire db 2h migration"))
    held = bot.reply(BOB, "acquire db")
    assert "held by" in text_of(held)
    asked = press(bot, BOB, held, "Ask the holder to release", "I asked")
    assert f"<@{ALICE.id}>" in text_of(asked)
    wait_dm(slack, ALICE.id, "asks you to release *db*")


def test_release_now_frees_it_and_tells_the_asker(
    bot: BotServer, slack: LocalSlack
) -> None:
    ask_alice(bot, slack)
    dm = wait_dm(slack, ALICE.id, "asks you to release")[0]
    shown = text_of(dm)
    assert f"<@{BOB.id}>" in shown and "migration" in shown
    labels = [
        e["text"]["text"]
        for b in dm.payload["blocks"]
        for e in b.get("elements", [])
        if e.get("type") == "button"
    ]
    assert labels == ["Release now", "Keep it 30 more minutes", "I'm on it"]
    # One ask per asker per lease: the second changes nothing.
    again = text_of(bot.reply(BOB, "ask db"))
    assert "asked" in again and "already" in again
    press(bot, ALICE, dm, "Release now", "You released *db*")
    assert holder(bot) is None
    told = wait_dm(slack, BOB.id, "released *db* for you")[0]
    assert button(told, "Acquire db")
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload["channel"] == "C0OPS"
            and "released *db*" in text_of(c)
        )
    )
    # A second press of the same DM: the lease is gone, nothing more.
    press(bot, ALICE, dm, "Release now", "has ended; nothing to answer")
    bot.settle()
    assert len(dms_to(slack, ALICE.id, "asks you to release")) == 1
    assert len(dms_to(slack, BOB.id, "released *db* for you")) == 1


def test_keep_it_30_more_minutes_renews_and_says_until_when(
    bot: BotServer, slack: LocalSlack
) -> None:
    ask_alice(bot, slack)
    dm = wait_dm(slack, ALICE.id, "asks you to release")[0]
    press(bot, ALICE, dm, "Keep it 30 more minutes", "You hold *db*")
    lease = holder(bot)
    assert lease is not None and lease.principal == ALICE.email
    assert lease.expires is not None
    left = lease.expires - utcnow()
    assert timedelta(minutes=29) < left <= timedelta(minutes=30)
    told = text_of(wait_dm(slack, BOB.id, "keeps *db* 30 more minutes")[0])
    assert "<!date^" in told  # until when, in Bob's own time zone
    # One answer per ask: a second press changes nothing.
    press(bot, ALICE, dm, "Keep it 30 more minutes", "answered this already")
    again = holder(bot)
    assert again is not None and again.expires == lease.expires


def test_on_it_tells_the_asker_and_only_the_holder_may_answer(
    bot: BotServer, slack: LocalSlack
) -> None:
    ask_alice(bot, slack)
    dm = wait_dm(slack, ALICE.id, "asks you to release")[0]
    # Dave copies the button's value: he is not the holder.
    refused = press(bot, DAVE, dm, "Release now", "only the holder")
    assert "db" in text_of(refused)
    assert holder(bot) is not None
    press(bot, ALICE, dm, "I'm on it", "you're on it")
    wait_dm(slack, BOB.id, "is on it and will release *db*")
    assert holder(bot) is not None


def test_an_ask_about_a_lease_that_ends_tells_the_asker(
    bot: BotServer, slack: LocalSlack
) -> None:
    ask_alice(bot, slack)
    backend = bot.config.create()
    try:
        lease = backend.current("db")
        assert lease is not None
        backend.release_lease("db", lease.id)  # Alice, from the CLI
    finally:
        backend.close()
    told = wait_dm(slack, BOB.id, "ended before they answered")[0]
    assert button(told, "Acquire db")
    # Her old DM's buttons now change nothing.
    dm = wait_dm(slack, ALICE.id, "asks you to release")[0]
    press(bot, ALICE, dm, "Release now", "has ended")
    bot.settle()
    assert len(dms_to(slack, BOB.id, "ended before they answered")) == 1


def test_bad_asks_get_one_clear_reply(bot: BotServer) -> None:
    assert "free and nobody waits" in text_of(bot.reply(BOB, "ask db"))
    bot.reply(ALICE, "acquire db 1h")
    assert "You hold db yourself" in text_of(bot.reply(ALICE, "ask db"))
    assert "too many words" in text_of(bot.reply(BOB, "ask db please now"))
    assert "which resource" in text_of(bot.reply(BOB, "ask"))
    # A crafted answer button: not ours.
    bot.press(ALICE, "lease_reply_release", '{"resource":"db","fence":1,"asker":"x"}')
    answer = bot.slack.wait_for(
        lambda c: c.method == "response_url" and answers(c, ALICE)
    )[-1]
    assert "damaged or not one of mine" in text_of(answer)
    assert holder(bot) is not None


def test_an_unanswered_ask_tells_the_asker_and_the_admins(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    settings = f"{FAST}\nask_timeout = 1s\nescalate = yes"
    with running_bot(slack, bot_config, tmp_path, settings) as bot:
        ask_alice(bot, slack)
        wait_dm(slack, BOB.id, "has not answered your ask to release *db*")
        escalated = text_of(wait_dm(slack, CAROL.id, "have not answered")[0])
        assert "/stormlock release db --force" in escalated
        # She may still answer late, and Bob is told.
        dm = wait_dm(slack, ALICE.id, "asks you to release")[0]
        press(bot, ALICE, dm, "I'm on it", "you're on it")
        wait_dm(slack, BOB.id, "is on it")
        bot.settle()
    assert len(dms_to(slack, BOB.id, "has not answered")) == 1
    assert len(dms_to(slack, CAROL.id, "have not answered")) == 1
