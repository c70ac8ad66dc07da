"""Which resource names, principals and notes are valid."""

from __future__ import annotations

import unicodedata

from .contract import MAX_RESOURCE_LENGTH
from .errors import InvalidInput, InvalidResourceName

RULE = (
    f"1 to {MAX_RESOURCE_LENGTH} characters, no spaces or control characters, "
    "not starting with '-' or '.stormlock/'"
)
# The bot keeps its own records (wait lists, sent markers) as leases here.
RECORD_PREFIX = ".stormlock/"
# Held while a resource's line has anyone in it (stormlock/line.py); a store
# that wakes the line's head on a release checks it first.
LINE_MARK = RECORD_PREFIX + "lined/"


def normal(name: str) -> str:
    """A resource name as stored and compared: Unicode NFC, so that "café"
    typed on a Mac (NFD) and on Linux (NFC) is one lock."""
    return unicodedata.normalize("NFC", name)


class ResourceName(str):
    """A name `validate_resource` has checked (and put in NFC): checking it
    again costs nothing, so an operation checks a name once however many
    layers it passes through."""

    __slots__ = ()


def validate_resource(name: str) -> str:
    """Return `name`, in NFC, if it is a valid resource name; raise otherwise."""
    if type(name) is ResourceName:
        return name
    if not isinstance(name, str) or not name:
        raise InvalidResourceName(f"resource name is empty; use {RULE}")
    name = normal(name)
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
    return ResourceName(name)


def control_characters(text: str) -> bool:
    """Whether `text` holds a terminal control character (C0, DEL, C1)."""
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def validate_principal(principal: str) -> str:
    """Return `principal` if it is one line of printable text; raise otherwise
    (a tab or an escape sequence would split or rewrite what scripts read)."""
    if control_characters(principal):
        raise InvalidInput(
            f"principal {principal!r} contains a tab, newline or control character; "
            "write it as one line of plain text"
        )
    return principal
