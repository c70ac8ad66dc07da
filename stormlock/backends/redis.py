"""Redis backend.

Each lease is a hash at `{prefix}lease:{resource}` whose key expires with the
lease (PEXPIREAT: the server's clock decides; the key lives while the
server's time in ms is below the reported expiry). A counter at
`{prefix}fence:{resource}` survives release and expiry and gives the fence.
A sorted set `{prefix}active` (score: expiry in ms) indexes live leases, so
listing costs O(active leases), never a keyspace scan.

Every operation is one round trip: acquire, renew, release and list are Lua
scripts (EVALSHA), current and is_current one command each.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..backend import ONE_TRIP, Capabilities, Clock, Finding, Lease, LeaseBackend
from ..errors import (
    BackendUnavailable,
    ConfigError,
    StoreRefused,
    StormlockError,
    detail,
)
from ..history import Event
from ..names import RECORD_PREFIX

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The fence is the counter plus one, or the server clock in microseconds if
# that is larger: a Redis that lost its data (a restart without persistence,
# an eviction) still never hands out a fence below one it gave before.
_NEXT_FENCE = """
local fence = redis.call('INCR', KEYS[2])
local clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
if fence < clock then
    fence = clock
    redis.call('SET', KEYS[2], string.format('%d', fence))
end
"""

_FIELDS = "'id', 'principal', 'created', 'expires', 'note', 'fence', 'members'"

# History: an entry in the resource's stream and in the stream of all, in
# the script of the change (no extra round trip); entries older than the
# retention are trimmed by the same XADD (MINID). Off when keep is ''.
_LOG = """
local function log(hist, all, keep, actor, source, event, resource, principal,
                   note, fence, until_)
    if keep == '' then return end
    local minid = string.format('%d', now - tonumber(keep))
    if actor == '' then actor = principal end
    local fields = {'resource', resource, 'event', event, 'principal', principal,
                    'actor', actor, 'note', note or '', 'fence', fence,
                    'source', source, 'until', until_}
    redis.call('XADD', hist, 'MINID', '~', minid, '*', unpack(fields))
    redis.call('XADD', all, 'MINID', '~', minid, '*', unpack(fields))
    -- A resource that stops changing: its stream goes after the retention.
    redis.call('PEXPIRE', hist, keep)
end
"""

# KEYS: lease, fence, index, history, all history[, guard].
# ARGV: id, principal, ttl_ms, note, resource, keep_ms, actor, source.
# With a guard (a line's mark): nothing is done while it exists (2).
_ACQUIRE = (
    _NOW_MS
    + _LOG
    + f"""
if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 1 then
    return {{2, {{}}}}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
    return {{0, redis.call('HMGET', KEYS[1], {_FIELDS})}}
end
"""
    + _NEXT_FENCE
    + """
local expires = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'principal', ARGV[2], 'created', now,
           'expires', expires, 'note', ARGV[4],
           'fence', string.format('%d', fence))
redis.call('PEXPIREAT', KEYS[1], expires - 1)
redis.call('ZADD', KEYS[3], expires, ARGV[5])
log(KEYS[4], KEYS[5], ARGV[6], ARGV[7], ARGV[8], 'acquired', ARGV[5], ARGV[2],
    ARGV[4], string.format('%d', fence), tostring(expires))
return {1, {ARGV[1], ARGV[2], tostring(now), tostring(expires), ARGV[4],
            string.format('%d', fence)}}
"""
)

# KEYS: lease, index, history, all history.
# ARGV: id, ttl_ms, resource, keep_ms, actor, source.
_RENEW = (
    _NOW_MS
    + _LOG
    + f"""
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return false end
local expires = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIREAT', KEYS[1], expires - 1)
redis.call('ZADD', KEYS[2], expires, ARGV[3])
local lease = redis.call('HMGET', KEYS[1], {_FIELDS})
log(KEYS[3], KEYS[4], ARGV[4], ARGV[5], ARGV[6], 'renewed', ARGV[3], lease[2],
    lease[5], lease[6], tostring(expires))
return lease
"""
)

# KEYS: lease, index, history, all history.
# ARGV: id, resource, keep_ms, actor, source, event (released or forced).
_RELEASE = (
    _NOW_MS
    + _LOG
    + """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
local lease = redis.call('HMGET', KEYS[1], 'principal', 'note', 'fence')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
log(KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[2], lease[1],
    lease[2], lease[3], '')
redis.call('PUBLISH', KEYS[1], 'freed')  -- wakes the first in its line
return 1
"""
)

# KEYS: index. ARGV: lease key prefix. Drops expired entries, returns the rest.
_LIST = (
    _NOW_MS
    + f"""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {{}}
local prefix = ARGV[3] or ''
for _, resource in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, ARGV[2])) do
    if prefix == '' or string.sub(resource, 1, #prefix) == prefix then
        local fields = redis.call('HMGET', ARGV[1] .. resource, {_FIELDS})
        if fields[1] then
            table.insert(out, resource)
            table.insert(out, fields)
        end
    end
end
return out
"""
)


# Sets: each member's keys are four in a row (lease, fence, index, history),
# then the history of all. One script: every member or none. Only the first
# member's event keeps the channel (Story.quiet): the set is one announcement.
# ARGV: id, principal, ttl_ms, note, members (JSON), keep_ms, actor, source,
# quiet source, then the member names.
_ACQUIRE_SET = (
    _NOW_MS
    + _LOG
    + f"""
local n = #ARGV - 9
for i = 1, n do
    if redis.call('EXISTS', KEYS[i * 4 - 3]) == 1 then
        return {{0, ARGV[9 + i], redis.call('HMGET', KEYS[i * 4 - 3], {_FIELDS})}}
    end
end
local expires = now + tonumber(ARGV[3])
local clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
local fences = {{}}
for i = 1, n do
    local fence = redis.call('INCR', KEYS[i * 4 - 2])
    if fence < clock then
        fence = clock
        redis.call('SET', KEYS[i * 4 - 2], string.format('%d', fence))
    end
    local f = string.format('%d', fence)
    redis.call('HSET', KEYS[i * 4 - 3], 'id', ARGV[1], 'principal', ARGV[2],
               'created', now, 'expires', expires, 'note', ARGV[4], 'fence', f,
               'members', ARGV[5])
    redis.call('PEXPIREAT', KEYS[i * 4 - 3], expires - 1)
    redis.call('ZADD', KEYS[i * 4 - 1], expires, ARGV[9 + i])
    local source = ARGV[9]
    if i == 1 then source = ARGV[8] end
    log(KEYS[i * 4], KEYS[n * 4 + 1], ARGV[6], ARGV[7], source, 'acquired',
        ARGV[9 + i], ARGV[2], ARGV[4], f, tostring(expires))
    table.insert(fences, f)
end
return {{1, tostring(now), tostring(expires), fences}}
"""
)

# Keys as for _ACQUIRE_SET, without the fences (three a member).
# ARGV: id, ttl_ms, keep_ms, actor, source, quiet source, then the names.
_RENEW_SET = (
    _NOW_MS
    + _LOG
    + f"""
local n = #ARGV - 6
for i = 1, n do
    if redis.call('HGET', KEYS[i * 3 - 2], 'id') ~= ARGV[1] then return false end
end
local expires = now + tonumber(ARGV[2])
local out = {{}}
for i = 1, n do
    redis.call('HSET', KEYS[i * 3 - 2], 'expires', expires)
    redis.call('PEXPIREAT', KEYS[i * 3 - 2], expires - 1)
    redis.call('ZADD', KEYS[i * 3 - 1], expires, ARGV[6 + i])
    local lease = redis.call('HMGET', KEYS[i * 3 - 2], {_FIELDS})
    local source = ARGV[6]
    if i == 1 then source = ARGV[5] end
    log(KEYS[i * 3], KEYS[n * 3 + 1], ARGV[3], ARGV[4], source, 'renewed',
        ARGV[6 + i], lease[2], lease[5], lease[6], tostring(expires))
    table.insert(out, lease)
end
return out
"""
)

# Keys as for _RENEW_SET. ARGV: id, keep_ms, actor, source, quiet source,
# event, then the member names. Releases every member that holds the id.
_RELEASE_SET = (
    _NOW_MS
    + _LOG
    + """
local n = #ARGV - 6
local released = 0
for i = 1, n do
    if redis.call('HGET', KEYS[i * 3 - 2], 'id') == ARGV[1] then
        local lease = redis.call('HMGET', KEYS[i * 3 - 2], 'principal', 'note', 'fence')
        redis.call('DEL', KEYS[i * 3 - 2])
        redis.call('PUBLISH', KEYS[i * 3 - 2], 'freed')
        redis.call('ZREM', KEYS[i * 3 - 1], ARGV[6 + i])
        local source = ARGV[5]
        if i == 1 then source = ARGV[4] end
        log(KEYS[i * 3], KEYS[n * 3 + 1], ARGV[2], ARGV[3], source, ARGV[6],
            ARGV[6 + i], lease[1], lease[2], lease[3], '')
        released = 1
    end
end
return released
"""
)


def _moment(ms: bytes | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _lease(resource: str, fields: Sequence[bytes | str | None]) -> Lease | None:
    values = [_text(f) for f in fields] + [None] * (7 - len(fields))
    lease_id, principal, created, expires, note, fence, members = values
    if lease_id is None or created is None or expires is None or fence is None:
        return None
    return Lease(
        principal=principal or "",
        created=_moment(created),
        id=lease_id,
        resource=resource,
        expires=_moment(expires),
        note=note or None,
        fence=int(fence),
        members=tuple(json.loads(members)) if members else (),
    )


def _event(entry_id: bytes | str, raw: dict[Any, Any]) -> Event:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    until = fields.get("until")
    return Event(
        _moment((_text(entry_id) or "0").split("-")[0]),
        fields.get("resource") or "",
        fields.get("event") or "",
        fields.get("principal") or "",
        fields.get("actor") or "",
        fields.get("note") or None,
        int(fields.get("fence") or 0),
        fields.get("source") or "",
        _moment(until) if until else None,
    )


def _ttl_ms(ttl: timedelta) -> int:
    # Never 0: PEXPIRE 0 would delete the key at once.
    return max(1, math.ceil(ttl.total_seconds() * 1000))


_LEASE_FIELDS = ["id", "principal", "created", "expires", "note", "fence", "members"]


class _RetryBrokenConnection(Retry):
    """Retry once a pooled connection that a server restart broke.

    Only a connection error that came at once is retried, and only while
    most of the budget is left: a silent server times out once, not twice.
    """

    def __init__(self) -> None:
        super().__init__(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))

    def call_with_retry(
        self,
        do: Any,
        fail: Any,
        is_retryable: Any = None,
        *more: Any,
        **options: Any,
    ) -> Any:
        started = time.monotonic()

        def quick(error: Exception) -> bool:
            if is_retryable is not None and not is_retryable(error):
                return False
            left = LeaseBackend.time_left()
            elapsed = time.monotonic() - started
            return LeaseBackend.failed_fast(started) and (
                left is None or left > elapsed
            )

        sent: list[bool] = []

        def failed(error: Exception, *counts: Any) -> Any:
            sent.append(not _never_connected(error))
            return fail(error, *counts)

        try:
            # redis-py 6+ passes more (with_failure_count): hand it all on.
            return super().call_with_retry(do, failed, quick, *more, **options)
        except redis.RedisError as error:
            if any(sent):  # an earlier attempt may have reached the server
                error.stormlock_maybe_sent = True  # type: ignore[attr-defined]
            raise


def _never_connected(error: BaseException) -> bool:
    """Whether redis-py failed while connecting ("Error 111 connecting to
    ...", "Timeout connecting to server"): the command was never sent."""
    return isinstance(error, redis.ConnectionError | redis.TimeoutError) and (
        "connecting to" in str(error)
    )


# Error replies that mean the server cannot serve now (an outage), not that
# it refused this request.
_OUTAGES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.NoPermissionError,
)


def _refused(error: BaseException) -> bool:
    """Whether Redis answered this request with an error of its own (a script
    or a value it refused): the request's fault, not the store being down."""
    return (
        isinstance(error, redis.ResponseError)
        and not isinstance(error, _OUTAGES)
        and not str(error).startswith("BUSY")  # a script running too long
    )


# Where fences come from, as the capability table says.
_FENCES = "INCR counter key or the server clock (µs), whichever is larger"


class Redis(LeaseBackend):
    """Leases in Redis (standalone or behind a proxy; not Redis Cluster).

    Options: `url` (`redis://` or `rediss://` for TLS), `prefix` (namespace of
    every key, default `stormlock:`), `timeout` (seconds, default 5).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        prefix: str = "stormlock:",
        timeout: float = 5.0,
    ) -> None:
        self._set_timeout(timeout)
        try:
            self.client = redis.Redis.from_url(
                url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=_RetryBrokenConnection(),
            )
        except ValueError as exc:
            raise ConfigError(f"[backend.redis] url is invalid: {exc}") from None
        self.url = url
        self.prefix = prefix
        self._index = f"{prefix}active"
        # The bot's records get an index of their own: they never slow
        # down listing leases, and listing them reads only them.
        self._records_index = f"{prefix}records"
        self._acquire_script = self.client.register_script(_ACQUIRE)
        self._renew_script = self.client.register_script(_RENEW)
        self._release_script = self.client.register_script(_RELEASE)
        self._list_script = self.client.register_script(_LIST)
        self._acquire_set_script = self.client.register_script(_ACQUIRE_SET)
        self._renew_set_script = self.client.register_script(_RENEW_SET)
        self._release_set_script = self.client.register_script(_RELEASE_SET)

    capabilities = Capabilities(
        Clock.SERVER,
        timedelta(seconds=1),
        _FENCES,
        ONE_TRIP,
        history="same script",
        # XADD '*' inside the change's script: ids from the server's clock,
        # never going back (Redis keeps them above the last one).
        history_in_order=True,
        sets="one script",
        wake="the release (pub/sub), else polls every 50 ms",
    )

    def _key(self, resource: str) -> str:
        return f"{self.prefix}lease:{resource}"

    def watch_freed(self, resource: str) -> FreedWatch:
        """Woken when a release frees `resource` (the release script
        publishes on the lease's key); an expiry publishes nothing, so the
        line still polls, only no longer waits out its poll on a release."""
        return FreedWatch(self.client, self._key(resource))

    client_errors = (redis.RedisError,)

    def _failure(self, error: Exception) -> StormlockError:
        if _refused(error):
            return StoreRefused(f"Redis refused the request: {detail(error)}")
        unsent = _never_connected(error) and not getattr(
            error, "stormlock_maybe_sent", False
        )
        return BackendUnavailable(
            f"Redis at {self._safe_url()} failed: {detail(error)}; check "
            "that it is up and [backend.redis] url",
            nothing_sent=unsent,
        )

    def _safe_url(self) -> str:
        # Never print a password.
        kwargs = self.client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"

    def _history_keys(self, resource: str) -> list[str]:
        return [f"{self.prefix}history:{resource}", f"{self.prefix}history"]

    def _story_args(self, resource: str) -> list[str | int]:
        """keep_ms, actor, source ('' keep: no history)."""
        told = self._story(resource)
        if told is None:
            return ["", "", ""]
        keep = max(1, int(told.retention.total_seconds() * 1000))
        return [keep, told.actor or "", told.source]

    def _acquire(
        self, resource: str, principal: str, ttl: timedelta, note: str | None
    ) -> tuple[bool, Lease | None]:
        outcome, lease = self._acquire_unless(resource, None, principal, ttl, note)
        return bool(outcome), lease

    guards_in_one_step = True

    def _acquire_unless(
        self,
        resource: str,
        guard: str | None,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool | None, Lease | None]:
        keys = [
            self._key(resource),
            f"{self.prefix}fence:{resource}",
            self._index_for(resource),
            *self._history_keys(resource),
        ]
        if guard is not None:
            keys.append(self._key(guard))
        args: list[str | int] = [self.new_id(), principal, _ttl_ms(ttl), note or ""]
        args += [resource, *self._story_args(resource)]
        outcome, fields = cast(list[Any], self._acquire_script(keys=keys, args=args))
        if outcome == 2:
            return None, None
        return bool(outcome), _lease(resource, fields)

    def _renew(self, resource: str, lease_id: str, ttl: timedelta) -> Lease | None:
        fields = self._renew_script(
            keys=[
                self._key(resource),
                self._index_for(resource),
                *self._history_keys(resource),
            ],
            args=[lease_id, _ttl_ms(ttl), resource, *self._story_args(resource)],
        )
        return _lease(resource, fields) if fields else None

    def _release(self, resource: str, lease_id: str) -> bool:
        keys, args = self._release_call(resource, lease_id)
        return bool(self._release_script(keys=keys, args=args))

    def _release_call(
        self, resource: str, lease_id: str
    ) -> tuple[list[str], list[str | int]]:
        """The release script's keys and arguments."""
        told = self._story(resource)
        keys = [self._key(resource), self._index_for(resource)]
        keys += self._history_keys(resource)
        args = [lease_id, resource, *self._story_args(resource)]
        args.append(told.released_as() if told else "")
        return keys, args

    def _release_and_look(
        self, resource: str, lease_id: str, look: Sequence[str]
    ) -> tuple[bool, list[Lease | None]]:
        # One pipeline: the release script, then the reads, in that order on
        # the server. A store restarted without its scripts answers NOSCRIPT
        # to the release alone (nothing changed): the script path loads it.
        keys, args = self._release_call(resource, lease_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(self._release_script.sha, len(keys), *keys, *args)
        for name in look:
            pipe.hmget(self._key(name), _LEASE_FIELDS)
        released, *found = pipe.execute(raise_on_error=False)
        if isinstance(released, redis.exceptions.NoScriptError):
            return super()._release_and_look(resource, lease_id, look)
        for answer in (released, *found):
            if isinstance(answer, Exception):
                raise answer
        leases = [_lease(n, fields) for n, fields in zip(look, found, strict=True)]
        return bool(released), leases

    def _set_story(self, first: str) -> list[str | int]:
        """keep_ms, actor, source, and the source of the other members'
        events: the same without the channel."""
        keep, actor, source = self._story_args(first)
        return [keep, actor, source, str(source).partition("#")[0]]

    def _set_keys(self, resources: Sequence[str], fences: bool) -> list[str]:
        keys = []
        for resource in resources:
            keys.append(self._key(resource))
            if fences:
                keys.append(f"{self.prefix}fence:{resource}")
            keys += [self._index_for(resource), self._history_keys(resource)[0]]
        return [*keys, self._history_keys("")[1]]

    def _acquire_set(
        self,
        resources: Sequence[str],
        lease_id: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool, list[Lease]]:
        args: list[str | int] = [lease_id, principal, _ttl_ms(ttl), note or ""]
        args += [json.dumps(list(resources)), *self._set_story(resources[0])]
        reply = cast(
            list[Any],
            self._acquire_set_script(
                keys=self._set_keys(resources, True), args=[*args, *resources]
            ),
        )
        if not reply[0]:
            holder = _lease(_text(reply[1]) or "", reply[2])
            return False, [holder] if holder else []
        created, expires, fences = _moment(reply[1]), _moment(reply[2]), reply[3]
        members = tuple(resources)
        return True, [
            Lease(principal, created, lease_id, r, expires, note, int(f), members)
            for r, f in zip(resources, fences, strict=True)
        ]

    def _renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease] | None:
        story = self._set_story(resources[0])
        reply = self._renew_set_script(
            keys=self._set_keys(resources, False),
            args=[lease_id, _ttl_ms(ttl), *story, *resources],
        )
        if not reply:
            return None
        leases = [_lease(r, f) for r, f in zip(resources, reply, strict=True)]
        return [lease for lease in leases if lease is not None]

    def _release_set(self, resources: Sequence[str], lease_id: str) -> bool:
        told = self._story(resources[0])
        released = self._release_set_script(
            keys=self._set_keys(resources, False),
            args=[
                lease_id,
                *self._set_story(resources[0]),
                told.released_as() if told else "",
                *resources,
            ],
        )
        return bool(released)

    def _history(
        self, resource: str | None, since: datetime | None, limit: int | None
    ) -> list[Event]:
        key = self._history_keys(resource or "")[0 if resource is not None else 1]
        low = str(int(since.timestamp() * 1000)) if since else "-"
        entries: list[Any] = self.client.xrevrange(key, "+", low, count=limit) or []
        return [_event(entry_id, fields) for entry_id, fields in entries]

    def _current(self, resource: str) -> Lease | None:
        fields = self.client.hmget(self._key(resource), _LEASE_FIELDS)
        return _lease(resource, fields)

    def _current_many(self, resources: Sequence[str]) -> list[Lease | None]:
        pipe = self.client.pipeline(transaction=False)  # one round trip
        for resource in resources:
            pipe.hmget(self._key(resource), _LEASE_FIELDS)
        found = pipe.execute()
        return [_lease(r, fields) for r, fields in zip(resources, found, strict=True)]

    def _is_current(self, resource: str, lease_id: str) -> bool:
        stored = self.client.hget(self._key(resource), "id")
        return _text(stored) == lease_id

    def _list_leases(self) -> list[Lease]:
        return self._listed("+inf")

    def _index_for(self, resource: str) -> str:
        if resource.startswith(RECORD_PREFIX):
            return self._family(resource)
        return self._index

    def _family(self, name: str) -> str:
        """A record's index: one per family (the name's first part after
        `.stormlock/`: line, sent, api, ...), so that listing a line's
        tickets does not read a week of the bot's sent markers."""
        family = name[len(RECORD_PREFIX) :].partition("/")[0]
        return f"{self._records_index}:{family}"

    def _list_prefix(self, prefix: str) -> list[Lease]:
        if not prefix.startswith(RECORD_PREFIX):
            return super()._list_prefix(prefix)
        if "/" in prefix[len(RECORD_PREFIX) :]:
            indexes = [self._family(prefix)]
        else:  # across families (rare: a reset, say)
            found = self.client.scan_iter(match=f"{_glob(self._records_index)}:*")
            indexes = [k.decode() if isinstance(k, bytes) else str(k) for k in found]
        # Records from before families lie in the one index, until they expire.
        indexes.append(self._records_index)
        # Filtered in the script: a family (the bot's sent markers, say) can
        # hold a week of records, and only the prefix's are read and parsed.
        leases = [
            lease for index in indexes for lease in self._listed("+inf", index, prefix)
        ]
        return [lease for lease in leases if lease.resource.startswith(prefix)]

    def _list_expiring(self, before: datetime) -> list[Lease]:
        # The index is sorted by expiry: this reads only the leases due.
        return self._listed(str(int(before.timestamp() * 1000)))

    def _listed(
        self, max_score: str, index: str | None = None, prefix: str = ""
    ) -> list[Lease]:
        flat = self._list_script(
            keys=[index or self._index],
            args=[f"{self.prefix}lease:", max_score, prefix],
        )
        leases = []
        for resource, fields in zip(flat[::2], flat[1::2], strict=True):
            lease = _lease(_text(resource) or "", fields)
            if lease is not None:
                leases.append(lease)
        return leases

    def setup(self) -> list[str]:
        with self._operation():
            self.client.ping()
        return [
            f"redis: reachable at {self._safe_url()}; keys live under {self.prefix!r}"
        ]

    def doctor(self) -> list[Finding]:
        where = f"redis at {self._safe_url()}"
        with self._operation():
            try:
                raw = self.client.config_get("*")
            except redis.ResponseError:
                return [
                    Finding(
                        "warning",
                        f"{where}: CONFIG is disabled, so persistence and eviction "
                        "cannot be checked; make sure your provider persists every "
                        "write (AOF) and never evicts (maxmemory-policy noeviction)",
                    )
                ]
        settings = {_text(k): _text(v) or "" for k, v in raw.items()}
        return [
            _persistence(where, settings),
            _eviction(where, settings),
        ]

    def close(self) -> None:
        self.client.close()


def _persistence(where: str, settings: dict[str | None, str]) -> Finding:
    if settings.get("appendonly") == "yes":
        fsync = settings.get("appendfsync", "everysec")
        if fsync == "always":
            return Finding("ok", f"{where}: AOF with appendfsync always")
        if fsync == "everysec":
            return Finding(
                "ok",
                f"{where}: AOF with appendfsync everysec (a crash of the host can "
                "lose the last second of acquires; appendfsync always loses none)",
            )
        return Finding(
            "unsafe",
            f"{where}: appendfsync {fsync} can lose many seconds of acquires in a "
            "crash; set appendfsync everysec or always",
        )
    if settings.get("save"):
        return Finding(
            "unsafe",
            f"{where}: only RDB snapshots: a restart forgets leases taken since "
            "the last one and lets a second holder in; set appendonly yes",
        )
    return Finding(
        "unsafe",
        f"{where}: no persistence: a restart forgets every held lease and lets "
        "a second holder in; set appendonly yes (fences still never go back)",
    )


def _eviction(where: str, settings: dict[str | None, str]) -> Finding:
    policy = settings.get("maxmemory-policy", "noeviction")
    if policy == "noeviction":
        return Finding("ok", f"{where}: maxmemory-policy noeviction")
    if settings.get("maxmemory", "0") == "0":
        return Finding("ok", f"{where}: no maxmemory limit, so nothing is evicted")
    return Finding(
        "unsafe",
        f"{where}: maxmemory-policy {policy} evicts keys under memory pressure, "
        "live leases included; set maxmemory-policy noeviction",
    )


BACKEND = Redis


def _glob(text: str) -> str:
    """`text` matched literally in a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class FreedWatch:
    """A subscription to one lease's releases (see `stormlock.line`)."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        # Typed from redis-py 8.2 on, untyped before: Any serves both.
        untyped: Any = client
        pubsub: redis.client.PubSub = untyped.pubsub(ignore_subscribe_messages=True)
        self._pubsub = pubsub
        self._pubsub.subscribe(channel)

    def wait(self, timeout: float) -> bool:
        """Whether a release came within `timeout` seconds (at most that)."""
        try:
            return self._pubsub.get_message(timeout=timeout) is not None
        except (redis.RedisError, OSError):
            return False  # the caller polls the store itself anyway

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):  # a failed one
            self._pubsub.close()
