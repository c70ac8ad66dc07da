"""etcd backend, over etcd's v3 JSON gateway (etcd 3.4+) with urllib3.

The gateway keeps Stormlock free of grpc and protobuf version fights.

Each lease is a key `{prefix}lease/{resource}` attached to an etcd lease, so
etcd's own clock expires it. The value holds our lease id (a random UUID: an
etcd lease ID is predictable and is never shown), the principal, the note and
the etcd lease ID. The fence is the key's create revision (etcd's revision
only grows, through release and expiry) plus the store's epoch: a key
`{prefix}epoch` holding the clock in microseconds when it was created. An
etcd that lost its data starts its revisions again from 1, but gets a new,
larger epoch, so fences still never go back. Acquire checks the epoch in
the same transaction.

Round trips: acquire 2 (grant, then a create-if-absent transaction; a failed
acquire revokes its grant, a third; the first acquire of a process reads the
epoch, one more), release 2 (read, revoke), renew 4 (read,
grant a lease with the new TTL, swap it in by transaction, revoke the old),
current / is_current / list 1.

etcd's minimum TTL is about 2 seconds (it rounds shorter TTLs up, and TTLs
to whole seconds up).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import secrets
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

from ..backend import Capabilities, Clock, Finding, Lease, LeaseBackend, trips
from ..errors import BackendUnavailable, ConfigError
from ..history import ACQUIRED, RENEWED, Event, Story

_NOT_FOUND = 5
_UNAUTHENTICATED = 16


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _range_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _countdown(us: int) -> bytes:
    """A key stamp that sorts the newest first."""
    return f"{10**17 - us:017d}".encode()


def _clock_us() -> int:
    return time.time_ns() // 1000


def _past(lease: Lease) -> bool:
    """Whether the lease's reported expiry has passed.

    etcd deletes a key some time after its lease runs out (its lessor checks
    every 500 ms): until then the key is there, but the lease is over.
    """
    return lease.expires is not None and lease.expires <= datetime.now(UTC)


class _Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# etcd deletes expired keys from a loop that runs every 500 ms.
_PRECISION = timedelta(seconds=1)
# Release: read, delete with its history event, revoke (2 with history off).
_ROUND_TRIPS = trips(acquire=2, renew=4, release=3, current=1, is_current=1, list=1)
# Where fences come from, as the capability table says.
_FENCES = "the key's create revision plus the store's epoch (µs)"


class Etcd(LeaseBackend):
    """Leases in etcd v3.

    Options: `host` (default localhost), `port` (2379), `prefix`
    (`stormlock/`), `ca_cert`, `cert_key`, `cert_cert` (TLS), `user`,
    `password`, `timeout` (seconds, default 5).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 2379,
        prefix: str = "stormlock/",
        ca_cert: str | None = None,
        cert_key: str | None = None,
        cert_cert: str | None = None,
        timeout: float = 5.0,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if bool(cert_key) != bool(cert_cert):
            raise ConfigError(
                "[backend.etcd] needs both cert_key and cert_cert, or neither"
            )
        if bool(user) != bool(password):
            raise ConfigError("[backend.etcd] needs both user and password, or neither")
        if not 0 < port < 65536:
            raise ConfigError(
                f"[backend.etcd] port = {port} is not a TCP port; use 1-65535"
            )
        self._set_timeout(timeout)
        tls = bool(ca_cert or cert_cert)
        self.base = f"{'https' if tls else 'http'}://{host}:{port}"
        self.prefix = prefix.encode()
        self._user = user
        self._password = password
        self._token: str | None = None
        self._epoch: int | None = None
        self._auth_lock = threading.Lock()
        self.http = urllib3.PoolManager(
            num_pools=2,
            maxsize=32,
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
            # `_post` retries, within the budget; urllib3 would start afresh.
            retries=False,
            ca_certs=ca_cert,
            cert_file=cert_cert,
            key_file=cert_key,
            cert_reqs="CERT_REQUIRED" if tls else None,
        )

    # -- transport ----------------------------------------------------------

    capabilities = Capabilities(
        Clock.SERVER,
        timedelta(seconds=2),
        _FENCES,
        _ROUND_TRIPS,
        _PRECISION,
        history="same transaction",
        sets="one txn, one etcd lease",
        wake="a watch on the key (release or expiry), else polls every 50 ms",
    )

    def _post(
        self, path: str, body: dict[str, Any], auth: bool = True
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if auth and self._user:
            headers["Authorization"] = self._authenticate()
        for attempt in range(2):
            extra: dict[str, Any] = {}
            left = self.time_left()
            if left is not None:
                if left <= 0:
                    raise self._unreachable("no answer in time")
                extra["timeout"] = urllib3.Timeout(total=left)
            started = time.monotonic()
            try:
                response = self.http.request(
                    "POST",
                    self.base + path,
                    body=json.dumps(body).encode(),
                    headers=headers,
                    **extra,
                )
                break
            except HTTPError as exc:
                # A refused or reset connection fails at once: try once more.
                if attempt or not self.failed_fast(started):
                    raise self._unreachable(type(exc).__name__) from None
        try:
            data: dict[str, Any] = json.loads(response.data or b"{}")
        except ValueError:
            raise BackendUnavailable(
                f"etcd at {self.base} answered HTTP {response.status} with no JSON; "
                "is this etcd's v3 gateway (etcd 3.4+)?"
            ) from None
        if response.status != 200 or "error" in data:
            code = int(data.get("code", 0))
            message = (
                data.get("message") or data.get("error") or f"HTTP {response.status}"
            )
            if code == _UNAUTHENTICATED and auth and self._user:
                self._token = None
            raise _Failure(code, str(message))
        return data

    def _unreachable(self, why: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"etcd at {self.base} is unreachable or did not answer within "
            f"{self.timeout:g}s ({why}); check that it is up and [backend.etcd] "
            "host and port"
        )

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            try:
                return self._post(path, body)
            except _Failure as failure:
                if failure.code != _UNAUTHENTICATED or not self._user:
                    raise
                return self._post(path, body)  # token expired: once more
        except _Failure as failure:
            raise BackendUnavailable(f"etcd refused {path}: {failure}") from None

    def _authenticate(self) -> str:
        with self._auth_lock:
            if self._token is None:
                try:
                    data = self._post(
                        "/v3/auth/authenticate",
                        {"name": self._user, "password": self._password},
                        auth=False,
                    )
                except _Failure as failure:
                    raise BackendUnavailable(
                        f"etcd refused [backend.etcd] user and password: {failure}"
                    ) from None
                self._token = str(data["token"])
            return self._token

    def _revoke(self, etcd_lease: str) -> None:
        try:
            self._post("/v3/lease/revoke", {"ID": etcd_lease})
        except _Failure as failure:
            # Already expired or revoked: releasing stays idempotent.
            if failure.code != _NOT_FOUND and "not found" not in str(failure):
                raise BackendUnavailable(
                    f"etcd refused to revoke a lease: {failure}"
                ) from None

    def _grant(self, ttl: timedelta) -> tuple[str, int]:
        seconds = max(1, math.ceil(ttl.total_seconds()))
        data = self._call("/v3/lease/grant", {"TTL": str(seconds), "ID": "0"})
        return str(data["ID"]), int(data["TTL"])

    # -- keys and values --------------------------------------------------

    def _key(self, resource: str) -> bytes:
        return self.prefix + b"lease/" + resource.encode()

    def _read(self, resource: str) -> dict[str, Any] | None:
        data = self._call("/v3/kv/range", {"key": _b64(self._key(resource))})
        kvs = data.get("kvs") or []
        return kvs[0] if kvs else None

    def _lease(self, kv: dict[str, Any]) -> tuple[Lease, dict[str, Any]]:
        value = json.loads(_unb64(kv["value"]))
        resource = _unb64(kv["key"])[len(self.prefix) + len(b"lease/") :].decode()
        lease = Lease(
            principal=value["principal"],
            created=datetime.fromtimestamp(value["created"], UTC),
            id=value["id"],
            resource=resource,
            expires=datetime.fromtimestamp(value["expires"], UTC),
            note=value.get("note"),
            fence=int(value.get("epoch", 0)) + int(kv["create_revision"]),
            members=tuple(value.get("members") or ()),
        )
        return lease, value

    @staticmethod
    def _value(lease: Lease, etcd_lease: str, epoch: int) -> str:
        assert lease.expires is not None
        return _b64(
            json.dumps(
                {
                    "id": lease.id,
                    "principal": lease.principal,
                    "created": lease.created.timestamp(),
                    "expires": lease.expires.timestamp(),
                    "note": lease.note,
                    "etcd_lease": etcd_lease,
                    "epoch": epoch,
                    **({"members": list(lease.members)} if lease.members else {}),
                }
            )
        )

    # -- the epoch: what keeps fences going up after etcd loses its data ----

    # -- history ----------------------------------------------------------
    # Events are keys `history/{resource}\0{stamp}` and `history-all/{stamp}`,
    # put in the transaction of the change; the same transaction deletes the
    # resource's and everyone's events older than the retention. The stamp
    # counts down (10^17 - the client's clock in µs, then random digits): the
    # newest events come first in key order, so the last N are read with an
    # ascending range and a limit (a descending sort makes etcd read them all).

    def _history_prefix(self, resource: str | None) -> bytes:
        if resource is None:
            return self.prefix + b"history-all/"
        return self.prefix + b"history/" + resource.encode() + b"\0"

    def _log_ops(
        self,
        told: Story | None,
        event: str,
        lease: Lease,
        epoch: int | None,
        until: datetime | None,
        trim: bool = True,
    ) -> list[dict[str, Any]]:
        """The txn operations that record `event` (none with history off).
        With `epoch`, the fence is the epoch plus the event's own create
        revision: the revision of the transaction, as the lease's."""
        if told is None:
            return []
        now = _clock_us()
        stamp = _countdown(now) + f"{secrets.randbelow(10**6):06d}".encode()
        oldest = _countdown(now - int(told.retention.total_seconds() * 1e6))
        value = _b64(
            json.dumps(
                {
                    "at": now / 1e6,
                    "event": event,
                    "principal": lease.principal,
                    "actor": told.actor_for(lease.principal),
                    "note": lease.note,
                    "fence": None if epoch is not None else lease.fence,
                    "epoch": epoch,
                    "source": told.source,
                    "until": until.timestamp() if until else None,
                    "resource": lease.resource,
                }
            )
        )
        ops: list[dict[str, Any]] = []
        prefixes = (self._history_prefix(lease.resource), self._history_prefix(None))
        for prefix in prefixes:
            ops.append({"request_put": {"key": _b64(prefix + stamp), "value": value}})
            if not trim:  # a set's other members: one trim a change keeps it short
                continue
            ops.append(
                {
                    "request_delete_range": {
                        "key": _b64(prefix + oldest),
                        "range_end": _b64(_range_end(prefix)),
                    }
                }
            )
        return ops

    def _history(
        self, resource: str | None, since: datetime | None, limit: int | None
    ) -> list[Event]:
        prefix = self._history_prefix(resource)
        oldest = int(since.timestamp() * 1e6) if since is not None else None
        # etcd counts every key of a range, even with a limit: with a limit,
        # look back over a growing window (a minute, an hour, a day, a week,
        # then all) until it holds enough, so a read counts about the keys
        # of the newest window that holds `limit` events.
        now = _clock_us()
        windows = [60, 3600, 86400, 7 * 86400] if limit else []
        starts = [now - seconds * 1_000_000 for seconds in windows] + [None]
        kvs: list[dict[str, Any]] = []
        for start in starts:
            if oldest is not None and (start is None or start < oldest):
                start = oldest
            end = _range_end(prefix)
            if start is not None:  # at or after `start`: stamps up to its own
                end = prefix + _countdown(start - 1)
            body: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(end)}
            if limit:
                body["limit"] = str(limit)
            kvs = self._call("/v3/kv/range", body).get("kvs") or []
            if len(kvs) >= (limit or 0) or start == oldest:
                break
        events = []
        for kv in kvs:
            value = json.loads(_unb64(kv["value"]))
            fence = value.get("fence")
            if fence is None:
                fence = int(value.get("epoch") or 0) + int(kv["create_revision"])
            until = value.get("until")
            events.append(
                Event(
                    datetime.fromtimestamp(value["at"], UTC),
                    value.get("resource", resource or ""),
                    value["event"],
                    value.get("principal") or "",
                    value.get("actor") or "",
                    value.get("note"),
                    int(fence),
                    value.get("source") or "",
                    datetime.fromtimestamp(until, UTC) if until else None,
                )
            )
        return events

    def _epoch_key(self) -> str:
        return _b64(self.prefix + b"epoch")

    def _load_epoch(self) -> int:
        """The store's epoch, created (as the clock in µs) if it has none."""
        key = self._epoch_key()
        fresh = _clock_us()
        data = self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": key,
                        "result": "EQUAL",
                        "target": "CREATE",
                        "create_revision": "0",
                    }
                ],
                "success": [{"request_put": {"key": key, "value": _b64(str(fresh))}}],
                "failure": [{"request_range": {"key": key}}],
            },
        )
        if data.get("succeeded"):
            self._epoch = fresh
        else:
            kvs = data["responses"][0]["response_range"]["kvs"]
            self._epoch = int(_unb64(kvs[0]["value"]))
        return self._epoch

    # -- operations ---------------------------------------------------------

    def _acquire(
        self, resource: str, principal: str, ttl: timedelta, note: str | None
    ) -> tuple[bool, Lease | None]:
        epoch = self._epoch if self._epoch is not None else self._load_epoch()
        etcd_lease, granted = self._grant(ttl)
        now = datetime.now(UTC)
        lease = Lease(
            principal,
            now,
            self.new_id(),
            resource,
            now + timedelta(seconds=granted),
            note,
        )
        key = _b64(self._key(resource))
        try:
            data = self._call(
                "/v3/kv/txn",
                {
                    "compare": [
                        {
                            "key": key,
                            "result": "EQUAL",
                            "target": "CREATE",
                            "create_revision": "0",
                        },
                        {
                            "key": self._epoch_key(),
                            "result": "EQUAL",
                            "target": "VALUE",
                            "value": _b64(str(epoch)),
                        },
                    ],
                    "success": [
                        {
                            "request_put": {
                                "key": key,
                                "value": self._value(lease, etcd_lease, epoch),
                                "lease": etcd_lease,
                            }
                        },
                        *self._log_ops(
                            self._story(resource), ACQUIRED, lease, epoch, lease.expires
                        ),
                    ],
                    "failure": [
                        {"request_range": {"key": key}},
                        {"request_range": {"key": self._epoch_key()}},
                    ],
                },
            )
        except BaseException:
            self._revoke_quietly(etcd_lease)
            raise
        if data.get("succeeded"):
            fence = epoch + int(data["header"]["revision"])
            return True, lease._replace(fence=fence)
        # Held (or the epoch changed): give back the etcd lease we granted.
        self._revoke_quietly(etcd_lease)
        held, stored_epoch = (
            r.get("response_range", {}).get("kvs") or [] for r in data["responses"]
        )
        if held:
            holder = self._lease(held[0])[0]
            if _past(holder) and self._lapsed(held[0]):
                # Over by etcd's own clock, its key not yet deleted by the
                # lessor (late under load): delete that very key, and the
                # caller tries again (a new key: a higher fence).
                return False, None
            return False, holder
        if not stored_epoch or int(_unb64(stored_epoch[0]["value"])) != epoch:
            self._epoch = None  # etcd lost its data (or was never used): reload
        return False, None

    def _lapsed(self, kv: dict[str, Any]) -> bool:
        """Whether the key `kv` outlived its etcd lease (etcd says so: never
        the client's clock alone), and was deleted now, as it was read."""
        ttl = self._call("/v3/lease/timetolive", {"ID": kv.get("lease") or "0"})
        if int(ttl.get("TTL", 1)) > 0:
            return False
        data = self._if_unchanged(kv, [{"request_delete_range": {"key": kv["key"]}}])
        return bool(data.get("succeeded"))

    def _revoke_quietly(self, etcd_lease: str) -> None:
        with contextlib.suppress(BackendUnavailable):  # it expires at its TTL anyway
            self._revoke(etcd_lease)

    def _owned(
        self, resource: str, lease_id: str
    ) -> tuple[dict[str, Any], Lease, dict[str, Any]] | None:
        kv = self._read(resource)
        if kv is None:
            return None
        lease, value = self._lease(kv)
        if lease.id != lease_id or _past(lease):
            return None
        return kv, lease, value

    def _if_unchanged(
        self, kv: dict[str, Any], success: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Run `success` in one transaction if the key `kv` was read from is
        still as it was read."""
        compare = {
            "key": kv["key"],
            "result": "EQUAL",
            "target": "MOD",
            "mod_revision": kv["mod_revision"],
        }
        return self._call("/v3/kv/txn", {"compare": [compare], "success": success})

    def _renew(self, resource: str, lease_id: str, ttl: timedelta) -> Lease | None:
        owned = self._owned(resource, lease_id)
        if owned is None:
            return None
        kv, lease, value = owned
        old_etcd_lease = str(value["etcd_lease"])
        etcd_lease, granted = self._grant(ttl)
        renewed = lease._replace(expires=datetime.now(UTC) + timedelta(seconds=granted))
        key = _b64(self._key(resource))
        data = self._if_unchanged(
            kv,
            [
                {
                    "request_put": {
                        "key": key,
                        "value": self._value(
                            renewed, etcd_lease, int(value.get("epoch", 0))
                        ),
                        "lease": etcd_lease,
                    }
                },
                *self._log_ops(
                    self._story(resource), RENEWED, renewed, None, renewed.expires
                ),
            ],
        )
        if not data.get("succeeded"):
            self._revoke_quietly(etcd_lease)
            return None
        self._revoke_quietly(old_etcd_lease)
        return renewed

    def _release(self, resource: str, lease_id: str) -> bool:
        owned = self._owned(resource, lease_id)
        if owned is None:
            return False
        kv, lease, value = owned
        told = self._story(resource)
        if told is None:
            # Revoking the etcd lease deletes the key with it. If it expired in
            # between, etcd answers NOT_FOUND and nobody else's key is touched.
            self._revoke(str(value["etcd_lease"]))
            return True
        # With history: delete the key and record the event in one
        # transaction, then give back the etcd lease.
        key = _b64(self._key(resource))
        data = self._if_unchanged(
            kv,
            [
                {"request_delete_range": {"key": key}},
                *self._log_ops(told, told.released_as(), lease, None, None),
            ],
        )
        self._revoke_quietly(str(value["etcd_lease"]))
        return bool(data.get("succeeded"))

    # -- sets: every member in one transaction, under one etcd lease ------------

    def _read_all(self, resources: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each member's key, read in one transaction (one revision)."""
        data = self._call(
            "/v3/kv/txn",
            {
                "success": [
                    {"request_range": {"key": _b64(self._key(r))}} for r in resources
                ]
            },
        )
        found = []
        for response in data.get("responses") or []:
            kvs = response.get("response_range", {}).get("kvs") or []
            found.append(kvs[0] if kvs else None)
        return found

    def _log_set(
        self, told: Story | None, event: str, leases: Sequence[Lease], **how: Any
    ) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        for i, lease in enumerate(leases):
            said = told.quiet() if told is not None and i else told
            ops += self._log_ops(said, event, lease, trim=i == 0, **how)
        return ops

    def _acquire_set(
        self,
        resources: Sequence[str],
        lease_id: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool, list[Lease]]:
        epoch = self._epoch if self._epoch is not None else self._load_epoch()
        etcd_lease, granted = self._grant(ttl)
        now = datetime.now(UTC)
        members = tuple(resources)
        expires = now + timedelta(seconds=granted)
        leases = [
            Lease(principal, now, lease_id, r, expires, note, 0, members)
            for r in resources
        ]
        keys = [_b64(self._key(r)) for r in resources]
        free = [
            {"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
            for k in keys
        ]
        same_epoch = {
            "key": self._epoch_key(),
            "result": "EQUAL",
            "target": "VALUE",
            "value": _b64(str(epoch)),
        }
        puts = [
            {
                "request_put": {
                    "key": k,
                    "value": self._value(lease, etcd_lease, epoch),
                    "lease": etcd_lease,
                }
            }
            for k, lease in zip(keys, leases, strict=True)
        ]
        told = self._story(resources[0])
        try:
            data = self._call(
                "/v3/kv/txn",
                {
                    "compare": [*free, same_epoch],
                    "success": [
                        *puts,
                        *self._log_set(
                            told, ACQUIRED, leases, epoch=epoch, until=expires
                        ),
                    ],
                    "failure": [
                        *({"request_range": {"key": k}} for k in keys),
                        {"request_range": {"key": self._epoch_key()}},
                    ],
                },
            )
        except BaseException:
            self._revoke_quietly(etcd_lease)
            raise
        if data.get("succeeded"):
            fence = epoch + int(data["header"]["revision"])
            return True, [lease._replace(fence=fence) for lease in leases]
        self._revoke_quietly(etcd_lease)
        ranges = [
            r.get("response_range", {}).get("kvs") or [] for r in data["responses"]
        ]
        stored_epoch = ranges.pop()
        holders = [self._lease(kvs[0])[0] for kvs in ranges if kvs]
        holders = [lease for lease in holders if not _past(lease)]
        if not stored_epoch or int(_unb64(stored_epoch[0]["value"])) != epoch:
            self._epoch = None  # etcd lost its data (or was never used): reload
        return False, holders

    def _owned_all(
        self, resources: Sequence[str], lease_id: str
    ) -> list[tuple[dict[str, Any], Lease, dict[str, Any]]]:
        owned = []
        for kv in self._read_all(resources):
            if kv is None:
                continue
            lease, value = self._lease(kv)
            if lease.id == lease_id and not _past(lease):
                owned.append((kv, lease, value))
        return owned

    @staticmethod
    def _unchanged(kvs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "key": kv["key"],
                "result": "EQUAL",
                "target": "MOD",
                "mod_revision": kv["mod_revision"],
            }
            for kv in kvs
        ]

    def _renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease] | None:
        owned = self._owned_all(resources, lease_id)
        if len(owned) != len(resources):
            return None
        etcd_lease, granted = self._grant(ttl)
        expires = datetime.now(UTC) + timedelta(seconds=granted)
        renewed = [lease._replace(expires=expires) for _, lease, _ in owned]
        puts = [
            {
                "request_put": {
                    "key": kv["key"],
                    "value": self._value(new, etcd_lease, int(value.get("epoch", 0))),
                    "lease": etcd_lease,
                }
            }
            for (kv, _, value), new in zip(owned, renewed, strict=True)
        ]
        told = self._story(resources[0])
        data = self._call(
            "/v3/kv/txn",
            {
                "compare": self._unchanged([kv for kv, _, _ in owned]),
                "success": [
                    *puts,
                    *self._log_set(told, RENEWED, renewed, epoch=None, until=expires),
                ],
            },
        )
        if not data.get("succeeded"):
            self._revoke_quietly(etcd_lease)
            return None
        for old in {str(value["etcd_lease"]) for _, _, value in owned}:
            self._revoke_quietly(old)
        return renewed

    def _release_set(self, resources: Sequence[str], lease_id: str) -> bool:
        told = self._story(resources[0])
        event = told.released_as() if told else ""
        for _ in range(3):  # a member changed (expired) since it was read: again
            owned = self._owned_all(resources, lease_id)
            if not owned:
                return False
            leases = [lease for _, lease, _ in owned]
            deletes = [
                {"request_delete_range": {"key": kv["key"]}} for kv, _, _ in owned
            ]
            data = self._call(
                "/v3/kv/txn",
                {
                    "compare": self._unchanged([kv for kv, _, _ in owned]),
                    "success": [
                        *deletes,
                        *self._log_set(told, event, leases, epoch=None, until=None),
                    ],
                },
            )
            if data.get("succeeded"):
                for old in {str(value["etcd_lease"]) for _, _, value in owned}:
                    self._revoke_quietly(old)
                return True
        return False

    def _current(self, resource: str) -> Lease | None:
        kv = self._read(resource)
        lease = self._lease(kv)[0] if kv else None
        return None if lease is None or _past(lease) else lease

    def _is_current(self, resource: str, lease_id: str) -> bool:
        return self._owned(resource, lease_id) is not None

    def _list_leases(self) -> list[Lease]:
        start = self.prefix + b"lease/"
        data = self._call(
            "/v3/kv/range", {"key": _b64(start), "range_end": _b64(_range_end(start))}
        )
        leases = [self._lease(kv)[0] for kv in data.get("kvs") or []]
        return [lease for lease in leases if not _past(lease)]

    def setup(self) -> list[str]:
        with self._operation():
            self._call("/v3/maintenance/status", {})
        return [
            f"etcd: reachable at {self.base}; keys live under {self.prefix.decode()!r}"
        ]

    def doctor(self) -> list[Finding]:
        with self._operation():
            status = self._call("/v3/maintenance/status", {})
            alarms = self._call("/v3/maintenance/alarm", {"action": "GET"})
        findings = []
        errors = status.get("errors") or []
        if errors:
            findings.append(
                Finding("unsafe", f"etcd at {self.base}: reports {'; '.join(errors)}")
            )
        if status.get("leader") in (None, "0"):
            findings.append(
                Finding("unsafe", f"etcd at {self.base}: the cluster has no leader")
            )
        raised = [a.get("alarm", "?") for a in alarms.get("alarms") or []]
        if raised:
            findings.append(
                Finding(
                    "unsafe",
                    f"etcd at {self.base}: alarms raised: {', '.join(raised)}; "
                    "writes may fail (NOSPACE: compact and defragment)",
                )
            )
        if not findings:
            findings.append(
                Finding(
                    "ok",
                    f"etcd at {self.base}: healthy, leader "
                    f"{status.get('leader')}, version {status.get('version')}",
                )
            )
        return findings

    def watch_freed(self, resource: str) -> FreedWatch:
        """Woken when the lease's key is deleted: a release, or an expiry
        (etcd deletes the key with its lease)."""
        headers = {"Content-Type": "application/json"}
        if self._user:
            headers["Authorization"] = self._authenticate()
        return FreedWatch(self, _b64(self._key(resource)), headers)

    def close(self) -> None:
        self.http.clear()

    def granted_leases(self) -> list[str]:
        """The etcd lease IDs that exist now (for leak checks)."""
        data = self._call("/v3/lease/leases", {})
        return [str(item["ID"]) for item in data.get("leases") or []]


class FreedWatch:
    """A watch on one lease's key, over the gateway's `/v3/watch` stream
    (one JSON object a line), read by a thread of its own."""

    def __init__(self, etcd: Etcd, key: str, headers: dict[str, str]) -> None:
        body = {"create_request": {"key": key, "filters": ["NOPUT"]}}
        self._freed = threading.Event()
        self._closing = False
        self._response = etcd.http.request(
            "POST",
            etcd.base + "/v3/watch",
            body=json.dumps(body).encode(),
            headers=headers,
            preload_content=False,
            # Connecting and the answer's headers are bounded (a partition
            # must not hang the waiter that opens it); the stream is not.
            timeout=urllib3.Timeout(connect=etcd.timeout, read=etcd.timeout),
        )
        if self._response.status != 200:
            self._response.release_conn()
            raise BackendUnavailable(f"etcd refused a watch: {self._response.status}")
        sock = getattr(self._response.connection, "sock", None)
        if sock is not None:
            sock.settimeout(None)  # events may be hours apart
        self._reader = threading.Thread(
            target=self._read, name="stormlock-etcd-watch", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self._response:
                result = json.loads(line).get("result") or {}
                if any(e.get("type") == "DELETE" for e in result.get("events", ())):
                    self._freed.set()
        except (HTTPError, OSError, ValueError):
            pass
        except AttributeError:
            # close() can drop the stream's file under a blocked read, and
            # http.client then reads from None: the watch is over, not broken.
            if not self._closing:
                raise

    def wait(self, timeout: float) -> bool:
        """Whether the key was deleted within `timeout` seconds."""
        if self._freed.wait(timeout):
            self._freed.clear()
            return True
        return False

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(HTTPError, OSError):
            self._response.shutdown()  # ends the reader's blocked read
            self._response.close()  # the stream's connection is not reused
            self._response.release_conn()
        self._reader.join(timeout=1)


BACKEND = Etcd
