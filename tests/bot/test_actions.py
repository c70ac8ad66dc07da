"""Buttons, App Home, limits, configuration and outages, through HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stormlock.testing.backends import BackendConfig
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.servers import free_port
from stormlock.testing.slack import (
    ALICE,
    BOB,
    UUID,
    BotServer,
    answers,
    lease_id_in,
    start_bot,
    text_of,
)


def buttons(call_payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["text"]["text"]: e
        for b in call_payload["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    }


def test_release_button_replaces_the_private_reply(bot: BotServer) -> None:
    reply = bot.reply(ALICE, "acquire db 1h")
    release = buttons(reply.payload)["Release"]
    assert not UUID.search(release["value"]), "buttons carry no lease id"
    bot.press(ALICE, release["action_id"], release["value"])
    done = bot.slack.wait_for(
        lambda c: (
            c.method == "response_url" and c.payload.get("replace_original") is True
        )
    )[0]
    assert "You released" in text_of(done)
    assert bot.config.create().current("db") is None
    bot.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "released" in text_of(c)
    )


def test_renew_button_extends_the_lease(bot: BotServer) -> None:
    reply = bot.reply(ALICE, "acquire db 10m")
    before = bot.config.create().current("db")
    renew = buttons(reply.payload)["Renew 4h"]
    bot.press(ALICE, renew["action_id"], renew["value"])
    bot.slack.wait_for(
        lambda c: (
            c.method == "response_url" and c.payload.get("replace_original") is True
        )
    )
    after = bot.config.create().current("db")
    assert before and after and before.expires and after.expires
    assert after.expires - before.expires > timedelta(hours=3)


def test_someone_elses_button_does_nothing_to_the_lease(bot: BotServer) -> None:
    reply = bot.reply(ALICE, "acquire db 1h")
    release = buttons(reply.payload)["Release"]
    bot.press(BOB, release["action_id"], release["value"])
    refused = bot.slack.wait_for(
        lambda c: c.method == "response_url" and c.context["user"] == BOB.id
    )[0]
    assert "only the holder" in text_of(refused)
    assert bot.config.create().current("db") is not None


def test_app_home_shows_everything_and_your_own_buttons(bot: BotServer) -> None:
    alice_id = lease_id_in(bot.reply(ALICE, "acquire mine 1h"))
    bot.reply(BOB, "acquire theirs 1h")
    response = bot.event(
        {"type": "app_home_opened", "user": ALICE.id, "channel": "D1", "tab": "home"}
    )
    assert response.status_code == 200
    home = bot.slack.wait_for(
        lambda c: (
            c.method == "views.publish"
            and c.payload["user_id"] == ALICE.id
            and "theirs" in text_of(c)
        )
    )[-1]
    assert home.problems == []
    view = home.payload["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert view["type"] == "home"
    labels = [
        e["text"]["text"]
        for b in view["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    ]
    assert labels.count("Release") == 1, "buttons only for your own lease"
    shown = json.dumps(view)
    assert "mine" in shown and "theirs" in shown
    assert alice_id not in shown
    release = next(
        e
        for b in view["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["text"]["text"] == "Release"
    )
    bot.press(
        ALICE, release["action_id"], release["value"], {"type": "view", "view_id": "V1"}
    )
    # The redrawn Home: Alice holds nothing any more.
    bot.slack.wait_for(
        lambda c: (
            c.method == "views.publish"
            and c.payload["user_id"] == ALICE.id
            and "You hold nothing" in text_of(c)
        )
    )
    assert bot.config.create().current("mine") is None


def test_list_of_500_leases_stays_within_slack_limits(bot: BotServer) -> None:
    backend = bot.config.create()
    for i in range(500):
        backend.acquire_lease(
            f"svc-{i:03d}", f"user{i}@example.com", timedelta(hours=1), "n" * 40
        )
    reply = bot.reply(ALICE, "list", timeout=60)
    assert reply.problems == []
    blocks = reply.payload["blocks"]
    assert len(blocks) <= 50
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in blocks)
    shown = text_of(reply)
    assert "500 held" in shown and "svc-000" in shown
    bot.event(
        {"type": "app_home_opened", "user": BOB.id, "channel": "D1", "tab": "home"}
    )
    home = bot.slack.wait_for(lambda c: c.method == "views.publish")[-1]
    assert home.problems == []


@pytest.fixture
def down_bot(slack: LocalSlack, tmp_path: Path) -> Iterator[BotServer]:
    options = {"url": f"redis://127.0.0.1:{free_port()}/0", "timeout": "1"}
    yield from start_bot(slack, BackendConfig("redis", options), tmp_path)


def test_backend_down_still_answers_quickly(down_bot: BotServer) -> None:
    response = down_bot.command(ALICE, "acquire db")
    assert response.elapsed.total_seconds() < 3
    reply = down_bot.slack.wait_for(lambda c: answers(c))[0]
    assert "unreachable" in text_of(reply) and "nothing changed" in text_of(reply)
    assert "unreachable" in text_of(down_bot.reply(ALICE, "list"))


@pytest.fixture
def strict_bot(slack: LocalSlack, tmp_path: Path) -> Iterator[BotServer]:
    config = BackendConfig("sqlite", {"path": str(tmp_path / "l.db")})
    yield from start_bot(
        slack,
        config,
        tmp_path,
        "resources = prod-db, staging-db, cache\nchannels = C0OPS, #deploys",
    )


def test_resource_allowlist_suggests_close_names(strict_bot: BotServer) -> None:
    reply = strict_bot.reply(ALICE, "acquire prod-bd", channel="C0OPS")
    assert "not a known resource" in text_of(reply) and "prod-db" in text_of(reply)
    assert "You hold" in text_of(strict_bot.reply(ALICE, "acquire prod-db"))


def test_commands_outside_allowed_channels_are_refused(strict_bot: BotServer) -> None:
    reply = strict_bot.reply(ALICE, "acquire cache", channel="CRANDOM")
    assert "not enabled in this channel" in text_of(reply)
    assert "<#C0OPS>" in text_of(reply) and "#deploys" in text_of(reply)
    assert strict_bot.config.create().current("cache") is None
