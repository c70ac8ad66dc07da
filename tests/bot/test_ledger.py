"""The ledger's sent markers over every real store: a post's many changes
are claimed and recorded in a few store changes, and still each once
across replicas."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from stormlock.bot import ledger as ledger_module
from stormlock.bot.ledger import Ledger
from stormlock.contract import Backend
from stormlock.records import Records
from stormlock.sets import MAX_SET


class Counted:
    """The backend, with how often each operation was called."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.backend, name)
        if not callable(found):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return found(*args, **kwargs)

        return call


def ledger_over(backend: Backend | Counted) -> Ledger:
    return Ledger(Records(backend), timedelta(seconds=30))  # type: ignore[arg-type]


def keys(count: int, event: str = "acquired") -> list[str]:
    return [f"told/{n}/{event}/res-{n}" for n in range(count)]


def test_a_posts_markers_take_one_store_change_per_set(backend: Backend) -> None:
    counted = Counted(backend)
    ledger = ledger_over(counted)
    wanted = keys(2 * MAX_SET + 3)
    claims = ledger.claim_all(wanted)
    assert all(claims), "a free key was not claimed"
    assert [c.resource.rsplit("/", 3)[-3:] for c in claims if c] == [
        k.split("/")[1:] for k in wanted
    ], "claims out of order"
    assert sum(counted.calls.values()) <= 3 * 3, counted.calls
    ledger.sent_all([c for c in claims if c])
    assert all(ledger.done(key) for key in wanted)
    other = ledger_over(backend)  # another replica: reads the store
    assert all(other.done(key) for key in wanted)
    assert not any(other.claim_all(wanted)), "a sent notice was claimed again"

    marked = keys(MAX_SET + 1, "released")
    counted.calls.clear()
    ledger.mark_all(marked)
    assert sum(counted.calls.values()) <= 2, counted.calls
    assert all(other.done(key) for key in marked)


def test_another_replicas_sends_are_read_together_not_one_by_one(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery pass asks whether each change of a minute or more went
    out; another replica's (or gunicorn worker's) sends are not in this
    one's memory: they are read READ_TOGETHER markers a call (one round trip
    where the store reads several at once; elsewhere each read within its
    own time-out), and a marker only claimed (its send under way, or
    failed) is not done."""
    monkeypatch.setattr(ledger_module, "READ_TOGETHER", 20)  # 500 in use
    sender = ledger_over(backend)
    wanted = keys(ledger_module.READ_TOGETHER + 10)
    sender.sent_all([c for c in sender.claim_all(wanted) if c])
    pending = sender.claim_all(keys(3, "released"))  # claimed, not yet sent
    counted = Counted(backend)
    other = ledger_over(counted)
    asked = [*wanted, "told/0/acquired/res-0", *keys(3, "released"), "told/x/y/z"]
    answers = other.done_many(asked)
    assert counted.calls == {"current_many": 2}, counted.calls  # 20, then 14
    assert answers == [True] * (len(wanted) + 1) + [False] * 4
    assert answers == [ledger_over(backend).done(key) for key in asked]
    assert all(pending)


def test_a_key_claimed_elsewhere_is_left_out_and_the_rest_claimed(
    backend: Backend,
) -> None:
    wanted = keys(10)
    other = ledger_over(backend)
    (taken,) = other.claim_all([wanted[4]])
    assert taken is not None
    claims = ledger_over(backend).claim_all([*wanted, wanted[2]])
    assert [bool(c) for c in claims] == [True] * 4 + [False] + [True] * 5 + [False]


def test_a_let_go_claim_can_be_claimed_again(backend: Backend) -> None:
    wanted = keys(5)
    ledger = ledger_over(backend)
    claims = ledger.claim_all(wanted)
    ledger.unclaim_all([c for c in claims if c])
    assert not any(ledger.done(key) for key in wanted)
    assert all(ledger_over(backend).claim_all(wanted))


def test_replicas_racing_for_one_posts_markers_claim_each_once(
    make_backend: Callable[[], Backend],
) -> None:
    wanted = keys(3 * MAX_SET)
    replicas = [ledger_over(make_backend()) for _ in range(4)]
    won: list[list[str]] = [[] for _ in replicas]
    start = threading.Barrier(len(replicas))

    def race(n: int) -> None:
        mine = wanted[n::2] + wanted[::3]  # overlapping, in different orders
        start.wait()
        for key, claim in zip(mine, replicas[n].claim_all(mine), strict=True):
            if claim:
                won[n].append(key)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = Counter(key for keys_won in won for key in keys_won)
    asked = {key for n in range(len(replicas)) for key in wanted[n::2] + wanted[::3]}
    assert set(claimed) == asked, "a key nobody else had was not claimed"
    assert max(claimed.values()) == 1, "a key was claimed twice"


def test_markers_are_listed_by_their_own_prefix_among_many_others(
    backend: Backend,
) -> None:
    ledger = ledger_over(backend)
    ledger.mark_all(keys(3 * MAX_SET))  # a busy week's announcements
    (turn,) = ledger.claim_all(["up/db/7"])
    assert turn is not None
    assert [key for key, _ in ledger.claimed("up/")] == ["up/db/7"]
    assert len(ledger.claimed("told/")) == 3 * MAX_SET


def test_a_fresh_post_goes_without_claims_only_while_recovery_leaves_it_alone() -> None:
    """A fresh change's post skips the claim (one write, not two) for
    `recover_after` less one request of the fast client and 5 s for the
    mark's write and the clocks: never under FAST_WITHIN, never longer than
    a change waits before it is only counted."""
    from stormlock.bot.outbox import (
        FAST_WITHIN,
        OVERFLOW_AFTER,
        SLACK_TIMEOUT,
        fast_window,
    )

    assert fast_window(timedelta(seconds=10)) == FAST_WITHIN
    assert fast_window(timedelta(seconds=12)) == 2.0
    assert fast_window(timedelta(seconds=14)) == 4.0
    assert fast_window(timedelta(seconds=15)) == OVERFLOW_AFTER
    assert fast_window(timedelta(minutes=5)) == OVERFLOW_AFTER
    for seconds in range(12, 120):  # below, FAST_WITHIN as before
        window = fast_window(timedelta(seconds=seconds))
        assert window + SLACK_TIMEOUT + 5.0 <= seconds
