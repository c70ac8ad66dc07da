"""The bot's service layer (stormlock/bot/service.py), without Slack."""

from __future__ import annotations

from configparser import ConfigParser
from pathlib import Path

import pytest

from stormlock.bot.service import LeaseService
from stormlock.bot.settings import BotSettings
from stormlock.config import Config
from stormlock.errors import ConfigError


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
