"""`stormlock-bot shell`: the bot in a terminal, with no Slack at all.

It runs the very same Bolt app, listeners and Block Kit rendering as in Slack.
Slack itself is played by `LocalSlack` on loopback; what the bot sends is
printed, marked by who would see it: only you, the channel, or a DM.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import sys
import urllib.parse
from datetime import datetime
from typing import IO, Any

from slack_bolt import BoltRequest

from ..config import Config
from .app import build_app
from .localslack import Call, LocalSlack, User
from .service import LeaseService
from .settings import BotSettings

INTRO = """\
Stormlock shell: you are {user} in #{channel}. Type Slack commands:
  /stormlock acquire prod-db 2h applying terraform
  /stormlock list        /stormlock help
Shell commands: /user NAME (become someone else), /channel NAME, /home,
  /press N (press button N), /quit. Leases are real: the CLI sees them.
"""

_DATE = re.compile(r"<!date\^(\d+)\^[^|>]*\|([^>]*)>")
_MENTION = re.compile(r"<@([A-Z0-9]+)>")


def _user_id(name: str) -> str:
    return "U" + (re.sub(r"[^A-Za-z0-9]", "", name).upper() or "X")


class Shell:
    def __init__(self, config: Config, user: str, channel: str, out: IO[str]) -> None:
        self.out = out
        self.slack = LocalSlack().start()
        self.slack.on_call = self._show
        settings = BotSettings.load(
            config,
            {"SLACK_BOT_TOKEN": self.slack.token, "SLACK_API_URL": self.slack.api_url},
        )
        self.service = LeaseService(settings)
        self.app, self.bot = build_app(
            settings, self.service, verify_requests=False, background=False
        )
        self.buttons: list[tuple[str, dict[str, Any], str]] = []
        self.show_home = False
        self.channel = channel
        self.user = self.become(user)

    def become(self, name: str) -> str:
        """Switch user; the email matches the CLI's default principal (user@host)."""
        user_id = _user_id(name)
        self.slack.add_user(User(user_id, name, f"{name}@{socket.gethostname()}"))
        self.user = user_id
        return user_id

    def close(self) -> None:
        self.service.close()
        self.slack.stop()

    # -- output -----------------------------------------------------------------

    def _name(self, user_id: str) -> str:
        user = self.slack.users.get(user_id)
        return user.name if user else user_id

    def _plain(self, text: str) -> str:
        text = _DATE.sub(
            lambda m: datetime.fromtimestamp(int(m.group(1))).strftime(
                "%Y-%m-%d %H:%M"
            ),
            text,
        )
        text = _MENTION.sub(lambda m: "@" + self._name(m.group(1)), text)
        return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

    def _render(self, payload: dict[str, Any], origin: str) -> list[str]:
        blocks = payload.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not blocks:
            return [self._plain(str(payload.get("text", "")))]
        lines: list[str] = []
        for block in blocks:
            kind = block.get("type")
            if kind in ("section", "header"):
                lines.append(self._plain(block["text"]["text"]))
            elif kind == "context":
                lines += [
                    self._plain(e.get("text", "")) for e in block.get("elements", [])
                ]
            elif kind == "divider":
                lines.append("-" * 40)
            elif kind == "actions":
                labels = []
                for element in block.get("elements", []):
                    self.buttons.append((origin, element, block.get("block_id", "")))
                    labels.append(f"[{len(self.buttons)}: {element['text']['text']}]")
                lines.append(" ".join(labels))
        return lines

    def _show(self, call: Call) -> None:
        if call.method == "response_url":
            who = self._name(call.context.get("user", ""))
            mark, origin = f"only {who} sees", "message"
        elif call.method == "chat.postMessage":
            channel = str(call.payload.get("channel", ""))
            if channel.startswith("D"):
                mark, origin = f"DM to {self._name(channel[1:])}", "message"
            else:
                mark, origin = f"#{channel}", "message"
        elif call.method == "views.publish" and self.show_home:
            view = call.payload.get("view") or {}
            mark, origin = (
                f"App Home of {self._name(str(call.payload.get('user_id')))}",
                "view",
            )
            call = Call(
                call.method, view if isinstance(view, dict) else json.loads(view)
            )
        else:
            return
        if call.problems:
            print(
                f"  (Slack would reject this: {'; '.join(call.problems)})",
                file=self.out,
            )
        lines = self._render(call.payload, origin)
        print(f"[{mark}]", file=self.out)
        for line in lines:
            for part in line.splitlines():
                print(f"    {part}", file=self.out)

    # -- input ------------------------------------------------------------------

    def _dispatch(self, body: str) -> None:
        request = BoltRequest(
            body=body, headers={"content-type": ["application/x-www-form-urlencoded"]}
        )
        response = self.app.dispatch(request)
        if response.status != 200:
            print(f"  (the bot answered HTTP {response.status})", file=self.out)

    def command(self, text: str) -> None:
        self.buttons.clear()
        body = {
            "token": "local",
            "team_id": "TLOCAL",
            "channel_id": self.channel,
            "channel_name": self.channel,
            "user_id": self.user,
            "user_name": self._name(self.user),
            "command": "/stormlock",
            "text": text,
            "response_url": self.slack.response_url(self.user, self.channel),
            "trigger_id": "local",
        }
        self._dispatch(urllib.parse.urlencode(body))

    def press(self, number: int) -> None:
        if not 1 <= number <= len(self.buttons):
            print(f"  no button {number}; there are {len(self.buttons)}", file=self.out)
            return
        origin, element, block_id = self.buttons[number - 1]
        self.buttons.clear()
        container: dict[str, Any] = (
            {"type": "view", "view_id": "VHOME"}
            if origin == "view"
            else {"type": "message", "channel_id": self.channel, "is_ephemeral": True}
        )
        payload = {
            "type": "block_actions",
            "user": {"id": self.user, "name": self._name(self.user)},
            "team": {"id": "TLOCAL"},
            "container": container,
            "channel": {"id": self.channel, "name": self.channel},
            "response_url": self.slack.response_url(self.user, self.channel),
            "trigger_id": "local",
            "actions": [
                {
                    "type": "button",
                    "action_id": element["action_id"],
                    "block_id": block_id,
                    "value": element.get("value", ""),
                    "text": element["text"],
                }
            ],
        }
        self.show_home = origin == "view"  # a Home button redraws the Home tab
        try:
            self._dispatch(urllib.parse.urlencode({"payload": json.dumps(payload)}))
        finally:
            self.show_home = False

    def home(self) -> None:
        self.buttons.clear()
        self.show_home = True
        try:
            self.bot.publish_home(self.user)
        finally:
            self.show_home = False

    def handle(self, line: str) -> bool:
        """Run one line; False when the user wants to leave."""
        line = line.strip()
        if not line:
            return True
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word in ("/quit", "/exit", "quit", "exit"):
            return False
        if word == "/user" and rest:
            self.become(rest)
            print(f"  you are now {rest}", file=self.out)
        elif word == "/channel" and rest:
            self.channel = rest.lstrip("#")
            print(f"  you are now in #{self.channel}", file=self.out)
        elif word == "/home":
            self.home()
        elif word == "/press" and rest.isdigit():
            self.press(int(rest))
        elif word.isdigit():
            self.press(int(word))
        elif word == "/stormlock":
            self.command(rest)
        elif word.startswith("/"):
            print("  unknown shell command; try /stormlock help", file=self.out)
        else:
            self.command(line)  # "acquire x" works like "/stormlock acquire x"
        return True


def run_shell(
    config: Config,
    user: str | None,
    channel: str,
    stdin: IO[str] | None = None,
    out: IO[str] | None = None,
) -> int:
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    shell = Shell(config, user or getpass.getuser(), channel.lstrip("#"), out)
    interactive = stdin.isatty()
    print(INTRO.format(user=shell._name(shell.user), channel=shell.channel), file=out)
    try:
        while True:
            if interactive:
                out.write(f"{shell._name(shell.user)}@#{shell.channel}> ")
                out.flush()
            line = stdin.readline()
            if not line or not shell.handle(line):
                break
            out.flush()
    finally:
        shell.close()
    return 0
