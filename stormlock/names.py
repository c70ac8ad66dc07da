"""Which resource names are valid."""

from __future__ import annotations

from .backend import MAX_RESOURCE_LENGTH
from .errors import InvalidResourceName

RULE = (
    f"1 to {MAX_RESOURCE_LENGTH} characters, no spaces or control characters, "
    "not starting with '-' or '.stormlock/'"
)
# The bot keeps its own records (wait lists, sent markers) as leases here.
RECORD_PREFIX = ".stormlock/"


def validate_resource(name: str) -> str:
    """Return `name` if it is a valid resource name; raise otherwise."""
    if not isinstance(name, str) or not name:
        raise InvalidResourceName(f"resource name is empty; use {RULE}")
    shown = name if len(name) <= 40 else name[:40] + "..."
    if len(name) > MAX_RESOURCE_LENGTH:
        raise InvalidResourceName(
            f"resource name {shown!r} is {len(name)} characters long; use {RULE}"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        raise InvalidResourceName(
            f"resource name {shown!r} contains whitespace or control characters; "
            f"use {RULE}"
        )
    if name.startswith("-"):
        raise InvalidResourceName(
            f"resource name {shown!r} starts with '-'; use {RULE}"
        )
    if name.startswith(RECORD_PREFIX):
        raise InvalidResourceName(
            f"resource names starting with {RECORD_PREFIX!r} are reserved; use {RULE}"
        )
    return name
