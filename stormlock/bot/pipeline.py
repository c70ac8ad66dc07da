"""The bot as a one-way pipeline (docs/pipeline.md):

    Slack payload -> Ask -> Core -> Outcome -> renderers -> answer, then outbox

The listeners ack and hand the payload here. A pool of answer threads turns
it into an `Ask`, runs the chat-free core and sends the person's answer at
once; everything else the outcome asks for (channel, DMs, wait lists, the
expiry's channel, boards, App Home) goes to the outbox, in that order.
Nothing here is called back by what it calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import StormlockError
from ..history import ACQUIRED
from . import blocks
from .blocks import Message
from .core import (
    Acquired,
    Announce,
    Answer,
    Ask,
    Core,
    DirectMessage,
    GaveUpLease,
    Notice,
    OnIt,
    Outcome,
    RedrawBoards,
    Released,
    Renewed,
    TellWaiters,
    TookLease,
    Via,
    deliveries,
)
from .identity import Directory
from .metrics import count_request
from .outbox import Outbox, Redraw
from .parsing import parse
from .reminders import Reminders
from .service import LeaseService
from .settings import DM_ID, BotSettings

if TYPE_CHECKING:  # the API is imported only when it is served
    from ..api.service import Change

log = logging.getLogger(__name__)
BAD_BUTTON = (
    "That button is damaged or not one of mine, so nothing changed; "
    "use /stormlock instead."
)
# After a change timed out, look again after these many seconds (a minute).
VERIFY_AFTER = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
STILL_UNKNOWN = (
    "The lease store has not answered for a minute, so I still cannot tell "
    "whether that went through; look with /stormlock current once it is back."
)
BUSY = (
    "I'm busy right now, so I did not do that and nothing changed; "
    "try again in a moment."
)
# With the answer budget off, a request not started within this long is
# answered "busy" (with it on, the budget is the bound).
START_WITHIN = 1.5
# Changes within this long redraw the boards once.
BOARD_BATCH = 1.0


Reply = Callable[[Message, Answer | None], None]
"""Sends the asker a message; told which answer it renders, if any."""
# A button's answer replaces its message when it is the button's result;
# a refusal comes as a new message and leaves the buttons for another try.
_REPLACES = (Acquired, Renewed, Released, OnIt)


class Pipeline:
    def __init__(
        self,
        core: Core,
        directory: Directory,
        outbox: Outbox,
        reminders: Reminders,
        answer_threads: int = 4,
    ) -> None:
        self.core = core
        self.service: LeaseService = core.service
        self.settings: BotSettings = core.settings
        self.directory = directory
        self.outbox = outbox
        self.reminders = reminders
        # Read once: it is asked for on every command.
        self.answer_budget = self.settings.answer_budget.total_seconds()
        self.start_within = self.answer_budget or START_WITHIN
        # Answers wait only for other answers: their own threads. Someone
        # Slack has not told us about yet waits in threads of their own, so
        # a slow users.info never holds up the answer of someone known.
        self.answers = ThreadPoolExecutor(answer_threads, "stormlock-answer")
        self.newcomers = ThreadPoolExecutor(answer_threads, "stormlock-newcomer")
        # What follows an answer and reads the store: a freed resource's wait
        # list, a second look after a time-out. The outbox holds messages.
        self.follow_ups = FollowUps()
        outbox.draw_with(Drawings(core, reminders, directory))

    def close(self, timeout: float = 15.0) -> None:
        """Within `timeout`: finish the answers under way (each bounded by
        the store's and Slack's time-outs; those not started are told
        "busy" in their ack, or dropped), then send what the outbox holds."""
        started = time.monotonic()
        deadline = started + timeout
        self.answers.shutdown(wait=True, cancel_futures=True)
        self.newcomers.shutdown(wait=True, cancel_futures=True)
        self.follow_ups.close(max(0.0, (deadline - time.monotonic()) / 3))
        self.outbox.close(deadline - time.monotonic())
        log.info("shut down in %.1f s", time.monotonic() - started)

    # -- from Slack -----------------------------------------------------------

    def command(self, body: dict[str, Any]) -> Message | None:
        """`/stormlock ...`: the answer, if it is ready within the answer
        budget (it then goes back in the ack, the fastest way Slack offers);
        else None, and the answer follows through the response_url. One the
        answer threads could not even start within the budget is not done
        at all: "busy" goes back in the ack (a bounded queue, not a reply
        half a minute later)."""
        response_url = str(body.get("response_url", ""))
        answer = _Answer(self.outbox, response_url)
        arrived = time.monotonic()
        pool = self._pool(str(body.get("user_id", "")))
        work = pool.submit(self._command, body, answer.give, arrived)
        message = answer.take(self.answer_budget)
        if message is None and self.answer_budget and work.cancel():
            return self._busy(str(body.get("text", "")))
        return message

    def button(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        pool = self._pool(str(body.get("user", {}).get("id", "")))
        pool.submit(self._button, body, action, time.monotonic())

    def _pool(self, user_id: str) -> ThreadPoolExecutor:
        return self.answers if self.directory.known(user_id) else self.newcomers

    def _late(self, arrived: float) -> bool:
        """Whether a request waited for an answer thread past its budget:
        it is answered "busy" instead of being done that late."""
        return time.monotonic() - arrived > self.start_within

    def _busy(self, text: str) -> Message:
        words = text.split()
        count_request(words[0].lower() if words else "help")("busy")
        return blocks.problem(BUSY)

    def home_opened(self, user_id: str) -> None:
        self.outbox.redraw(Redraw(user_id))

    def waiting(self) -> int:
        """Follow-ups and sends not done yet."""
        return self.follow_ups.waiting() + self.outbox.waiting()

    # -- to Ask ----------------------------------------------------------------

    def _command(
        self, body: dict[str, Any], give: Callable[[Message], None], arrived: float
    ) -> None:
        def reply(message: Message, _answer: Answer | None = None) -> None:
            give(message)

        text = str(body.get("text", ""))
        if self._late(arrived):  # acked empty long ago (answer budget off)
            reply(self._busy(text), None)
            return
        words = text.split()
        done = count_request(words[0].lower() if words else "help")
        try:
            command = parse(text)
        except StormlockError as exc:
            done("rejected")
            reply(blocks.problem(exc.message), None)
            return
        done = count_request(command.name)
        channel = body.get("channel_id")
        ask = Ask(
            str(body.get("user_id", "")),
            command,
            channel=None if _is_dm(channel) else channel,
            channel_name=body.get("channel_name"),
        )
        if command.name == "board":
            refused = self.core.refusal(ask)
            if refused is not None:
                done("rejected")
                reply(blocks.answer(refused, self.directory.display), refused)
                return
            self._board(str(channel or body.get("user_id", "")), reply)
            done("ok")
            return
        self.run(ask, reply, done, str(body.get("response_url") or "") or None)

    def _button(
        self, body: dict[str, Any], action: dict[str, Any], arrived: float
    ) -> None:
        user_id = str(body.get("user", {}).get("id", ""))
        container = body.get("container", {})
        via = Via.HOME if container.get("type") == "view" else Via.BUTTON
        channel = container.get("channel_id") or body.get("channel", {}).get("id")
        action_id = str(action.get("action_id", ""))
        button = blocks.read_button(action_id, str(action.get("value") or ""))
        response_url = str(body.get("response_url", ""))

        def reply(message: Message, answer: Answer | None = None) -> None:
            if via is not Via.HOME:  # the Home is redrawn instead
                replace = isinstance(answer, _REPLACES)
                self.outbox.respond(response_url, message, replace=replace)

        if self._late(arrived):
            count_request("other")("busy")
            self.outbox.respond(response_url, blocks.problem(BUSY))
            return
        if button is None:
            log.warning("a button that is not ours or not readable: %s", action_id[:40])
            count_request("other")("rejected")
            reply(blocks.problem(BAD_BUTTON), None)
            return
        command, fence = button

        ask = Ask(
            user_id,
            command,
            channel=None if via is Via.HOME or _is_dm(channel) else channel,
            channel_name=body.get("channel", {}).get("name"),
            via=via,
            fence=fence,
        )
        tell = None if via is Via.HOME else response_url or None
        self.run(ask, reply, count_request(command.name), tell)

    # -- the pipeline ------------------------------------------------------------

    def run(
        self,
        ask: Ask,
        reply: Reply,
        done: Callable[[str], None],
        tell: str | None = None,
    ) -> Outcome:
        """`tell`: the response_url through which the person hears of what
        could not be delivered (an announcement Slack refused)."""
        outcome = self.core.handle(ask)
        done(outcome.status)
        reply(blocks.answer(outcome.answer, self.directory.display), outcome.answer)
        self._follow_up(ask, outcome, tell)
        if outcome.verify:
            self._verify_later(ask, reply, tell)
        return outcome

    def _verify_later(
        self,
        ask: Ask,
        reply: Reply,
        tell: str | None,
        attempt: int = 0,
        seen: bool = False,
    ) -> None:
        """A change timed out: once the store answers, tell the person (and
        the channel) what became of it. "It did not go through" is said only
        when a second look, a while later, still finds so: a request the
        partition held may reach the store just after it heals."""

        def check() -> None:
            outcome = self.core.verify(ask)
            if outcome is None or (outcome.verify and not seen):
                if attempt + 1 < len(VERIFY_AFTER):
                    again = outcome is not None
                    self._verify_later(ask, reply, tell, attempt + 1, again)
                else:
                    log.warning("%s: outcome still unknown", ask.command.name)
                    reply(blocks.problem(STILL_UNKNOWN), None)
                return
            answer = blocks.answer(outcome.answer, self.directory.display)
            reply(answer, outcome.answer)
            self._follow_up(ask, outcome, tell, fresh=False)

        self.follow_ups.run(check, delay=VERIFY_AFTER[attempt])

    def _follow_up(
        self, ask: Ask, outcome: Outcome, tell: str | None, fresh: bool = True
    ) -> None:
        """Hand the rest of `outcome` on, as messages for the outbox (and
        follow-ups that read the store, for their own threads). `fresh`:
        the outcome of a change made just now (not found later)."""
        outbox = self.outbox
        display = self.directory.display
        home_of = ask.user_id if ask.via is Via.HOME else None
        for delivery in deliveries(outcome, home_of):
            if isinstance(delivery, Announce):
                notice = delivery.notice
                message = blocks.notice(notice, display)
                outbox.post(delivery.channel, message, tell, notice.key, fresh)
            elif isinstance(delivery, DirectMessage):
                message = blocks.notice(delivery.notice, display)
                key, by_principal = delivery.notice.key, delivery.by_principal
                outbox.dm(delivery.to, message, key, by_principal)
            elif isinstance(delivery, TellWaiters):
                self.follow_ups.run(partial(self._tell_waiters, delivery.resource))
            elif isinstance(delivery, RedrawBoards):
                outbox.redraw(Redraw(), delay=BOARD_BATCH)
            else:
                outbox.redraw(Redraw(delivery.user_id))

    def announce_change(self, change: Change) -> None:
        """A change the API made in this process, announced as the bot's own
        (keyed alike: the recovery pass will not send it again)."""
        notice: Notice
        if change.event == ACQUIRED:
            notice = TookLease(change.channel, change.lease)
        else:
            notice = GaveUpLease(
                change.channel, change.lease, change.actor, change.forced
            )
        self.core.owe([notice], change.lease)  # where history cannot keep it
        message = blocks.notice(notice, self.directory.display)
        self.outbox.post(notice.channel, message, None, notice.key, True)

    def _tell_waiters(self, resource: str) -> None:
        try:
            self.reminders.notify_waiters(resource)
        except StormlockError as exc:  # the reconcile job tries again
            log.warning("wait list of a freed resource: %s", exc)

    def _board(self, channel: str, reply: Reply) -> None:
        try:
            error = self.reminders.post_board(channel)
        except StormlockError as exc:
            error = str(exc)
        if error:
            reply(blocks.problem(f"I could not post the board here ({error})."), None)


class FollowUps:
    """Work that follows an answer and reads the store, in threads of its
    own, after an optional delay: the outbox then holds only messages."""

    def __init__(self, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(threads, "stormlock-follow-up")
        self._lock = threading.Lock()
        self._timers: set[threading.Timer] = set()
        self._running = 0
        self._closed = False

    def run(self, task: Callable[[], None], delay: float = 0.0) -> None:
        if delay <= 0:
            self._start(task)
            return

        def fire() -> None:
            with self._lock:
                if timer not in self._timers:
                    return  # closed meanwhile
                self._timers.discard(timer)
                self._running += 1  # counted without a gap: see waiting()
            self._submit(task)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._timers.add(timer)
        timer.start()

    def _start(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            self._running += 1
        self._submit(task)

    def _submit(self, task: Callable[[], None]) -> None:
        def work() -> None:
            try:
                task()
            except Exception:
                log.exception("follow-up failed")
            finally:
                with self._lock:
                    self._running -= 1

        try:
            self._pool.submit(work)
        except RuntimeError:  # shut down meanwhile
            with self._lock:
                self._running -= 1

    def waiting(self) -> int:
        with self._lock:
            return self._running + len(self._timers)

    def close(self, timeout: float) -> None:
        """Finish what runs (within `timeout`), drop what waits for its
        delay: a second look the next bot does not take is covered by
        history's notices (docs/pipeline.md)."""
        with self._lock:
            self._closed = True
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
        if timers:
            log.info("shutting down with %d follow-ups not yet due", len(timers))
        done = threading.Thread(target=self._pool.shutdown, daemon=True)
        done.start()
        done.join(timeout)


class Drawings:
    """Redraws for the outbox: reads the newest state (once per batch) and
    renders it."""

    def __init__(self, core: Core, reminders: Reminders, directory: Directory) -> None:
        self.core = core
        self.reminders = reminders
        self.directory = directory

    def boards(self) -> list[tuple[str, str, Message]]:
        try:
            return self.reminders.boards()
        except StormlockError as exc:  # the reconcile job tries again
            log.warning("board refresh failed: %s", exc)
            return []

    def home(self, user_id: str) -> dict[str, Any] | None:
        """Drawn when opened or after its own buttons, never after other
        actions: a glance at everything costs O(leases)."""
        drawn = self.core.home(user_id)
        return blocks.home_of(drawn, self.directory.display, self.core.renew_offer)


class _Answer:
    """A command's answer, handed over once: to the ack while the listener
    still waits for it, else (and every later message) to the response_url."""

    def __init__(self, outbox: Outbox, response_url: str) -> None:
        self._outbox = outbox
        self._response_url = response_url
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._message: Message | None = None
        self._taken = False

    def give(self, message: Message) -> None:
        with self._lock:
            if not self._taken and self._message is None:
                self._message = message
                self._ready.set()
                return
        self._outbox.respond(self._response_url, message)

    def take(self, budget: float) -> Message | None:
        if budget > 0:
            self._ready.wait(budget)
        with self._lock:
            self._taken = True
            return self._message


def _is_dm(channel: object) -> bool:
    return isinstance(channel, str) and DM_ID.match(channel) is not None
