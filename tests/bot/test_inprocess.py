"""The bot's pipeline, core and outbox driven in-process over a real store,
with the in-repo fake Slack (stormlock.testing.localslack) recording and
validating every Web API and response_url call: no bot process, no Bolt.
What needs the HTTP endpoint itself (signatures, the ack's shape on the
wire, SIGKILL and SIGTERM) stays in the subprocess tests."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from configparser import ConfigParser
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from stormlock.backends.sqlite import SQLite
from stormlock.bot import outbox
from stormlock.bot.app import Bot, build_app
from stormlock.bot.ledger import Ledger
from stormlock.bot.service import LeaseService
from stormlock.bot.settings import BotSettings
from stormlock.config import Config
from stormlock.testing.localslack import Call, LocalSlack, User
from stormlock.testing.slack import UUID, command_form, text_of
from tests.bot.test_reminders import wait_dm
from tests.support import wait_until

ALICE = User("U0ALICE", "alice", "alice@example.com")
BOB = User("U0BOB", "bob", "bob@example.com")


@pytest.fixture
def slack() -> Iterator[LocalSlack]:
    fake = LocalSlack(users=[ALICE, BOB]).start()
    yield fake
    fake.stop()


def make_bot(tmp_path: Path, slack: LocalSlack, bot: str = "") -> Bot:
    parser = ConfigParser(interpolation=None, default_section="\0none")
    parser.read_string(
        f"[backend.sqlite]\npath = {tmp_path / 'locks.db'}\n[bot]\n{bot}\n"
    )
    env = {"SLACK_BOT_TOKEN": slack.token, "SLACK_API_URL": slack.api_url}
    settings = BotSettings.load(Config(parser), env=env)
    return build_app(settings, LeaseService(settings), verify_requests=False)


@pytest.fixture
def bot(tmp_path: Path, slack: LocalSlack) -> Iterator[Bot]:
    made = make_bot(tmp_path, slack)
    yield made
    made.close(5)


def command(
    bot: Bot, slack: LocalSlack, user: User, text: str, channel: str = "C0OPS"
) -> dict[str, Any] | None:
    """`/stormlock TEXT` as Slack hands it to the listener; the answer if it
    came back for the ack (recorded as the person would see it)."""
    body = command_form(slack, user, text, channel)
    message = bot.pipeline.command(body)
    if message is None:
        return None
    # What the listener acks with (listeners/commands.py).
    payload = {**message.kwargs(), "response_type": "ephemeral"}
    slack.acked(user.id, channel, payload)
    return payload


def posts(slack: LocalSlack, channel: str = "C0OPS") -> list[Call]:
    """The posts Slack took (not those it failed on purpose)."""
    sent = slack.of("chat.postMessage")
    return [
        call
        for call in sent
        if call.payload.get("channel") == channel and "failed" not in call.context
    ]


def store_calls(*operations: str) -> float:
    """How many of these operations the bot made on its SQLite store so far
    (its /metrics histogram's count)."""
    return sum(
        REGISTRY.get_sample_value(
            "stormlock_backend_operation_seconds_count",
            {"backend": "sqlite", "operation": operation},
        )
        or 0.0
        for operation in operations
    )


def settled(bot: Bot) -> None:
    """Until the outbox holds nothing: no send queued, paced or waiting
    for its retry."""
    wait_until(lambda: bot.pipeline.waiting() == 0, timeout=30)
    bot.pipeline.outbox.drain(10)


def test_the_answer_comes_in_the_ack_and_the_channel_hears_without_the_id(
    bot: Bot, slack: LocalSlack
) -> None:
    answer = command(bot, slack, ALICE, "acquire prod-db 1h applying terraform")
    assert answer is not None, "the answer did not fit in the ack"
    assert answer["response_type"] == "ephemeral"
    (lease_id,) = UUID.findall(json.dumps(answer))
    assert slack.of("ack")[0].problems == []
    (post,) = slack.wait_for(lambda c: c.method == "chat.postMessage")
    assert post.problems == []
    assert "prod-db" in text_of(post)
    assert lease_id not in text_of(post)
    assert not slack.of("response_url"), "the answer went out twice"


def test_announcements_to_one_channel_are_coalesced_in_order(
    bot: Bot, slack: LocalSlack
) -> None:
    names = [f"svc-{n:02d}" for n in range(50)]
    for name in names:
        command(bot, slack, ALICE, f"acquire {name} 1h")
    slack.wait_for(lambda c: c in posts(slack) and "svc-49" in text_of(c), timeout=30)
    settled(bot)
    sent = posts(slack)
    assert len(sent) <= 4, f"{len(sent)} posts for 50 changes"
    text = "".join(text_of(c) for c in sent)
    places = [text.find(f"*{name}*") for name in names]
    assert all(p >= 0 for p in places), "a change was never announced"
    assert places == sorted(places), "announced out of order"
    assert all(text.count(f"*{name}*") == 1 for name in names), "announced twice"
    assert all(c.problems == [] for c in sent)


MORE = re.compile(r"([\d,]+) more lease changes")


def named_and_counted(sent: list[Call]) -> tuple[list[str], int]:
    """The resources a channel's posts name as taken, in order, and how many
    changes they count instead of naming."""
    text = "".join(json.dumps(c.payload.get("blocks")) for c in sent)
    named = re.findall(r"took \*(svc-[\w]+)\*", text)
    counted = sum(int(n.replace(",", "")) for n in MORE.findall(text))
    return named, counted


def test_more_changes_than_slacks_pace_lets_through_are_counted_not_queued(
    bot: Bot, slack: LocalSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One post a second names about a hundred changes: a channel that gets
    more does not fall ever further behind (nor the bot's memory grow)."""
    monkeypatch.setattr(outbox, "OVERFLOW_AFTER", 0.5)
    names = [f"svc-{n:04d}" for n in range(1_500)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: command(bot, slack, ALICE, f"acquire {n} 1h"), names))
    settled(bot)
    sent = posts(slack)
    assert all(c.problems == [] for c in sent), "Slack refused a post"
    named, counted = named_and_counted(sent)
    assert counted > 0, "nothing was counted: the test did not overflow"
    assert len(named) + counted == len(names), "a change was lost or told twice"
    assert len(set(named)) == len(named)
    assert len(sent) < 30, f"{len(sent)} posts"


def test_a_post_slack_finds_too_long_is_split_not_lost(
    bot: Bot, slack: LocalSlack
) -> None:
    # The next post, a second after this one, names the burst below.
    command(bot, slack, ALICE, "acquire svc-first 1h")
    slack.wait_for(lambda c: c in posts(slack))
    slack.fail_next(
        "chat.postMessage", 200, {}, {"ok": False, "error": "msg_blocks_too_long"}
    )
    names = [f"svc-{n:02d}" for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: command(bot, slack, ALICE, f"acquire {n} 1h"), names))
    settled(bot)
    named, counted = named_and_counted(posts(slack))
    assert sorted(named) == sorted(["svc-first", *names]) and counted == 0


@pytest.mark.parametrize("status", [429, 500])
def test_an_announcement_slack_refused_for_a_moment_is_sent_once(
    bot: Bot, slack: LocalSlack, status: int
) -> None:
    for _ in range(3):  # past the client's own retry: the outbox retries
        slack.fail_next("chat.postMessage", status, {"Retry-After": "1"})
    command(bot, slack, ALICE, "acquire prod-db 1h")
    slack.wait_for(lambda c: c in posts(slack) and "prod-db" in text_of(c))
    settled(bot)
    refused = [c for c in slack.of("chat.postMessage") if "failed" in c.context]
    assert len(refused) == 3
    assert len([c for c in posts(slack) if "prod-db" in text_of(c)]) == 1


def test_a_channel_the_bot_is_not_in_is_told_to_the_person_not_retried(
    bot: Bot, slack: LocalSlack
) -> None:
    slack.fail_next(
        "chat.postMessage", 200, {}, {"ok": False, "error": "not_in_channel"}
    )
    command(bot, slack, ALICE, "acquire prod-db 1h")
    slack.wait_for(
        lambda c: c.method == "response_url" and "Invite the app" in text_of(c)
    )
    settled(bot)
    assert len(slack.of("chat.postMessage")) == 1, "retried a refusal for good"


def test_someone_slack_is_slow_to_tell_about_never_holds_up_a_known_person(
    bot: Bot, slack: LocalSlack
) -> None:
    assert command(bot, slack, ALICE, "acquire warm-up 1h") is not None  # now known
    slack.slow("users.info", 5)
    waiting = slack.hold("users.info")
    try:
        bob = command(bot, slack, BOB, "acquire other 1h")
        assert bob is None, "Bob's answer cannot be ready: Slack holds users.info"
        alice = command(bot, slack, ALICE, "acquire prod-db 1h")
        assert alice is not None, "Alice waited for Bob's lookup"
        assert UUID.findall(json.dumps(alice))
    finally:
        slack.slow("users.info", 0)
        waiting.set()
    slack.wait_for(lambda c: c.method == "response_url" and "other" in text_of(c))


def test_two_replicas_offer_the_turn_once(tmp_path: Path, slack: LocalSlack) -> None:
    """When the resource frees, both replicas' passes look at its line at
    once: the first in line gets one "you're up" DM, and the channel one
    announcement (the ledger's claim, shared through the store)."""
    first, second = make_bot(tmp_path, slack), make_bot(tmp_path, slack)
    try:
        command(first, slack, ALICE, "acquire prod-db 1h")
        queued = command(second, slack, BOB, "queue prod-db")
        assert queued is not None and "1st" in json.dumps(queued)
        for each in (first, second):
            settled(each)  # what the commands set off has run
        # Freed as the CLI would free it: no bot's own follow-up offers it.
        store = SQLite(path=str(tmp_path / "locks.db"))
        lease = store.current("prod-db")
        assert lease is not None and store.release_lease("prod-db", lease.id)
        store.close()
        start = threading.Barrier(2)

        def offer(bot: Bot) -> int:
            start.wait()
            return bot.reminders.offer_turn("prod-db")

        with ThreadPoolExecutor(2) as pool:
            offered = list(pool.map(offer, (first, second)))
        assert sorted(offered) == [0, 1]
        for each in (first, second):
            settled(each)

        def up(call: Call) -> bool:
            return "Take it" in text_of(call) and "failed" not in call.context

        assert len([c for c in slack.of("chat.postMessage") if up(c)]) == 1
        said = [c for c in posts(slack) if "is up" in text_of(c)]
        assert len(said) == 1, [text_of(c) for c in said]
    finally:
        first.close(5)
        second.close(5)


def test_an_action_never_lists_records_or_leases(bot: Bot, slack: LocalSlack) -> None:
    """Acquire, renew, current and release, with what follows them (the
    announcement, the wait list and the line after a release), read single
    records only: on Redis a listing reads every record (a week of sent
    markers), so it must stay off the action's path."""

    def listings() -> float:
        return store_calls("list_leases", "list_prefix", "list_expiring")

    command(bot, slack, ALICE, "acquire warm-up 1h")
    settled(bot)
    before = listings()
    for text in ("acquire db 1h", "renew db 2h", "current db", "release db"):
        assert command(bot, slack, ALICE, text) is not None, text
    settled(bot)
    assert listings() == before
    assert [c for c in posts(slack) if "*db*" in text_of(c)], "never announced"


def test_an_acquire_writes_no_origin_record_where_history_keeps_the_channel(
    bot: Bot, slack: LocalSlack
) -> None:
    """SQLite's history records the channel with the change, so the expiry
    notice finds it there: the acquire writes the lease and its
    announcement's sent marker, not an origin record (one more store round
    trip on every acquire)."""

    def writes() -> float:
        return store_calls("acquire_lease")

    command(bot, slack, ALICE, "acquire warm-up 1h")
    settled(bot)
    before = writes()
    assert command(bot, slack, ALICE, "acquire db 1h") is not None
    settled(bot)
    # The lease, its sent marker, and the post's turn at the channel (one a
    # post, not a change: under load a post names many changes).
    assert writes() - before == 3, "the lease, its sent marker, the turn only"
    service = bot.pipeline.service
    lease = service.current("db")
    assert lease is not None
    assert service.channel_of("db", lease.fence) == "C0OPS"


def test_what_this_bot_recorded_as_sent_is_known_without_a_store_read(
    bot: Bot, slack: LocalSlack
) -> None:
    """The recovery pass asks, for each change of the last minute or two,
    whether its notice went out: for the ones this process sent it needs no
    store read (one per change, under load). Another replica still reads
    the marker, and finds it."""

    def reads() -> float:
        return store_calls("current", "current_many")

    command(bot, slack, ALICE, "acquire db 1h")
    slack.wait_for(lambda c: c in posts(slack) and "*db*" in text_of(c))
    settled(bot)
    ledger = bot.pipeline.outbox.ledger
    assert ledger is not None
    ((key, _marker),) = ledger.claimed("told/")
    before = reads()
    assert ledger.done(key)
    assert reads() == before, "read the store for its own send"
    other = Ledger(ledger.records, ledger.claim_ttl)  # another replica's
    assert other.done(key)
    assert reads() == before + 1
    assert not other.done(key.replace("acquired", "released"))


def test_a_release_learns_whether_anyone_waits_with_the_release_itself(
    bot: Bot, slack: LocalSlack
) -> None:
    """The line's mark and the wait list's marker are read in the release's
    own call, after the release (one round trip where the store can): with
    the holder check before it, a release is two store calls, and nothing
    follows it when nobody waits. Someone waiting is still told."""

    def calls() -> tuple[float, float, float]:
        return (
            store_calls("current"),
            store_calls("release_and_look"),
            store_calls("current_many", "release_lease"),
        )

    command(bot, slack, ALICE, "acquire warm-up 1h")
    command(bot, slack, ALICE, "release warm-up")
    command(bot, slack, ALICE, "acquire db 1h")
    settled(bot)
    single, both, other = calls()
    assert command(bot, slack, ALICE, "release db") is not None
    settled(bot)
    assert calls() == (single + 1, both + 1, other), "holder check, release+look"
    command(bot, slack, ALICE, "acquire db 1h")
    command(bot, slack, BOB, "queue db")
    settled(bot)
    command(bot, slack, ALICE, "release db")
    wait_dm(slack, BOB.id, "You're up for *db*")


def test_two_workers_take_turns_at_a_channel_about_once_a_second(
    tmp_path: Path, slack: LocalSlack
) -> None:
    """Two bots over one store (gunicorn workers, or replicas) announce in
    one channel: each post waits for the channel's turn in the store, so
    together they post about once a second, as Slack allows, and every
    change is named once."""
    first, second = make_bot(tmp_path, slack), make_bot(tmp_path, slack)
    try:
        names = [f"svc-{n:02d}" for n in range(40)]
        for n, name in enumerate(names):
            command((first, second)[n % 2], slack, ALICE, f"acquire {name} 1h")

        def announced() -> str:
            return "".join(text_of(c) for c in posts(slack))

        wait_until(lambda: all(f"*{name}*" in announced() for name in names), 30)
        for each in (first, second):
            settled(each)
        sent = posts(slack)
        assert len(sent) >= 2, "one bot announced everything: no test of turns"
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(sent)]
        assert min(gaps) >= 0.8 * outbox.CHANNEL_PACE, gaps
        assert all(announced().count(f"*{name}*") == 1 for name in names)
    finally:
        first.close(5)
        second.close(5)


def test_a_slow_post_is_never_overtaken_by_the_channels_next(
    bot: Bot, slack: LocalSlack
) -> None:
    """Slack takes 1.5 s a post: the channel's next post waits for it, so
    posts reach the channel one at a time, in order (two at once may land in
    either order)."""
    slack.slow("chat.postMessage", 1.5)
    names = [f"svc-{n:02d}" for n in range(12)]
    for name in names:  # changes keep coming while posts are under way
        command(bot, slack, ALICE, f"acquire {name} 1h")
        time.sleep(0.25)  # the arrivals' pace (the scenario), not a wait
    wait_until(lambda: "svc-11" in "".join(text_of(c) for c in posts(slack)), 60)
    settled(bot)
    sent = posts(slack)
    # Recorded as each post finishes: one at a time means 1.5 s apart.
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(sent)]
    assert gaps and min(gaps) >= 1.5, gaps
    text = "".join(text_of(c) for c in sent)
    places = [text.find(f"*{name}*") for name in names]
    assert all(p >= 0 for p in places) and places == sorted(places)


def test_a_release_in_a_leases_last_seconds_is_never_told_as_an_expiry(
    tmp_path: Path, slack: LocalSlack
) -> None:
    """Leases watched near their end (warned), then released in their last
    seconds: from Slack, and from the store as the CLI or the API release.
    Once their time is over, nobody is told they expired; the one left to
    run out is."""
    bot = make_bot(tmp_path, slack, "warn_before = 3s\nchannels = C0OPS")
    try:
        for resource in ("by-slack", "by-cli", "ran-out"):
            command(bot, slack, ALICE, f"acquire {resource} 4s")
        bot.reminders.run()  # each is due for its warning: now watched
        assert len(bot.reminders.records.list("watch/")) == 3
        command(bot, slack, ALICE, "release by-slack")
        store = SQLite(path=str(tmp_path / "locks.db"))
        lease = store.current("by-cli")
        assert lease is not None and store.release_lease("by-cli", lease.id)
        store.close()
        wait_until(
            lambda: bot.reminders.service.lease_of("ran-out") is None, timeout=10
        )
        wait_until(
            lambda: (
                not bot.reminders.run().errors
                and not bot.reminders.records.list("watch/")
            )
        )
        settled(bot)
    finally:
        bot.close(5)
    told = [
        text_of(call)
        for call in slack.of("chat.postMessage")
        if "expired" in text_of(call) and "failed" not in call.context
    ]
    assert told and all("ran-out" in text for text in told), told
    assert not any("by-" in text for text in told), told


def test_boards_wait_for_slacks_retry_after_and_are_capped(
    tmp_path: Path, slack: LocalSlack
) -> None:
    """100 boards (kept from before the cap), chat.update rate-limited with
    Retry-After, 20 changes and two reconcile passes: after the first 429 no
    chat.update reaches Slack before the time it gave; then each board kept
    is drawn once more, and only the newest MAX_BOARDS are kept."""
    from stormlock.bot.reminders import MAX_BOARDS

    bot = make_bot(tmp_path, slack, "channels = C0OPS")
    try:
        records = bot.reminders.records
        for n in range(100):
            records.put(f"board/C{n:03d}", f"1.{n:06d}", timedelta(days=1))
        retry_after = 6
        slack.rate_limit("chat.update", retry_after)
        for n in range(20):
            command(bot, slack, ALICE, f"acquire busy-{n} 1h")
        bot.reminders.run()
        settled(bot)
        updates = slack.of("chat.update")
        limited = [c for c in updates if c.context.get("failed") == "429"]
        assert limited, "Slack was never asked"
        first = limited[0].at
        early = [c for c in updates[1:] if c.at < first + retry_after - 0.5]
        assert not early, f"{len(early)} chat.update calls inside Retry-After"

        # Once Slack allows it, the kept boards are drawn with the newest state.
        def drawn() -> list[Call]:
            return [c for c in slack.of("chat.update") if "failed" not in c.context]

        wait_until(lambda: len(drawn()) >= MAX_BOARDS, timeout=30)
        settled(bot)
        drawn_now = drawn()
        assert len({c.payload["channel"] for c in drawn_now}) == MAX_BOARDS
        assert "busy-19" in text_of(drawn_now[-1])
        assert len(records.list("board/")) == MAX_BOARDS
    finally:
        bot.close(5)


def test_a_slack_slower_than_every_claim_and_pass_still_gets_each_notice_once(
    tmp_path: Path, slack: LocalSlack
) -> None:
    """chat.postMessage answers after 7 s: past the client's time-out, past
    the claims (2 s) and many reconcile passes. A post whose answer never
    came may have been made, so it is never made again: each announcement
    and the forced-off DM reach Slack exactly once, with one replica, and
    with two passing over one store (both setups at once, on their own
    stores and resources)."""
    slack.slow("chat.postMessage", 7)
    settings = "admins = U0BOB\nclaim_ttl = 2s\nrecover_after = 10s"
    setups = {}
    for replicas in (1, 2):
        home = tmp_path / f"replicas-{replicas}"
        home.mkdir()
        setups[replicas] = [make_bot(home, slack, settings) for _ in range(replicas)]
    bots = [bot for each in setups.values() for bot in each]
    stop = threading.Event()

    def passes(bot: Bot) -> None:
        while not stop.wait(0.2):
            bot.reminders.run()

    def said(what: str) -> list[Call]:
        return [c for c in slack.of("chat.postMessage") if what in text_of(c)]

    def arrived(what: str) -> Callable[[Call], bool]:
        return lambda call: call in said(what)

    told = []
    runners = [threading.Thread(target=passes, args=(b,)) for b in bots]
    try:
        for runner in runners:
            runner.start()
        for replicas, group in setups.items():
            a, b = f"slow-a{replicas}", f"slow-b{replicas}"
            command(group[0], slack, ALICE, f"acquire {a} 1h")
            command(group[-1], slack, ALICE, f"acquire {b} 1h")
            command(group[0], slack, BOB, f"release {b} --force")
            told += [f"took *{a}*", f"took *{b}*", f"your lease on *{b}*"]
        changed = time.monotonic()
        for what in told:
            slack.wait_for(arrived(what), timeout=40)
        # Past the recovery's grace and one more slow post: nothing comes again.
        time.sleep(
            max(0.0, changed + 10 + 7 + 1 - time.monotonic())
        )  # no event marks "nothing more"
        stop.set()
        for runner in runners:
            runner.join()
        for bot in bots:
            settled(bot)
    finally:
        stop.set()
        for bot in bots:
            bot.close(5)
    for what in told:
        assert len(said(what)) == 1, (what, len(said(what)))
