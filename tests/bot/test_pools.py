"""Pools in Slack: `/stormlock acquire staging` takes any free member."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.slack import ALICE, BOB, BotServer, running_bot, text_of


@pytest.fixture
def bot_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig("sqlite", isolated_options("sqlite", request, tmp_path))


@pytest.fixture
def bot(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    # The allowlist names the pool: its members are allowed with it.
    sections = "resources = staging\n\n[pool.staging]\nmembers = staging-1, staging-2\n"
    with running_bot(slack, bot_config, tmp_path, sections) as server:
        yield server


def test_a_pool_is_taken_announced_and_released_by_its_name(
    bot: BotServer, slack: LocalSlack
) -> None:
    first = text_of(bot.reply(ALICE, "acquire staging 1h smoke tests"))
    assert "You hold *staging-1*" in first or "You hold *staging-2*" in first
    member = "staging-1" if "staging-1" in first else "staging-2"
    [announced] = slack.wait_for(
        lambda c: c.method == "chat.postMessage" and member in str(c.payload),
        timeout=15,
    )
    assert f"*{member}* from *staging*" in str(announced.payload)
    second = text_of(bot.reply(BOB, "acquire staging 1h"))
    other = "staging-2" if member == "staging-1" else "staging-1"
    assert f"*{other}*" in second
    full = text_of(bot.reply(BOB, "acquire staging 1h"))
    assert "Every member of *staging* is held" in full
    assert member in full and other in full
    released = text_of(bot.reply(ALICE, "release staging"))
    assert member in released, released
    assert f"*{member}*" in text_of(bot.reply(BOB, "acquire staging 1h"))
    nothing = text_of(bot.reply(ALICE, "release staging"))
    assert "you hold no member of pool" in nothing


def test_the_list_and_the_board_say_which_pool_a_member_is_of(
    bot: BotServer, slack: LocalSlack
) -> None:
    bot.reply(ALICE, "acquire staging 1h")
    listed = text_of(bot.reply(ALICE, "list"))
    assert "pool *staging*" in listed
    bot.command(ALICE, "board", channel="C0BOARD")
    [posted] = slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage" and c.payload.get("channel") == "C0BOARD"
        ),
        timeout=15,
    )
    assert "pool *staging*" in str(posted.payload)
