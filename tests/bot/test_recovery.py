"""Nothing lost, nothing twice, even on SIGKILL (docs/pipeline.md): the
notices that follow a change are recovered from history by the restarted
bot or by another replica, and sent once."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import requests

from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import Call, LocalSlack
from stormlock.testing.slack import ALICE, CAROL, BotServer, running_bot, text_of
from stormlock.tokens import TOKEN_FORM

# Fast passes; a claim of a killed bot lapses soon.
FAST = "reconcile_interval = 200ms\nclaim_ttl = 2s\nrecover_after = 10s"
RESOURCES = ("alpha-db", "beta-db", "gamma-db", "delta-db")
API_RESOURCES = ("api-one", "api-two")


def announcements(slack: LocalSlack, resource: str) -> list[Call]:
    return [
        c
        for c in slack.of("chat.postMessage")
        if c.payload.get("channel") == "C0OPS" and f"took *{resource}*" in text_of(c)
    ]


def forced_dms(slack: LocalSlack) -> list[Call]:
    return [
        c
        for c in slack.of("chat.postMessage")
        if "force-released your lease" in text_of(c)
    ]


def announced(slack: LocalSlack, resource: str, call: Call) -> bool:
    return call in announcements(slack, resource)


def changes_then_kill(
    bot: BotServer, slack: LocalSlack, also: Callable[[], None] | None = None
) -> None:
    """Four acquires and a forced release, answered (and `also`'s changes);
    the bot is killed while Slack holds its first post, and that post is
    lost with it."""
    lost = slack.hold("chat.postMessage", lose=True)
    for resource in RESOURCES:
        assert "You hold" in text_of(bot.reply(ALICE, f"acquire {resource} 1h"))
    answer = bot.reply(CAROL, f"release {RESOURCES[-1]} --force")
    assert "released" in text_of(answer).lower()
    if also is not None:
        also()
    slack.wait_in_flight("chat.postMessage")
    bot.kill()
    lost.set()
    slack.clear_failures()


def assert_each_told_once(survivor: BotServer, slack: LocalSlack) -> None:
    def announcing(resource: str) -> Callable[[Call], bool]:
        return lambda call: call in announcements(slack, resource)

    for resource in RESOURCES:
        slack.wait_for(announcing(resource), timeout=30)
    slack.wait_for(lambda c: c in forced_dms(slack), timeout=30)
    survivor.settle(20)  # and nothing more comes
    for resource in RESOURCES:
        assert len(announcements(slack, resource)) == 1, resource
    assert len(forced_dms(slack)) == 1


# Every backend records the channel (the conformance kit checks it); the
# claims do not depend on the store: Redis is enough, and the suite's time.
@pytest.mark.parametrize("bot_config", ["redis"], indirect=True)
def test_a_restarted_bot_sends_what_its_killed_self_had_not(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    with running_bot(slack, bot_config, tmp_path, FAST) as bot:
        changes_then_kill(bot, slack)
    assert all(announcements(slack, r) == [] for r in RESOURCES), "all were lost"
    with running_bot(slack, bot_config, tmp_path, FAST) as again:
        assert_each_told_once(again, slack)


def test_without_history_a_restarted_bot_still_sends_what_its_killed_self_had_not(
    slack: LocalSlack, tmp_path: Path
) -> None:
    """History off: the core keeps each change's notices until they are
    sent (`owed/` records), those made through the bot's HTTP API too, and
    the restarted bot sends them from there."""
    config = BackendConfig("sqlite", {"path": str(tmp_path / "locks.db")})
    settings = f"{FAST}\nannounce_channel = C0OPS"  # the API's changes too
    off = "history = none"
    with running_bot(slack, config, tmp_path, settings, default=off) as bot:
        made = text_of(bot.reply(ALICE, "token create ci --resources api-*"))
        found = re.search(TOKEN_FORM, made)
        assert found, made

        def through_the_api() -> None:
            for resource in API_RESOURCES:
                taken = requests.post(
                    bot.url + "/v1/acquire",
                    headers={"Authorization": f"Bearer {found.group(0)}"},
                    json={"resource": resource, "ttl": "1h"},
                    timeout=10,
                )
                assert taken.status_code == 200, taken.text

        changes_then_kill(bot, slack, through_the_api)
    with running_bot(slack, config, tmp_path, settings, default=off) as again:
        for resource in API_RESOURCES:
            slack.wait_for(partial(announced, slack, resource), timeout=30)
        assert_each_told_once(again, slack)
        for resource in API_RESOURCES:
            assert len(announcements(slack, resource)) == 1, resource


@pytest.mark.parametrize("bot_config", ["redis"], indirect=True)
def test_another_replica_sends_what_a_killed_one_had_not(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    with (
        running_bot(slack, bot_config, tmp_path, FAST, name="replica-1") as one,
        running_bot(slack, bot_config, tmp_path, FAST, name="replica-2") as two,
    ):
        changes_then_kill(one, slack)
        assert_each_told_once(two, slack)


def test_sigterm_in_a_burst_with_a_slow_slack_ends_in_time_and_loses_nothing(
    slack: LocalSlack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = BackendConfig("sqlite", isolated_options("sqlite", request, tmp_path))
    slack.slow("chat.postMessage", 3.0)
    channels = [f"C0CH{n:02d}" for n in range(20)]
    jobs = {f"job-{n}": channels[n % len(channels)] for n in range(40)}
    # A claim outlives a post (as the default two minutes do).
    settings = "reconcile_interval = 200ms\nclaim_ttl = 20s\nrecover_after = 10s"
    with running_bot(slack, config, tmp_path, settings) as bot:
        for job, channel in jobs.items():
            bot.reply(ALICE, f"acquire {job} 1h", channel=channel)
        bot.process.send_signal(signal.SIGTERM)
        bot.process.wait(60)
        logs = bot.logs()
    # The bot's own shutdown finished before gunicorn's kill, and said what
    # it could not send (at 3 s a post, it cannot send them all).
    assert "shut down in" in logs
    assert "Slack sends unsent" in logs
    slack.slow("chat.postMessage", 0)
    with running_bot(slack, config, tmp_path, settings) as again:
        for job, channel in jobs.items():
            slack.wait_for(posted(job, channel), timeout=30)
        again.settle(10)
    copies = [
        len([c for c in slack.calls if posted(j, ch)(c)]) for j, ch in jobs.items()
    ]
    # Only a post in flight when the bot stopped (two outbox threads) may
    # have reached Slack and be sent again.
    assert sum(copies) - len(jobs) <= 2 * 3  # a coalesced post names ≤ 3 jobs


def posted(job: str, channel: str) -> Callable[[Call], bool]:
    return lambda call: (
        call.method == "chat.postMessage"
        and call.payload.get("channel") == channel
        and f"took *{job}*" in text_of(call)
    )
