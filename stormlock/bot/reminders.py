"""Lease lifecycle in Slack: warnings before expiry, expiry notices, wait
lists and live status boards, correct across replicas and restarts.

Design (docs/reminders.md): every replica runs the same reconcile job on an
APScheduler interval. It works only from backend state, so leases taken with
the CLI or by another replica are covered and a restart loses nothing. Each
message has a marker key; before sending, a replica claims the marker with an
atomic acquire in the backend (`Records.claim`). Only one replica can claim
it, so each message goes out once. A claim is short-lived (`claim_ttl`)
until the message is sent, then kept for a week: a replica that dies after
claiming but before sending delays the message by at most `claim_ttl`; one
that dies between sending and recording may repeat that one message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from ..backend import current_many
from ..contract import Feature, Lease
from ..errors import StormlockError
from ..history import FORCED, RELEASED
from ..line import HANDED, LEFT, PASSED, TOOK, Line, Ticket, line_events, waiting_counts
from ..names import RECORD_PREFIX
from ..sets import one_per_lease
from ..times import utcnow
from . import blocks
from .core import (
    AskAnswered,
    AskEscalated,
    AskHolder,
    Core,
    Expired,
    ExpiredHere,
    ExpiresSoon,
    ExpiresSoonHere,
    FreeNow,
    Notice,
    Reminder,
    Reply,
    To,
    Told,
    TurnEnded,
    TurnUp,
    YourTurn,
    notice_of_record,
    notices_of,
    recipient,
)
from .identity import Directory
from .ledger import SENT_TTL, Ledger
from .metrics import NOTIFICATIONS, RECONCILE_RUNS
from .outbox import Outbox
from .state import AskRecord, BotState

log = logging.getLogger(__name__)

_BOARD_TTL = timedelta(days=366)
# Every change redraws every board (one chat.update each): at most this many
# boards, the newest, are kept; Slack allows about 50 updates a minute.
MAX_BOARDS = 50
# Slack's answers to a board's update that mean it will never succeed.
_BOARD_GONE = frozenset(
    {"message_not_found", "channel_not_found", "is_archived", "not_in_channel"}
)
_WATCH_GRACE = timedelta(days=1)
# A watched lease gone from the store this close to its expiry (by the bot's
# clock) has expired: the store's clock may run ahead of the bot's.
_SKEW = timedelta(seconds=10)
_NOTIFY_TURN = timedelta(seconds=30)
# A lease's end is looked for among its resource's last this many events.
_ENDINGS_READ = 20
# Recovering notices: a pass reads the changes since its cursor, less this
# much where history is not read in order (etcd and DynamoDB stamp events by
# the clients' clocks, which can be a little apart; PostgreSQL's commits can
# land out of order; for Redis, `_SKEW`) ...
_OVERLAP = timedelta(seconds=30)
# ... and queues what is still unsent `[bot] recover_after` (15 s) after the
# change: the live path has sent it by then, or holds a claim on it
# (outbox.fast_window plus one request, with room for the replicas' clocks).
_GIVE_UP = timedelta(hours=1)
_CURSOR = "cursor/told"


@dataclass
class RunStats:
    warnings: int = 0
    expiries: int = 0
    waiters: int = 0
    turns: int = 0
    due: int = 0
    recovered: int = 0
    asks: int = 0
    errors: list[str] = field(default_factory=list)


class Reminders:
    """The reconcile job and the wait-list and board operations.

    `outbox` sends in the caller's thread (its `*_now` methods); its client
    must give up well within `claim_ttl` (see `reminder_client`), or a
    claim could lapse mid-send and another replica send the message too.
    """

    def __init__(
        self,
        core: Core,
        directory: Directory,
        outbox: Outbox,
        notices: Outbox | None = None,
    ) -> None:
        """`notices`: where recovered announcements are queued (paced and
        coalesced with the live ones); by default `outbox`."""
        self.core = core
        self.service = core.service
        self.settings = core.settings
        self.directory = directory
        self.outbox = outbox
        assert core.state is not None
        self.state: BotState = core.state
        self.records = self.state.records
        self.ledger = outbox.ledger or Ledger(self.records, self.settings.claim_ttl)
        self.notices = notices or outbox
        self._unresolved_logged: set[str] = set()
        self._board_digest: str | None = None
        self._boards: list[tuple[str, Lease]] | None = None
        self._run_lock = threading.Lock()
        # Set at shutdown: a pass under way stops between messages (what it
        # did not send, the next bot or another replica does).
        self.stopping = threading.Event()
        self._notify_lock = threading.Lock()

    # -- exactly-once sending ----------------------------------------------------

    def once(self, key: str, send: Callable[..., object], *args: Any) -> bool:
        """Run `send(*args)` unless another run or replica already did for `key`."""
        claim = self.ledger.claim(key)
        if claim is None:
            return False
        try:
            with self.ledger.keeping([claim]):
                send(*args)
        except Exception:
            self.ledger.unclaim(claim)  # let a later run try again
            raise
        self.ledger.sent(claim)
        return True

    # -- delivery: the jobs decide what to tell whom; this renders and sends ----

    def _tell(self, told: Told | Reminder) -> bool:
        """Send `told` now, to whom `recipient` says; False if it is for a
        principal nobody in Slack is. Raises if Slack did not take it (a
        claim made for it is then let go: see `once`)."""
        to = recipient(told)
        message = blocks.notice(told, self.directory.display)
        # A send whose outcome is unknown (Slack may have made it) counts as
        # sent: it is never made twice.
        if to.kind == "channel":
            error = self.outbox.post_now(to.id, message)
            if error and not error.unknown:
                raise RuntimeError(f"post to the channel failed: {error}")
            return True
        user_id = self._user_of(to)
        if user_id is None:
            return False
        error = self.outbox.dm_now(user_id, message)
        if error and not error.unknown:
            raise RuntimeError(f"DM failed: {error}")
        return True

    def _queue(self, told: Told | Reminder, key: str) -> None:
        """Queue `told` (keyed, so it goes once): a recovered notice, paced
        and coalesced with the live ones."""
        to = recipient(told)
        message = blocks.notice(told, self.directory.display)
        if to.kind == "channel":
            log.info("recovering an unsent announcement in %s", to.id)
            self.notices.post(to.id, message, None, key, fresh=False)
            return
        user_id = self._user_of(to)
        if user_id is not None:
            self.notices.dm(user_id, message, key)
            return
        claim = self.ledger.claim(key)  # nobody to tell: done
        if claim is not None:
            self.ledger.sent(claim)

    def _user_of(self, to: To) -> str | None:
        if to.kind == "user":
            return to.id
        user_id = self.directory.user_id_for(to.id, strict=True)
        if user_id is None and to.id not in self._unresolved_logged:
            self._unresolved_logged.add(to.id)
            log.info("no Slack user for principal %r; not messaging them", to.id)
        return user_id

    # -- the reconcile job -----------------------------------------------------

    def run(self) -> RunStats:
        """One reconcile pass. Safe to run concurrently on several replicas."""
        with self._run_lock:
            stats = RunStats()
            steps = (
                *(self._warn, self._expire, self._recover),
                *(self._free, self._turns, self._asks),
            )
            for step in (*steps, self.refresh_boards):
                try:
                    step(stats)
                except StormlockError as exc:
                    stats.errors.append(str(exc))
                    log.warning("reconcile step %s failed: %s", step.__name__, exc)
            RECONCILE_RUNS.inc()
            return stats

    def _horizon(self) -> timedelta:
        offsets = self.settings.warn_before("")
        for resource in self.service.config.resource_sections():
            offsets += self.settings.warn_before(resource)
        return max(offsets, default=timedelta(0)) + self.settings.reconcile_interval * 2

    def _warn(self, stats: RunStats) -> None:
        now = utcnow()
        due = self.service.expiring(now + self._horizon())
        # A set is one lease: warned once, by the set's name.
        due_soon = one_per_lease(due, self.service.pools(due))
        stats.due = len(due_soon)
        for lease in due_soon:
            if self.stopping.is_set():
                return
            try:
                self._warn_one(lease, now, stats)
            except Exception as exc:  # one lease's trouble never stops the pass
                stats.errors.append(str(exc))
                log.warning("warning %s failed: %s", lease.resource, exc)

    def _warn_one(self, lease: Lease, now: datetime, stats: RunStats) -> None:
        assert lease.expires is not None
        self._watch(lease)
        offsets = self.settings.warn_before(lease.resource)
        length = lease.expires - lease.created
        due = [o for o in offsets if o < length and now >= lease.expires - o]
        if not due or now >= lease.expires:
            return
        offset = min(due)
        # Keyed by expiry: a renewal plans the warnings afresh.
        expires_ms = int(lease.expires.timestamp() * 1000)
        seconds = int(offset.total_seconds())
        key = f"warn/{lease.fence}/{expires_ms}/{seconds}/{lease.resource}"
        soon = ExpiresSoon(lease.principal, lease, tuple(self.core.renew_offer(lease)))
        if self.once(key, self._warn_unless_over, soon):
            stats.warnings += 1
            NOTIFICATIONS.labels("warning").inc()

    def _warn_unless_over(self, soon: ExpiresSoon) -> None:
        """A warning never arrives after its lease's end (and its notice)."""
        lease = soon.lease
        assert lease.expires is not None
        if utcnow() >= lease.expires or self._tell(soon):
            return
        # Nobody in Slack holds it (a service token's lease, say): the channel
        # where its changes are announced hears the warning instead.
        channel = self.core.announced_in(lease.resource, lease.fence)
        if channel:
            self._tell(ExpiresSoonHere(channel, lease))

    def _watch(self, lease: Lease) -> None:
        """Remember a lease close to expiry, so its expiry can be told later."""
        assert lease.expires is not None
        key = f"watch/{lease.fence}/{lease.resource}"
        value = json.dumps(
            {"principal": lease.principal, "expires": lease.expires.timestamp()}
        )
        current = self.records.get(key)
        if current is not None and current.note == value:
            return
        ttl = lease.expires - utcnow() + _WATCH_GRACE
        self.records.put(key, value, ttl)

    def _expire(self, stats: RunStats) -> None:
        now = utcnow()
        for key, record in self.records.list("watch/"):
            if self.stopping.is_set():
                return
            try:
                self._expire_one(key, record, now, stats)
            except Exception as exc:  # retried next pass; the others go on
                stats.errors.append(str(exc))
                log.warning("expiry notice failed: %s", exc)

    def _expire_one(
        self, key: str, record: Lease, now: datetime, stats: RunStats
    ) -> None:
        fence_text, resource = key[len("watch/") :].split("/", 1)
        info = json.loads(record.note or "{}")
        expires = datetime.fromtimestamp(float(info.get("expires", 0)), UTC)
        lease = self.service.lease_of(resource)
        if lease is not None and lease.fence == int(fence_text):
            if lease.expires != expires:
                self._watch(lease)  # renewed: remember the new expiry
            return
        fence = int(fence_text)
        if now < expires - _SKEW or self._released(resource, fence):
            # Gone before its time: released (from any door), and announced
            # as a release; it did not expire.
            self.records.drop(record)
            return
        if self._warning_in_flight(fence, resource):
            return  # the expiry is told after it, next pass
        principal = str(info.get("principal", ""))
        # Each part is sent once and retried on its own until it goes out;
        # the watch is dropped only when both have.
        ended = Expired(principal, resource, expires)
        if self.once(f"expired/{fence}/{resource}", self._tell, ended):
            stats.expiries += 1
            NOTIFICATIONS.labels("expiry").inc()
        channel = self.core.announced_in(resource, fence)
        if channel:
            here = ExpiredHere(channel, resource, principal)
            self.once(f"expired-post/{fence}/{resource}", self._tell, here)
        self.records.drop(record)

    def _released(self, resource: str, fence: int) -> bool:
        """Whether history records this lease's end as a release or a force,
        from whichever door: then it did not expire, however close to its
        expiry it ended. A store without history cannot tell (False)."""
        backend = self.service.backend_of(resource)
        if not backend.supports(Feature.HISTORY):
            return False
        events = backend.history(resource, limit=_ENDINGS_READ)
        return any(e.fence == fence and e.event in (RELEASED, FORCED) for e in events)

    def _warning_in_flight(self, fence: int, resource: str) -> bool:
        """Whether a warning for this lease is being sent right now (claimed,
        not yet recorded as sent)."""
        soon = utcnow() + self.settings.claim_ttl
        return any(
            key.endswith("/" + resource)
            and claim.expires is not None
            and claim.expires <= soon
            for key, claim in self.ledger.claimed(f"warn/{fence}/")
        )

    # -- notices recovered from history (docs/pipeline.md) -----------------------

    def _recover(self, stats: RunStats) -> None:
        """Queue every notice the bot owes for its recorded changes that has
        not gone out a while after the change: its sender died (or is still
        retrying; the ledger sends it once either way)."""
        turn = self.records.claim("turn/told", self.settings.claim_ttl)
        if turn is None:
            return  # another replica is at it
        try:
            now = utcnow()
            start = max(self._cursor(now), now - _GIVE_UP)
            # Newer ones are the live path's, for now.
            settled = now - self.settings.recover_after
            oldest_open: datetime | None = None
            pools = self.service.pools()
            # In order (Redis): back only as far as the clocks may differ.
            changes = self.service.changes_since(start, _OVERLAP, _SKEW)
            owed = [
                (event.time, notice)
                for event in changes
                if event.time <= settled
                for notice in notices_of(event, pools)
            ]
            sent = self.ledger.done_many([notice.key for _, notice in owed])
            for (when, notice), done in zip(owed, sent, strict=True):
                if done:
                    continue
                self._resend(notice)
                stats.recovered += 1
                if oldest_open is None:
                    oldest_open = when
            cursor = min(oldest_open or settled, settled)
            if cursor > start:
                self.records.put(_CURSOR, cursor.isoformat(), SENT_TTL)
            self._recover_owed(settled, stats)
        finally:
            self.records.drop(turn)

    def _recover_owed(self, settled: datetime, stats: RunStats) -> None:
        """The same for changes on backends whose history cannot give their
        notices back: the core kept each notice until it is sent."""
        for key, record in self.state.owed():
            if self.stopping.is_set():
                return
            if record.created > settled:
                continue  # the live path's, for now
            if self.ledger.done(key):
                self.records.drop(record)
                continue
            notice = notice_of_record(record.note or "")
            if notice is None:
                log.warning("an unreadable owed notice was dropped")
                self.records.drop(record)
                continue
            self._resend(notice)
            stats.recovered += 1

    def _cursor(self, now: datetime) -> datetime:
        """Up to when every owed notice is known to have gone out."""
        # None yet (a first start): look back as far as recovery ever does.
        record = self.records.get(_CURSOR)
        try:
            return (
                datetime.fromisoformat(record.note or "") if record else now - _GIVE_UP
            )
        except ValueError:
            log.warning("unreadable notice cursor %r; looking back an hour", record)
            return now - _GIVE_UP

    def _resend(self, notice: Notice) -> None:
        self._queue(notice, notice.key)

    # -- wait lists -------------------------------------------------------------

    def _free(self, stats: RunStats) -> None:
        for resource, entries in self.state.waiting().items():
            stats.waiters += self._notify_waiters(resource, entries)

    # -- the line ----------------------------------------------------------------

    def _turns(self, stats: RunStats) -> None:
        lined: set[str] = set()
        for name in self.service.config.backend_names():
            for resource in waiting_counts(self.service.backend(name)):
                lined.add(resource)
                stats.turns += self.offer_turn(resource, listed=True)
        # Turns offered whose line has emptied since: announce how they ended.
        offered = {
            key[len("up/") :].rpartition("/")[0]
            for key, _ in self.ledger.claimed("up/")
        }
        for resource in sorted(offered - lined):
            with contextlib.suppress(StormlockError):
                line = self.service.line(resource)
                self._turns_ended(line, line.waiting())

    def offer_turn(
        self,
        resource: str,
        listed: bool = False,
        marked: bool | None = None,
        line: Line | None = None,
    ) -> int:
        """If `resource` is free and the first in its line waits in Slack,
        DM them that it is their turn (once, across replicas) and announce
        it; their ticket then lasts the claim window, so a pass or silence
        hands the turn to the next in line. Unless `listed` (the pass found
        the line), one read when nobody waits: the line's mark (a release's
        common case; reading the line itself lists records), unless the
        caller read it (`marked`, with the `line` it read it of)."""
        if line is None:
            try:
                line = self.service.line(resource)
            except StormlockError:
                return 0  # not one the bot serves (a CLI user's line)
        if marked is None and not listed:
            marked = line.may_have_waiters()
        if not listed and not marked:
            return 0  # an ended turn with nobody left: the next pass tells
        waiting = line.waiting()
        line.remark(waiting, self.records.owner)
        self._turns_ended(line, waiting)
        if not waiting or waiting[0].user is None:
            return 0  # nobody, or a CLI waiter: it takes the lease itself
        if self.service.current(resource) is not None:
            return 0
        head, window = waiting[0], self.settings.claim_window(resource)
        return int(
            self.once(f"up/{resource}/{head.seq}", self._offer, line, head, window)
        )

    def _turns_ended(self, line: Line, waiting: list[Ticket]) -> None:
        """Announce, once, each turn offered that ended without a take: a
        pass, a leave or a lapse (the line's history says which). Its "up"
        marker then goes: that ticket can never be offered again."""
        resource = line.resource
        alive = {ticket.seq for ticket in waiting}
        ended = [
            (int(tail), marker)
            for key, marker in self.ledger.claimed(f"up/{resource}/")
            if (tail := key.rpartition("/")[2]).isdigit()
            and key == f"up/{resource}/{tail}"  # not "up/db/x/..." of db/x
            and int(tail) not in alive
        ]
        if not ended:
            return
        log = {(e.fence, e.event): e for e in line_events(line.backend, resource)}
        for seq, marker in ended:
            handed = log.get((seq, HANDED))
            how = next((e for e in (TOOK, PASSED, LEFT) if (seq, e) in log), "lapsed")
            channel = self.settings.announce_channel(resource) or (
                handed.channel if handed else None
            )
            if how != TOOK and handed is not None and channel:
                ended_here = TurnEnded(channel, resource, handed.principal, how)
                self.once(f"ended/{resource}/{seq}", self._tell, ended_here)
            self.records.drop(marker)

    def _offer(self, line: Line, head: Ticket, window: timedelta) -> None:
        if not line.keep(head, window):
            return  # it lapsed meanwhile: the next one's turn has a key of its own
        assert head.user is not None
        self._tell(YourTurn(head.user, head.resource, head.seq, window))
        NOTIFICATIONS.labels("turn").inc()
        line.log(HANDED, head)
        channel = self.settings.announce_channel(head.resource) or head.channel
        if channel:
            self._tell(TurnUp(channel, head.resource, head.principal, window))

    # -- asks to release ----------------------------------------------------------

    def _asks(self, stats: RunStats) -> None:
        """Tell each asker what their ask came to when no holder will: the
        lease ended unanswered, or the holder let `ask_timeout` pass (and,
        with `escalate`, the admins). Send what a bot that died owed."""
        now = utcnow()
        settled = now - self.settings.recover_after
        for asked in self.state.asks():
            if self.stopping.is_set():
                return
            lease = self.service.lease_of(asked.resource)
            live = lease if lease is not None and lease.fence == asked.fence else None
            reply = self.state.answer_of(asked)
            if reply is not None:  # answered: its DM to the asker is owed
                until = live.expires if live and reply == Reply.KEEPING else None
                notice = self._asked(asked, Reply(reply), until)
                if asked.at < settled and not self.ledger.done(notice.key):
                    self._queue(notice, notice.key)
                    stats.asks += 1
                elif live is None:
                    self.state.forget_ask(asked)
                continue
            if live is None:  # ended unanswered
                notice = self._asked(asked, Reply.ENDED)
                if self.once(notice.key, self._tell, notice):
                    stats.asks += 1
                self.state.forget_ask(asked)
                continue
            to_holder = AskHolder(asked.holder_id, asked.asker, live)
            if asked.at < settled and not self.ledger.done(to_holder.key):
                # Its sender died before the holder was DMed.
                self._queue(to_holder, to_holder.key)
            if now - asked.at >= self.settings.ask_timeout:
                late = self._asked(asked, Reply.UNANSWERED)
                stats.asks += int(self.once(f"late/{late.key}", self._unanswered, late))

    def _asked(
        self, asked: AskRecord, reply: Reply, until: datetime | None = None
    ) -> AskAnswered:
        return AskAnswered(
            asked.asker, asked.holder, asked.resource, asked.fence, reply, until
        )

    def _unanswered(self, late: AskAnswered) -> None:
        self._tell(late)
        NOTIFICATIONS.labels("ask").inc()
        if self.settings.escalate:
            for admin in sorted(self.settings.admins):
                self._tell(AskEscalated(admin, late.resource, late.holder, late.asker))

    def notify_waiters(self, resource: str) -> int:
        """DM everyone waiting for `resource` if it is free; in order, once.
        One read when nobody waits (the common case after a release): the
        line's mark and the wait list's marker together, where they share a
        store."""
        line, marked, listed = self._who_may_wait(resource)
        if line is not None:
            self.offer_turn(resource, marked=marked, line=line)
        if not listed:
            return 0
        sent = self._notify_waiters(resource, self.state.waiting().get(resource, []))
        self.state.nobody_waiting(resource)
        return sent

    def _who_may_wait(self, resource: str) -> tuple[Line | None, bool | None, bool]:
        """`resource`'s line (None: not one the bot serves), whether it may
        have waiters (None: not read) and whether its wait list has a
        marker: one read where the line and the records share a store."""
        try:
            line = self.service.line(resource)
        except StormlockError:
            return None, None, self.state.anyone_waiting(resource)
        keys = self.state.waiter_keys(line)
        if keys is None:
            return line, None, self.state.anyone_waiting(resource)
        mark, marker = current_many(line.backend, keys)
        return line, mark is not None, marker is not None

    def _notify_waiters(self, resource: str, entries: list[tuple[str, Lease]]) -> int:
        if not entries or self.service.current(resource) is not None:
            return 0
        # One notifier per resource at a time, across threads and replicas,
        # so the DMs go out in the order people asked.
        with self._notify_lock:
            turn = self.records.claim(f"notifying/{resource}", _NOTIFY_TURN)
            if turn is None:
                return 0  # another replica is telling them right now
            try:
                sent = 0
                for user_id, entry in entries:  # sorted by the time they asked
                    if self.stopping.is_set():
                        break
                    key = entry.resource[len(RECORD_PREFIX) :]
                    try:
                        told = self.once(key, self._tell, FreeNow(user_id, resource))
                    except Exception as exc:  # the entry stays: next pass
                        log.warning("wait-list DM failed: %s", exc)
                        continue
                    if told:
                        NOTIFICATIONS.labels("waitlist").inc()
                        sent += 1
                    if told or self.ledger.done(key):  # off the list once told
                        self.records.drop(entry)
                return sent
            finally:
                self.records.drop(turn)

    # -- boards -----------------------------------------------------------------

    def post_board(self, channel: str) -> str | None:
        leases = self.service.list_leases()
        message = blocks.board(
            leases, self.directory.display, self.service.pools(leases), self._counts()
        )
        ts, failed = self.outbox.post_for_ts(channel, message)
        if failed is not None:  # the reply tells the user
            return failed.error
        if ts is None:
            return "Slack did not say which message it posted"
        self.records.put(f"board/{channel}", ts, _BOARD_TTL)
        self._boards = None  # read afresh on the next redraw
        return None

    def _board_records(self) -> list[tuple[str, Lease]]:
        """The boards to redraw: the newest `MAX_BOARDS`; older ones are
        forgotten (they stay in their channels as they were last drawn)."""
        boards = sorted(self.records.list("board/"), key=lambda b: b[1].created)
        for _, record in boards[:-MAX_BOARDS]:
            self.records.drop(record)
        return boards[-MAX_BOARDS:]

    def _counts(self) -> dict[str, int]:
        """How many wait in each line: a board shows it by the lease."""
        return {r: len(line) for r, line in self.service.lines().items()}

    def refresh_boards(self, stats: RunStats | None = None) -> None:
        """Redraw every board (the reconcile pass: `stats` given). A board
        whose message or channel is gone is forgotten; a rate limit ends
        the pass (the next redraws them all, from the newest state)."""
        for channel, ts, board in self.boards(stats):
            failed = self.outbox.update_now(channel, ts, board)
            if failed is None:
                continue
            if failed.error in _BOARD_GONE:
                self._forget_board(channel)
                continue
            log.warning("board update in %s failed: %s", channel, failed)
            if failed.wait > 0:
                self._board_digest = None  # not drawn: draw next pass
                return

    def _forget_board(self, channel: str) -> None:
        record = self.records.get(f"board/{channel}")
        if record is not None:
            self.records.drop(record)
        self._boards = None

    def boards(
        self, stats: RunStats | None = None
    ) -> list[tuple[str, str, blocks.Message]]:
        """Every board to redraw: (channel, its message's ts, the board). The
        reconcile pass (`stats` given) reads which boards exist, and draws
        none if nothing changed since; a change uses what the last pass
        read, so it costs no listing of the bot's records."""
        if stats is not None or self._boards is None:
            self._boards = self._board_records()
        boards = self._boards
        if not boards:
            return []
        leases = self.service.list_leases()
        counts = self._counts()
        digest = json.dumps(
            [(x.resource, x.principal, str(x.expires), x.note) for x in leases]
            + sorted(counts.items())
        )
        if stats is not None and digest == self._board_digest:
            return []  # nothing changed since this replica last drew them
        self._board_digest = digest
        message = blocks.board(
            leases, self.directory.display, self.service.pools(leases), counts
        )
        return [
            (key[len("board/") :], record.note or "", message) for key, record in boards
        ]


class Scheduler:
    """Runs `Reminders.run` every `reconcile_interval` in a background thread."""

    def __init__(self, reminders: Reminders) -> None:
        self.reminders = reminders
        self.scheduler = BackgroundScheduler(timezone=UTC)
        interval = reminders.settings.reconcile_interval.total_seconds()
        self.scheduler.add_job(
            reminders.run,
            "interval",
            seconds=interval,
            id="reconcile",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.reminders.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
