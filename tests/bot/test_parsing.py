"""`/stormlock ...` text into a command (stormlock/bot/parsing.py): pure, so
tested without a bot."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from stormlock.bot.parsing import Command, parse
from stormlock.errors import EXIT_USAGE, InvalidTTL, UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Command("help")),
        ("help", Command("help")),
        ("frobnicate db", Command("help", unknown="frobnicate")),
        ("list", Command("list")),
        ("ls", Command("list")),
        ("board", Command("board")),
        (
            "acquire prod-db 2h applying terraform",
            Command(
                "acquire", "prod-db", timedelta(hours=2), note="applying terraform"
            ),
        ),
        (
            "lock prod-db 30 minutes db patch",
            Command("acquire", "prod-db", timedelta(minutes=30), note="db patch"),
        ),
        ("take payload-api", Command("acquire", "payload-api")),
        (
            "acquire db --ttl 1h --note mentions a payload",
            Command("acquire", "db", timedelta(hours=1), note="mentions a payload"),
        ),
        ("acquire db 2fa rotation", Command("acquire", "db", note="2fa rotation")),
        ('acquire db "quoted note"', Command("acquire", "db", note="quoted note")),
        ("release db", Command("release", "db")),
        ("unlock db --force", Command("release", "db", force=True)),
        (
            "release db 0c3f4a6e-1b2c-4d5e-8f90-123456789abc",
            Command("release", "db", lease_id="0c3f4a6e-1b2c-4d5e-8f90-123456789abc"),
        ),
        ("renew db", Command("renew", "db")),
        ("extend db 4h", Command("renew", "db", timedelta(hours=4))),
        ("who db", Command("current", "db")),
        ("is-held db abc", Command("is-held", "db", lease_id="abc")),
        ("notify db --cancel", Command("notify", "db", cancel=True)),
        ("ACQUIRE db", Command("acquire", "db")),
    ],
)
def test_commands_parse(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("acquire", "which resource?"),
        ("acquire db --ttl", "--ttl needs a value"),
        ("acquire db --bogus", "unknown option --bogus"),
        ("renew db 1h extra", "too many words"),
        ("release db id1 id2", "too many words"),
        ("is-held db", "which lease id?"),
        ("current db extra", "too many words"),
    ],
)
def test_usage_errors_say_what_to_type(text: str, hint: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(text)
    assert hint in str(info.value)
    assert "/stormlock" in str(info.value), "the usage line is part of the answer"
    assert info.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("acquire db --ttl forever", "a time from now"),
        ("renew db soon-ish", "cannot read"),
        # In the TTL's place, an attempt at a time is never taken for a note.
        ("acquire y 1h30", "did you mean '1h30m'?"),
        ("acquire y 2h30 the deploy", "did you mean '2h30m'?"),
        ("acquire y tomorrow", "a time from now"),
        ("acquire y EOD", "a time from now"),
        ("acquire y 3 servers to patch", "has no unit"),
    ],
)
def test_bad_durations_are_ttl_errors_with_an_example(text: str, hint: str) -> None:
    with pytest.raises(InvalidTTL, match=re.escape(hint)):
        parse(text)


def test_a_resource_name_is_read_in_nfc() -> None:
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café")
    assert parse(f"acquire {nfd} 1h").resource == unicodedata.normalize("NFC", nfd)
