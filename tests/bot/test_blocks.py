"""What people read (stormlock/bot/blocks.py): pure renderers, validated with
slack_sdk's Block Kit models and Slack's size limits, without a bot."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from slack_sdk.models.blocks import Block

from stormlock.bot import blocks, core
from stormlock.contract import Lease
from stormlock.testing.localslack import (
    MAX_MESSAGE_BLOCKS,
    MAX_VIEW_BLOCKS,
    block_problems,
    message_problems,
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
    assert message_problems(message.kwargs()) == []
    assert "500" in message.text
    assert " more. " in shown(message), "the leases past Slack's limit are counted"


@pytest.mark.parametrize("count", [5_000, 10_000])
def test_a_board_of_thousands_of_leases_is_a_message_slack_takes(count: int) -> None:
    """Slack refuses a message whose blocks hold more than about 13,000
    characters (msg_blocks_too_long), far below 50 blocks of 3,000."""
    many = [LEASE._replace(resource=f"r-{i:05d}") for i in range(count)]
    for message in (
        blocks.board(many, namer),
        blocks.lease_list(many, namer),
        blocks.members_held("staging", many, namer),
    ):
        assert message_problems(message.kwargs()) == []
        assert " more" in shown(message), "the leases past Slack's limit are counted"


def test_a_burst_of_announcements_fits_one_post_and_the_rest_waits() -> None:
    said = [
        blocks.announce_acquired(LEASE._replace(resource=f"svc-{i:04d}"), namer)
        for i in range(2_000)
    ]
    count = blocks.fitting(said)
    assert 50 <= count < 2_000
    post = blocks.combined(said[:count])
    assert message_problems(post.kwargs()) == []
    assert f"*svc-{count - 1:04d}*" in shown(post)
    assert f"*svc-{count:04d}*" not in shown(post)
    with_more = blocks.combined([*said[: count - 1], blocks.more_changes(1_234, [])])
    assert message_problems(with_more.kwargs()) == []
    assert "1,234 more" in shown(with_more)


def test_a_long_fallback_text_is_cut_not_refused() -> None:
    message = blocks.Message("&" * 5_000)
    assert message_problems(message.kwargs()) == []
    assert message.text.endswith("&amp;…"), "never cut inside an entity"


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


# -- hostile names and notes -------------------------------------------------------

HOSTILE = "<!channel><!here><!everyone><@U0EVIL><!subteam^S0OPS|ops><#C0X>"
LINK = "<https://evil.example|click><mailto:a@evil.example|mail>"
EVIL = Lease(
    HOSTILE,
    NOW,
    "0c3f4a6e-1b2c-4d5e-8f90-123456789abc",
    f"db{HOSTILE}{LINK}&amp;",
    NOW + timedelta(hours=2),
    f"note {HOSTILE} {LINK}",
    7,
)


def _hostile_messages() -> dict[str, object]:
    from stormlock.bot import core
    from stormlock.history import Event

    name = blocks.escape  # as the directory names a holder who is not in Slack

    event = Event(
        NOW, EVIL.resource, "acquired", HOSTILE, HOSTILE, EVIL.note, 7, "cli", NOW
    )
    resource = EVIL.resource
    answers: list[core.Answer] = [
        core.Acquired(EVIL, CHOICES),
        core.Renewed(EVIL, CHOICES),
        core.Released(resource),
        core.Held(resource, EVIL),
        core.Held(resource, None),
        core.Current(resource, EVIL),
        core.Current(resource, None),
        core.IsHeld(resource, True),
        core.IsHeld(resource, False),
        core.Listing([EVIL]),
        core.Help(HOSTILE),
        core.Problem(f"resource {HOSTILE} failed {LINK}"),
        core.Waiting(resource),
        core.Waiting(resource, cancelled=True),
        core.History(resource, [event]),
        core.History(resource, []),
    ]
    notices: list[core.Notice] = [
        core.TookLease("C1", EVIL),
        core.GaveUpLease("C1", EVIL, HOSTILE, False),
        core.GaveUpLease("C1", EVIL, HOSTILE, True),
        core.ForcedOff(HOSTILE, EVIL, HOSTILE),
    ]
    found: dict[str, object] = {}
    for index, said in enumerate(answers):
        found[f"answer-{index}-{type(said).__name__}"] = blocks.answer(said, name)
    for index, told in enumerate(notices):
        found[f"notice-{index}-{type(told).__name__}"] = blocks.notice(told, name)
    found.update(
        warning=blocks.warning(EVIL, CHOICES),
        expired_notice=blocks.expired_notice(resource, NOW),
        announce_expired=blocks.announce_expired(resource, HOSTILE, name),
        free_now=blocks.free_now(resource),
        board=blocks.board([EVIL], name),
        home=blocks.home([EVIL], [EVIL], name, lambda _: CHOICES, [event]),
    )
    return found


def _texts(node: object) -> list[str]:
    """Every text Slack reads markup in: the fallback and mrkdwn objects
    (plain_text, as in headers and buttons, shows `<!here>` as written)."""
    if isinstance(node, blocks.Message):
        return [node.text, *_texts(node.blocks)]
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn":
            return [node["text"]]
        return [text for value in node.values() for text in _texts(value)]
    if isinstance(node, list):
        return [text for item in node for text in _texts(item)]
    return []


LIVE_MARKUP = re.compile(r"<(?!!date\^)[!@#]|<(https?|mailto):")


@pytest.mark.parametrize("kind", sorted(_hostile_messages()))
def test_hostile_names_and_notes_never_mention_or_link(kind: str) -> None:
    message = _hostile_messages()[kind]
    texts = _texts(message)
    assert texts
    for text in texts:
        assert not LIVE_MARKUP.search(text), (kind, text)


def test_the_fallback_text_shows_a_hostile_name_as_written() -> None:
    message = blocks.announce_acquired(EVIL, blocks.escape)
    assert message.text == blocks.escape(f"{EVIL.resource} is now held")


def test_the_app_home_stays_under_slacks_view_size() -> None:
    noted = [
        LEASE._replace(resource=f"env-{n:03d}", note="n" * 1000) for n in range(300)
    ]
    view = blocks.home(noted, noted[:20], namer, lambda _: CHOICES)
    assert len(json.dumps(view).encode()) <= blocks.MAX_VIEW_BYTES
    assert block_problems(view["blocks"], MAX_VIEW_BLOCKS) == []
    short = blocks.home([LEASE], [LEASE], namer, lambda _: CHOICES)
    assert LEASE.note and blocks.escape(LEASE.note) in json.dumps(short), "kept whole"


@pytest.mark.parametrize("value", ['{"resource":"db","ttl":1e300}', '{"ttl":NaN}'])
def test_a_crafted_button_value_is_not_read(value: str) -> None:
    assert blocks.read_button(blocks.ACTION_ACQUIRE, value) is None


REMINDERS: dict[str, tuple[object, str]] = {
    # value, the kind of recipient the one routing rule must give
    "expires_soon": (
        core.ExpiresSoon(LEASE.principal, LEASE, tuple(CHOICES)),
        "principal",
    ),
    "expires_soon_here": (core.ExpiresSoonHere("C0OPS", LEASE), "channel"),
    "expired": (core.Expired(LEASE.principal, "prod-db", LEASE.expires), "principal"),
    "expired_here": (core.ExpiredHere("C0OPS", "prod-db", LEASE.principal), "channel"),
    "your_turn": (core.YourTurn("U0BOB", "prod-db", 7, timedelta(minutes=5)), "user"),
    "turn_up": (
        core.TurnUp("C0OPS", "prod-db", "bob", timedelta(minutes=5)),
        "channel",
    ),
    "turn_ended": (core.TurnEnded("C0OPS", "prod-db", "bob", "passed"), "channel"),
    "free_now": (core.FreeNow("U0BOB", "prod-db"), "user"),
    "escalated": (core.AskEscalated("U0CAROL", "prod-db", "alice", "U0BOB"), "user"),
}


@pytest.mark.parametrize("kind", sorted(REMINDERS))
def test_what_the_reminder_jobs_tell_is_a_value_rendered_in_one_place(
    kind: str,
) -> None:
    told, to = REMINDERS[kind]
    assert isinstance(told, core.Reminder)
    message = blocks.notice(told, namer)
    assert message_problems(message.kwargs()) == []
    assert LEASE.id not in shown(message)
    recipient = core.recipient(told)
    assert recipient.kind == to
    assert recipient.id in {"C0OPS", "U0BOB", "U0CAROL", LEASE.principal}


@pytest.mark.parametrize("name", ["acquired", "renewed", "warning"])
def test_blocks_written_as_dicts_are_what_slack_sdks_models_render(name: str) -> None:
    for raw in PRIVATE[name].blocks:
        parsed = Block.parse(raw)
        assert parsed is not None
        assert parsed.to_dict() == raw
