from datetime import timedelta

import pytest

from stormlock.errors import InvalidTTL
from stormlock.ttl import (
    EXAMPLE,
    check_ttl,
    format_duration,
    parse_duration,
    parse_duration_list,
    parse_ttl,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 days", timedelta(days=1)),
        ("30 minutes", timedelta(minutes=30)),
        ("2 hours", timedelta(hours=2)),
        ("4 seconds", timedelta(seconds=4)),
        ("10 min", timedelta(minutes=10)),
        ("1 d", timedelta(days=1)),
        ("1 day", timedelta(days=1)),
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("1 hour, 30 minutes", timedelta(hours=1, minutes=30)),
        ("2H", timedelta(hours=2)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1w", timedelta(weeks=1)),
        ("  45 secs ", timedelta(seconds=45)),
    ],
)
def test_accepts_seed_and_compact_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("0s", "positive"),
        ("0 minutes", "positive"),
        ("-5m", "positive"),
        ("-5", "positive"),
        ("300", "no unit"),
        ("", "empty"),
        ("soon", "cannot read"),
        ("5 fortnights", "unknown unit"),
        ("2h garbage", "cannot read"),
        ("400 days", "longer than"),
        ("1e9h", "unknown unit"),
    ],
)
def test_rejects_bad_durations_with_an_example(text: str, hint: str) -> None:
    with pytest.raises(InvalidTTL) as info:
        parse_duration(text)
    message = str(info.value)
    assert hint in message
    assert "\n" not in message
    if hint == "no unit":
        assert f"'{text}s'" in message, "suggests the same number with a unit"
    else:
        assert EXAMPLE in message


def test_max_ttl_is_enforced() -> None:
    assert parse_ttl("1h", timedelta(hours=2)) == timedelta(hours=1)
    with pytest.raises(InvalidTTL, match="max_ttl"):
        parse_ttl("3h", timedelta(hours=2))


def test_check_ttl_rejects_non_positive() -> None:
    with pytest.raises(InvalidTTL):
        check_ttl(timedelta(0))
    with pytest.raises(InvalidTTL):
        check_ttl(timedelta(seconds=-1))


def test_duration_list_is_sorted_longest_first() -> None:
    assert parse_duration_list("10 minutes, 1 hour") == [
        timedelta(hours=1),
        timedelta(minutes=10),
    ]


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(hours=1, minutes=30), "1h 30m"),
        (timedelta(days=1), "1d"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(0), "0s"),
    ],
)
def test_format_duration_is_compact(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text
    if duration:
        assert parse_duration(text) == duration
