"""`stormlock-bot serve` with several gunicorn workers: one per usable core
by default, every change answered and announced once, and /metrics adding up
all the workers whichever one a scrape reaches."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from stormlock.errors import EXIT_CONFIG, EXIT_USAGE
from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.env import BIN, clean_env
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.slack import ALICE, BOB, CAROL, DAVE, running_bot, text_of
from stormlock.workers import MAX_WORKERS, default_workers, usable_cpus, worker_count
from tests.support import wait_until


@pytest.fixture
def bot_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackendConfig:
    return BackendConfig("redis", isolated_options("redis", request, tmp_path))


FAST = "reconcile_interval = 200ms"


def _metric(text: str, name: str) -> list[tuple[str, float]]:
    return [
        (line.split(" ")[0], float(line.split(" ")[1]))
        for line in text.splitlines()
        if line.startswith(name)
    ]


def _answered_by(shared: Path, pid: str, tmp_path: Path) -> float:
    """The requests one worker counted, from its own file alone."""
    alone = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copy(shared / f"counter_{pid}.db", alone)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    return sum(v for _, v in _metric(text, "stormlock_requests_total{"))


def _channel_lines(slack: LocalSlack) -> list[str]:
    return [
        line
        for c in list(slack.calls)
        if c.method == "chat.postMessage" and c.payload.get("channel") == "C0OPS"
        for block in c.payload.get("blocks", [])
        for line in str(block.get("text", {}).get("text", "")).splitlines()
    ]


def _named(slack: LocalSlack, change: str) -> int:
    return sum(change in line for line in _channel_lines(slack))


def _workers_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def test_the_default_is_one_worker_per_usable_core_up_to_four(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert default_workers() == min(MAX_WORKERS, usable_cpus())
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert default_workers() == 3


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5", ""])
def test_a_worker_count_that_is_not_a_positive_number_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="1 or more"):
        worker_count(text)


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "stormlock-bot"), "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_worker_counts_end_in_one_line_and_their_exit_codes(
    tmp_path: Path,
) -> None:
    env = clean_env(tmp_path)
    env.update(SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET="s")
    flag = _serve(env, "--workers", "none")
    assert flag.returncode == EXIT_USAGE
    assert flag.stderr.count("\n") == 1 and "--workers" in flag.stderr
    env["WEB_CONCURRENCY"] = "lots"
    variable = _serve(env)
    assert variable.returncode == EXIT_CONFIG
    assert variable.stderr.count("\n") == 1
    assert "WEB_CONCURRENCY" in variable.stderr and "Traceback" not in variable.stderr
    env.update(WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR="/proc/no-such/dir")
    unwritable = _serve(env)
    assert unwritable.returncode == EXIT_CONFIG
    assert unwritable.stderr.count("\n") == 1, unwritable.stderr
    assert "--workers 1" in unwritable.stderr


def test_two_workers_answer_and_announce_every_change_once_and_metrics_add_up(
    slack: LocalSlack, bot_config: BackendConfig, tmp_path: Path
) -> None:
    people = [ALICE, BOB, CAROL, DAVE]
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    with running_bot(slack, bot_config, tmp_path, FAST, env=env, workers=2) as bot:
        workers = set(_workers_of(bot.process.pid))
        assert len(workers) == 2
        [shared] = temp.glob("stormlock-metrics-*")

        def take_and_free(person: int) -> list[str]:
            said = []
            for n in range(person, 24, len(people)):  # each person in turn
                user = people[person]
                said.append(text_of(bot.reply(user, f"acquire multi-{n} 1h")))
                said.append(text_of(bot.reply(user, f"release multi-{n}")))
            return said

        with ThreadPoolExecutor(len(people)) as pool:
            said = [text for one in pool.map(take_and_free, range(4)) for text in one]
        assert sum("You hold" in text for text in said) == 24
        assert sum("You released" in text for text in said) == 24

        # Each change is named in the channel once, whichever worker made it.
        changes = [f"took *multi-{n}*" for n in range(24)]
        changes += [f"released *multi-{n}*" for n in range(24)]
        wait_until(lambda: all(_named(slack, change) for change in changes), 30)
        bot.settle(5)  # and nothing more comes
        for change in changes:
            assert _named(slack, change) == 1, change

        # Both workers served (more at once until the kernel has handed each
        # some); every scrape shows the two together.
        sent = 48
        with ThreadPoolExecutor(16) as pool:
            for _ in range(20):
                if all(_answered_by(shared, pid, tmp_path) for pid in workers):
                    break
                list(pool.map(lambda n: bot.command(ALICE, "help"), range(16)))
                sent += 16
        assert all(_answered_by(shared, pid, tmp_path) for pid in workers)
        for _ in range(6):
            metrics = requests.get(bot.url + "/metrics", timeout=10).text
            requests_total = _metric(metrics, "stormlock_requests_total{")
            assert sum(v for _, v in requests_total) == sent
            assert len(_metric(metrics, "stormlock_outbox_waiting ")) == 1
    assert not shared.exists(), "the shared metrics directory outlived the bot"
