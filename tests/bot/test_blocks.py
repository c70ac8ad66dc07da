"""What people read (stormlock/bot/blocks.py): pure renderers, validated with
slack_sdk's Block Kit models and Slack's size limits, without a bot."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from stormlock.backend import Lease
from stormlock.bot import blocks
from stormlock.testing.localslack import (
    MAX_MESSAGE_BLOCKS,
    MAX_VIEW_BLOCKS,
    block_problems,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LEASE = Lease(
    "alice@example.com",
    NOW,
    "0c3f4a6e-1b2c-4d5e-8f90-123456789abc",
    "prod-db",
    NOW + timedelta(hours=2),
    "applying <terraform> & co",
    1764331200000000,
)
CHOICES = [timedelta(hours=1), timedelta(hours=4)]


def namer(principal: str) -> str:
    return f"@{principal.split('@')[0]}"


def shown(message: blocks.Message) -> str:
    return message.text + json.dumps(message.blocks)


ANNOUNCEMENTS = {
    "announce_acquired": blocks.announce_acquired(LEASE, namer),
    "held": blocks.held(LEASE, "prod-db", namer),
    "announce_released": blocks.announce_released(LEASE, namer, "bob@example.com"),
    "force_released_notice": blocks.force_released_notice(LEASE, namer, "U03CAROL"),
    "current": blocks.current("prod-db", LEASE, namer),
    "lease_list": blocks.lease_list([LEASE], namer),
    "board": blocks.board([LEASE], namer),
    "announce_expired": blocks.announce_expired("prod-db", LEASE.principal, namer),
}
PRIVATE = {
    "acquired": blocks.acquired(LEASE, CHOICES),
    "renewed": blocks.renewed(LEASE, CHOICES),
    "warning": blocks.warning(LEASE, CHOICES),
}


@pytest.mark.parametrize("name", sorted({**ANNOUNCEMENTS, **PRIVATE}))
def test_every_message_is_valid_block_kit(name: str) -> None:
    message = {**ANNOUNCEMENTS, **PRIVATE}[name]
    assert message.text, "a notification text for every message"
    assert block_problems(message.blocks, MAX_MESSAGE_BLOCKS) == []


@pytest.mark.parametrize("name", sorted(ANNOUNCEMENTS))
def test_what_others_see_never_holds_the_lease_id(name: str) -> None:
    assert LEASE.id not in shown(ANNOUNCEMENTS[name])


def test_the_acquirer_gets_the_id_and_the_fence() -> None:
    text = shown(PRIVATE["acquired"])
    assert LEASE.id in text and str(LEASE.fence) in text


def test_user_text_is_escaped_and_times_are_local_to_the_reader() -> None:
    text = shown(blocks.announce_acquired(LEASE, namer))
    assert "&lt;terraform&gt; &amp; co" in text and "<terraform>" not in text
    assert f"<!date^{int(NOW.timestamp())}^" in blocks.when(NOW)


def test_a_list_of_500_leases_stays_within_slack_limits() -> None:
    many = [
        LEASE._replace(resource=f"resource-{i:03d}", note="n" * 200) for i in range(500)
    ]
    message = blocks.lease_list(many, namer)
    assert block_problems(message.blocks, MAX_MESSAGE_BLOCKS) == []
    assert "500" in message.text


def test_app_home_is_a_valid_view_and_bounded() -> None:
    mine = [LEASE._replace(resource=f"mine-{i}") for i in range(30)]
    everyone = [LEASE._replace(resource=f"r-{i}") for i in range(300)]
    view = blocks.home(everyone, mine, namer, lambda _lease: CHOICES)
    assert view["type"] == "home"
    assert block_problems(view["blocks"], MAX_VIEW_BLOCKS) == []


def test_the_channel_hears_who_released() -> None:
    def said(actor: str, forced: bool = False) -> str:
        return shown(blocks.announce_released(LEASE, namer, actor, forced))

    assert "@alice released" in said("alice@example.com")
    by_bob = said("bob@example.com")
    assert "@bob released" in by_bob and "held by @alice" in by_bob
    assert "@carol force-released" in said("carol@example.com", forced=True)
