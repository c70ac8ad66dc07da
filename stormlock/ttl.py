"""Durations as people write them: "1 days", "30 minutes", "2h", "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import InvalidTTL

# Anything longer is almost certainly a typo (a lock is not a lease on a flat).
ABSURD_TTL = timedelta(days=366)
EXAMPLE = "try e.g. '30m', '2h', '1h30m' or '1 days'"

UNITS: dict[str, float] = {}
for _seconds, _names in (
    (0.001, ("ms", "msec", "msecs", "millisecond", "milliseconds")),
    (1, ("s", "sec", "secs", "second", "seconds")),
    (60, ("m", "min", "mins", "minute", "minutes")),
    (3600, ("h", "hr", "hrs", "hour", "hours")),
    (86400, ("d", "day", "days")),
    (604800, ("w", "wk", "wks", "week", "weeks")),
):
    for _name in _names:
        UNITS[_name] = _seconds

_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*(?:,|\band\b)?", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """Parse a positive duration. Raises `InvalidTTL` with an example."""
    original = text
    text = text.strip()
    if not text:
        raise InvalidTTL(f"empty duration; {EXAMPLE}")
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None or match.end() == pos:
            raise InvalidTTL(_explain(original))
        unit = UNITS.get(match.group(2).lower())
        if unit is None:
            raise InvalidTTL(
                f"unknown unit {match.group(2)!r} in duration {original!r}; {EXAMPLE}"
            )
        total += float(match.group(1)) * unit
        pos = match.end()
    if total <= 0:
        raise InvalidTTL(f"duration {original!r} must be positive; {EXAMPLE}")
    if total > ABSURD_TTL.total_seconds():
        raise InvalidTTL(
            f"duration {original!r} is longer than {format_duration(ABSURD_TTL)}; "
            f"{EXAMPLE}"
        )
    return timedelta(seconds=total)


def _explain(text: str) -> str:
    stripped = text.strip()
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", stripped):
        if stripped.startswith("-") or float(stripped) <= 0:
            return f"duration {text!r} must be positive; {EXAMPLE}"
        return (
            f"duration {text!r} has no unit; write e.g. '{stripped}s' or '{stripped}m'"
        )
    if stripped.startswith("-"):
        return f"duration {text!r} must be positive; {EXAMPLE}"
    unitless_end = re.fullmatch(r"(\d+)\s*(h|hr|hrs|hours?)\s*(\d+)", stripped, re.I)
    if unitless_end:  # "1h30": the minutes lack their unit
        return f"cannot read duration {text!r}: did you mean '{stripped}m'?"
    if re.fullmatch(r"[a-z]+", stripped, re.I) and stripped.lower() not in UNITS:
        return (
            f"cannot read duration {text!r}: a lease lasts a time from now; {EXAMPLE}"
        )
    return f"cannot read duration {text!r}; {EXAMPLE}"


# Words people put where a duration goes, meaning a time: refused with an
# example rather than read as something else (a note, a resource).
TIME_WORDS = frozenset(
    {
        "tomorrow", "today", "tonight", "forever", "later", "soon", "noon",
        "midnight", "eod", "eow", "overnight", "indefinitely", "now", "asap",
    }
)  # fmt: skip


def attempts_a_duration(word: str) -> bool:
    """Whether `word`, where a duration may go, is an attempt at one: a
    number first ("2", "-5m", "1h30") or a word for a time ("tomorrow");
    not "2fa" (a number, then no unit) nor a name."""
    if word.lower() in TIME_WORDS:
        return True
    match = re.fullmatch(r"[+-]?[\d.]+([a-zA-Z]*)[\d.a-zA-Z]*", word)
    if match is None:
        return False
    unit = match.group(1).lower()
    return not unit or unit in UNITS


def parse_ttl(text: str, max_ttl: timedelta | None = None) -> timedelta:
    """Parse a lease TTL, enforcing the configured maximum if any."""
    ttl = parse_duration(text)
    check_ttl(ttl, max_ttl)
    return ttl


def check_ttl(ttl: timedelta, max_ttl: timedelta | None = None) -> timedelta:
    if ttl <= timedelta(0):
        raise InvalidTTL(f"TTL must be positive; {EXAMPLE}")
    if max_ttl is not None and ttl > max_ttl:
        raise InvalidTTL(
            f"TTL {format_duration(ttl)} is longer than max_ttl "
            f"{format_duration(max_ttl)}; ask for less or raise max_ttl in the config"
        )
    if ttl > ABSURD_TTL:
        raise InvalidTTL(
            f"TTL {format_duration(ttl)} is longer than {format_duration(ABSURD_TTL)}"
        )
    return ttl


def check_floor(ttl: timedelta, min_ttl: timedelta) -> None:
    """Refuse a TTL below the store's floor (its capabilities' `min_ttl`)."""
    if ttl < min_ttl:
        raise InvalidTTL(
            f"TTL {format_duration(ttl)} is shorter than this store's minimum of "
            f"{format_duration(min_ttl)}; ask for at least that"
        )


def parse_duration_list(text: str) -> list[timedelta]:
    """Parse "1 hour, 10 minutes" into durations, longest first."""
    parts = [part for part in text.split(",") if part.strip()]
    return sorted((parse_duration(part) for part in parts), reverse=True)


def readable(duration: timedelta) -> timedelta:
    """`duration` rounded to what a person reads: whole minutes under an
    hour, 5 minutes under a day, whole hours beyond ("1h 8s" is 1h)."""
    seconds = duration.total_seconds()
    step = 60 if seconds < 3600 else 300 if seconds < 86400 else 3600
    if seconds < 60:
        return duration
    return timedelta(seconds=max(step, round(seconds / step) * step))


def format_duration(duration: timedelta) -> str:
    """Compact form, for example "1d 2h", "30m", "1.5s"."""
    seconds = duration.total_seconds()
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:g}s"
    seconds = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts) or "0s"
