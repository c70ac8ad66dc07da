"""The line in Slack, through the real endpoint: `/stormlock queue` joins
it, a held answer offers Join the line, the first in line is DMed "You're
up" with Take it and Pass, and the resource is kept for them for the claim
window; silence, a pass or an expired lease hands it on; CLI waiters share
the same line, in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stormlock.contract import InLine, Lease
from stormlock.line import Line
from stormlock.lock import StormLock
from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import Call, LocalSlack, User
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
from tests.bot.test_reminders import FAST, button, dms_to, wait_dm
from tests.support import wait_until


@pytest.fixture
def bot_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig("sqlite", isolated_options("sqlite", request, tmp_path))


@pytest.fixture
def bot(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    with running_bot(slack, bot_config, tmp_path, f"{FAST}\nclaim_window = 3s") as bot:
        yield bot


def line_of(bot: BotServer, resource: str = "db") -> list[str]:
    backend = bot.config.create()
    try:
        return [ticket.principal for ticket in Line(backend, resource).waiting()]
    finally:
        backend.close()


def press(bot: BotServer, user: User, shown: Call, label: str, words: str) -> Call:
    """Press a button of `shown` and wait for the answer that says `words`."""
    found = button(shown, label)
    before = len(
        [c for c in bot.slack.calls if answers(c, user) and words in text_of(c)]
    )
    bot.press(user, found["action_id"], found["value"])
    calls = bot.slack.wait_for(
        lambda c: answers(c, user) and words in text_of(c), count=before + 1, timeout=20
    )
    return calls[before]


def holder(bot: BotServer, resource: str = "db") -> Lease | None:
    backend = bot.config.create()
    try:
        return backend.current(resource)
    finally:
        backend.close()


def test_join_the_line_take_your_turn_and_leave(
    bot: BotServer, slack: LocalSlack
) -> None:
    assert "You hold" in text_of(bot.reply(ALICE, "acquire db 1h migration"))
    joined = text_of(bot.reply(BOB, "queue db after alice"))
    assert "You're 1st in line for *db*" in joined, joined
    again = text_of(bot.reply(BOB, "wait db"))
    assert "already 1st in line" in again and "keep your place" in again
    # Someone else is told the line's length and offered to join it.
    held = bot.reply(CAROL, "acquire db 1h")
    assert "1 person is waiting in line" in text_of(held)
    press(bot, CAROL, held, "Join the line", "You're 2nd in line")
    assert line_of(bot) == [BOB.email, CAROL.email]
    # The release: Bob is up, and the channel hears it; nobody else may take it.
    bot.reply(ALICE, "release db")
    up = wait_dm(slack, BOB.id, "You're up for *db*")[0]
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload["channel"] == "C0OPS"
            and "is up for *db*" in text_of(c)
        ),
        timeout=20,
    )
    backend = bot.config.create()
    with pytest.raises(InLine, match="kept for the line"):
        StormLock(backend, "db", "dave").acquire_lease()
    backend.close()
    took = press(bot, BOB, up, "Take it", "You hold *db*")
    assert "Lease id" in text_of(took)
    lease = holder(bot)
    assert lease is not None and lease.principal == BOB.email
    assert lease.note == "after alice"  # the note he queued with
    assert line_of(bot) == [CAROL.email]
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload["channel"] == "C0OPS"
            and "took" in text_of(c)
            and "db" in text_of(c)
        ),
        count=2,  # Alice's, then Bob's
        timeout=20,
    )
    left = text_of(bot.reply(CAROL, "queue db --leave"))
    assert "You left the line for *db*" in left
    assert line_of(bot) == []
    assert "not in the line" in text_of(bot.reply(CAROL, "queue db --leave"))
    bot.settle()
    assert len(dms_to(slack, BOB.id, "You're up")) == 1  # never twice


def test_a_pass_or_silence_hands_the_turn_on(bot: BotServer, slack: LocalSlack) -> None:
    bot.reply(ALICE, "acquire db 1h")
    for user in (BOB, CAROL, DAVE):
        assert "in line for *db*" in text_of(bot.reply(user, "queue db"))
    bot.reply(ALICE, "release db")
    bob_up = wait_dm(slack, BOB.id, "You're up")[0]
    press(bot, BOB, bob_up, "Pass", "You passed")
    wait_dm(slack, CAROL.id, "You're up")  # Carol says nothing...
    # ...and once the claim window (3 s) lapses, Dave is up.
    dave_up = wait_dm(slack, DAVE.id, "You're up")[0]
    assert line_of(bot) == [DAVE.id]  # Slack shares no email of his
    # Bob's stale button changes nothing now.
    stale = press(bot, BOB, bob_up, "Take it", "has passed")
    assert "not in its line" in text_of(stale)
    press(bot, DAVE, dave_up, "Take it", "You hold *db*")
    bot.settle()
    assert len(dms_to(slack, CAROL.id, "You're up")) == 1
    # The channel heard each step, in order, once.
    said = [
        text_of(c)
        for c in slack.of("chat.postMessage")
        if c.payload["channel"] == "C0OPS"
    ]
    steps = [
        f"<@{BOB.id}> is up for *db*",
        f"<@{BOB.id}> passed their turn for *db*",
        f"<@{CAROL.id}> is up for *db*",
        f"<@{CAROL.id}>'s turn lapsed for *db*",
        f"<@{DAVE.id}> is up for *db*",
        f"<@{DAVE.id}> took *db*",
    ]
    found = [next(i for i, text in enumerate(said) if step in text) for step in steps]
    assert found == sorted(found), said
    for step in steps:
        assert sum(step in text for text in said) == 1, step
    story = text_of(bot.reply(ALICE, "history db"))
    assert f"<@{BOB.id}> passed their turn" in story
    assert f"<@{DAVE.id}> took their turn" in story


def test_an_expired_lease_hands_the_resource_to_the_next(
    bot: BotServer, slack: LocalSlack
) -> None:
    bot.reply(ALICE, "acquire db 2s")
    bot.reply(BOB, "queue db")
    # Nobody releases: the expiry frees it, and the next pass finds Bob's turn.
    wait_dm(slack, BOB.id, "You're up for *db*")


def test_cli_and_slack_waiters_share_one_line_in_order(
    bot: BotServer, slack: LocalSlack
) -> None:
    bot.reply(ALICE, "acquire db 1h")
    bot.reply(BOB, "queue db")
    backend = bot.config.create()
    taken: list[Lease] = []
    failures: list[BaseException] = []

    def cli_waiter() -> None:
        try:
            lock = StormLock(backend, "db", "ci-job", timedelta(minutes=5))
            taken.append(lock.acquire_lease(wait=timedelta(seconds=60)))
        except BaseException as exc:  # reported below
            failures.append(exc)

    waiter = threading.Thread(target=cli_waiter)
    waiter.start()
    try:
        wait_until(lambda: line_of(bot) == [BOB.email, "ci-job"])
        bot.reply(ALICE, "release db")
        up = wait_dm(slack, BOB.id, "You're up")[0]
        assert not taken, "the CLI waiter went before the Slack one"
        press(bot, BOB, up, "Take it", "You hold *db*")
        bot.reply(BOB, "release db")
        waiter.join(timeout=60)
    finally:
        waiter.join(timeout=60)
        backend.close()
    assert not failures, failures
    assert taken and taken[0].principal == "ci-job"


def test_bad_line_requests_get_one_clear_reply(bot: BotServer) -> None:
    said: dict[str, Any] = {}
    said["free"] = text_of(bot.reply(ALICE, "queue scratch"))
    assert "free and nobody waits" in said["free"]
    assert "Acquire scratch" in said["free"]  # offered to take it instead
    said["leave"] = text_of(bot.reply(ALICE, "queue scratch --leave now"))
    assert "--leave takes no note" in said["leave"]
    said["bad"] = text_of(bot.reply(ALICE, "queue bad/../name"))
    assert "Traceback" not in said["bad"]
    assert line_of(bot, "scratch") == []


def test_the_line_is_shown_where_the_lease_is(
    bot: BotServer, slack: LocalSlack
) -> None:
    bot.reply(ALICE, "acquire db 1h")
    bot.reply(BOB, "queue db first")
    bot.reply(CAROL, "queue db")
    now = text_of(bot.reply(CAROL, "current db"))
    assert f"2 in line: 1. <@{BOB.id}>, 2. <@{CAROL.id}>" in now
    assert "You're 2nd in line of 2" in now
    assert "You're" not in text_of(bot.reply(DAVE, "current db"))
    assert "2 in line" in text_of(bot.reply(DAVE, "list"))
    bot.reply(BOB, "queue db --leave")
    story = text_of(bot.reply(DAVE, "history db"))
    assert f"<@{BOB.id}> joined its line" in story
    assert f"<@{BOB.id}> left its line" in story
    assert f"<@{CAROL.id}> joined its line" in story
