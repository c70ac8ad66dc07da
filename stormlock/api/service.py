"""What the API does, without HTTP: each call acts as a token's principal,
within the token's scope, on the backends the server's config names."""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import NamedTuple

from ..backends import configured_backend
from ..config import API_SECTION, BOT_SECTION, Config
from ..contract import (
    MAX_RESOURCE_LENGTH,
    Backend,
    InLine,
    Lease,
    LockHeldException,
    same_principal,
)
from ..errors import (
    ConfigError,
    InvalidResourceName,
    NotAllowed,
    RateLimited,
    Unauthenticated,
    UnsupportedOperation,
    UsageError,
)
from ..history import ACQUIRED, RELEASED, SOURCES, Event, acting
from ..line import Line, Place, has_line
from ..lock import (
    StormLock,
    list_all,
    lock_for,
    read_history,
    resolve,
    resources_of,
    set_members,
)
from ..names import (
    RECORD_PREFIX,
    RULE,
    normal,
    validate_principal,
)
from ..pool import PoolLock
from ..records import Records
from ..sets import SetLock
from ..tokens import API_RECORDS, Token, Tokens
from ..ttl import check_ttl

log = logging.getLogger(__name__)

#: The longest `wait` an acquire may ask the server for (a client that
#: wants to wait longer asks again: `stormlock acquire --wait` does).
MAX_WAIT = timedelta(seconds=60)
# How long a request id is remembered: a client's retries fit well inside.
REQUEST_TTL = timedelta(minutes=15)
SOURCE = "api"
_REQUESTS = "stormlock-api"  # who holds the request-id records


class FailureLimiter:
    """Failed authentications a `window`, per client address and per peer
    (the socket's own address, which a client cannot choose; behind an
    ingress, every client's), at most `limit` and `limit * PEER_FACTOR`.

    An address over its limit gets 429 instead of 401, and its failures go
    on being counted; a valid token always passes (it is still checked), so
    one client's guesses never lock out another behind the same ingress.
    Each worker process counts its own failures: with `workers` of them,
    each allows its share, so together they allow `limit`."""

    PEER_FACTOR = 10

    def __init__(self, limit: int = 20, window: float = 60.0, workers: int = 1) -> None:
        self.limit = max(1, limit // max(1, workers))
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def _keys(self, address: str, peer: str) -> list[tuple[tuple[str, str], int]]:
        keys = [(("client", address), self.limit)]
        if peer != address:
            keys.append((("peer", peer), self.limit * self.PEER_FACTOR))
        return keys

    def limited(self, address: str, peer: str | None = None) -> float | None:
        """Seconds until the address (or its peer) is under its limit again,
        if it is over it now; else None."""
        now = time.monotonic()
        waits = []
        with self._lock:
            for key, limit in self._keys(address, peer or address):
                failures = self._recent(key, now)
                if len(failures) >= limit:
                    waits.append(max(1.0, failures[-limit] + self.window - now))
        return max(waits, default=None)

    def failed(self, address: str, peer: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            for key, _ in self._keys(address, peer or address):
                self._recent(key, now).append(now)
            while len(self._failures) > 10_000:  # bounded: oldest addresses go
                self._failures.pop(next(iter(self._failures)))


class WaitSlots:
    """The server threads that waits in line may hold at once, in this
    worker process: `slots` in all, and a quarter of them (at least one) per
    token and per client address. The rest of the threads answer Slack and
    every other request however many CI jobs wait. A wait that finds no
    slot is cut short to a poll (`POLL`): it joins or keeps its place in
    the line, tries once, and is told when to ask again (`poll_again`; the
    `http` backend does, with its ticket)."""

    POLL = timedelta(milliseconds=100)
    POLL_AGAIN = 1.0
    # Further back in line, ask again later (within the ticket's 10 s).
    POLL_LATEST = 5.0

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.each = max(1, self.slots // 4)
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def poll_again(self, held: LockHeldException) -> float:
        """When a poller `held` refused should ask again: the first in line
        each `POLL_AGAIN` s (so it takes its turn soon), one more second for
        every 10 ahead of it, at most `POLL_LATEST`."""
        ahead = held.waiting if isinstance(held, InLine) else 0
        return min(self.POLL_LATEST, self.POLL_AGAIN + ahead / 10)

    @contextmanager
    def slot(
        self, wait: timedelta | None, token: str, client: str
    ) -> Iterator[timedelta | None]:
        """The wait to make: `wait` itself in a slot, else a poll."""
        if not wait or wait <= self.POLL:
            yield wait
            return
        keys = ("", f"token {token}", f"client {client}")
        with self._lock:
            free = (
                self._held[""] < self.slots
                and self._held[keys[1]] < self.each
                and self._held[keys[2]] < self.each
            )
            if free:
                self._held.update(keys)
        if not free:
            yield self.POLL
            return
        try:
            yield wait
        finally:
            with self._lock:
                self._held.subtract(keys)
                for key in keys:
                    if self._held[key] <= 0:
                        del self._held[key]


class Context(NamedTuple):
    """Who acts and from where, as a delegate token's client says."""

    actor: str | None = None
    source: str | None = None
    forced: bool = False
    channel: str | None = None
    record: bool = True


_CHANNEL = re.compile(r"[A-Z0-9]{1,40}")


class Caller:
    """Who a request acts as. A token's principal is its own; only a
    delegate token names one, and says who acted and from where."""

    def __init__(
        self, token: Token, principal: str | None = None, context: Context | None = None
    ) -> None:
        self.token = token
        self.principal = token.principal
        self.context = Context()
        if token.delegate:
            if principal:
                self.principal = validate_principal(principal)
            if context is not None:
                self.context = _checked(context)

    def check(self, resource: str | None, write: bool) -> None:
        refusal = self.token.refusal(resource, write)
        if refusal is not None:
            raise NotAllowed(refusal)

    def sees_id(self, lease: Lease) -> bool:
        """A lease id is shown to its holder only (and to a delegate token,
        which acts for every holder)."""
        return self.token.delegate or same_principal(lease.principal, self.principal)

    def channel(self, configured: str | None) -> str | None:
        """Where this caller's change is announced."""
        return (self.token.delegate and self.context.channel) or configured

    @contextmanager
    def acting(self, channel: str | None) -> Iterator[None]:
        if not self.token.delegate:
            # The token acted, for its principal: history names both.
            with acting(actor=self.token.name, source=SOURCE, channel=channel):
                yield
            return
        said = self.context
        with acting(
            actor=said.actor,
            source=said.source or SOURCE,
            forced=said.forced,
            channel=said.channel or channel,
            record=said.record,
        ):
            yield


def _checked(context: Context) -> Context:
    if context.actor is not None:
        validate_principal(context.actor)
    if context.source is not None and context.source not in SOURCES:
        raise UsageError(f"context.source must be one of {', '.join(SOURCES)}")
    if context.channel is not None and not _CHANNEL.fullmatch(context.channel):
        raise UsageError("context.channel must be a Slack channel id, such as C0123ABC")
    return context


API_PREFIX = RECORD_PREFIX + API_RECORDS
DEFAULT_FAILURE_LIMIT = 20


def _failure_limit(config: Config) -> int:
    """`[api] failed_auth_limit`: failed authentications a minute per address."""
    raw = config.value(None, "failed_auth_limit", API_SECTION)
    if raw is None:
        return DEFAULT_FAILURE_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise ConfigError(
            f"{config.source}: [api] failed_auth_limit = {raw!r} must be a whole "
            "number from 1 to 100000 (failed authentications a minute per address)"
        )
    return int(raw)


def _any_name(resource: str) -> str:
    """A delegate's resource: any name the backend contract allows (the
    bot's records too), bar the API's own records."""
    name = normal(resource)
    if not name or len(name) > MAX_RESOURCE_LENGTH + len(RECORD_PREFIX) + 50:
        raise InvalidResourceName(f"resource name is empty or too long; use {RULE}")
    if name.startswith(API_PREFIX):
        raise NotAllowed(
            f"{API_PREFIX!r} holds the API's own records; no token may touch them"
        )
    return name


def _place(lock: StormLock, ticket: str | None) -> Place:
    """The caller's place in `lock`'s line that `ticket` names ("seq:id",
    from the last request), if it is still theirs; else a place to join."""
    if not ticket or isinstance(lock, PoolLock | SetLock) or not has_line(lock.backend):
        return Place()
    seq, _, secret = ticket.partition(":")
    for waiting in Line(lock.backend, lock.resource).waiting():
        if (
            str(waiting.seq) == seq
            and waiting.record.id == secret
            and same_principal(waiting.principal, lock.principal)
        ):
            return Place(waiting)
    return Place()  # it lapsed: join again, at the back


class _AnyName(StormLock):
    """A lock on a name the CLI would refuse (a delegate's)."""

    def __init__(
        self,
        backend: Backend,
        resource: str,
        principal: str,
        ttl: timedelta,
        max_ttl: timedelta | None,
    ) -> None:
        self.backend = backend
        self.resource = resource
        self.principal = validate_principal(principal)
        self.ttl = check_ttl(ttl, max_ttl)
        self.max_ttl = max_ttl


class Change(NamedTuple):
    """A change to announce, for a bot serving the API in its own process."""

    event: str
    """acquired or released (history's names)."""
    lease: Lease
    channel: str
    actor: str
    forced: bool = False


class ApiService:
    def __init__(
        self,
        config: Config,
        announce: Callable[[Change], None] | None = None,
        workers: int = 1,
        threads: int = 16,
    ) -> None:
        self.config = config
        self.announce = announce
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self.tokens = Tokens(self.backend(config.default_backend))
        self.limiter = FailureLimiter(_failure_limit(config), workers=workers)
        self.waits = WaitSlots(threads // 2)

    def backend(self, name: str) -> Backend:
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = self._backends[name] = configured_backend(self.config, name)
            return backend

    def close(self) -> None:
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()

    # -- authentication ---------------------------------------------------

    def authenticate(
        self, header: str | None, address: str, peer: str | None = None
    ) -> Token:
        """The token of `header`. `address` is the client's (from a trusted
        proxy's X-Forwarded-For), `peer` the socket's, if they differ."""
        scheme, _, secret = (header or "").partition(" ")
        secret = secret.strip()
        token = None
        if scheme.lower() == "bearer" and secret:
            token = self.tokens.verify(secret)
        if token is not None:
            return token
        wait = self.limiter.limited(address, peer)
        self.limiter.failed(address, peer)
        if wait is not None:
            raise RateLimited(
                f"too many failed authentications from {address}; "
                f"try again in {int(wait)} s"
            )
        if not secret:
            raise Unauthenticated(
                "no token: send 'Authorization: Bearer <token>' "
                "(create one with 'stormlock token create' or in Slack)"
            )
        raise Unauthenticated(
            "the token is unknown, revoked or expired; create a new one"
        )

    # -- leases ------------------------------------------------------------

    def _check(self, caller: Caller, resource: str | None, write: bool) -> None:
        """The token's scope, on what the name resolves to (in NFC, as the
        lock will use it): every member of a set ("a,b" or a group) or of a
        pool (any of which the request may be given)."""
        if resource is None:
            caller.check(None, write)
            return
        name = normal(resource)
        resolved = set_members(self.config, name) is not None or self.config.pool(name)
        names = resources_of(self.config, name) if resolved else (name,)
        for each in names:
            caller.check(normal(each), write)

    def _lock_for(self, resource: str, caller: Caller) -> StormLock:
        if not caller.token.delegate or set_members(self.config, resource):
            target = resolve(self.config, resource)
            backend = self.backend(target.settings.backend)
            return lock_for(target, backend, caller.principal)
        resource = _any_name(resource)
        settings = self.config.settings(resource)
        return _AnyName(
            self.backend(settings.backend),
            resource,
            caller.principal,
            settings.ttl,
            settings.max_ttl,
        )

    def _channel(self, resource: str) -> str | None:
        """Where the bot announces this resource's changes, if fixed: the
        change is recorded with it, so a bot on this store announces it."""
        return self.config.value(resource, "announce_channel", BOT_SECTION)

    def _request_key(self, caller: Caller, request_id: str, resource: str) -> str:
        # Per principal and resource: one caller can never replay another's
        # request, nor a request id sent again for another resource.
        raw = f"{caller.principal}\0{request_id}\0{normal(resource)}".encode()
        return f"{API_RECORDS}request/{hashlib.sha256(raw).hexdigest()}"

    def _replayed(self, lock: StormLock, key: str) -> Lease | None:
        """The lease an earlier try of this request was granted, if active."""
        records = Records(lock.backend, _REQUESTS)
        record = records.get(key)
        try:
            resource, lease_id = json.loads(record.note or "") if record else ("", "")
        except ValueError:
            return None
        lease = lock.backend.current(resource) if resource else None
        if lease is None or lease.id != lease_id:
            return None
        if isinstance(lock, SetLock):
            return lock.current()
        return lease._replace(resource=lease.resource or resource)

    def acquire(
        self,
        caller: Caller,
        resource: str,
        ttl: timedelta | None,
        note: str | None,
        wait: timedelta | None,
        request_id: str | None,
        ticket: str | None = None,
        keep_place: bool = False,
        client: str = "",
    ) -> tuple[Lease, bool, builtins.list[Lease]]:
        """The lease, whether it was granted to an earlier try of this
        request (a retry after a lost answer), and for a set each member's
        lease (with its own fence).

        With `keep_place`, a wait in line that runs out keeps the caller's
        ticket and says which (`LockHeldException.ticket`): the next request
        resumes it with `ticket`, so a client that waits longer than one
        request keeps its place (the http backend's `--wait`). A wait finds
        a waiting slot (`WaitSlots`) or is cut short to a poll, with
        `retry_after` on the refusal; `client` is the caller's address."""
        self._check(caller, resource, write=True)
        if wait is not None and wait > MAX_WAIT:
            raise UsageError(
                f"wait is at most {int(MAX_WAIT.total_seconds())} s per request; "
                "ask again to wait longer"
            )
        lock = self._lock_for(resource, caller)
        key = self._request_key(caller, request_id, resource) if request_id else None
        # A retry of a resource's acquire is refused as held (and looked up
        # then); a pool's would take another member, so it looks first.
        if key is not None and isinstance(lock, PoolLock):
            replayed = self._replayed(lock, key)
            if replayed is not None:
                return replayed, True, []
        place = _place(lock, ticket) if wait and keep_place else None
        with self.waits.slot(wait, caller.token.name, client) as waiting:
            try:
                with caller.acting(self._channel(lock.resource)):
                    lease = lock.acquire_lease(ttl, note, waiting, place=place)
            except LockHeldException as held:
                replayed = self._replayed(lock, key) if key is not None else None
                if replayed is not None:  # the earlier try, or a twin, won
                    each = lock.leases if isinstance(lock, SetLock) else []
                    return replayed, True, each
                if place is not None and place.ticket is not None:
                    held.ticket = f"{place.ticket.seq}:{place.ticket.record.id}"
                if waiting != wait:  # cut short: no thread free to wait in
                    held.retry_after = self.waits.poll_again(held)
                raise
        self._tell(ACQUIRED, lease, caller)
        if key is not None:
            remember = min(REQUEST_TTL, lock.ttl if ttl is None else ttl)
            # A twin try may have recorded its own first; this one is the lease.
            first = lease.members[0] if isinstance(lock, SetLock) else lease.resource
            value = json.dumps([first, lease.id])
            Records(lock.backend, _REQUESTS).claim(key, remember, value)
        return lease, False, lock.leases if isinstance(lock, SetLock) else []

    def renew(
        self, caller: Caller, resource: str, lease_id: str, ttl: timedelta | None
    ) -> tuple[Lease, builtins.list[Lease]]:
        """The renewed lease, and for a set each member's."""
        self._check(caller, resource, write=True)
        lock = self._lock_for(resource, caller)
        with caller.acting(self._channel(lock.resource)):
            lease = lock.renew(lease_id, ttl)
        if isinstance(lock, SetLock):
            return lease, lock.leases
        if len(lease.members) > 1:  # a set renewed by one member's name
            found = [lock.backend.current(member) for member in lease.members]
            return lease, [one for one in found if one is not None]
        return lease, []

    def release(self, caller: Caller, resource: str, lease_id: str) -> bool | None:
        self._check(caller, resource, write=True)
        lock = self._lock_for(resource, caller)
        channel = caller.channel(self._channel(lock.resource))
        before = lock.current() if channel and self.announce else None
        with caller.acting(channel):
            released = lock.release(lease_id)
        if released and before is not None:
            self._tell(RELEASED, before, caller)
        return released

    def _tell(self, event: str, lease: Lease, caller: Caller) -> None:
        """Announce a change at once, when a bot serves this API (else its
        recovery pass announces it from history, a little later)."""
        channel = caller.channel(self._channel(lease.resource))
        if self.announce is None or channel is None:
            return
        try:
            actor = caller.context.actor or caller.principal
            self.announce(Change(event, lease, channel, actor, caller.context.forced))
        except Exception:  # the change stands; history still has it
            log.exception("announcing an API change failed")

    def current(self, caller: Caller, resource: str) -> Lease | None:
        self._check(caller, resource, write=False)
        return self._lock_for(resource, caller).current()

    def line(self, caller: Caller, resource: str) -> builtins.list[dict[str, object]]:
        """Who waits in `resource`'s line, first first (no ticket secrets)."""
        self._check(caller, resource, write=False)
        lock = self._lock_for(resource, caller)
        line = lock._line()
        if line is None:
            raise UnsupportedOperation(
                f"{lock.resource!r} has no line of its own ({type(lock).__name__}); "
                "`--wait` retries with backoff"
            )
        return line.listed()

    def is_held(self, caller: Caller, resource: str, lease_id: str) -> bool:
        self._check(caller, resource, write=False)
        return self._lock_for(resource, caller).is_current(lease_id)

    def leases(
        self, caller: Caller, prefix: str = "", before: datetime | None = None
    ) -> list[Lease]:
        caller.check(None, write=False)
        names = self.config.backend_names()
        if not (prefix or before is not None or caller.token.delegate):
            leases = list_all(self.config, {name: self.backend(name) for name in names})
            return [lease for lease in leases if caller.token.covers(lease.resource)]
        # A delegate (a bridge such as the bot) also sees its own records.
        hidden = API_PREFIX if caller.token.delegate else RECORD_PREFIX
        leases = []
        for name in names:
            backend = self.backend(name)
            if before is not None:
                found = backend.list_expiring(before)
            elif prefix:
                found = backend.list_prefix(prefix)
            else:
                found = backend.list_leases()
            leases += [
                lease
                for lease in found
                if lease.resource.startswith(prefix)
                and not lease.resource.startswith(hidden)
                and caller.token.covers(lease.resource)
            ]
        leases.sort(key=lambda lease: lease.resource)
        return leases

    def history(
        self,
        caller: Caller,
        resource: str | None,
        since: datetime | None,
        principal: str | None,
        limit: int | None,
    ) -> builtins.list[Event]:
        self._check(caller, resource, write=False)
        # A scoped token's events are filtered after reading: read them all.
        want = limit if not caller.token.resources else None
        events = read_history(
            self.config, self.backend, resource, since, principal, want
        )
        events = [event for event in events if caller.token.covers(event.resource)]
        return events[-limit:] if limit else events
