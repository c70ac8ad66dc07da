"""Stormlock: leases on named resources, for people and scripts.

>>> from stormlock import load_lock
>>> lock = load_lock("prod-db")
>>> lease_id = lock.acquire()
>>> lock.release(lease_id)
"""

from .backends import get_backend
from .contract import Backend, Lease, LockExpiredException, LockHeldException
from .errors import StormlockError
from .lock import StormLock, lease_history, load_lock

__all__ = [
    "Backend",
    "Lease",
    "LockExpiredException",
    "LockHeldException",
    "StormLock",
    "StormlockError",
    "get_backend",
    "lease_history",
    "load_lock",
]
