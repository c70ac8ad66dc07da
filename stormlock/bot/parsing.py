"""`/stormlock ...` text turned into a command. Chat-independent."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import timedelta

from ..errors import InvalidTTL, UsageError
from ..names import normal
from ..ttl import attempts_a_duration, parse_duration

ALIASES = {
    "acquire": "acquire",
    "lock": "acquire",
    "take": "acquire",
    "release": "release",
    "unlock": "release",
    "renew": "renew",
    "extend": "renew",
    "current": "current",
    "status": "current",
    "who": "current",
    "is-held": "is-held",
    "isheld": "is-held",
    "is_held": "is-held",
    "list": "list",
    "ls": "list",
    "help": "help",
    "notify": "notify",
    "queue": "queue",
    "wait": "queue",
    "line": "queue",
    "ask": "ask",
    "board": "board",
    "history": "history",
    "log": "history",
    "token": "token",
    "tokens": "token",
}

USAGE = {
    "acquire": "/stormlock acquire <resource|pool|group|a,b> [ttl] [note…]"
    "  e.g. /stormlock acquire prod-db 2h applying terraform",
    "release": "/stormlock release <resource> [lease-id] [--force]",
    "renew": "/stormlock renew <resource> [ttl]  e.g. /stormlock renew prod-db 1h",
    "current": "/stormlock current <resource>",
    "is-held": "/stormlock is-held <resource> <lease-id>",
    "list": "/stormlock list",
    "notify": "/stormlock notify <resource> [--cancel]",
    "queue": "/stormlock queue <resource> [note…] | queue <resource> --leave"
    "  e.g. /stormlock queue prod-db deploy #42",
    "ask": "/stormlock ask <resource>  (asks its holder to release it)",
    "board": "/stormlock board",
    "history": "/stormlock history <resource>",
    "help": "/stormlock help",
    "token": "/stormlock token create <name> [--resources prod-*,staging-*] "
    "[--read-only] [--expires 90d] [--as <service>] | token list | "
    "token revoke <name> [--as <service>]",
}

TOKEN_ACTIONS = ("create", "list", "revoke")


@dataclass(frozen=True)
class Command:
    name: str
    resource: str | None = None
    ttl: timedelta | None = None
    note: str | None = None
    lease_id: str | None = None
    force: bool = False
    cancel: bool = False
    unknown: str | None = None
    """The word that was not a command (the reply is the help text)."""
    action: str | None = None
    """`token`'s: create, list or revoke."""
    token: str | None = None
    """`token`'s: the token's name."""
    globs: str | None = None
    read_only: bool = False
    expires: timedelta | None = None
    principal: str | None = None
    """`token --as`: a service principal (admins only)."""
    asker: str | None = None
    """A holder's answer button: the Slack user who asked them to release."""

    def __post_init__(self) -> None:
        if self.resource is not None:  # one lock for "café" however it was typed
            object.__setattr__(self, "resource", normal(self.resource))


def _split(text: str) -> list[str]:
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'")
    text = text.replace("\u2019", "'")
    try:
        return shlex.split(text)
    except ValueError:  # unbalanced quotes: take the words as they are
        return text.split()


def _take_ttl(words: list[str]) -> tuple[timedelta | None, list[str]]:
    """A TTL at the start of `words` ("2h", "30 minutes"), and what follows."""
    for count in (2, 1):
        if len(words) >= count:
            candidate = " ".join(words[:count])
            if count == 2 and not words[0].replace(".", "", 1).isdigit():
                continue
            try:
                return parse_duration(candidate), words[count:]
            except InvalidTTL:
                if count == 1 and attempts_a_duration(candidate):
                    raise
    return None, words


def _parse_token(args: list[str]) -> Command:
    usage = USAGE["token"]
    if not args or args[0].lower() not in TOKEN_ACTIONS:
        raise UsageError(f"create, list or revoke? {usage}")
    action, rest = args[0].lower(), args[1:]
    options: dict[str, str] = {}
    read_only = False
    positional: list[str] = []
    index = 0
    while index < len(rest):
        word = rest[index]
        if word == "--read-only" and action == "create":
            read_only = True
        elif word in ("--resources", "--expires", "--as") and (
            action == "create" or word == "--as"
        ):
            if index + 1 >= len(rest):
                raise UsageError(f"{word} needs a value; {usage}")
            options[word[2:]] = rest[index + 1]
            index += 1
        elif word.startswith("-"):
            raise UsageError(f"unknown option {word}; {usage}")
        else:
            positional.append(word)
        index += 1
    wanted = 0 if action == "list" else 1
    if len(positional) != wanted:
        raise UsageError(
            ("list takes no name; " if wanted == 0 else "which token name? ") + usage
        )
    expires = options.get("expires")
    return Command(
        "token",
        action=action,
        token=positional[0] if positional else None,
        globs=options.get("resources"),
        read_only=read_only,
        expires=parse_duration(expires) if expires is not None else None,
        principal=options.get("as"),
    )


def parse(text: str) -> Command:
    """Parse the text after `/stormlock`. Raises `UsageError` or `InvalidTTL`."""
    words = _split(text.strip())
    if not words:
        return Command("help")
    name = ALIASES.get(words[0].lower())
    if name is None:
        return Command("help", unknown=words[0])
    args = words[1:]
    if name in ("help", "list", "board"):
        return Command(name)
    if name == "token":
        return _parse_token(args)
    flags: dict[str, str | bool] = {}
    positional: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word in ("--ttl", "-t") and name in ("acquire", "renew"):
            value = args[index + 1 : index + 3]
            if not value:
                raise UsageError(f"--ttl needs a value; {USAGE[name]}")
            ttl, rest = _take_ttl(value)
            if ttl is None:
                parse_duration(value[0])  # raises with an example
            flags["ttl"] = " ".join(value[: len(value) - len(rest)])
            index += 1 + len(value) - len(rest)
            continue
        if word.startswith("--ttl=") and name in ("acquire", "renew"):
            flags["ttl"] = word.split("=", 1)[1]
        elif word in ("--note", "-n") and name == "acquire":
            flags["note"] = " ".join(args[index + 1 :])
            break
        elif word == "--leave" and name == "queue":
            flags["cancel"] = True
        elif word.startswith("--note=") and name == "acquire":
            flags["note"] = " ".join([word.split("=", 1)[1], *args[index + 1 :]])
            break
        elif word == "--force" and name == "release":
            flags["force"] = True
        elif word == "--cancel" and name == "notify":
            flags["cancel"] = True
        elif word.startswith("--") and len(word) > 2:
            raise UsageError(f"unknown option {word}; {USAGE[name]}")
        else:
            positional.append(word)
        index += 1
    if not positional:
        raise UsageError(f"which resource? {USAGE[name]}")
    resource, rest = positional[0], positional[1:]
    ttl = parse_duration(str(flags["ttl"])) if "ttl" in flags else None
    note = str(flags["note"]).strip() if "note" in flags else None
    lease_id = None
    if name == "acquire":
        if ttl is None:
            ttl, rest = _take_ttl(rest)
        if rest:
            note = " ".join([*rest, note] if note else rest)
    elif name == "queue":
        note = " ".join(rest) if rest and not flags.get("cancel") else None
        if rest and flags.get("cancel"):
            raise UsageError(f"--leave takes no note; {USAGE[name]}")
    elif name == "renew":
        if ttl is None and rest:
            ttl, rest = _take_ttl(rest)
            if ttl is None:
                parse_duration(" ".join(rest))  # raises with an example
        if rest:
            raise UsageError(f"too many words; {USAGE[name]}")
    elif name in ("release", "is-held"):
        if len(rest) > 1:
            raise UsageError(f"too many words; {USAGE[name]}")
        lease_id = rest[0] if rest else None
        if name == "is-held" and lease_id is None:
            raise UsageError(f"which lease id? {USAGE[name]}")
    elif rest:
        raise UsageError(f"too many words; {USAGE[name]}")
    return Command(
        name,
        resource=resource,
        ttl=ttl,
        note=note or None,
        lease_id=lease_id,
        force=bool(flags.get("force")),
        cancel=bool(flags.get("cancel")),
    )
