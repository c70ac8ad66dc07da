"""The bot as Slack sees it, for tests and benchmarks: `stormlock-bot serve` in
a subprocess, signed HTTP requests shaped exactly as Slack sends them, and
LocalSlack recording every Web API call the bot makes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from mirakuru import HTTPExecutor

from stormlock.testing.backends import BackendConfig
from stormlock.testing.env import BIN, clean_env
from stormlock.testing.localslack import Call, LocalSlack, User
from stormlock.testing.servers import free_port

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"

ALICE = User("U01ALICE", "alice", "alice@example.com")
BOB = User("U02BOB", "bob", "bob@example.com")
CAROL = User("U03CAROL", "carol", "carol@example.com")  # an admin
DAVE = User("U04DAVE", "dave", None)  # Slack shares no email


def sign(
    body: str, timestamp: int | None = None, secret: str = SECRET
) -> dict[str, str]:
    """Slack's v0 signature headers for `body`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    base = f"v0:{stamp}:{body}".encode()
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


ANSWERED = ("ack", "response_url")
"""The ways an answer reaches the person: in the ack, or through response_url."""


def answers(call: Call, user: User | None = None) -> bool:
    """Whether `call` is an answer to a person (to `user`, if given)."""
    return call.method in ANSWERED and (user is None or call.context["user"] == user.id)


def command_form(
    slack: LocalSlack, user: User, text: str, channel: str = "C0OPS"
) -> dict[str, str]:
    """The fields of `/stormlock TEXT` as Slack sends them (its response_url
    handed out by `slack`)."""
    return {
        "token": "legacy-verification-token",
        "team_id": "T0TEAM",
        "team_domain": "example",
        "channel_id": channel,
        "channel_name": channel.lower(),
        "user_id": user.id,
        "user_name": user.name,
        "command": "/stormlock",
        "text": text,
        "api_app_id": "A0STORMLOCK",
        "is_enterprise_install": "false",
        "response_url": slack.response_url(user.id, channel),
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
    }


@dataclass
class BotServer:
    url: str
    slack: LocalSlack
    process: subprocess.Popen[str]
    config: BackendConfig
    log_path: Path

    def post(
        self, body: str, content_type: str, headers: dict[str, str] | None = None
    ) -> requests.Response:
        all_headers = {"Content-Type": content_type, **sign(body)}
        all_headers.update(headers or {})
        return requests.post(
            self.url + "/slack/events",
            data=body.encode(),
            headers=all_headers,
            timeout=10,
        )

    def reconcile_runs(self) -> float:
        """How many reconcile passes the bot has completed (from /metrics)."""
        metrics = requests.get(self.url + "/metrics", timeout=10).text
        for line in metrics.splitlines():
            if line.startswith("stormlock_reconcile_runs_total "):
                return float(line.split()[1])
        return 0.0

    def settle(self, passes: int = 10) -> None:
        """Until `passes` more reconcile passes have run: proving that nothing
        more is sent means letting the job run, and this counts its runs."""
        target = self.reconcile_runs() + passes
        deadline = time.monotonic() + 60
        while self.reconcile_runs() < target:
            assert time.monotonic() < deadline, "the reconcile job stopped running"
            time.sleep(0.05)

    def command(
        self, user: User, text: str, channel: str = "C0OPS"
    ) -> requests.Response:
        """Send `/stormlock TEXT` as `user`, form-encoded as Slack does."""
        form = command_form(self.slack, user, text, channel)
        response = self.post(
            urllib.parse.urlencode(form), "application/x-www-form-urlencoded"
        )
        assert response.status_code == 200, response.text
        if response.content:  # the answer came in the ack
            self.slack.acked(user.id, channel, response.json())
        return response

    def reply(
        self, user: User, text: str, channel: str = "C0OPS", timeout: float = 15
    ) -> Call:
        """Run a command and wait for its ephemeral reply."""
        before = len(self.replies_to(user))
        self.command(user, text, channel)
        return self.slack.wait_for(
            lambda c: answers(c, user), count=before + 1, timeout=timeout
        )[before]

    def replies_to(self, user: User) -> list[Call]:
        return [c for c in list(self.slack.calls) if answers(c, user)]

    def press(
        self,
        user: User,
        action_id: str,
        value: str,
        container: dict[str, Any] | None = None,
    ) -> requests.Response:
        payload = {
            "type": "block_actions",
            "user": {
                "id": user.id,
                "username": user.name,
                "name": user.name,
                "team_id": "T0TEAM",
            },
            "api_app_id": "A0STORMLOCK",
            "token": "legacy-verification-token",
            "container": container
            or {
                "type": "message",
                "message_ts": "1.2",
                "channel_id": "C0OPS",
                "is_ephemeral": True,
            },
            "trigger_id": "123.456",
            "team": {"id": "T0TEAM", "domain": "example"},
            "channel": {"id": "C0OPS", "name": "ops"},
            "response_url": self.slack.response_url(user.id, "C0OPS"),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "b1",
                    "text": {"type": "plain_text", "text": "button"},
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        response = self.post(body, "application/x-www-form-urlencoded")
        assert response.status_code == 200, response.text
        return response

    def event(self, event: dict[str, Any]) -> requests.Response:
        envelope = {
            "token": "legacy-verification-token",
            "team_id": "T0TEAM",
            "api_app_id": "A0STORMLOCK",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{time.time_ns()}",
            "event_time": int(time.time()),
        }
        return self.post(json.dumps(envelope), "application/json")

    def logs(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL the bot, master and workers, as an OOM kill or the loss
        of its node would: nothing of it runs after this returns."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def start_bot(
    slack: LocalSlack,
    config: BackendConfig,
    tmp_path: Path,
    bot_section: str = "",
    name: str = "bot-home",
) -> Iterator[BotServer]:
    with running_bot(slack, config, tmp_path, bot_section, name) as bot:
        yield bot


@contextlib.contextmanager
def running_bot(
    slack: LocalSlack,
    config: BackendConfig,
    tmp_path: Path,
    bot_section: str = "",
    name: str = "bot-home",
    log_level: str = "DEBUG",
    env: dict[str, str] | None = None,
    default: str = "",
    workers: int | None = 1,
) -> Iterator[BotServer]:
    """The real bot (`stormlock-bot serve`) on a free port; `env` overrides
    its environment (a HOME it cannot write, say); `default`: more lines of
    the config's [default] section; `workers`: gunicorn's worker processes
    (None: the bot's default, one per usable core)."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    path = home / "stormlock.cfg"
    path.write_text(
        config.ini("unused", extra=default)
        + f"\n[bot]\nadmins = {CAROL.id}\n{bot_section}\n"
    )
    port = free_port()
    environment = clean_env(home)
    environment.update(
        SLACK_BOT_TOKEN=slack.token,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        STORMLOCK_CONFIG=str(path),
        LOG_LEVEL=log_level,
    )
    environment.pop("WEB_CONCURRENCY", None)
    if workers is not None:
        environment["WEB_CONCURRENCY"] = str(workers)
    environment.update(env or {})
    log_path = home / "bot.log"
    command = [
        str(BIN / "stormlock-bot"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        executor = HTTPExecutor(
            command,
            url=url + "/healthz",
            method="GET",
            timeout=60,
            envvars=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        executor.start()
        try:
            yield BotServer(url, slack, executor.process, config, log_path)  # type: ignore[arg-type]
        finally:
            _stop_gracefully(executor, url)


def _stop_gracefully(executor: HTTPExecutor, url: str) -> None:
    """SIGTERM, as Kubernetes sends, then a knock on the port until the bot
    is gone: a gunicorn worker notices SIGTERM only when its poll wakes (up
    to a second later, for each of the hundreds of bots the tests start)."""
    process = executor.process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                requests.get(url + "/healthz", timeout=0.2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.05)
    if process is not None and process.returncode == -signal.SIGKILL:
        return  # killed by the test (`BotServer.kill`): nothing left to stop
    executor.stop()


def text_of(call: Call) -> str:
    """Everything a reader would see in a payload, as one string."""
    return json.dumps(call.payload)


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def lease_id_in(call: Call) -> str:
    found: list[str] = UUID.findall(text_of(call))
    assert len(found) == 1, text_of(call)
    return found[0]
