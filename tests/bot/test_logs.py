"""Log redaction (stormlock/bot/logs.py): whatever the id parser accepts as a
lease id, and every response_url, never reaches a log line."""

from __future__ import annotations

import itertools

import pytest

from stormlock.bot.logs import redact
from stormlock.ids import canonical_lease_id

LEASE_ID = "0c3f4a6e-1b2c-4d5e-8f90-123456789abc"
DIGITS = LEASE_ID.replace("-", "")
CUTS = (8, 12, 16, 20)


def spellings() -> list[str]:
    """Every hyphenation at any subset of positions, in both cases, braced
    or not, plus hyphens where a UUID has none."""
    found = []
    for size in range(len(CUTS) + 1):
        for cuts in itertools.combinations(CUTS, size):
            text = "".join(
                ("-" if i in cuts else "") + ch for i, ch in enumerate(DIGITS)
            )
            found += [text, text.upper(), "{" + text + "}"]
    found += [
        "0c3f-4a6e1b2c-4d5e8f90-12345678-9abc",
        "0-c3f4a6e1b2c4d5e8f90123456789abc",
    ]
    return found


@pytest.mark.parametrize("spelling", spellings())
def test_every_accepted_spelling_is_redacted(spelling: str) -> None:
    if canonical_lease_id(spelling) is None:
        return  # not a lease id to the parser: nothing to hide
    assert canonical_lease_id(spelling) == LEASE_ID
    line = redact(f"release db {spelling} please")
    assert DIGITS not in line.replace("-", "").lower()


@pytest.mark.parametrize(
    "text",
    [
        "token=x&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1%2F2%2Fs3cr3t",
        '{"response_url": "https://hooks.slack.com/actions/T1/2/s3cr3t", "ok": 1}',
        "'response_url': 'http://127.0.0.1:9/respond/s3cr3t'",
        "POST https://hooks.slack.com/commands/T1/2/s3cr3t",
        "POST https://hooks.slack-gov.com/commands/T1/2/s3cr3t",
        "token=x&response_url=https%3A%2F%2Fhooks.slack-gov.com%2Factions%2Fs3cr3t",
    ],
)
def test_response_urls_are_redacted(text: str) -> None:
    assert "s3cr3t" not in redact(text)


def test_tokens_are_redacted() -> None:
    assert "abc123" not in redact("Bearer xoxb-1-abc123 and xapp-1-abc123")
