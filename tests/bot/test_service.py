"""The bot's service layer (stormlock/bot/service.py), without Slack."""

from __future__ import annotations

from configparser import ConfigParser
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock.bot.service import LeaseService
from stormlock.bot.settings import BotSettings
from stormlock.config import Config
from stormlock.errors import ConfigError
from stormlock.testing.backends import BackendConfig
from stormlock.times import utcnow


def service(tmp_path: Path, section: str) -> LeaseService:
    parser = ConfigParser(interpolation=None, default_section="\0none")
    parser.read_string(
        f"[backend.sqlite]\npath = {tmp_path / 'locks.db'}\n{section}\n[bot]\n"
    )
    return LeaseService(BotSettings.load(Config(parser), env={}))


def test_the_bot_caps_each_store_operation_at_its_backend_timeout(
    tmp_path: Path,
) -> None:
    def timeout(section: str) -> float:
        found: float = service(tmp_path, section).backend("sqlite").timeout  # type: ignore[attr-defined]
        return found

    assert timeout("timeout = 30") == 2.5  # [bot] backend_timeout, default 2.5 s
    assert timeout("timeout = 1") == 1.0


@pytest.mark.parametrize("bad", ["abc", "nan", "-1"])
def test_a_bad_backend_timeout_is_a_config_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        service(tmp_path, f"timeout = {bad}").backend("sqlite")
    assert "timeout" in str(info.value)


@pytest.mark.parametrize("bad", ["soon", "3s"])
def test_a_bad_answer_budget_is_a_config_error(tmp_path: Path, bad: str) -> None:
    parser = ConfigParser(interpolation=None, default_section="\0none")
    parser.read_string(f"[bot]\nanswer_budget = {bad}\n")
    settings = BotSettings.load(Config(parser), env={})
    with pytest.raises(ConfigError) as info:
        _ = settings.answer_budget
    assert "answer_budget" in str(info.value)


def test_recovery_looks_back_only_where_history_can_arrive_out_of_order(
    bot_config: BackendConfig, tmp_path: Path
) -> None:
    """Redis's events are readable in the order of their times (ids from
    the server's clock, in the change's script): a reader starts exactly
    where it stopped. The others are read from `overlap` earlier."""
    parser = ConfigParser(interpolation=None, default_section="\0none")
    parser.read_string(bot_config.ini("unused") + "\n[bot]\n")
    found = LeaseService(BotSettings.load(Config(parser), env={}))
    backend = found.backend(bot_config.name)
    backend.acquire_lease("db", "alice", timedelta(hours=1))
    (event,) = found.changes_since(utcnow() - timedelta(minutes=5))
    just_after = event.time + timedelta(milliseconds=1)
    looked_back = found.changes_since(just_after, timedelta(minutes=5))
    in_order = bot_config.name == "redis"
    assert backend.capabilities.history_in_order is in_order
    assert looked_back == ([] if in_order else [event])
    assert found.changes_since(just_after) == []
