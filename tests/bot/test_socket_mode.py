"""`stormlock-bot socket`: Socket Mode against a local websocket that plays
Slack's side (hello, an envelope, then the app's ack)."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import requests
from websockets.sync.server import ServerConnection, serve

from stormlock.testing.env import BIN, clean_env
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.servers import free_port
from stormlock.testing.slack import ALICE, text_of


def test_socket_mode_acks_the_envelope_and_replies(
    slack: LocalSlack, tmp_path: Path
) -> None:
    acks: queue.Queue[dict[str, Any]] = queue.Queue()
    command = {
        "token": "x",
        "team_id": "T0TEAM",
        "channel_id": "C0OPS",
        "channel_name": "ops",
        "user_id": ALICE.id,
        "user_name": ALICE.name,
        "command": "/stormlock",
        "text": "acquire prod-db 1h over a websocket",
        "api_app_id": "A0STORMLOCK",
        "response_url": slack.response_url(ALICE.id, "C0OPS"),
        "trigger_id": "t",
    }

    def slack_side(connection: ServerConnection) -> None:
        connection.send(json.dumps({"type": "hello", "num_connections": 1}))
        connection.send(
            json.dumps(
                {
                    "envelope_id": "env-1",
                    "type": "slash_commands",
                    "accepts_response_payload": True,
                    "payload": command,
                }
            )
        )
        for message in connection:
            acks.put(json.loads(message))

    with serve(slack_side, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        slack.socket_url = f"ws://127.0.0.1:{port}/link/?ticket=local"
        config = tmp_path / "stormlock.cfg"
        config.write_text(f"[backend.sqlite]\npath = {tmp_path / 'locks.db'}\n")
        env = clean_env(tmp_path)
        env.update(
            SLACK_BOT_TOKEN=slack.token,
            SLACK_APP_TOKEN=slack.app_token,
            SLACK_API_URL=slack.api_url,
            STORMLOCK_CONFIG=str(config),
        )
        operators = free_port()
        mode = ["socket", "--host", "127.0.0.1", "--port", str(operators)]
        bot = subprocess.Popen(
            [str(BIN / "stormlock-bot"), *mode],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            ack = acks.get(timeout=30)
            assert ack["envelope_id"] == "env-1"
            # The answer travels in the envelope's ack, as in the HTTP ack.
            reply = slack.acked(ALICE.id, "C0OPS", ack["payload"])
            assert reply.problems == []
            assert ack["payload"]["response_type"] == "ephemeral"
            assert "You hold *prod-db*" in text_of(reply)
            assert not slack.of("response_url"), "answered once, in the ack"
            slack.wait_for(
                lambda c: c.method == "chat.postMessage" and "took" in text_of(c)
            )
            # As in HTTP mode, for the image's health check and Prometheus;
            # Slack's events come over the socket, never to a URL here.
            base = f"http://127.0.0.1:{operators}"
            assert requests.get(base + "/healthz", timeout=10).text == "ok\n"
            assert requests.get(base + "/readyz", timeout=10).status_code == 200
            metrics = requests.get(base + "/metrics", timeout=10).text
            assert "stormlock_requests_total" in metrics
            assert requests.post(base + "/slack/events", timeout=10).status_code == 404
        finally:
            bot.terminate()
            _, stderr = bot.communicate(timeout=30)
    assert "Traceback" not in stderr
