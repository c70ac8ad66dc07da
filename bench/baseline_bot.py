"""The naive Slack bot the reply benchmark compares Stormlock's against.

What a first bot usually is: Bolt, the library called before the ack, the
answer in the ack body. It announces each change in the channel, as ours
does, from a small thread pool so that the post never delays the answer. No
App Home, no identity lookup (the principal is the Slack user id), served by
the same gunicorn set-up.

    STORMLOCK_CONFIG=... SLACK_SIGNING_SECRET=... SLACK_BOT_TOKEN=... \\
    SLACK_API_URL=... python -m bench.baseline_bot PORT
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import Ack, App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient

from stormlock.backends import configured_backend
from stormlock.bot.web import WSGIApp, serve
from stormlock.config import load_config
from stormlock.contract import LockHeldException
from stormlock.errors import StormlockError
from stormlock.lock import lock_from_config
from stormlock.ttl import parse_duration


def build() -> WSGIApp:
    config = load_config(os.environ["STORMLOCK_CONFIG"])
    backend = configured_backend(config, config.default_backend)
    # Bolt asks auth.test once, at the first request; nothing else is called.
    client = WebClient(
        token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"]
    )
    posts = ThreadPoolExecutor(4)

    def announce(channel: str, text: str) -> None:
        posts.submit(client.chat_postMessage, channel=channel, text=text)

    app = App(
        client=client,
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        token_verification_enabled=False,
        process_before_response=True,
    )

    @app.command("/stormlock")
    def stormlock(ack: Ack, body: dict[str, Any]) -> None:
        words = str(body.get("text", "")).split()
        if len(words) < 2:
            ack("usage: /stormlock acquire|release RESOURCE [TTL]")
            return
        verb, resource = words[0], words[1]
        lock = lock_from_config(config, resource, backend, str(body["user_id"]))
        try:
            if verb == "acquire":
                ttl = parse_duration(words[2]) if len(words) > 2 else None
                lease = lock.acquire_lease(ttl)
                ack(f"You hold {resource}. Lease id: {lease.id}")
                announce(
                    str(body["channel_id"]), f"<@{body['user_id']}> took {resource}"
                )
            else:
                held = lock.current()
                if held is None or held.principal != body["user_id"]:
                    ack(f"You do not hold {resource}")
                else:
                    lock.release(held.id)
                    ack(f"You released {resource}")
                    announce(str(body["channel_id"]), f"{resource} is free")
        except LockHeldException:
            ack(f"{resource} is held by someone else")
        except StormlockError as exc:
            ack(f"Error: {exc}")

    return SlackRequestHandler(app)


def main() -> None:
    serve(build, "127.0.0.1", int(sys.argv[1]), 16, "warning")


if __name__ == "__main__":
    main()
