"""The backend capability table, generated from the backend classes.

`python -m stormlock.capabilities` prints it; docs/backends.md embeds it and
a test keeps the two equal, so the table cannot drift from the code.
"""

from __future__ import annotations

import sys
from datetime import timedelta

from .backends import builtin_backends, find_backend
from .contract import Backend, Feature
from .ttl import format_duration

OPERATIONS = ("acquire", "renew", "release", "current", "is_current", "list")
BEGIN = "<!-- capability-table:begin -->"
END = "<!-- capability-table:end -->"


def _yes(flag: bool) -> str:
    return "yes" if flag else "fallback"


def _min_ttl(cls: type[Backend]) -> str:
    if cls.capabilities.min_ttl <= timedelta(milliseconds=1):
        return "1ms"
    return format_duration(cls.capabilities.min_ttl)


def _precision(cls: type[Backend]) -> str:
    if cls.capabilities.expiry_precision <= timedelta(0):
        return "at once"
    return f"within {format_duration(cls.capabilities.expiry_precision)}"


def _history(cls: type[Backend]) -> str:
    if not cls.supports(Feature.HISTORY):
        return "no"
    return f"yes ({cls.capabilities.history})" if cls.capabilities.history else "yes"


def _sets(cls: type[Backend]) -> str:
    if not cls.supports(Feature.SETS):
        return "fallback (one by one, in order)"
    return f"atomic ({cls.capabilities.sets})" if cls.capabilities.sets else "atomic"


def _line(cls: type[Backend]) -> str:
    if not cls.supports(Feature.LINE):
        if hasattr(cls, "acquire_in_line"):
            return "the server's (`--wait` waits in the API server's line)"
        return "no (`--wait` backs off)"
    wake = cls.capabilities.wake
    if wake:
        return f"yes (tickets in its records; the head is woken by {wake})"
    return "yes (tickets in its records; the head polls every 50 ms)"


def capability_table(names: list[str] | None = None) -> str:
    """A Markdown table: one row per backend, one column per guarantee."""
    header = [
        "backend",
        "expiry clock",
        "min TTL",
        "free after expiry",
        "notes",
        "fencing token",
        "list",
        "history",
        "sets (all or nothing)",
        "line (first in, first out)",
        "round trips (" + ", ".join(OPERATIONS) + ")",
    ]
    rows = [header, ["---"] * len(header)]
    for name in names or builtin_backends():
        cls = find_backend(name)
        declared = cls.capabilities.round_trips
        trips = "/".join(str(declared.get(op, "?")) for op in OPERATIONS)
        rows.append(
            [
                f"`{name}`",
                cls.capabilities.clock.value,
                _min_ttl(cls),
                _precision(cls),
                _yes(cls.supports(Feature.NOTES)),
                cls.capabilities.fence_source,
                "O(active)" if cls.supports(Feature.LIST) else "config sections",
                _history(cls),
                _sets(cls),
                _line(cls),
                trips,
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def embed(document: str) -> str:
    """`document` with the table between its markers replaced by a fresh one."""
    start = document.index(BEGIN) + len(BEGIN)
    end = document.index(END)
    return document[:start] + "\n" + capability_table() + "\n" + document[end:]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        path = sys.argv[2]
        with open(path, encoding="utf-8") as handle:
            text = embed(handle.read())
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        print(capability_table())
