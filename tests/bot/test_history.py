"""Lease history in Slack, through the real endpoint."""

from __future__ import annotations

from stormlock.testing.slack import ALICE, BOB, CAROL, BotServer, text_of


def test_history_in_slack_names_who_forced_it(bot: BotServer) -> None:
    bot.reply(ALICE, "acquire db 1h applying terraform")
    bot.reply(CAROL, "release db --force")  # CAROL is the admin
    answer = bot.reply(BOB, "history db")
    shown = text_of(answer)
    assert "History of db" in shown
    assert f"<@{ALICE.id}> took it" in shown and "applying terraform" in shown
    assert f"<@{CAROL.id}> force-released it from <@{ALICE.id}>" in shown
    assert "<!date^" in shown, "times in the reader's own time zone"
    assert answer.problems == []
    # The store has it too, with who acted and from where.
    events = bot.config.create().history("db")
    assert [(e.event, e.actor, e.source) for e in events] == [
        ("acquired", ALICE.email, "slack"),
        ("forced", CAROL.email, "slack"),
    ]
    assert "history of" not in text_of(bot.reply(BOB, "history nothing-here")).lower()


def test_the_app_home_lists_your_recent_leases(bot: BotServer) -> None:
    bot.reply(ALICE, "acquire db 1h")
    bot.reply(ALICE, "release db")
    bot.reply(BOB, "acquire cache 1h")
    bot.event({"type": "app_home_opened", "user": ALICE.id, "tab": "home"})
    [home] = bot.slack.wait_for(lambda c: c.method == "views.publish")
    shown = text_of(home)
    assert "Your recent leases" in shown and "*db*" in shown
    assert "*cache*" not in shown.split("Held right now")[0], "only your own"
    assert home.problems == []
