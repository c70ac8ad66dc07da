"""Fixtures for the bot's tests; the helpers live in stormlock.testing.slack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.slack import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    SECRET,
    UUID,
    BotServer,
    lease_id_in,
    running_bot,
    sign,
    start_bot,
    text_of,
)

__all__ = [
    "ALICE",
    "BOB",
    "CAROL",
    "DAVE",
    "SECRET",
    "UUID",
    "BotServer",
    "lease_id_in",
    "running_bot",
    "sign",
    "start_bot",
    "text_of",
]


@pytest.fixture
def slack() -> Iterator[LocalSlack]:
    server = LocalSlack(users=[ALICE, BOB, CAROL, DAVE]).start()
    yield server
    server.stop()


BOT_BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BOT_BACKENDS)
def bot_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig(
        request.param, isolated_options(request.param, request, tmp_path)
    )


@pytest.fixture
def bot(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> Iterator[BotServer]:
    yield from start_bot(slack, bot_config, tmp_path)
