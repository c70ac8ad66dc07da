"""`/stormlock` through the real HTTP endpoint, on SQLite and Redis."""

from __future__ import annotations

import threading
from datetime import timedelta

import requests

from stormlock.testing.slack import (
    ALICE,
    ANSWERED,
    BOB,
    CAROL,
    DAVE,
    SECRET,
    UUID,
    BotServer,
    answers,
    lease_id_in,
    sign,
    text_of,
)


def test_acquire_gives_the_id_privately_and_tells_the_channel(bot: BotServer) -> None:
    reply = bot.reply(ALICE, "acquire prod-db 2h applying terraform")
    assert reply.payload.get("response_type", "ephemeral") == "ephemeral"
    assert reply.problems == []
    lease_id = lease_id_in(reply)
    lease = bot.config.create().current("prod-db")
    assert lease is not None and lease.id == lease_id
    assert lease.principal == ALICE.email
    assert lease.note == "applying terraform"
    assert lease.expires is not None
    assert timedelta(minutes=119) < lease.expires - lease.created <= timedelta(hours=2)
    actions = [b for b in reply.payload["blocks"] if b["type"] == "actions"]
    labels = [e["text"]["text"] for e in actions[0]["elements"]]
    assert "Release" in labels and any(label.startswith("Renew") for label in labels)
    post = bot.slack.wait_for(lambda c: c.method == "chat.postMessage")[0]
    assert post.payload["channel"] == "C0OPS"
    shown = text_of(post)
    assert "prod-db" in shown and f"<@{ALICE.id}>" in shown
    assert "applying terraform" in shown and "<!date^" in shown
    assert lease_id not in shown


def test_contention_names_the_holder_and_offers_the_line(bot: BotServer) -> None:
    bot.reply(ALICE, "lock prod-db 1h db patch")
    reply = bot.reply(BOB, "acquire prod-db")
    shown = text_of(reply)
    assert "held by" in shown and f"<@{ALICE.id}>" in shown
    assert "db patch" in shown and shown.count("<!date^") == 2
    assert not UUID.search(shown), "the holder's lease id must not leak"
    buttons = [
        e
        for b in reply.payload["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    ]
    assert [b["text"]["text"] for b in buttons] == [
        "Join the line",
        "Ask the holder to release",
        "Notify me when free",
    ]


def test_release_by_holder_without_lease_id(bot: BotServer) -> None:
    bot.reply(ALICE, "acquire db")
    reply = bot.reply(ALICE, "release db")
    assert "You released" in text_of(reply)
    assert bot.config.create().current("db") is None
    bot.slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "released" in text_of(c)
    )


def test_release_with_lease_id(bot: BotServer) -> None:
    lease_id = lease_id_in(bot.reply(ALICE, "acquire db"))
    assert "You released" in text_of(bot.reply(BOB, f"release db {lease_id}"))
    assert bot.config.create().current("db") is None


def test_only_the_holder_releases_and_renews(bot: BotServer) -> None:
    bot.reply(ALICE, "acquire db")
    assert "only the holder" in text_of(bot.reply(BOB, "release db"))
    assert "only they can renew" in text_of(bot.reply(BOB, "renew db 1h"))
    assert "only admins" in text_of(bot.reply(BOB, "release db --force"))
    assert bot.config.create().current("db") is not None


def test_admin_force_release_tells_the_holder_and_the_channel(bot: BotServer) -> None:
    bot.reply(ALICE, "acquire db")
    reply = bot.reply(CAROL, "release db --force")
    assert "You released" in text_of(reply)
    assert bot.config.create().current("db") is None
    dm = bot.slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage" and c.payload["channel"] == "D" + ALICE.id
        )
    )[0]
    assert "force-released" in text_of(dm) and f"<@{CAROL.id}>" in text_of(dm)
    bot.slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.payload["channel"] == "C0OPS"
            and "force-released" in text_of(c)
        )
    )


def test_renew_extends_without_lease_id(bot: BotServer) -> None:
    bot.reply(ALICE, "acquire db 10m")
    before = bot.config.create().current("db")
    reply = bot.reply(ALICE, "extend db 3h")
    assert "You hold" in text_of(reply)
    after = bot.config.create().current("db")
    assert before and after and before.expires and after.expires
    assert after.expires - before.expires > timedelta(hours=2)
    assert "not held" in text_of(bot.reply(ALICE, "renew nothing-here"))


def test_current_is_held_and_list(bot: BotServer) -> None:
    lease_id = lease_id_in(bot.reply(ALICE, "acquire db 1h migrating"))
    bot.reply(BOB, "acquire cache")
    current = text_of(bot.reply(BOB, "who db"))
    assert f"<@{ALICE.id}>" in current and "migrating" in current
    assert lease_id not in current
    assert "is free" in text_of(bot.reply(BOB, "status free-thing"))
    assert "is the active lease" in text_of(bot.reply(ALICE, f"is-held db {lease_id}"))
    assert "not active" in text_of(bot.reply(ALICE, "is-held db not-a-lease"))
    listed = bot.reply(BOB, "list")
    shown = text_of(listed)
    assert "db" in shown and "cache" in shown and "2 held" in shown
    assert not UUID.search(shown)


def test_unknown_and_empty_commands_get_help(bot: BotServer) -> None:
    assert "I don't know `frobnicate`" in text_of(bot.reply(ALICE, "frobnicate db"))
    assert "/stormlock acquire" in text_of(bot.reply(ALICE, ""))
    shown = text_of(bot.reply(ALICE, "help"))
    assert "/stormlock acquire" in shown
    # The line, its claim window, and asking the holder are explained.
    assert "/stormlock queue" in shown and "claim window" in shown
    assert "/stormlock ask" in shown and "Take it" in shown


def test_bad_input_gets_a_one_line_explanation(bot: BotServer) -> None:
    cases = {
        "acquire": "which resource",
        "acquire db 0s": "positive",
        "acquire db 300": "no unit",
        "acquire db --ttl soon": "cannot read",
        "renew db forever": "cannot read",
        "is-held db": "which lease id",
        "release db a b": "too many",
        "acquire " + "x" * 201: "201 characters",
    }
    for text, hint in cases.items():
        reply = bot.reply(ALICE, text)
        message = reply.payload["text"]
        assert hint in message, (text, message)
        assert "\n" not in message and "Traceback" not in text_of(reply)


def test_any_valid_resource_name_works(bot: BotServer) -> None:
    for name in ("release", "list", "eu-west-1/terraform", "ÄÖÜ", "a<b>&c"):
        reply = bot.reply(ALICE, f"acquire {name} 5m")
        assert "You hold" in text_of(reply), name
        assert "You released" in text_of(bot.reply(ALICE, f"release {name}"))


def test_user_without_email_is_recorded_by_id(bot: BotServer) -> None:
    bot.reply(DAVE, "acquire db")
    lease = bot.config.create().current("db")
    assert lease is not None and lease.principal == DAVE.id
    assert "You released" in text_of(bot.reply(DAVE, "release db"))


def test_cli_lease_under_email_is_shown_as_mention_and_released_from_slack(
    bot: BotServer,
) -> None:
    backend = bot.config.create()
    backend.acquire_lease("db", ALICE.email or "", timedelta(hours=1), "from the CLI")
    shown = text_of(bot.reply(BOB, "who db"))
    assert f"<@{ALICE.id}>" in shown
    assert "You released" in text_of(bot.reply(ALICE, "release db"))
    assert backend.current("db") is None


def test_many_users_racing_get_exactly_one_holder(bot: BotServer) -> None:
    users = [ALICE, BOB, CAROL, DAVE]
    threads = [
        threading.Thread(target=bot.command, args=(users[i % 4], "acquire hot 1h"))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    replies = bot.slack.wait_for(lambda c: answers(c), count=20)
    won = [c for c in replies if "You hold" in text_of(c)]
    lost = [c for c in replies if "held by" in text_of(c)]
    mine = [c for c in replies if "You already hold" in text_of(c)]
    assert len(won) == 1 and len(lost) == 15
    holder = bot.config.create().current("hot")
    assert holder is not None and lease_id_in(won[0]) == holder.id
    winner = next(u for u in users if u.id == won[0].context["user"])
    assert all(f"<@{winner.id}>" in text_of(c) for c in lost)
    # The winner's own four other tries are told it is theirs already.
    assert len(mine) == 4 and {c.context["user"] for c in mine} == {winner.id}


def test_forged_and_stale_requests_get_401(bot: BotServer) -> None:
    body = "command=%2Fstormlock&text=acquire+x&user_id=U01ALICE"
    url = bot.url + "/slack/events"
    content = {"Content-Type": "application/x-www-form-urlencoded"}
    forged = requests.post(
        url, data=body, headers={**content, **sign(body, secret="wrong")}, timeout=10
    )
    assert forged.status_code == 401
    stale = requests.post(
        url,
        data=body,
        headers={
            **content,
            **sign(body, timestamp=int(__import__("time").time()) - 301),
        },
        timeout=10,
    )
    assert stale.status_code == 401
    unsigned = requests.post(url, data=body, headers=content, timeout=10)
    assert unsigned.status_code == 401
    tampered_headers = sign(body)
    tampered = requests.post(
        url, data=body + "x", headers={**content, **tampered_headers}, timeout=10
    )
    assert tampered.status_code == 401
    assert bot.config.create().current("x") is None
    assert bot.slack.of("response_url") == []


def test_healthz_and_unknown_paths(bot: BotServer) -> None:
    assert requests.get(bot.url + "/healthz", timeout=10).status_code == 200
    assert requests.get(bot.url + "/nope", timeout=10).status_code == 404


def test_lease_ids_never_leave_the_acquirers_private_replies(bot: BotServer) -> None:
    ids = set()
    ids.add(lease_id_in(bot.reply(ALICE, "acquire a 1h")))
    ids.add(lease_id_in(bot.reply(BOB, "acquire b 1h")))
    bot.reply(BOB, "acquire a")
    bot.reply(CAROL, "list")
    bot.reply(CAROL, "release a --force")
    bot.reply(BOB, "renew b 2h")
    bot.event(
        {"type": "app_home_opened", "user": CAROL.id, "channel": "D1", "tab": "home"}
    )
    bot.slack.wait_for(
        lambda c: c.method == "views.publish" and c.payload.get("user_id") == CAROL.id
    )
    for call in bot.slack.calls:
        shown = text_of(call)
        for lease_id in ids & set(UUID.findall(shown)):
            assert call.method in ANSWERED, (call.method, shown)
            owner = (
                ALICE.id if lease_id in text_of(bot.replies_to(ALICE)[0]) else BOB.id
            )
            assert call.context["user"] == owner
        assert call.problems == []
    logs = bot.logs()
    assert logs, "the bot logged nothing at DEBUG"
    for lease_id in ids:
        assert lease_id not in logs
    assert bot.slack.token not in logs
    assert SECRET not in logs, "the signing secret is never logged"
    assert "Traceback" not in logs
