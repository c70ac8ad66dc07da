"""A minimal third-party backend, written as a plugin author would against the
original tool's contract: only the five methods, no notes, no fences, no list.

Leases live in one JSON file guarded by flock, so several processes share it.
"""

from __future__ import annotations

import fcntl
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from stormlock import Backend, Lease, LockExpiredException, LockHeldException


class JsonFileBackend(Backend):
    def __init__(self, path: str, timeout: Optional[int] = None) -> None:
        self.path = Path(path)
        self.timeout = timeout

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        self.path.touch(exist_ok=True)
        with self.path.open("r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            text = handle.read()
            state: dict[str, Any] = json.loads(text) if text else {}
            yield state
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(state))

    @staticmethod
    def _live(entry: Optional[dict[str, Any]]) -> bool:
        now = datetime.now(timezone.utc).timestamp()
        return entry is not None and entry["expires"] > now

    def lock(self, resource: str, principal: str, ttl: timedelta) -> str:
        with self._state() as state:
            entry = state.get(resource)
            if self._live(entry):
                assert entry is not None
                raise LockHeldException(resource, self._lease(entry))
            now = datetime.now(timezone.utc).timestamp()
            lease_id = uuid.uuid4().hex
            state[resource] = {
                "principal": principal,
                "created": now,
                "expires": now + ttl.total_seconds(),
                "id": lease_id,
            }
            return lease_id

    def unlock(self, resource: str, lease_id: str) -> None:
        with self._state() as state:
            entry = state.get(resource)
            if entry is not None and entry["id"] == lease_id:
                del state[resource]

    def renew(self, resource: str, lease_id: str, ttl: timedelta) -> None:
        with self._state() as state:
            entry = state.get(resource)
            if not self._live(entry) or entry is None or entry["id"] != lease_id:
                raise LockExpiredException(resource)
            entry["expires"] = (
                datetime.now(timezone.utc).timestamp() + ttl.total_seconds()
            )

    def current(self, resource: str) -> Optional[Lease]:
        with self._state() as state:
            entry = state.get(resource)
            return self._lease(entry) if self._live(entry) and entry else None

    @staticmethod
    def _lease(entry: dict[str, Any]) -> Lease:
        created = datetime.fromtimestamp(entry["created"], timezone.utc)
        return Lease(entry["principal"], created, entry["id"])


class FiveMethodsBackend(Backend):
    """Only the five methods, over any built-in store (`store = redis`, plus
    that store's own options): a plugin with no optional capabilities, on a
    real server."""

    def __init__(self, store: str, **options: str) -> None:
        from stormlock.backends import build_backend

        self.inner = build_backend(store, options)

    def lock(self, resource: str, principal: str, ttl: timedelta) -> str:
        return self.inner.lock(resource, principal, ttl)

    def unlock(self, resource: str, lease_id: str) -> None:
        self.inner.unlock(resource, lease_id)

    def renew(self, resource: str, lease_id: str, ttl: timedelta) -> None:
        self.inner.renew(resource, lease_id, ttl)

    def current(self, resource: str) -> Optional[Lease]:
        lease = self.inner.current(resource)
        # What an old plugin returns: the three original fields only.
        return Lease(lease.principal, lease.created, lease.id) if lease else None

    def is_current(self, resource: str, lease_id: str) -> bool:
        return self.inner.is_current(resource, lease_id)

    def close(self) -> None:
        self.inner.close()
