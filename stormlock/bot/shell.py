"""`stormlock-bot shell`: the bot in a terminal, with no Slack at all.

It runs the same core and the same renderers as in Slack; the outcome is
printed instead of sent, marked by who would see it: only you, the channel,
or a DM. Buttons are numbered; `/press N` presses one.
"""

from __future__ import annotations

import getpass
import re
import socket
import sys
from datetime import datetime
from typing import IO, Any

from ..config import Config
from ..errors import StormlockError, printable
from . import blocks
from .blocks import Message
from .core import (
    Announce,
    Ask,
    Core,
    DirectMessage,
    Outcome,
    RedrawHome,
    Via,
    deliveries,
)
from .parsing import parse
from .service import LeaseService, Person
from .settings import BotSettings

INTRO = """\
Stormlock shell: you are {user} in #{channel}. Type Slack commands:
  /stormlock acquire prod-db 2h applying terraform
  /stormlock list        /stormlock help
Shell commands: /user NAME (become someone else), /channel NAME, /home,
  /press N (press button N), /quit. Leases are real: the CLI sees them.
"""

_DATE = re.compile(r"<!date\^(\d+)\^[^|>]*\|([^>]*)>")


def _user_id(name: str) -> str:
    return "U" + (re.sub(r"[^A-Za-z0-9]", "", name).upper() or "X")


class LocalPeople:
    """Terminal users: the principal is NAME@host, as the CLI's default."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.host = socket.gethostname()

    def add(self, name: str) -> str:
        user_id = _user_id(name)
        self.names[user_id] = name
        return user_id

    def person(self, user_id: str) -> Person:
        name = self.names.get(user_id, user_id)
        return Person(user_id, f"{name}@{self.host}", frozenset({user_id}))

    def user_id_for(self, principal: str, strict: bool = False) -> str | None:
        name, _, host = principal.partition("@")
        user_id = _user_id(name)
        return user_id if host == self.host and user_id in self.names else None

    def display(self, principal: str) -> str:
        name, _, host = principal.partition("@")
        return f"@{name}" if host == self.host or principal in self.names else principal

    def name(self, user_id: str) -> str:
        return self.names.get(user_id, user_id)


class Shell:
    def __init__(self, config: Config, user: str, channel: str, out: IO[str]) -> None:
        self.out = out
        settings = BotSettings.load(config, {})
        self.service = LeaseService(settings)
        self.people = LocalPeople()
        # No wait lists or boards here: they live in Slack.
        self.core = Core(self.service, settings, self.people, None)
        self.buttons: list[tuple[Via, dict[str, Any]]] = []
        self.channel = channel
        self.user = self.become(user)

    def become(self, name: str) -> str:
        self.user = self.people.add(name)
        return self.user

    def close(self) -> None:
        self.service.close()

    # -- output -----------------------------------------------------------------

    def _plain(self, text: str) -> str:
        text = _DATE.sub(
            lambda m: datetime.fromtimestamp(int(m.group(1))).strftime(
                "%Y-%m-%d %H:%M"
            ),
            text,
        )
        return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

    def show(self, mark: str, rendered: list[dict[str, Any]], via: Via) -> None:
        """Print Block Kit as text; number its buttons."""
        print(f"[{mark}]", file=self.out)
        for block in rendered:
            kind = block.get("type")
            lines: list[str] = []
            if kind in ("section", "header"):
                lines.append(self._plain(block["text"]["text"]))
            elif kind == "context":
                lines += [self._plain(e.get("text", "")) for e in block["elements"]]
            elif kind == "divider":
                lines.append("-" * 40)
            elif kind == "actions":
                labels = []
                for element in block.get("elements", []):
                    self.buttons.append((via, element))
                    labels.append(f"[{len(self.buttons)}: {element['text']['text']}]")
                lines.append(" ".join(labels))
            for line in lines:
                for part in line.splitlines():
                    print(f"    {printable(part)}", file=self.out)

    def _message(self, mark: str, message: Message, via: Via = Via.BUTTON) -> None:
        self.show(mark, message.blocks or [blocks.problem(message.text).blocks[0]], via)

    # -- the pipeline, printed ----------------------------------------------------

    def run(self, ask: Ask) -> Outcome:
        outcome = self.core.handle(ask)
        display = self.people.display
        if ask.via is not Via.HOME:
            self._message(
                f"only {self.people.name(ask.user_id)} sees",
                blocks.answer(outcome.answer, display),
            )
        home_of = ask.user_id if ask.via is Via.HOME else None
        for delivery in deliveries(outcome, home_of):
            if isinstance(delivery, Announce):
                message = blocks.notice(delivery.notice, display)
                self._message(f"#{delivery.channel}", message)
            elif isinstance(delivery, DirectMessage):
                message = blocks.notice(delivery.notice, display)
                self._message(f"DM to {display(delivery.to)}", message)
            elif isinstance(delivery, RedrawHome):
                self.home()
            # Wait lists and boards live in Slack: the shell has neither.
        return outcome

    def home(self) -> None:
        self.buttons.clear()
        drawn = self.core.home(self.user)
        view = blocks.home_of(drawn, self.people.display, self.core.renew_offer)
        self.show(
            f"App Home of {self.people.name(self.user)}", view["blocks"], Via.HOME
        )

    # -- input ------------------------------------------------------------------

    def command(self, text: str) -> None:
        self.buttons.clear()
        try:
            command = parse(text)
        except StormlockError as exc:
            self._message(
                f"only {self.people.name(self.user)} sees", blocks.problem(exc.message)
            )
            return
        if command.name == "board":
            message = blocks.problem("Boards live in Slack channels, not in the shell.")
            self._message(f"only {self.people.name(self.user)} sees", message)
            return
        self.run(
            Ask(self.user, command, channel=self.channel, channel_name=self.channel)
        )

    def press(self, number: int) -> None:
        if not 1 <= number <= len(self.buttons):
            print(f"  no button {number}; there are {len(self.buttons)}", file=self.out)
            return
        via, element = self.buttons[number - 1]
        self.buttons.clear()
        button = blocks.read_button(element["action_id"], element.get("value", ""))
        if button is None:
            print("  that button does nothing here", file=self.out)
            return
        command, fence = button
        channel = None if via is Via.HOME else self.channel
        self.run(
            Ask(
                self.user,
                command,
                channel=channel,
                channel_name=channel,
                via=via,
                fence=fence,
            )
        )

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
    print(
        INTRO.format(user=shell.people.name(shell.user), channel=shell.channel),
        file=out,
    )
    # At a terminal, input() gives line editing and Up-arrow history.
    edit = interactive and stdin is sys.stdin and out is sys.stdout
    if edit:
        import readline  # noqa: F401 - input() uses it once imported
    try:
        while True:
            prompt = f"{shell.people.name(shell.user)}@#{shell.channel}> "
            if edit:
                try:
                    line = input(prompt) + "\n"
                except EOFError:
                    line = ""
            else:
                if interactive:
                    out.write(prompt)
                    out.flush()
                line = stdin.readline()
            if not line or not shell.handle(line):
                break
            out.flush()
    finally:
        shell.close()
    return 0
