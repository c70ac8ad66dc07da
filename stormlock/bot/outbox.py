"""Everything the bot sends to Slack, in order of who is waiting for it.

The person's answer goes first: `respond` runs in the thread that produced
it and queues behind nothing. Then, through a priority queue worked by its
own threads: channel announcements and DMs, then App Home and board redraws,
which coalesce (a redraw already queued is not queued twice; it reads the
newest state when it runs). A send that failed for a passing reason (Slack's
5xx, a time-out, a refused connection, a rate limit) is queued again with
backoff, a few times; one Slack refused for good (not_in_channel) is not.

What it queues are messages (`Flush`, `Batch`, `Direct`, `Respond`,
`Redraw`), never code: only a redraw reads state, through its `Drawer`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import IntEnum
from http.client import RemoteDisconnected
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from ..contract import Lease
from ..errors import StormlockError
from .blocks import Message, announce_failed, combined, fitting, more_changes
from .ledger import Ledger
from .metrics import OUTBOX_WAITING, SLACK_ERRORS

if TYPE_CHECKING:
    from .identity import Directory

log = logging.getLogger(__name__)

# Waits between attempts of a queued send; after the last, it is given up
# (and counted in stormlock_slack_errors_total).
BACKOFF = (0.5, 2.0, 8.0)
SLACK_TIMEOUT = 5
# Slack allows about one chat.postMessage per second per channel.
CHANNEL_PACE = 1.0
# The channel's turn across workers lasts a little less than the pace, so
# one worker's own next turn never finds its last one still there.
_PACE_TTL = timedelta(seconds=CHANNEL_PACE * 0.9)
# A fresh change's announcement sent within this long goes without a claim
# and is recorded as sent after it (one store write instead of two). Safe
# because the recovery pass leaves a change alone for `[bot] recover_after`
# (at least 10 s), longer than this plus one request of the fast client
# (5 s) and the mark's write. The least of `fast_window`.
FAST_WITHIN = 2.0
# A post names at most this many changes (fewer if they do not fit: about
# a hundred one-line changes fill Slack's message).
MAX_POST = 500
# Changes that would wait longer than this for their channel's turn (more
# than Slack's pace lets one post a second name) are counted in the next
# post instead of named: announcements stay timely and memory bounded.
OVERFLOW_AFTER = 5.0


def fast_window(recover_after: timedelta) -> float:
    """How long a fresh change may wait for its channel's turn and still go
    without a claim: what `recover_after` leaves after one request of the
    fast client (5 s) and 5 s for the mark's write and replicas' clocks, at
    most as long as a change waits before it is counted. The default (15 s)
    gives 5 s: under load, with workers taking turns at a channel, a live
    post's markers are then one write, not a claim and a keep."""
    left = recover_after.total_seconds() - SLACK_TIMEOUT - 5.0
    return min(max(FAST_WITHIN, left), OVERFLOW_AFTER)


# Slack refused a post as too long: it is split, not given up.
_TOO_LONG = frozenset({"msg_too_long", "msg_blocks_too_long"})
# A 429 asking to wait longer than this is not waited for in a thread:
# the send is queued again (or, for a reminder, left to the next pass).
MAX_RETRY_AFTER = 5.0

_PASSING = frozenset(
    {
        "ratelimited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "http_error",
        "timeout",
    }
)


class RetryAfter:
    """When Slack lets each Web API method be called again: a 429's
    Retry-After, kept per method (Slack limits each method on its own) and
    shared by a process's outboxes, so no call of that method goes before
    the time Slack gave. Posts are paced a channel instead (`_Paced`)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def left(self, method: str) -> float:
        """Seconds until `method` may be called (0: now)."""
        with self._lock:
            return max(0.0, self._until.get(method, 0.0) - time.monotonic())

    def heard(self, method: str, failure: Failure) -> None:
        if failure.error != "ratelimited" or failure.wait <= 0:
            return
        until = time.monotonic() + failure.wait
        with self._lock:
            self._until[method] = max(self._until.get(method, 0.0), until)


class Priority(IntEnum):
    ANSWER = 0
    NOTICE = 1
    REFRESH = 2


class ShortRateLimitRetry(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler, but only for a Retry-After a thread can
    afford to sleep through; a longer one fails the call at once."""

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        for name, values in response.headers.items():
            if name.lower() == "retry-after" and values:
                try:
                    # slack_sdk sleeps Retry-After plus up to a second.
                    return float(values[0]) + 1 <= self.max_wait
                except ValueError:
                    return False
        return self.max_wait >= 2


# What urllib raises once the request is sent and no answer came.
_AFTER_SENDING = (TimeoutError, ConnectionResetError, RemoteDisconnected)


def retry_handlers(
    max_wait: float = MAX_RETRY_AFTER, retries: int = 1
) -> list[RetryHandler]:
    # A connection error is retried only if it came before the request was
    # sent (a URLError): a post Slack may have made is never made again.
    return [
        ConnectionErrorRetryHandler(max_retry_count=retries, error_types=[URLError]),
        ServerErrorRetryHandler(max_retry_count=retries),
        ShortRateLimitRetry(max_retry_count=2 * retries, max_wait=max_wait),
    ]


def web_client(
    token: str | None,
    base_url: str,
    timeout: float = SLACK_TIMEOUT,
    max_wait: float = MAX_RETRY_AFTER,
    retries: int = 1,
) -> WebClient:
    """A Web API client whose every wait is bounded: `timeout` a request,
    `max_wait` a rate limit's Retry-After (longer ones fail at once)."""
    return WebClient(
        token=token,
        base_url=base_url,
        timeout=max(1, round(timeout)),
        retry_handlers=retry_handlers(max_wait, retries),
    )


class Failure(NamedTuple):
    """A send that did not go through."""

    error: str
    """Slack's error code (not_in_channel), http_NNN, or timeout."""
    passing: bool
    """Worth trying again: Slack's 5xx or 429, a time-out, a lost connection."""
    wait: float = 0.0
    """The Retry-After Slack asked for, in seconds."""
    unknown: bool = False
    """The request reached Slack and no answer came (a time-out, a
    connection lost after sending): it may have been done."""

    def __str__(self) -> str:
        return self.error


def failure_of(exc: BaseException) -> Failure:
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = str(exc.response.get("error") or f"http_{status}")
        wait = 0.0
        for name, value in exc.response.headers.items():
            if status == 429 and name.lower() == "retry-after":
                with contextlib.suppress(ValueError, IndexError, TypeError):
                    wait = max(
                        0.0, float(value[0] if isinstance(value, list) else value)
                    )
        return Failure(error, status >= 500 or status == 429 or error in _PASSING, wait)
    if isinstance(exc, _AFTER_SENDING):
        # urllib raises these raw only once the request was sent (an error
        # while sending is a URLError): Slack may have done it.
        return Failure("timeout", True, unknown=True)
    return Failure(type(exc).__name__, True)  # connection refused, ...


class _Post(NamedTuple):
    """An announcement waiting for its channel's turn."""

    message: Message
    tell: str | None
    """A response_url: whom to tell if Slack refuses it for good."""
    key: str | None
    """Its ledger key: sent once across replicas (None: no ledger)."""
    fresh_until: float
    """Monotonic: until when it may go without a claim (see fast_window)."""
    queued: float
    """Monotonic: when it was queued."""


class _Paced:
    """A channel's announcements waiting for Slack's pace."""

    def __init__(self) -> None:
        self.pending: list[_Post] = []
        self.next_at = 0.0  # monotonic: when this channel may be posted to again
        self.scheduled = False
        self.sending = False  # a post of this channel's is under way
        self.limit = MAX_POST  # lowered when Slack finds a post too long


# -- what the outbox holds: messages to send, never code ---------------------


@dataclass(frozen=True)
class Flush:
    """A channel's turn: post what waits for it."""

    channel: str


@dataclass(frozen=True)
class Batch:
    """One post of a channel's changes: `named` one by one, `counted`."""

    channel: str
    named: tuple[_Post, ...]
    counted: tuple[_Post, ...] = ()
    attempt: int = 0


@dataclass(frozen=True)
class Direct:
    """A DM, to a user id or (`by_principal`) to whoever Slack has for it."""

    to: str
    message: Message
    key: str | None = None
    by_principal: bool = False
    attempt: int = 0


@dataclass(frozen=True)
class Respond:
    """A message to a person through a response_url."""

    url: str
    message: Message
    replace: bool = False
    attempt: int = 1


@dataclass(frozen=True)
class Redraw:
    """Draw the boards (no `user_id`) or a person's App Home afresh."""

    user_id: str | None = None


Item = Flush | Batch | Direct | Respond | Redraw


class Drawer(Protocol):
    """Reads the newest state for a redraw (once per batch) and renders it;
    the outbox sends what it returns."""

    def boards(self) -> list[tuple[str, str, Message]]:
        """(channel, the board message's ts, the board) for every board."""
        ...

    def home(self, user_id: str) -> dict[str, Any] | None:
        """The person's App Home view; None if it cannot be drawn now."""
        ...


class Outbox:
    def __init__(
        self,
        client: WebClient,
        threads: int = 4,
        ledger: Ledger | None = None,
        directory: Directory | None = None,
        fast_within: float = FAST_WITHIN,
        retry_after: RetryAfter | None = None,
    ) -> None:
        self.client = client
        self.retry_after = retry_after or RetryAfter()
        self.fast_within = fast_within
        # One request, no retries of its own (they come from the outbox):
        # a send without a claim must end well within the recovery's grace.
        self.fast_client = web_client(client.token, client.base_url, retries=0)
        self.ledger = ledger
        self.directory = directory
        self.drawer: Drawer | None = None
        self._channels: dict[str, _Paced] = {}
        self._queue: queue.PriorityQueue[tuple[int, int, Item]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._queued: set[Redraw] = set()
        # Retries waiting for their backoff: sent at once by close().
        self._timers: dict[threading.Timer, tuple[Priority, Item]] = {}
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._work, name=f"stormlock-outbox-{n}", daemon=True
            )
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()
        if threads:  # the sending outbox, not the reminders' synchronous one
            OUTBOX_WAITING.set_function(self.waiting)

    def draw_with(self, drawer: Drawer) -> None:
        """What redraws boards and App Homes (built after the outbox)."""
        self.drawer = drawer

    def waiting(self) -> int:
        """Sends queued or under way, plus announcements waiting for their
        channel's turn (a send under way puts what follows it, a retry or
        the rest of a split post, before it counts as done)."""
        with self._lock:
            posts = sum(len(paced.pending) for paced in self._channels.values())
            timers = len(self._timers)
            # A timer that fired is in the queue before it leaves _timers.
            return self._queue.unfinished_tasks + timers + posts

    # -- the queue ----------------------------------------------------------------

    def _put(self, priority: Priority, item: Item, delay: float = 0.0) -> None:
        if delay > 0:
            self._later(delay, priority, item)
        else:
            self._queue.put((priority, next(self._order), item))

    def redraw(self, what: Redraw, delay: float = 0.0) -> None:
        """Redraw after `delay` seconds, unless that redraw already waits
        (it will read the newest state): a burst of changes makes one."""
        with self._lock:
            if what in self._queued:
                return
            self._queued.add(what)
        self._put(Priority.REFRESH, what, delay)

    def _work(self) -> None:
        while True:
            _priority, _order, item = self._queue.get()
            try:
                self._deliver(item)
            except Exception:
                log.exception("outbox delivery failed")
            finally:
                self._queue.task_done()

    def _deliver(self, item: Item) -> None:
        if isinstance(item, Flush):
            self._flush(item.channel)
        elif isinstance(item, Batch):
            self._send_batch(item)
        elif isinstance(item, Direct):
            self._send_dm(item)
        elif isinstance(item, Respond):
            failed = self.respond_now(item.url, item.message, item.replace)
            self._again(item, failed, Priority.ANSWER)
        else:
            with self._lock:
                self._queued.discard(item)
            self._draw(item)

    def _again(
        self, item: Batch | Direct | Respond, failed: Failure | None, priority: Priority
    ) -> bool:
        """Queue `item` again after a passing failure, with backoff; whether
        it was (False: it went out, or is given up)."""
        if failed is None or not failed.passing or item.attempt >= len(BACKOFF):
            return False
        # As long as Slack asked, if it asked longer than our backoff.
        delay = max(BACKOFF[item.attempt], failed.wait)
        log.info("%s failed (%s); again in %.1f s", type(item).__name__, failed, delay)
        self._put(priority, replace(item, attempt=item.attempt + 1), delay)
        return True

    def drain(self, timeout: float | None = None) -> bool:
        """Until every queued send has gone, or `timeout` seconds; whether
        the queue emptied."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout: float = 20.0) -> None:
        """Send what is still waiting, within `timeout` (a graceful shutdown):
        retries waiting for their backoff go at once."""
        with self._lock:
            self._closed = True
            waiting = list(self._timers.items())
            self._timers.clear()
        for timer, (priority, item) in waiting:
            timer.cancel()
            self._put(priority, item)
        if not self.drain(max(0.0, timeout)):
            with self._lock:
                posts = sum(len(paced.pending) for paced in self._channels.values())
            log.warning(
                "shutting down with %d Slack sends unsent (%d channel posts among "
                "them); announcements and forced-off DMs are recovered from history "
                "by the next bot or another replica",
                self._queue.unfinished_tasks,
                posts,
            )

    def _later(self, delay: float, priority: Priority, item: Item) -> None:
        def fire() -> None:
            with self._lock:
                if timer not in self._timers:
                    return  # close() sent it already
                self._put(priority, item)
                del self._timers[timer]

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        with self._lock:
            if self._closed:
                self._queue.put((priority, next(self._order), item))
                return
            self._timers[timer] = (priority, item)
        timer.start()

    # -- sending now (the caller's thread) ----------------------------------------

    def respond(
        self, response_url: str, message: Message, replace: bool = False
    ) -> None:
        """The person's answer, through the request's response_url: at once,
        in this thread; if Slack failed for a passing reason, again from the
        outbox, ahead of everything else queued."""
        failed = self.respond_now(response_url, message, replace)
        if failed is not None and failed.passing:
            again = Respond(response_url, message, replace)
            self._put(Priority.ANSWER, again, max(BACKOFF[0], failed.wait))

    def respond_now(
        self, response_url: str, message: Message, replace: bool = False
    ) -> Failure | None:
        body: dict[str, Any] = {**message.kwargs(), "response_type": "ephemeral"}
        if replace:
            body["replace_original"] = True
        webhook = WebhookClient(
            response_url, timeout=SLACK_TIMEOUT, retry_handlers=retry_handlers()
        )
        try:
            response = webhook.send_dict(body)
        except OSError as exc:
            return self._failed("response_url", exc)
        if response.status_code != 200:
            status = response.status_code
            failed = Failure(f"http_{status}", status >= 500 or status == 429)
            return self._failed("response_url", failed)
        return None

    def post_now(self, channel: str, message: Message) -> Failure | None:
        """Post to a channel; Slack's error code, if any."""
        return self._post_with(self.client, channel, message)

    def _post_with(
        self, client: WebClient, channel: str, message: Message
    ) -> Failure | None:
        return self._posted(client, channel, message)[1]

    def post_for_ts(
        self, channel: str, message: Message
    ) -> tuple[str | None, Failure | None]:
        """Post to a channel and say which message it made (its `ts`, to
        edit it later: a board); else Slack's error."""
        return self._posted(self.client, channel, message)

    def _posted(
        self, client: WebClient, channel: str, message: Message
    ) -> tuple[str | None, Failure | None]:
        # Posts are paced a channel already (CHANNEL_PACE); a 429 holds back
        # only the post it answered (queued again after its Retry-After).
        try:
            posted = client.chat_postMessage(channel=channel, **message.kwargs())
        except (SlackApiError, OSError) as exc:
            failed = self._failed("chat.postMessage", exc, limit="")
            if failed.unknown:  # posted, perhaps: never posted again
                log.warning("a post to %s may or may not have gone out", channel)
                failed = failed._replace(passing=False)
            return None, failed
        ts = posted.get("ts")
        return (str(ts) if ts else None), None

    def update_now(self, channel: str, ts: str, message: Message) -> Failure | None:
        """Edit a message the bot posted (a board)."""
        if held := self._held_back("chat.update"):
            return held
        try:
            self.client.chat_update(channel=channel, ts=ts, **message.kwargs())
        except (SlackApiError, OSError) as exc:
            return self._failed("chat.update", exc)
        return None

    def dm_now(self, user_id: str, message: Message) -> Failure | None:
        if held := self._held_back("conversations.open"):
            return held
        try:
            opened = self.client.conversations_open(users=user_id)
        except (SlackApiError, OSError) as exc:
            return self._failed("conversations.open", exc)
        return self.post_now(opened["channel"]["id"], message)

    def publish_now(self, user_id: str, view: dict[str, Any]) -> Failure | None:
        if held := self._held_back("views.publish"):
            return held
        try:
            self.client.views_publish(user_id=user_id, view=view)
        except (SlackApiError, OSError) as exc:
            return self._failed("views.publish", exc)
        return None

    def _held_back(self, method: str) -> Failure | None:
        """A rate limit Slack set on `method` that has not run out: the call
        is not made (a passing failure, with the time left to wait)."""
        left = self.retry_after.left(method)
        return Failure("ratelimited", True, left) if left > 0 else None

    def _failed(
        self, method: str, failure: BaseException | Failure, limit: str | None = None
    ) -> Failure:
        """`failure` counted and logged; a 429's Retry-After kept for
        `limit` (the method, unless said; "": for nothing else)."""
        if isinstance(failure, BaseException):
            failure = failure_of(failure)
        if limit != "":
            self.retry_after.heard(limit or method, failure)
        SLACK_ERRORS.labels(method, failure.error).inc()
        log.warning("%s failed: %s", method, failure.error)
        return failure

    # -- sending later (queued, retried) --------------------------------------------

    def post(
        self,
        channel: str,
        message: Message,
        tell: str | None = None,
        key: str | None = None,
        fresh: bool = True,
    ) -> None:
        """Announce in `channel`. Slack takes about one post a second per
        channel: what comes faster waits for the next post, which names every
        change since, in order (instead of a wall of 429s). `tell`: the
        response_url of whom to tell if Slack refuses it for good. With
        `key`, it is sent once across replicas and restarts (see ledger.py);
        `fresh`: the change was made just now (not found later, by recovery
        or a second look)."""
        now = time.monotonic()
        fresh_until = now + (self.fast_within if fresh else 0.0)
        with self._lock:
            paced = self._channels.setdefault(channel, _Paced())
            paced.pending.append(_Post(message, tell, key, fresh_until, now))
            if paced.scheduled or paced.sending:  # the end of the send schedules
                return
            paced.scheduled = True
            delay = paced.next_at - now
        self._put(Priority.NOTICE, Flush(channel), delay)

    def _flush(self, channel: str) -> None:
        if not self._take_turn(channel):  # another worker or replica posted
            self._put(Priority.NOTICE, Flush(channel), CHANNEL_PACE / 4)
            return
        with self._lock:
            paced = self._channels[channel]
            if not paced.pending:  # never: one turn a channel at a time
                paced.scheduled = False
                return
            # As many as one post holds (about a hundred one-line changes).
            waiting = paced.pending[: paced.limit]
            count = fitting([post.message for post in waiting])
            now = time.monotonic()
            behind = paced.pending[count:]
            if behind and now - behind[0].queued > OVERFLOW_AFTER:
                # More than the pace lets through: name what fits, count
                # the rest (one line in the room of the last named).
                count = max(1, count - 1)
                batch = Batch(
                    channel,
                    tuple(paced.pending[:count]),
                    tuple(paced.pending[count:]),
                )
                paced.pending = []
            else:
                batch = Batch(channel, tuple(paced.pending[:count]))
                del paced.pending[:count]
            paced.next_at = now + CHANNEL_PACE
            paced.scheduled, paced.sending = False, True
        try:
            self._send_batch(batch)
        finally:
            # The next turn only once this post is done: a slow post is
            # never overtaken by the next (the channel reads in order).
            with self._lock:
                paced.sending = False
                rest = paced.scheduled = bool(paced.pending)
                delay = max(0.0, paced.next_at - time.monotonic())
            if rest:  # the rest goes in the next post
                self._put(Priority.NOTICE, Flush(channel), delay)

    def _take_turn(self, channel: str) -> bool:
        """The channel's turn across workers and replicas: a record in the
        store that lasts `CHANNEL_PACE`, so together they post about once a
        second a channel, as Slack allows. A store that cannot say does not
        hold the post up (Slack's 429s are retried)."""
        if self.ledger is None:
            return True
        try:
            floor = self.ledger.records.backend.capabilities.min_ttl
            taken = self.ledger.records.claim(f"pace/{channel}", max(_PACE_TTL, floor))
        except StormlockError as exc:
            log.debug("posting without the channel's turn: %s", exc)
            return True
        return taken is not None

    def _send_batch(self, batch: Batch) -> None:
        failed = self._post_batch(batch)
        if failed is None or self._again(batch, failed, Priority.NOTICE):
            return
        if failed.error in _TOO_LONG and len(batch.named) > 1:
            self._split(batch.channel, [*batch.named, *batch.counted])
            return
        if failed.unknown:  # recorded as sent: it may well have gone out
            return
        tell = {post.tell for post in (*batch.named, *batch.counted) if post.tell}
        for url in sorted(tell):
            self.respond(url, announce_failed(failed.error))

    def _split(self, channel: str, posts: list[_Post]) -> None:
        """Slack found a post too long: its changes go again, fewer a post."""
        log.warning("a post of %d changes was too long; splitting it", len(posts))
        with self._lock:
            paced = self._channels[channel]
            paced.limit = max(1, len(posts) // 2)
            paced.pending[:0] = posts
            if paced.scheduled or paced.sending:  # the end of the send schedules
                return
            paced.scheduled = True
        self._put(Priority.NOTICE, Flush(channel), CHANNEL_PACE)

    def _post_batch(self, batch: Batch) -> Failure | None:
        """One post naming what of `batch.named` nobody else sent or is
        sending, and counting what of `batch.counted` is."""
        now = time.monotonic()
        posts = [*batch.named, *batch.counted]
        first = batch.attempt == 0
        if first and self.ledger and all(now < p.fresh_until for p in posts):
            # Fresh changes: nobody else sends them yet (the recovery pass
            # waits GRACE), so one try without claims, marked after.
            message = _message(list(batch.named), list(batch.counted))
            failed = self._post_with(self.fast_client, batch.channel, message)
            split = failed is not None and failed.error in _TOO_LONG
            if failed is None or not (failed.passing or (split and len(posts) > 1)):
                self._mark([post.key for post in posts])
            return failed
        claimed = self._claim([post.key for post in posts])
        if claimed is None:
            return None  # the store cannot say: a later pass sends it
        mine = [post for post, claim in zip(posts, claimed, strict=True) if claim]
        if not mine:
            return None
        named = mine[: len([claim for claim in claimed[: len(batch.named)] if claim])]
        message = _message(named, mine[len(named) :])
        with self._keeping(claimed):
            failed = self.post_now(batch.channel, message)
        if failed is not None and failed.error in _TOO_LONG and len(named) > 1:
            self._settle(claimed, Failure(failed.error, True))  # let go: split
        else:
            self._settle(claimed, failed)
        return failed

    def dm(
        self,
        to: str,
        message: Message,
        key: str | None = None,
        by_principal: bool = False,
    ) -> None:
        """DM `to`: a user id, or a principal Slack is asked about first."""
        self._put(Priority.NOTICE, Direct(to, message, key, by_principal))

    def _send_dm(self, item: Direct) -> None:
        user_id = item.to
        if item.by_principal:
            assert self.directory is not None
            found = self.directory.user_id_for(item.to)
            if not found:
                return  # nobody in Slack to tell
            user_id = found
        claimed = self._claim([item.key])
        if not claimed or not claimed[0]:
            return  # sent or being sent elsewhere, or the store is out
        with self._keeping(claimed):
            failed = self.dm_now(user_id, item.message)
        self._settle(claimed, failed)
        self._again(item, failed, Priority.NOTICE)

    def _draw(self, what: Redraw) -> None:
        if self.drawer is None:
            return
        if what.user_id is not None:
            view = self.drawer.home(what.user_id)
            if view is not None:
                self.publish_now(what.user_id, view)
            return
        left = self.retry_after.left("chat.update")
        if left > 0:  # drawn afresh once Slack lets us, not now
            self.redraw(what, delay=left)
            return
        for channel, ts, board in self.drawer.boards():
            failed = self.update_now(channel, ts, board)
            if failed is not None and failed.wait > 0:
                self.redraw(what, delay=failed.wait)  # the rest, then
                return

    # -- once across replicas (ledger.py) ---------------------------------------------

    def _claim(self, keys: list[str | None]) -> list[Lease | bool] | None:
        """Per key: its claim, True (no key: nothing to claim) or False (sent
        or being sent elsewhere); None if the store failed (the notice is
        then recovered from history later)."""
        if self.ledger is None:
            return [True for _ in keys]
        named = [key for key in keys if key is not None]
        try:
            got = iter(self.ledger.claim_all(named))
        except StormlockError as exc:  # claims made so far lapse by themselves
            log.warning("could not claim a notice: %s", exc)
            return None
        return [True if key is None else (next(got) or False) for key in keys]

    def _keeping(self, claims: list[Lease | bool]) -> AbstractContextManager[None]:
        """The claims kept from lapsing while their send is under way."""
        if self.ledger is None:
            return contextlib.nullcontext()
        return self.ledger.keeping(claims)

    def _mark(self, keys: list[str | None]) -> None:
        """Record sends made without a claim as sent."""
        assert self.ledger is not None
        try:
            self.ledger.mark_all([key for key in keys if key is not None])
        except StormlockError as exc:  # recovery may send it once more
            log.warning("could not record a notice: %s", exc)

    def _settle(self, claims: list[Lease | bool], failed: Failure | None) -> None:
        """Record what went out, or Slack refused for good; let go of what
        may go out on a later try."""
        if self.ledger is None:
            return
        held = [claim for claim in claims if isinstance(claim, Lease)]
        try:
            if failed is not None and failed.passing:
                self.ledger.unclaim_all(held)
            else:
                self.ledger.sent_all(held)
        except StormlockError as exc:  # a claim lapses by itself
            log.warning("could not record a notice: %s", exc)


def _message(named: list[_Post], counted: list[_Post]) -> Message:
    messages = [post.message for post in named]
    if counted:
        resources = sorted({post.key.split("/", 3)[-1] for post in counted if post.key})
        messages.append(more_changes(len(counted), resources))
    return combined(messages)
