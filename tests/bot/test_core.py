"""The bot's rules, in the chat-free core (stormlock/bot/core.py), driven
in-process over a real store: where a request may be served, who asked, and
what a person is told when something fails."""

from __future__ import annotations

import json
from configparser import ConfigParser
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from stormlock.bot import blocks, core
from stormlock.bot.core import Ask, Core, Via
from stormlock.bot.metrics import count_request
from stormlock.bot.parsing import Command
from stormlock.bot.service import LeaseService, Person, PersonUnknown
from stormlock.bot.settings import BotSettings
from stormlock.config import Config
from stormlock.contract import Lease
from stormlock.testing.backends import network_backend
from stormlock.testing.faults import partition_proxy, redirect
from tests.support import wait_until


class People:
    def __init__(self, unknown: bool = False) -> None:
        self.unknown = unknown

    def person(self, user_id: str) -> Person:
        if self.unknown:
            raise PersonUnknown("Slack could not tell me who you are just now")
        return Person(user_id, f"{user_id.lower()}@example.com")

    def user_id_for(self, principal: str, strict: bool = False) -> str | None:
        name, _, domain = principal.partition("@")
        return name.upper() if domain == "example.com" else None


def make_core(
    tmp_path: Path, bot: str = "", backend: str = "", people: People | None = None
) -> Core:
    backend = backend or f"[backend.sqlite]\npath = {tmp_path / 'locks.db'}\n"
    parser = ConfigParser(interpolation=None, default_section="\0none")
    parser.read_string(f"{backend}\n[bot]\n{bot}\n")
    settings = BotSettings.load(Config(parser), env={})
    return Core(LeaseService(settings), settings, people or People(), None)


def acquire(resource: str = "db", note: str | None = None) -> Command:
    return Command("acquire", resource, note=note)


def held(c: Core, resource: str = "db") -> bool:
    return c.service.lease_of(resource) is not None


ALLOWED = "channels = C0OPS, deploys"


def test_a_button_outside_the_allowed_channels_is_refused(tmp_path: Path) -> None:
    c = make_core(tmp_path, ALLOWED)
    outcome = c.handle(Ask("U1", acquire(), channel="CRANDOM", via=Via.BUTTON))
    assert isinstance(outcome.answer, core.NotHere)
    assert not held(c)


def test_a_channel_name_never_stands_for_an_allowed_channel_id(
    tmp_path: Path,
) -> None:
    c = make_core(tmp_path, ALLOWED)
    renamed = Ask("U1", acquire(), channel="CEVIL", channel_name="C0OPS")
    assert isinstance(c.handle(renamed).answer, core.NotHere)
    by_name = Ask("U1", acquire(), channel="CDEPLOY", channel_name="deploys")
    assert isinstance(c.handle(by_name).answer, core.Acquired)


def test_renew_and_release_buttons_in_a_dm_still_work(tmp_path: Path) -> None:
    c = make_core(tmp_path, ALLOWED)
    assert isinstance(c.handle(Ask("U1", acquire(), "C0OPS")).answer, core.Acquired)
    release = Ask("U1", Command("release", "db"), channel=None, via=Via.BUTTON)
    assert isinstance(c.handle(release).answer, core.Released)


def test_a_command_in_a_dm_is_refused_under_an_allowlist(tmp_path: Path) -> None:
    c = make_core(tmp_path, ALLOWED)
    outcome = c.handle(Ask("U1", Command("list"), channel=None))
    assert isinstance(outcome.answer, core.NotHere)


@pytest.mark.parametrize("via", [Via.COMMAND, Via.BUTTON, Via.HOME])
def test_an_acquire_from_a_dm_or_the_home_is_refused_with_nowhere_to_announce(
    tmp_path: Path, via: Via
) -> None:
    c = make_core(tmp_path)
    outcome = c.handle(Ask("U1", acquire(), channel=None, via=via))
    assert isinstance(outcome.answer, core.Problem)
    assert "announced nowhere" in outcome.answer.text
    assert not held(c)


def test_an_acquire_from_a_dm_is_announced_in_the_announce_channel(
    tmp_path: Path,
) -> None:
    c = make_core(tmp_path, "announce_channel = C0ANN")
    outcome = c.handle(Ask("U1", acquire(), channel=None, via=Via.BUTTON))
    assert isinstance(outcome.answer, core.Acquired)
    assert [n.channel for n in outcome.notices if isinstance(n, core.TookLease)] == [
        "C0ANN"
    ]


@pytest.mark.parametrize("user_id", ["", "   ", "alice"])
def test_a_request_without_a_user_takes_nothing(tmp_path: Path, user_id: str) -> None:
    c = make_core(tmp_path)
    outcome = c.handle(Ask(user_id, acquire(), channel="C1"))
    assert isinstance(outcome.answer, core.Problem)
    assert "who you are" in outcome.answer.text
    assert not held(c)


def test_a_note_over_the_limit_is_refused_not_cut(tmp_path: Path) -> None:
    c = make_core(tmp_path)
    outcome = c.handle(Ask("U1", acquire(note="x" * 1001), channel="C1"))
    assert isinstance(outcome.answer, core.Problem)
    assert "1001 characters" in outcome.answer.text
    assert not held(c)


def test_an_unreachable_store_is_named_to_nobody_in_slack(tmp_path: Path) -> None:
    c = make_core(
        tmp_path,
        backend="[default]\nbackend = redis\n[backend.redis]\n"
        "url = redis://127.0.0.1:1/0\ntimeout = 1\n",
    )
    # A refused connection sent nothing: nothing changed, and it is said so.
    for command, said in (
        (acquire(), "nothing changed"),
        (Command("list"), "unreachable"),
    ):
        outcome = c.handle(Ask("U1", command, channel="C1"))
        assert outcome.status == "unavailable"
        text = blocks.answer(outcome.answer, blocks.escape).text
        assert said in text
        assert "127.0.0.1" not in text and ":1" not in text


def test_slack_not_knowing_who_you_are_is_not_a_store_outage(tmp_path: Path) -> None:
    c = make_core(tmp_path, people=People(unknown=True))
    outcome = c.handle(Ask("U1", acquire(), channel="C1"))
    assert isinstance(outcome.answer, core.Problem)
    assert "Slack could not tell me who you are" in outcome.answer.text
    assert "store" not in outcome.answer.text
    assert not held(c)


def test_metric_labels_never_come_from_user_text() -> None:
    def series() -> int:
        return sum(
            1
            for metric in REGISTRY.collect()
            if metric.name == "stormlock_requests"
            for sample in metric.samples
            if sample.name == "stormlock_requests_total"
        )

    count_request("acquire")("ok")
    before = series()
    for word in ["0c3f4a6e-1b2c-4d5e-8f90-123456789abc", "frob", "<!here>"] * 10:
        count_request(word)("rejected")
    assert series() - before <= 1, "one 'other' series at most"
    other = {"command": "other", "outcome": "rejected"}
    assert (REGISTRY.get_sample_value("stormlock_requests_total", other) or 0) >= 30


def test_a_timed_out_acquire_is_unknown_and_found_out_later(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The partition holds the acquire; it reaches the store when it heals.
    The person is told neither "held" nor "nothing changed" but "unknown",
    and then that they hold it, with the channel's announcement."""
    config, port = network_backend("redis", request, tmp_path)
    with partition_proxy(port) as proxy:
        options = {**redirect("redis", config.options, proxy.port), "timeout": "1"}
        ini = "[default]\nbackend = redis\n[backend.redis]\n" + "".join(
            f"{key} = {value}\n" for key, value in options.items()
        )
        c = make_core(tmp_path, backend=ini)
        ask = Ask("U1", acquire(note="held-in-flight"), channel="C1")
        # Connected, and the store knows the acquire script, before it parts.
        assert isinstance(
            c.handle(Ask("U3", acquire("warm"), "C1")).answer, core.Acquired
        )
        proxy.freeze_on(b"held-in-flight")  # the acquire, by its note
        outcome = c.handle(ask)
        assert outcome.verify and isinstance(outcome.answer, core.Problem)
        assert "cannot tell whether that went through" in outcome.answer.text
        # Refused at once while the store cools down: that one changed nothing.
        again = c.handle(Ask("U2", acquire("other"), channel="C1"))
        assert not again.verify and isinstance(again.answer, core.Problem)
        assert "nothing changed" in again.answer.text
        assert c.verify(ask) is None, "still no answer: still unknown"
        proxy.thaw()
        # Once the held acquire has reached the store, it is found to be ours.
        store = config.create()
        wait_until(lambda: store.current("db") is not None)
        found: list[core.Outcome | None] = []

        def looked() -> bool:
            found.append(c.verify(ask))  # None while the store cools down
            return found[-1] is not None

        wait_until(looked)
    final = found[-1]
    assert final is not None and not final.verify
    assert isinstance(final.answer, core.Acquired)
    assert final.answer.lease.principal == "u1@example.com"
    assert [n.channel for n in final.notices if isinstance(n, core.TookLease)] == ["C1"]


def test_a_change_that_did_not_go_through_is_said_so(tmp_path: Path) -> None:
    c = make_core(tmp_path)
    ask = Ask("U1", acquire(), channel="C1")
    found = c.verify(ask)
    assert found is not None and isinstance(found.answer, core.Problem)
    assert "did not go through; db is free" in found.answer.text
    assert found.verify, "said only after a second look"


def test_who_may_release_and_renew_is_the_cores_rule(tmp_path: Path) -> None:
    """The holder releases and renews; someone else is refused, even with
    --force unless an admin; an admin's --force releases (and is forced)."""
    c = make_core(tmp_path, "admins = U0ADMIN")
    assert isinstance(c.handle(Ask("U1", acquire(), "C0OPS")).answer, core.Acquired)
    for command in (
        Command("release", "db"),
        Command("release", "db", force=True),
        Command("renew", "db"),
    ):
        outcome = c.handle(Ask("U2", command, "C0OPS"))
        assert isinstance(outcome.answer, core.Problem), command
        assert held(c)
    admin_renew = c.handle(Ask("U0ADMIN", Command("renew", "db"), "C0OPS"))
    assert isinstance(admin_renew.answer, core.Problem), "an admin renewed another's"
    forced = c.handle(Ask("U0ADMIN", Command("release", "db", force=True), "C0OPS"))
    assert isinstance(forced.answer, core.Released)
    assert any(isinstance(n, core.ForcedOff) for n in forced.notices)
    assert not held(c)
    assert isinstance(c.handle(Ask("U1", acquire(), "C0OPS")).answer, core.Acquired)
    assert isinstance(
        c.handle(Ask("U1", Command("renew", "db"), "C0OPS")).answer, core.Renewed
    )
    mine = c.handle(Ask("U1", Command("release", "db"), "C0OPS"))
    assert isinstance(mine.answer, core.Released)
    assert not any(isinstance(n, core.ForcedOff) for n in mine.notices)


def test_an_outcome_says_what_to_deliver_to_whom(tmp_path: Path) -> None:
    """Slack's pipeline and the shell deliver the same values, in order."""
    c = make_core(tmp_path, "admins = U0ADMIN")
    took = c.handle(Ask("U1", acquire(), "C0OPS"))
    assert core.deliveries(took) == [
        core.Announce("C0OPS", took.notices[0]),  # type: ignore[arg-type]
        core.RedrawBoards(),
    ]
    forced = c.handle(Ask("U0ADMIN", Command("release", "db", force=True), "C0OPS"))
    kinds = [type(d) for d in core.deliveries(forced, home_of="U0ADMIN")]
    assert kinds == [
        core.Announce,
        core.DirectMessage,
        core.TellWaiters,
        core.RedrawBoards,
        core.RedrawHome,
    ]
    dm = core.deliveries(forced)[1]
    assert isinstance(dm, core.DirectMessage) and dm.by_principal
    assert dm.to == "u1@example.com"


def test_an_owed_notice_is_kept_whole_and_without_the_lease_id() -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    lease = Lease(
        "alice@example.com",
        now,
        "0c3f4a6e-1b2c-4d5e-8f90-123456789abc",
        "db/primary",
        now + timedelta(hours=1),
        "patching <it>",
        42,
        ("db/a", "db/b"),
    )
    kept = lease._replace(id="")
    for notice in (
        core.TookLease("C0OPS", lease, "db"),
        core.GaveUpLease("C0OPS", lease, "carol@example.com", True),
        core.ForcedOff("alice@example.com", lease, "carol@example.com"),
    ):
        record = core.notice_record(notice)
        assert lease.id not in record
        back = core.notice_of_record(record)
        assert back is not None and back.key == notice.key
        assert back == replace(notice, lease=kept)
    assert core.notice_of_record("{not json") is None
    assert core.notice_of_record('{"kind": "took"}') is None


def test_one_persons_bad_requests_never_make_the_store_look_down(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A renewal below the store's floor is refused before the store, and a
    request the store itself refuses (a key of the wrong type) is that
    request's fault: neither opens the fail-fast that would tell everyone
    else "unreachable". On Redis, where a 1 ms renewal used to drop the lease."""
    import redis

    config, _ = network_backend("redis", request, tmp_path)
    ini = "[default]\nbackend = redis\n[backend.redis]\n" + "".join(
        f"{key} = {value}\n" for key, value in config.options.items()
    )
    c = make_core(tmp_path, backend=ini)
    taken = c.handle(Ask("U2", acquire("mine"), channel="C1")).answer
    assert isinstance(taken, core.Acquired)
    client = redis.Redis.from_url(config.options["url"])
    client.set(config.options.get("prefix", "stormlock:") + "lease:broken", "x")
    for _ in range(3):
        tiny = Command("renew", "mine", ttl=timedelta(milliseconds=1))
        tiny = replace(tiny, lease_id=taken.lease.id)
        refused = c.handle(Ask("U2", tiny, channel="C1")).answer
        assert isinstance(refused, core.Problem) and "minimum" in refused.text
        odd = c.handle(Ask("U2", acquire("broken"), channel="C1")).answer
        assert isinstance(odd, core.Problem) and "refused" in odd.text
        # Another person is answered by the store, not by the fail-fast.
        other = c.handle(Ask("U1", acquire(f"db{_}"), channel="C1")).answer
        assert isinstance(other, core.Acquired), other
    still = c.service.lease_of("mine")
    assert still is not None and still.id == taken.lease.id
    assert still.expires == taken.lease.expires


POOLS_AND_GROUPS = (
    "[pool.staging]\nmembers = staging-1, staging-2\n"
    "[group.prod]\nmembers = prod-db, prod-api, cache\n"
)


def with_pools(tmp_path: Path) -> Core:
    store = f"[backend.sqlite]\npath = {tmp_path / 'locks.db'}\n{POOLS_AND_GROUPS}"
    return make_core(tmp_path, backend=store)


def test_current_of_a_pool_or_a_group_names_each_members_holder(
    tmp_path: Path,
) -> None:
    c = with_pools(tmp_path)
    for member in ("staging-1", "staging-2", "prod-db"):
        assert isinstance(
            c.handle(Ask("U1", acquire(member), "C1")).answer, core.Acquired
        )
    pool = c.handle(Ask("U2", Command("current", "staging"), "C1")).answer
    assert isinstance(pool, core.MembersNow) and pool.pool
    assert [(name, bool(lease)) for name, lease in pool.members] == [
        ("staging-1", True),
        ("staging-2", True),
    ]
    group = c.handle(Ask("U2", Command("current", "prod"), "C1")).answer
    assert isinstance(group, core.MembersNow) and not group.pool
    held = {name for name, lease in group.members if lease is not None}
    assert held == {"prod-db"}
    said = blocks.answer(group, lambda p: p).text
    assert "2 of 3 free" in said


def test_a_groups_refusal_names_only_the_members_that_are_held(
    tmp_path: Path,
) -> None:
    c = with_pools(tmp_path)
    c.handle(Ask("U1", acquire("prod-db"), "C1"))
    refused = c.handle(Ask("U2", acquire("prod"), "C1")).answer
    assert isinstance(refused, core.Held) and not refused.every
    assert [lease.resource for lease in refused.holders] == ["prod-db"]
    shown = json.dumps(blocks.answer(refused, lambda p: p).kwargs())
    assert "Nothing taken" in shown and "prod-db" in shown
    assert "*cache*" not in shown and "*prod-api*" not in shown


def test_acquiring_what_you_hold_says_so_and_offers_renew(tmp_path: Path) -> None:
    c = make_core(tmp_path)
    taken = c.handle(Ask("U1", acquire("db"), "C1")).answer
    assert isinstance(taken, core.Acquired)
    again = c.handle(Ask("U1", acquire("db"), "C1")).answer
    assert isinstance(again, core.AlreadyYours)
    assert again.lease.fence == taken.lease.fence
    shown = json.dumps(blocks.answer(again, lambda p: p).kwargs())
    assert "You already hold" in shown and "Renew" in shown
    assert taken.lease.id not in shown


def test_the_line_of_a_full_pool_is_joined_not_called_free(tmp_path: Path) -> None:
    from stormlock.bot.state import BotState
    from stormlock.records import Records

    shell = with_pools(tmp_path)
    service = shell.service
    state = BotState(Records(service.backend(service.config.default_backend)))
    c = Core(service, shell.settings, shell.people, state)  # Slack's: it can DM
    c.handle(Ask("U1", acquire("staging-1"), "C1"))
    free = c.handle(Ask("U2", Command("queue", "staging"), "C1")).answer
    assert isinstance(free, core.LineFree), "a member is free: take it"
    c.handle(Ask("U1", acquire("staging-2"), "C1"))
    joined = c.handle(Ask("U2", Command("queue", "staging"), "C1")).answer
    assert isinstance(joined, core.Queued), joined


def test_the_renew_buttons_offer_a_length_people_read(tmp_path: Path) -> None:
    c = make_core(tmp_path)
    start = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    crept = Lease(
        "u1@example.com",
        start,
        "x",
        expires=start + timedelta(hours=1, seconds=8),
        resource="db",
    )
    assert c.renew_offer(crept)[0] == timedelta(hours=1)
    odd = crept._replace(expires=start + timedelta(minutes=42, seconds=31))
    assert c.renew_offer(odd)[0] == timedelta(minutes=43)
