"""Redis backend.

Each lease is a hash at `{prefix}lease:{resource}` whose key expires with the
lease (PEXPIRE: the server's clock decides). A counter at
`{prefix}fence:{resource}` survives release and expiry and gives the fence.
A sorted set `{prefix}active` (score: expiry in ms) indexes live leases, so
listing costs O(active leases), never a keyspace scan.

Every operation is one round trip: acquire, renew, release and list are Lua
scripts (EVALSHA), current and is_current one command each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..backend import (
    Lease,
    LeaseBackend,
    LockExpiredException,
    LockHeldException,
    canonical_lease_id,
    new_lease_id,
    trips,
)
from ..errors import BackendUnavailable, ConfigError
from ..names import RECORD_PREFIX

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_FIELDS = "'id', 'principal', 'created', 'expires', 'note', 'fence'"

# KEYS: lease, fence, index. ARGV: id, principal, ttl_ms, note, resource.
_ACQUIRE = (
    _NOW_MS
    + f"""
if redis.call('EXISTS', KEYS[1]) == 1 then
    return {{0, redis.call('HMGET', KEYS[1], {_FIELDS})}}
end
local fence = redis.call('INCR', KEYS[2])
local expires = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'principal', ARGV[2], 'created', now,
           'expires', expires, 'note', ARGV[4], 'fence', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], expires, ARGV[5])
return {{1, {{ARGV[1], ARGV[2], tostring(now), tostring(expires), ARGV[4],
            tostring(fence)}}}}
"""
)

# KEYS: lease, index. ARGV: id, ttl_ms, resource.
_RENEW = (
    _NOW_MS
    + f"""
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return false end
local expires = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], expires, ARGV[3])
return redis.call('HMGET', KEYS[1], {_FIELDS})
"""
)

# KEYS: lease, index. ARGV: id, resource.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# KEYS: index. ARGV: lease key prefix. Drops expired entries, returns the rest.
_LIST = (
    _NOW_MS
    + f"""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {{}}
for _, resource in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, ARGV[2])) do
    local fields = redis.call('HMGET', ARGV[1] .. resource, {_FIELDS})
    if fields[1] then
        table.insert(out, resource)
        table.insert(out, fields)
    end
end
return out
"""
)


def _moment(ms: bytes | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _lease(resource: str, fields: Sequence[bytes | str | None]) -> Lease | None:
    lease_id, principal, created, expires, note, fence = (_text(f) for f in fields)
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
    )


def _ttl_ms(ttl: timedelta) -> int:
    # Never 0: PEXPIRE 0 would delete the key at once.
    return max(1, math.ceil(ttl.total_seconds() * 1000))


class Redis(LeaseBackend):
    """Leases in Redis (standalone or behind a proxy; not Redis Cluster).

    Options: `url` (`redis://` or `rediss://` for TLS), `prefix` (namespace of
    every key, default `stormlock:`), `timeout` (seconds, default 5).
    """

    clock = "server"
    min_ttl = timedelta(milliseconds=1)
    fence_source = "INCR counter key, kept on release"
    round_trips = trips(acquire=1, renew=1, release=1, current=1, is_current=1, list=1)

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        prefix: str = "stormlock:",
        timeout: float = 5.0,
    ) -> None:
        try:
            self.client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One quick retry re-dials a pooled connection that a server
                # restart broke; more would only delay "unreachable".
                retry=Retry(NoBackoff(), 1),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"[backend.redis] url is invalid: {exc}") from None
        self.url = url
        self.prefix = prefix
        self._index = f"{prefix}active"
        # The bot's records get an index of their own: they never slow
        # down listing leases, and listing them reads only them.
        self._records_index = f"{prefix}records"
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._list = self.client.register_script(_LIST)

    def _key(self, resource: str) -> str:
        return f"{self.prefix}lease:{resource}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise BackendUnavailable(
                f"Redis at {self._safe_url()} failed: {exc}; check that it is up "
                "and [backend.redis] url"
            ) from None

    def _safe_url(self) -> str:
        # Never print a password.
        kwargs = self.client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"

    def acquire_lease(
        self, resource: str, principal: str, ttl: timedelta, note: str | None = None
    ) -> Lease:
        lease_id = new_lease_id()
        keys = [
            self._key(resource),
            f"{self.prefix}fence:{resource}",
            self._index_for(resource),
        ]
        args: list[str | int] = [lease_id, principal, _ttl_ms(ttl), note or ""]
        args.append(resource)
        with self._errors():
            acquired, fields = cast(list[Any], self._acquire(keys=keys, args=args))
        lease = _lease(resource, fields)
        if not acquired:
            raise LockHeldException(resource, lease)
        assert lease is not None
        return lease

    def renew_lease(self, resource: str, lease_id: str, ttl: timedelta) -> Lease:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            raise LockExpiredException(resource)
        with self._errors():
            fields = self._renew(
                keys=[self._key(resource), self._index_for(resource)],
                args=[canonical, _ttl_ms(ttl), resource],
            )
        lease = _lease(resource, fields) if fields else None
        if lease is None:
            raise LockExpiredException(resource)
        return lease

    def release_lease(self, resource: str, lease_id: str) -> bool:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        with self._errors():
            released = self._release(
                keys=[self._key(resource), self._index_for(resource)],
                args=[canonical, resource],
            )
        return bool(released)

    def current(self, resource: str) -> Lease | None:
        with self._errors():
            fields = self.client.hmget(
                self._key(resource),
                ["id", "principal", "created", "expires", "note", "fence"],
            )
        return _lease(resource, fields)

    def is_current(self, resource: str, lease_id: str) -> bool:
        canonical = canonical_lease_id(lease_id)
        if canonical is None:
            return False
        with self._errors():
            stored = self.client.hget(self._key(resource), "id")
        return _text(stored) == canonical

    def list_leases(self) -> list[Lease]:
        leases = self._listed("+inf")
        return sorted(leases, key=lambda lease: lease.resource)

    def _index_for(self, resource: str) -> str:
        if resource.startswith(RECORD_PREFIX):
            return self._records_index
        return self._index

    def list_prefix(self, prefix: str) -> list[Lease]:
        if not prefix.startswith(RECORD_PREFIX):
            return super().list_prefix(prefix)
        leases = self._listed("+inf", self._records_index)
        found = [lease for lease in leases if lease.resource.startswith(prefix)]
        return sorted(found, key=lambda lease: lease.resource)

    def list_expiring(self, before: datetime) -> list[Lease]:
        # The index is sorted by expiry: this reads only the leases due.
        return self._listed(str(int(before.timestamp() * 1000)))

    def _listed(self, max_score: str, index: str | None = None) -> list[Lease]:
        with self._errors():
            flat = self._list(
                keys=[index or self._index], args=[f"{self.prefix}lease:", max_score]
            )
        leases = []
        for resource, fields in zip(flat[::2], flat[1::2], strict=True):
            lease = _lease(_text(resource) or "", fields)
            if lease is not None:
                leases.append(lease)
        return leases

    def setup(self) -> list[str]:
        with self._errors():
            self.client.ping()
        return [
            f"redis: reachable at {self._safe_url()}; keys live under {self.prefix!r}"
        ]

    def close(self) -> None:
        self.client.close()
