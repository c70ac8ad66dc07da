"""A local stand-in for Slack: its Web API and `response_url` endpoints.

It records every call, checks every Block Kit payload with slack_sdk's models
and Slack's size limits, and answers like Slack does. The `shell` adapter
prints what it receives; the tests assert on it. It listens on loopback only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT = 3000
# Undocumented, but what Slack answers: a message's `text` past about 4,000
# characters is msg_too_long, and blocks holding more than about 13,200
# characters of text in all are msg_blocks_too_long.
MAX_MESSAGE_TEXT = 4000
MAX_BLOCK_CHARS = 13_200
TOO_LONG = "msg_too_long"
BLOCKS_TOO_LONG = "msg_blocks_too_long"
NO_TEXT = "no_text"


@dataclass
class Call:
    """One request that reached the fake Slack."""

    method: str
    """A Web API method, "response_url", or "ack" (an answer in the ack)."""
    payload: dict[str, Any]
    context: dict[str, str] = field(default_factory=dict)
    """For response_url calls: the user and channel the URL was made for; for
    posts: the `ts` Slack gave the message."""
    problems: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)
    """When it arrived (to measure a pace)."""


@dataclass
class User:
    id: str
    name: str
    email: str | None = None


def block_problems(blocks: Any, limit: int) -> list[str]:
    """What Slack would reject in `blocks` (empty if nothing)."""
    if blocks is None:
        return []
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except ValueError:
            return ["blocks is not JSON"]
    if not isinstance(blocks, list):
        return ["blocks is not a list"]
    problems = []
    if len(blocks) > limit:
        problems.append(f"{len(blocks)} blocks (limit {limit})")
    for index, raw in enumerate(blocks):
        try:
            parsed = Block.parse(raw)
            if parsed is None:
                problems.append(f"block {index}: unknown type")
                continue
            parsed.validate_json()
        except (SlackObjectFormationError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"block {index}: {exc}")
            continue
        text = raw.get("text")
        if isinstance(text, dict) and len(text.get("text", "")) > MAX_TEXT:
            problems.append(f"block {index}: text over {MAX_TEXT} characters")
        if raw.get("type") == "actions":
            ids = [e.get("action_id") for e in raw.get("elements", [])]
            if len(ids) != len(set(ids)):
                problems.append(f"block {index}: duplicate action_id")
    return problems


def message_problems(payload: dict[str, Any]) -> list[str]:
    """What Slack would reject in a message (chat.postMessage, chat.update,
    a response_url reply or an ack), empty if nothing."""
    blocks = payload.get("blocks")
    problems = block_problems(blocks, MAX_MESSAGE_BLOCKS)
    if len(str(payload.get("text") or "")) > MAX_MESSAGE_TEXT:
        problems.append(TOO_LONG)
    if isinstance(blocks, str):
        with contextlib.suppress(ValueError):
            blocks = json.loads(blocks)
    if _chars(blocks) > MAX_BLOCK_CHARS:
        problems.append(BLOCKS_TOO_LONG)
    return problems


def _chars(node: Any) -> int:
    """Characters of text in blocks, as msg_blocks_too_long counts them."""
    if isinstance(node, dict):
        return sum(
            len(value) if key == "text" and isinstance(value, str) else _chars(value)
            for key, value in node.items()
        )
    if isinstance(node, list):
        return sum(_chars(item) for item in node)
    return 0


def _error_of(problems: list[str]) -> str:
    """Slack's error code for a payload with these problems."""
    for code in (NO_TEXT, TOO_LONG, BLOCKS_TOO_LONG):
        if code in problems:
            return code
    return "invalid_blocks"


class LocalSlack:
    """Start with `start()`; `api_url` is then the SLACK_API_URL to use."""

    def __init__(
        self,
        token: str = "xoxb-local",  # noqa: S107 - a fake Slack's fake token
        users: list[User] | None = None,
    ) -> None:
        self.token = token
        self.app_token = "xapp-local"
        self.socket_url: str | None = None
        self.any_response_url = False
        """Accept response URLs it did not hand out (when run as a process)."""
        """What apps.connections.open hands out (a Socket Mode websocket)."""
        self.users: dict[str, User] = {u.id: u for u in users or []}
        self.calls: list[Call] = []
        self.on_call: Callable[[Call], None] | None = None
        self._changed = threading.Condition()
        self._ts = itertools.count(1)
        self._response_urls: dict[str, dict[str, str]] = {}
        self._failures: dict[str, list[tuple[int, dict[str, str], dict[str, Any]]]] = {}
        self._held: set[str] = set()
        self._release_held = threading.Event()
        self._lose_held = False
        self._slow: dict[str, float] = {}
        # method -> (Retry-After, when the limit started: at its first call)
        self._limited: dict[str, tuple[int, float | None]] = {}
        self.in_flight: list[Call] = []
        """Calls held unanswered right now (see `hold`)."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def api_url(self) -> str:
        return self.base + "/api/"

    def start(self) -> LocalSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_user(self, user: User) -> None:
        self.users[user.id] = user

    def response_url(self, user_id: str, channel_id: str) -> str:
        token = f"{next(self._ts):06d}"
        self._response_urls[token] = {"user": user_id, "channel": channel_id}
        return f"{self.base}/respond/{token}"

    def clear_failures(self) -> None:
        """Answer normally again."""
        self._failures.clear()
        self._held.clear()
        self._release_held.set()

    def hold(self, method: str, lose: bool = False) -> threading.Event:
        """Hold every call of `method` unanswered (a Slack that does not
        answer) until the returned event is set; the call is recorded only
        when it is answered. With `lose`, it is then never answered nor
        recorded: it was lost on the way, as when its sender died."""
        self._release_held = threading.Event()
        self._lose_held = lose
        self._held.add(method)
        return self._release_held

    def slow(self, method: str, seconds: float) -> None:
        """Answer every call of `method` only after `seconds` (a slow Slack);
        0 for prompt answers again."""
        self._slow[method] = seconds

    def wait_in_flight(self, method: str, count: int = 1, timeout: float = 15) -> None:
        """Block until `count` calls of `method` are held (see `hold`)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(c.method == method for c in self.in_flight) < count:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"fewer than {count} {method} calls held"
                self._changed.wait(remaining)

    def rate_limit(self, method: str, seconds: int) -> None:
        """Rate-limit `method` as Slack does: its next call, and every call
        until `seconds` after it, is answered 429 with the Retry-After left
        (recorded with context "failed": "429" and "retry_after")."""
        self._limited[method] = (seconds, None)

    def fail_next(
        self,
        method: str,
        status: int = 429,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next call of `method` with an error (e.g. a rate limit)."""
        self._failures.setdefault(method, []).append(
            (
                status,
                headers or {"Retry-After": "1"},
                body or {"ok": False, "error": "ratelimited"},
            )
        )

    # -- observing ------------------------------------------------------------

    def acked(self, user_id: str, channel_id: str, payload: dict[str, Any]) -> Call:
        """Record an answer the bot gave in its ack (Slack shows it to the
        user as it shows a response_url message), checked the same way."""
        call = Call(
            "ack",
            payload,
            {"user": user_id, "channel": channel_id},
            self.problems("response_url", payload),
        )
        self.record(call)
        return call

    def record(self, call: Call) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
        if self.on_call is not None:
            self.on_call(call)

    def wait_for(
        self, predicate: Callable[[Call], bool], count: int = 1, timeout: float = 15
    ) -> list[Call]:
        """Block until `count` recorded calls satisfy `predicate`; return them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matching = [c for c in self.calls if predicate(c)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    methods = [c.method for c in self.calls]
                    raise AssertionError(
                        f"only {len(matching)} of {count} expected Slack calls;"
                        f" saw {methods}"
                    )
                self._changed.wait(remaining)

    def of(self, method: str) -> list[Call]:
        with self._changed:
            return [c for c in self.calls if c.method == method]

    # -- the Web API ------------------------------------------------------------

    def answer(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "user_id": "UBOT",
                "bot_id": "BBOT",
                "team_id": "TLOCAL",
                "url": self.base,
            }
        if method == "users.info":
            user = self.users.get(str(payload.get("user")))
            if user is None:
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "user": self._user_json(user)}
        if method == "users.lookupByEmail":
            email = str(payload.get("email", "")).lower()
            for user in self.users.values():
                if user.email and user.email.lower() == email:
                    return {"ok": True, "user": self._user_json(user)}
            return {"ok": False, "error": "users_not_found"}
        if method == "conversations.open":
            users = str(payload.get("users", ""))
            return {"ok": True, "channel": {"id": "D" + users.replace(",", "")}}
        if method in ("chat.postMessage", "chat.postEphemeral", "chat.update"):
            channel = str(payload.get("channel", ""))
            if not channel:
                return {"ok": False, "error": "channel_not_found"}
            if not payload.get("text") and not payload.get("blocks"):
                return {"ok": False, "error": "no_text"}
            ts = str(payload.get("ts") or f"{time.time():.0f}.{next(self._ts):06d}")
            result: dict[str, Any] = {"ok": True, "channel": channel, "ts": ts}
            if method == "chat.postEphemeral":
                result = {"ok": True, "message_ts": ts}
            return result
        if method == "views.publish":
            return {"ok": True, "view": {"id": "VHOME"}}
        if method == "apps.connections.open" and self.socket_url:
            return {"ok": True, "url": self.socket_url}
        return {"ok": False, "error": "unknown_method"}

    def _rate_limited(self, method: str, payload: dict[str, Any]) -> str | None:
        """The Retry-After to answer with, if `method` is limited now (the
        call is then recorded as failed)."""
        if method not in self._limited:
            return None
        seconds, since = self._limited[method]
        now = time.monotonic()
        if since is None:
            since = now
            self._limited[method] = (seconds, since)
        left = since + seconds - now
        if left <= 0:
            del self._limited[method]
            return None
        retry = str(max(1, math.ceil(left)))
        context = {"failed": "429", "retry_after": retry}
        self.record(Call(method, payload, context))
        return retry

    @staticmethod
    def _user_json(user: User) -> dict[str, Any]:
        profile: dict[str, Any] = {"display_name": user.name, "real_name": user.name}
        if user.email:
            profile["email"] = user.email
        return {"id": user.id, "name": user.name, "profile": profile}

    def problems(self, method: str, payload: dict[str, Any]) -> list[str]:
        if method == "views.publish":
            view = payload.get("view")
            if isinstance(view, str):
                view = json.loads(view)
            return block_problems((view or {}).get("blocks"), MAX_VIEW_BLOCKS)
        problems = message_problems(payload)
        sends = method in ("chat.postMessage", "chat.update", "response_url")
        if sends and not payload.get("text") and not payload.get("blocks"):
            problems.append(NO_TEXT)
        return problems

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        slack = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the calls are recorded instead

            def _send(
                self,
                status: int,
                body: dict[str, Any] | str,
                headers: dict[str, str] | None = None,
            ) -> None:
                data = (
                    body.encode()
                    if isinstance(body, str)
                    else json.dumps(body).encode()
                )
                self.send_response(status)
                self.send_header(
                    "Content-Type",
                    "application/json" if isinstance(body, dict) else "text/plain",
                )
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                # A caller that died meanwhile (a killed bot) reads nothing.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.end_headers()
                    self.wfile.write(data)

            def _payload(self) -> dict[str, Any]:
                url = urllib.parse.urlsplit(self.path)
                payload: dict[str, Any] = dict(urllib.parse.parse_qsl(url.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                kind = self.headers.get("Content-Type", "")
                if raw and "json" in kind:
                    payload.update(json.loads(raw))
                elif raw:
                    payload.update(urllib.parse.parse_qsl(raw.decode()))
                return payload

            def do_GET(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                payload = self._payload()
                if path.startswith("/respond/"):
                    context = slack._response_urls.get(path.rsplit("/", 1)[1])
                    if context is None and slack.any_response_url:
                        context = {"user": "", "channel": ""}
                    if context is None:
                        self._send(404, "invalid_token")
                        return
                    failures = slack._failures.get("response_url")
                    if failures:
                        status, headers, _body = failures.pop(0)
                        failed = {**context, "failed": str(status)}
                        slack.record(Call("response_url", payload, failed))
                        self._send(status, "server_error", headers)
                        return
                    call = Call(
                        "response_url",
                        payload,
                        dict(context),
                        slack.problems("response_url", payload),
                    )
                    slack.record(call)
                    self._send(
                        400 if call.problems else 200,
                        _error_of(call.problems) if call.problems else "ok",
                    )
                    return
                if not path.startswith("/api/"):
                    self._send(404, "not found")
                    return
                method = path[len("/api/") :]
                if method in slack._held:
                    held = Call(method, payload, {"held": "yes"})
                    with slack._changed:
                        slack.in_flight.append(held)
                        slack._changed.notify_all()
                    slack._release_held.wait(30)
                    with slack._changed:
                        slack.in_flight.remove(held)
                    if slack._lose_held:
                        self.close_connection = True
                        return
                if slack._slow.get(method):
                    time.sleep(slack._slow[method])  # the slow Slack itself
                retry = slack._rate_limited(method, payload)
                if retry is not None:
                    body = {"ok": False, "error": "ratelimited"}
                    self._send(429, body, {"Retry-After": retry})
                    return
                failures = slack._failures.get(method)
                if failures:
                    status, headers, body = failures.pop(0)
                    slack.record(Call(method, payload, {"failed": str(status)}))
                    self._send(status, body, headers)
                    return
                tokens = {f"Bearer {slack.token}", f"Bearer {slack.app_token}"}
                if self.headers.get("Authorization") not in tokens:
                    slack.record(Call(method, payload, {"failed": "invalid_auth"}))
                    self._send(200, {"ok": False, "error": "invalid_auth"})
                    return
                call = Call(method, payload, {}, slack.problems(method, payload))
                answer = (
                    {
                        "ok": False,
                        "error": _error_of(call.problems),
                        "errors": call.problems,
                    }
                    if call.problems
                    else slack.answer(method, payload)
                )
                if "ts" in answer:  # which message a post made, for later edits
                    call.context["ts"] = str(answer["ts"])
                slack.record(call)
                self._send(200, answer)

        return Handler


def main() -> None:
    """Serve LocalSlack in its own process: `python -m stormlock.testing.localslack
    U01ALICE:alice:alice@example.com ...`; prints the API URL, then serves."""
    import sys

    users = []
    for spec in sys.argv[1:]:
        user_id, name, email = [*spec.split(":", 2), "", ""][:3]
        users.append(User(user_id, name, email or None))
    slack = LocalSlack(users=users)
    slack.any_response_url = True
    print(slack.api_url, flush=True)
    slack.server.serve_forever()


if __name__ == "__main__":
    main()
