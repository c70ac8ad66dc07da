"""Lease ids: making them, and telling a real one from anything else.

A leaf module (the standard library only).
"""

from __future__ import annotations

import re
from datetime import datetime

_MAX_LEASE_ID_LENGTH = 256


def new_lease_id() -> str:
    """A lease id: a random (version 4) UUID, 122 bits from the OS's CSPRNG."""
    import uuid  # only acquiring needs it

    return str(uuid.uuid4())


def new_set_id() -> str:
    """A lease id for a set: random like `new_lease_id`, but a version 8
    UUID, so that an operation given one member can tell it covers more."""
    import secrets

    digits = f"{secrets.randbits(128):032x}"
    variant = "89ab"[int(digits[16], 16) & 3]
    return _hyphenate(digits[:12] + "8" + digits[13:16] + variant + digits[17:])


def is_set_id(canonical: str) -> bool:
    """Whether a canonical lease id is one that `new_set_id` made."""
    return len(canonical) == 36 and canonical[14] == "8"


def _hyphenate(digits: str) -> str:
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


#: Every spelling of a lease id that `canonical_lease_id` accepts (any case,
#: hyphens where a UUID has them, or none): the bot's log redaction uses it.
LEASE_ID_FORMS = (
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_LEASE_ID = re.compile(r"\{?(" + LEASE_ID_FORMS + r")\}?")


def canonical_lease_id(lease_id: str) -> str | None:
    """The canonical form of a lease id that the built-in backends issue.

    Returns None for anything that is not a UUID, so a malformed id never
    reaches a store (where it could raise) and simply matches no lease.
    """
    if not isinstance(lease_id, str) or len(lease_id) > 64:
        return None
    found = _LEASE_ID.fullmatch(lease_id.strip())
    if found is None:
        return None
    return _hyphenate(found.group(1).replace("-", "").lower())


def plausible_lease_id(lease_id: str) -> bool:
    """Whether an id could have come from any backend (plugins included)."""
    return (
        isinstance(lease_id, str)
        and 0 < len(lease_id) <= _MAX_LEASE_ID_LENGTH
        and lease_id.isprintable()
        and not any(ch.isspace() for ch in lease_id)
    )


def fallback_fence(created: datetime) -> int:
    """A fence for plugins that have none: microseconds since the epoch.

    It increases with every acquisition as long as the holders' clocks do.
    """
    return int(created.timestamp() * 1_000_000)
