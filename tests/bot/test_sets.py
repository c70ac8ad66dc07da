"""Sets in Slack: `/stormlock acquire prod` (a group) or `acquire a,b 2h`
takes every member in one lease, announced once, warned once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.slack import ALICE, BOB, BotServer, running_bot, text_of
from tests.bot.test_reminders import FAST, button, dms_to, wait_dm

GROUP = "\n[group.prod]\nmembers = prod-db, prod-api, cache\n"


@pytest.fixture
def bot_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig("sqlite", isolated_options("sqlite", request, tmp_path))


@pytest.fixture
def bot(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    # The allowlist names the group (its members with it) and one more.
    sections = f"resources = prod, scratch\n{FAST}\n{GROUP}"
    with running_bot(slack, bot_config, tmp_path, sections) as server:
        yield server


def took(slack: LocalSlack) -> list[str]:
    return [
        text_of(c)
        for c in slack.of("chat.postMessage")
        if c.payload["channel"] == "C0OPS" and "took" in text_of(c)
    ]


def test_a_group_is_taken_whole_announced_once_and_released(
    bot: BotServer, slack: LocalSlack
) -> None:
    answer = text_of(bot.reply(ALICE, "acquire prod 1h schema migration"))
    assert "You hold *prod*" in answer, answer
    slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "took" in text_of(c), timeout=15
    )
    backend = bot.config.create()
    held = [backend.current(m) for m in ("cache", "prod-api", "prod-db")]
    assert all(lease is not None for lease in held)
    assert len({lease.id for lease in held if lease}) == 1
    # Bob cannot take a part of it; nothing of his is left taken.
    refused = text_of(bot.reply(BOB, "acquire prod-api,scratch 1h"))
    assert "alice" in refused.lower() or "Alice" in refused, refused
    assert backend.current("scratch") is None
    listed = text_of(bot.reply(ALICE, "list"))
    assert listed.count("set *prod*") == 3
    bot.settle()
    assert len(took(slack)) == 1, took(slack)  # one lease, one announcement
    released = text_of(bot.reply(ALICE, "release prod"))
    assert "prod" in released
    assert all(backend.current(m) is None for m in ("cache", "prod-api", "prod-db"))
    # The members' history, merged: the set's change is one line naming all.
    reply = bot.reply(ALICE, "history prod")
    lines = [
        line
        for block in reply.payload["blocks"]
        if block["type"] == "section"
        for line in block["text"]["text"].splitlines()
    ]
    assert len(lines) == 2, lines
    assert "*cache, prod-api, prod-db*: <@U01ALICE> took it" in lines[0]
    assert "*cache, prod-api, prod-db*: <@U01ALICE> released it" in lines[1]
    backend.close()


def test_a_set_outside_the_allowlist_is_refused_in_one_line(
    bot: BotServer, slack: LocalSlack
) -> None:
    answer = text_of(bot.reply(ALICE, "acquire scratch,secret-db 1h"))
    assert "'secret-db' is not a known resource" in answer
    twice = text_of(bot.reply(ALICE, "acquire scratch,scratch 1h"))
    assert "named twice" in twice
    backend = bot.config.create()
    assert backend.current("scratch") is None
    backend.close()


def test_a_set_is_warned_once_and_its_renew_button_renews_every_member(
    bot: BotServer, slack: LocalSlack
) -> None:
    bot.reply(ALICE, "acquire cache,scratch 4s")
    [warning] = wait_dm(slack, ALICE.id, "expires")
    assert "cache,scratch" in text_of(warning)
    renew = button(warning, "Renew")
    bot.press(ALICE, renew["action_id"], renew["value"])
    slack.wait_for(
        lambda c: (
            c.method == "response_url" and c.payload.get("replace_original") is True
        )
    )
    backend = bot.config.create()
    leases = [backend.current(m) for m in ("cache", "scratch")]
    assert all(lease is not None for lease in leases)
    assert len({lease.expires for lease in leases if lease}) == 1
    bot.settle()
    assert len(dms_to(slack, ALICE.id, "expires")) == 1  # once, not per member
    backend.close()
