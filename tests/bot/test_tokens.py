"""`/stormlock token`, and the API that `stormlock-bot serve` serves beside
the Slack endpoint: tokens made in Slack, leases taken by CI announced."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from stormlock.records import Records
from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.slack import (
    ALICE,
    BOB,
    CAROL,
    BotServer,
    running_bot,
    text_of,
)
from stormlock.times import utcnow
from stormlock.tokens import TOKEN_FORM
from tests.support import wait_until

CHANNEL = "C0DEPLOYS"


@pytest.fixture
def bot_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig("sqlite", isolated_options("sqlite", request, tmp_path))


@pytest.fixture
def bot(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    # prod-* changes are announced in one channel, whoever makes them.
    settings = "reconcile_interval = 200ms\nrecover_after = 10s\nwarn_before = 2s\n"
    settings += "\n[pool.far]\nmembers = prod-far-1, prod-far-2\n"
    with running_bot(
        slack, bot_config, tmp_path, f"announce_channel = {CHANNEL}\n{settings}"
    ) as server:
        yield server


def api(bot: BotServer, method: str, path: str, token: str, **kw: Any) -> Any:
    return requests.request(
        method,
        bot.url + path,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kw,
    )


def recovered_past(config: BackendConfig, moment: datetime) -> bool:
    """Whether the recovery pass has looked at every change up to `moment`
    (its cursor, kept in the store, has passed it)."""
    with config.create() as backend:
        cursor = Records(backend).get("cursor/told")
    return cursor is not None and datetime.fromisoformat(cursor.note or "") > moment


def secret_in(text: str) -> str:
    found = re.search(TOKEN_FORM, text)
    assert found, text
    return found.group(0)


def test_a_token_made_in_slack_is_shown_once_to_its_maker_and_works(
    bot: BotServer, slack: LocalSlack
) -> None:
    made = bot.reply(ALICE, "token create laptop --resources prod-* --expires 30d")
    secret = secret_in(text_of(made))
    assert "shown only this once" in text_of(made)
    assert made.context["user"] == ALICE.id, "only alice sees it"
    whoami = api(bot, "GET", "/v1/whoami", secret).json()
    assert (whoami["principal"], whoami["resources"]) == (ALICE.email, ["prod-*"])
    refused = api(bot, "POST", "/v1/acquire", secret, json={"resource": "staging"})
    assert refused.status_code == 403
    listed = bot.reply(ALICE, "token list")
    assert "laptop" in text_of(listed) and secret not in text_of(listed)
    assert bot.reply(BOB, "token list").context["user"] == BOB.id
    assert "No tokens" in text_of(bot.reply(BOB, "token list"))
    revoked = bot.reply(ALICE, "token revoke laptop")
    assert "revoked" in text_of(revoked)
    assert api(bot, "GET", "/v1/whoami", secret).status_code == 401
    # The secret went to alice's answer and nowhere else: no post, no log.
    others = [call for call in slack.calls if call is not made]
    assert all(secret not in repr(call.payload) for call in others)
    assert secret not in bot.logs()


def test_only_admins_make_service_tokens(bot: BotServer) -> None:
    refused = bot.reply(BOB, "token create deploy --as ci-deploy")
    assert "only admins" in text_of(refused) and not re.search(
        TOKEN_FORM, text_of(refused)
    )
    made = bot.reply(CAROL, "token create deploy --as ci-deploy")
    secret = secret_in(text_of(made))
    assert api(bot, "GET", "/v1/whoami", secret).json()["principal"] == "ci-deploy"
    for bad, says in (
        ("token create", "which token name?"),
        ("token make x", "create, list or revoke?"),
        ("token create x --expires soon", "cannot read duration"),
        ("token create bad/name", "not valid"),
    ):
        reply = text_of(bot.reply(ALICE, bad))
        assert says in reply and not re.search(TOKEN_FORM, reply), bad


def test_a_service_tokens_lease_is_announced_and_warned_in_the_channel(
    bot: BotServer, slack: LocalSlack
) -> None:
    secret = secret_in(text_of(bot.reply(CAROL, "token create deploy --as ci-deploy")))
    taken = api(
        bot,
        "POST",
        "/v1/acquire",
        secret,
        json={"resource": "prod-api", "ttl": "1h", "note": "deploy #42"},
    )
    assert taken.status_code == 200, taken.text
    lease = taken.json()["lease"]
    [posted] = slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload.get("channel") == CHANNEL
            and "prod-api" in str(c.payload)
        ),
        timeout=15,
    )
    assert "ci-deploy" in str(posted.payload) and lease["id"] not in str(posted.payload)
    released = api(
        bot,
        "POST",
        "/v1/release",
        secret,
        json={"resource": "prod-api", "id": lease["id"]},
    )
    assert released.json() == {"released": True}
    released_at = utcnow()
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload.get("channel") == CHANNEL
            and "released" in str(c.payload).lower()
        ),
        timeout=15,
    )
    # Once the recovery pass has looked past both, it has sent neither again.
    wait_until(lambda: recovered_past(bot.config, released_at), timeout=40)
    bot.settle(3)
    posts = [
        c
        for c in slack.calls
        if c.method == "chat.postMessage" and "prod-api" in str(c.payload)
    ]
    assert len(posts) == 2, [text_of(c) for c in posts]


def test_a_service_tokens_lease_is_warned_and_expires_in_the_channel(
    bot: BotServer, slack: LocalSlack
) -> None:
    secret = secret_in(text_of(bot.reply(CAROL, "token create ci --as ci-deploy")))
    taken = api(
        bot, "POST", "/v1/acquire", secret, json={"resource": "prod-q", "ttl": 4}
    )
    assert taken.status_code == 200, taken.text

    def in_channel(word: str) -> Any:
        return lambda c: (
            c.method == "chat.postMessage"
            and c.payload.get("channel") == CHANNEL
            and "prod-q" in str(c.payload)
            and word in str(c.payload)
        )

    [warned] = slack.wait_for(in_channel("expires"), timeout=20)
    assert "ci-deploy" in str(warned.payload)
    slack.wait_for(in_channel("expired"), timeout=20)
    # Nobody in Slack is ci-deploy: everything about prod-q went to the channel.
    about = [c for c in slack.calls if "prod-q" in str(c.payload)]
    assert {c.payload.get("channel") for c in about} == {CHANNEL}


def test_a_lease_taken_through_the_api_shows_on_the_board(
    bot: BotServer, slack: LocalSlack
) -> None:
    bot.command(ALICE, "board", channel="C0BOARD")
    slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage" and c.payload.get("channel") == "C0BOARD"
        ),
        timeout=15,
    )
    secret = secret_in(text_of(bot.reply(ALICE, "token create laptop")))
    taken = api(bot, "POST", "/v1/acquire", secret, json={"resource": "db-board"})
    assert taken.status_code == 200, taken.text
    slack.wait_for(
        lambda c: (
            c.method == "chat.update"
            and c.payload.get("channel") == "C0BOARD"
            and "db-board" in str(c.payload)
        ),
        timeout=20,
    )


def test_a_change_through_a_separate_api_server_is_announced_from_history(
    bot: BotServer, slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    from stormlock.testing.servers import run_api

    # `stormlock serve` alone, on the bot's store, with the same announce channel.
    workdir = tmp_path / "api"
    workdir.mkdir()
    extra = f"\n[bot]\nannounce_channel = {CHANNEL}\n[pool.far]\nmembers = prod-far-1\n"
    with run_api(workdir, extra, store=("sqlite", bot_config.options)) as alone:
        secret = alone.token("deploy", "ci-deploy")
        taken = requests.post(
            alone.url + "/v1/acquire",
            json={"resource": "far", "ttl": "1h"},  # a pool: its one member
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert taken.status_code == 200, taken.text
        changed_at = utcnow()
    # The bot made no change; its recovery pass finds this one in history.
    [posted] = slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload.get("channel") == CHANNEL
            and "prod-far" in str(c.payload)
        ),
        timeout=40,
    )
    assert "ci-deploy" in str(posted.payload)
    assert "*prod-far-1* from *far*" in str(posted.payload)
    wait_until(lambda: recovered_past(bot.config, changed_at), timeout=40)
    bot.settle(3)
    again = [c for c in slack.calls if "prod-far" in str(c.payload)]
    assert len(again) == 1, "announced once"
