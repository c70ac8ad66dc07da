"""Block Kit rendering of lease results. No logic: results in, messages out.

Each function returns a `Message`: the fallback text and the blocks. Lease
ids appear only in `acquired` (shown to the acquirer alone).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
)

from ..contract import Lease, same_principal
from ..errors import one_line
from ..history import Event
from ..times import iso
from ..tokens import Token
from ..ttl import format_duration
from . import core
from .parsing import USAGE, Command
from .settings import CHANNEL_ID, USER_ID

# Slack's limits: 50 blocks a message (100 in a view), 3000 characters a text.
MAX_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT = 3000
# ... and, though its docs do not say so, a message's blocks may hold only
# about 13,000 characters of text in all (msg_blocks_too_long), and its
# `text` about 4,000 (msg_too_long): these leave room for the markup.
MAX_MESSAGE_CHARS = 12_000
MAX_FALLBACK = 3_000
# A view (the App Home) is at most 250 kB, as sent.
MAX_VIEW_BYTES = 250_000

# The Home tab is a glance, redrawn after every action: keep it short.
HOME_OWN_LIMIT = 10
HOME_HELD_LIMIT = 50

ACTION_RENEW = "lease_renew"
ACTION_RELEASE = "lease_release"
ACTION_NOTIFY = "lease_notify"
ACTION_ACQUIRE = "lease_acquire"
ACTION_QUEUE = "lease_queue"
ACTION_TAKE = "lease_take"
ACTION_PASS = "lease_pass"  # noqa: S105 - a button, not a password
ACTION_ASK = "lease_ask"
# The holder's answers to an ask (not prefixes of one another, nor of the above).
ACTION_REPLY_RELEASE = "lease_reply_release"
ACTION_REPLY_KEEP = "lease_reply_keep"
ACTION_REPLY_ON_IT = "lease_reply_onit"

Namer = Callable[[str], str]
"""Turns a principal into what readers see: a mention, or escaped text."""


@dataclass(frozen=True)
class Message:
    """What Slack is sent. `text` is given as plain text (it is the fallback
    Slack shows in notifications) and escaped here; block texts interpolate
    user text through `escape`, and are checked here once more: no message
    of ours ever broadcasts (`<!here>`, `<!channel>`, a user group) or links."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", _shortened(escape(self.text)))
        object.__setattr__(self, "blocks", [_defused(block) for block in self.blocks])

    def kwargs(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": self.blocks}


def _shortened(text: str) -> str:
    """Escaped `text` within MAX_FALLBACK, never cut inside an entity."""
    if len(text) <= MAX_FALLBACK:
        return text
    cut = text[: MAX_FALLBACK - 1]
    head, amp, tail = cut.rpartition("&")
    if amp and ";" not in tail:
        cut = head
    return cut + "…"


def chars(node: Any) -> int:
    """How many characters of text a block (or blocks) holds: what Slack's
    msg_blocks_too_long counts, near enough."""
    if isinstance(node, dict):
        return sum(
            len(value) if key == "text" and isinstance(value, str) else chars(value)
            for key, value in node.items()
        )
    if isinstance(node, list):
        return sum(chars(item) for item in node)
    return 0


def combined(messages: Sequence[Message]) -> Message:
    """Announcements to one channel as one post, in order (each already made
    safe by its own Message): one-line announcements share sections, so a
    post names hundreds of changes within Slack's 50 blocks. Give it at most
    `fitting(messages)` of them."""
    if len(messages) == 1:
        return messages[0]
    packed, _count = _pack(messages)
    merged = Message("", packed)
    text = _shortened("\n".join(m.text for m in messages))
    object.__setattr__(merged, "text", text)
    return merged


def more_changes(count: int, resources: Sequence[str]) -> Message:
    """The changes a post counts instead of naming (more came than Slack's
    pace lets the channel hear one by one)."""
    names = ", ".join(f"*{escape(name)}*" for name in resources[:5])
    if len(resources) > 5:
        names += f" and {len(resources) - 5} more"
    where = f" to {names}" if names else ""
    text = (
        f":fast_forward: …and {count:,} more lease changes{where}, too many "
        "to name one by one here; `/stormlock history <resource>` shows each."
    )
    return Message(f"…and {count} more lease changes", _render([_section(text)]))


def fitting(messages: Sequence[Message]) -> int:
    """How many of `messages`, from the first, fit in one combined post."""
    return _pack(messages)[1]


def _pack(messages: Sequence[Message]) -> tuple[list[dict[str, Any]], int]:
    packed: list[dict[str, Any]] = []
    size = 0  # characters of block text so far
    for count, message in enumerate(messages):
        before = list(packed)
        for block in message.blocks:
            text, last = _plain_section(block), _plain_section(packed[-1:])
            fits = text is not None and last is not None
            if fits and len(f"{last}\n{text}") <= MAX_TEXT:
                packed[-1] = _section(f"{last}\n{text}")
                size += len(text or "") + 1
                continue
            packed.append(block)
            size += chars(block)
        if count and (len(packed) > MAX_BLOCKS or size > MAX_MESSAGE_CHARS):
            return before, count
    return packed, len(messages)


def _plain_section(block: dict[str, Any] | list[dict[str, Any]]) -> str | None:
    """The text of a section that is nothing but mrkdwn text."""
    if isinstance(block, list):
        if not block:
            return None
        block = block[0]
    text = block.get("text")
    if block.get("type") != "section" or set(block) - {"type", "text", "block_id"}:
        return None
    if not isinstance(text, dict) or text.get("type") != "mrkdwn":
        return None
    value = text.get("text")
    return value if isinstance(value, str) else None


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Of Slack's `<...>` markup, ours is only `<@USER>` (namer), `<#CHANNEL>`
# (where to ask instead) and `<!date^...>`.
_FOREIGN_MARKUP = re.compile(r"<(?!@[UW][A-Z0-9]+>|#[CG][A-Z0-9]+>|!date\^)")


def _defused(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str):
            return {**node, "text": _FOREIGN_MARKUP.sub("&lt;", node["text"])}
        return {key: _defused(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_defused(item) for item in node]
    return node


def when(moment: datetime | None) -> str:
    """A time each reader sees in their own time zone."""
    if moment is None:
        return "an unknown time"
    fallback = iso(moment)
    stamp = int(moment.timestamp())
    return f"<!date^{stamp}^{{date_short_pretty}} at {{time}}|{fallback}>"


AnyBlock = Block | dict[str, Any]
"""A slack_sdk block, or one already written as the dict it renders to."""

# The blocks on every answer and announcement are written as the dicts
# slack_sdk's models render (the tests check them with those models):
# rendering through the models took about 0.2 ms a lease's answer.


def _section(text: str) -> dict[str, Any]:
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _button(
    text: str, action_id: str, value: str, style: str | None = None
) -> dict[str, Any]:
    button = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": text[:75], "emoji": True},
        "value": value,
    }
    if style:
        button["style"] = style
    return button


def _render(blocks: Sequence[AnyBlock]) -> list[dict[str, Any]]:
    return [block if isinstance(block, dict) else block.to_dict() for block in blocks]


def _value(**data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


_BUTTONS = (
    (ACTION_RENEW, "renew"),
    (ACTION_RELEASE, "release"),
    (ACTION_NOTIFY, "notify"),
    (ACTION_ACQUIRE, "acquire"),
    (ACTION_QUEUE, "queue"),
    (ACTION_TAKE, "take-turn"),
    (ACTION_PASS, "pass-turn"),
    (ACTION_ASK, "ask"),
    (ACTION_REPLY_RELEASE, "ask-release"),
    (ACTION_REPLY_KEEP, "ask-keep"),
    (ACTION_REPLY_ON_IT, "ask-onit"),
)


def read_button(action_id: str, value: str) -> tuple[Command, int | None] | None:
    """The command a button of ours stands for, and the fence of the lease it
    was shown for; None for a button that is not ours or not readable."""
    name = next((n for prefix, n in _BUTTONS if action_id.startswith(prefix)), None)
    try:
        data = json.loads(value or "{}")
        resource = str(data["resource"])
        fence = int(data["fence"]) if "fence" in data else None
        ttl = timedelta(seconds=float(data["ttl"])) if "ttl" in data else None
        asker = str(data["asker"]) if "asker" in data else None
    except (ValueError, KeyError, TypeError, OverflowError):  # 1e300, NaN, junk
        return None
    if name is None or (asker is not None and not USER_ID.match(asker)):
        return None
    return Command(name, resource=resource, ttl=ttl, asker=asker), fence


def _lease_line(lease: Lease, namer: Namer, note_limit: int | None = None) -> str:
    line = (
        f"*{escape(lease.resource)}* — {namer(lease.principal)}"
        f" since {when(lease.created)} until {when(lease.expires)}"
    )
    note = lease.note
    if note and note_limit is not None and len(note) > note_limit:
        note = note[:note_limit].rstrip() + "…"
    if note:
        line += f" — _{escape(note)}_"
    return line


def lease_buttons(
    lease: Lease, renew_choices: Sequence[timedelta], block_id: str | None = None
) -> dict[str, Any]:
    elements = [
        _button(
            f"Renew {format_duration(ttl)}",
            f"{ACTION_RENEW}:{i}",
            _value(resource=lease.resource, ttl=ttl.total_seconds(), fence=lease.fence),
        )
        for i, ttl in enumerate(renew_choices)
    ]
    elements.append(
        _button(
            "Release",
            ACTION_RELEASE,
            _value(resource=lease.resource, fence=lease.fence),
            style="danger",
        )
    )
    actions: dict[str, Any] = {"type": "actions", "elements": elements}
    if block_id is not None:
        actions["block_id"] = block_id
    return actions


def acquired(lease: Lease, renew_choices: Sequence[timedelta]) -> Message:
    """To the acquirer only: the lease, its secret id, and buttons."""
    text = f":lock: You hold *{escape(lease.resource)}* until {when(lease.expires)}."
    if lease.note:
        text += f"\n_{escape(lease.note)}_"
    id_line = (
        f"Lease id (keep it private; the CLI needs it): `{lease.id}`"
        f" · fence {lease.fence}"
    )
    blocks = [_section(text), _context(id_line), lease_buttons(lease, renew_choices)]
    return Message(
        f"You hold {lease.resource} until {iso(lease.expires or lease.created)}",
        _render(blocks),
    )


def announce_acquired(lease: Lease, namer: Namer, pool: str | None = None) -> Message:
    source = f" from *{escape(pool)}*" if pool else ""
    text = (
        f":lock: {namer(lease.principal)} took *{escape(lease.resource)}*{source}"
        f" until {when(lease.expires)}"
    )
    if lease.note:
        text += f" — _{escape(lease.note)}_"
    return Message(f"{lease.resource} is now held", _render([_section(text)]))


def _member_line(resource: str, lease: Lease | None, namer: Namer) -> str:
    if lease is None:
        return f"• *{escape(resource)}*: free"
    note = f" — _{escape(lease.note)}_" if lease.note else ""
    return (
        f"• *{escape(resource)}*: {namer(lease.principal)} until "
        f"{when(lease.expires)}{note}"
    )


def members_held(
    name: str, holders: Sequence[Lease], namer: Namer, every: bool = True
) -> Message:
    """A pool with every member held, or a set some of whose members are:
    each holder by its own member, until when."""
    lines = [_member_line(lease.resource, lease, namer) for lease in holders]
    if every:
        said = f"Every member of {name} is held"
        header = _section(f":no_entry: Every member of *{escape(name)}* is held:")
    else:
        said = f"Nothing taken: part of {name} is held"
        header = _section(
            f":no_entry: Nothing taken: of *{escape(name)}*, these are held:"
        )
    return Message(said, _render([header, *_text_sections(lines)]))


def members_now(
    name: str, members: Sequence[tuple[str, Lease | None]], pool: bool, namer: Namer
) -> Message:
    """`current` of a pool or a group: each member, held (by whom, until
    when) or free."""
    free = sum(1 for _, lease in members if lease is None)
    kind = "pool" if pool else "group"
    summary = f"{free} of {len(members)} free"
    header = _section(f":busts_in_silhouette: *{escape(name)}* ({kind}): {summary}")
    lines = [_member_line(resource, lease, namer) for resource, lease in members]
    return Message(f"{name}: {summary}", _render([header, *_text_sections(lines)]))


def already_yours(lease: Lease, renew_choices: Sequence[timedelta]) -> Message:
    """An acquire of what you hold: until when, with Renew and Release."""
    text = (
        f":lock: You already hold *{escape(lease.resource)}*, until "
        f"{when(lease.expires)}. Renew it to keep it longer."
    )
    return Message(
        f"You already hold {lease.resource}",
        _render([_section(text), lease_buttons(lease, renew_choices)]),
    )


def held(
    lease: Lease | None,
    resource: str,
    namer: Namer,
    can_wait: bool = True,
    waiting: int = 0,
    can_queue: bool = False,
    can_ask: bool = False,
) -> Message:
    """To someone who tried to take a held resource (or one kept for the
    first in its line)."""
    if lease is None and waiting:
        text = f":no_entry: *{escape(resource)}* is kept for the first in its line."
    elif lease is None:
        text = f":no_entry: *{escape(resource)}* is held by someone else; try again."
    else:
        text = (
            f":no_entry: *{escape(resource)}* is held by {namer(lease.principal)}"
            f" since {when(lease.created)} until {when(lease.expires)}"
        )
        if lease.note:
            text += f"\n_{escape(lease.note)}_"
    if waiting:
        people = "1 person is" if waiting == 1 else f"{waiting} people are"
        text += f"\n{people} waiting in line: join it to take your turn."
    shown: list[AnyBlock] = [_section(text)]
    buttons: list[ButtonElement] = []
    if can_queue:
        buttons.append(
            ButtonElement(
                text="Join the line",
                action_id=ACTION_QUEUE,
                value=_value(resource=resource),
                style="primary",
            )
        )
    if can_ask and lease is not None:
        buttons.append(
            ButtonElement(
                text="Ask the holder to release",
                action_id=ACTION_ASK,
                value=_value(resource=resource, fence=lease.fence),
            )
        )
    if can_wait:
        buttons.append(
            ButtonElement(
                text="Notify me when free",
                action_id=ACTION_NOTIFY,
                value=_value(resource=resource),
            )
        )
    if buttons:
        shown.append(ActionsBlock(elements=buttons))
    return Message(f"{resource} is held by someone else", _render(shown))


def queued(
    resource: str, position: int, usual: timedelta | None, already: bool
) -> Message:
    from ..line import ordinal

    place = f"{ordinal(position)} in line for *{escape(resource)}*"
    text = (
        f":hourglass: You're already {place}: you keep your place."
        if already
        else f":hourglass: You're {place}."
    )
    if usual is not None:
        text += f" It is usually held for {format_duration(_rounded(usual))}."
    text += " I'll DM you when it is your turn."
    leave = ButtonElement(
        text="Leave the line",
        action_id=ACTION_PASS,
        value=_value(resource=resource),
    )
    return Message(
        f"You're {ordinal(position)} in line for {resource}",
        _render([_section(text), ActionsBlock(elements=[leave])]),
    )


def _rounded(length: timedelta) -> timedelta:
    """To the minute (to the second under one)."""
    if length >= timedelta(minutes=1):
        return timedelta(minutes=round(length.total_seconds() / 60))
    return timedelta(seconds=max(1, round(length.total_seconds())))


def left_line(resource: str, was_in: bool) -> Message:
    if not was_in:
        text = (
            f"You are not in the line for *{escape(resource)}*, so there was "
            "nothing to leave."
        )
        return Message(
            f"You are not in the line for {resource}", _render([_section(text)])
        )
    text = f":wave: You left the line for *{escape(resource)}*."
    return Message(f"You left the line for {resource}", _render([_section(text)]))


def line_free(resource: str) -> Message:
    button = ButtonElement(
        text=f"Acquire {resource}"[:75],
        action_id=ACTION_ACQUIRE,
        value=_value(resource=resource),
        style="primary",
    )
    text = (
        f"*{escape(resource)}* is free and nobody waits for it: take it now "
        "instead of joining a line."
    )
    return Message(
        f"{resource} is free",
        _render([_section(text), ActionsBlock(elements=[button])]),
    )


def passed(resource: str) -> Message:
    text = f":fast_forward: You passed: *{escape(resource)}* goes to the next in line."
    return Message(f"You passed on {resource}", _render([_section(text)]))


def your_turn(resource: str, seq: int, window: timedelta) -> Message:
    """To the first in line, when the resource is free."""
    take = ButtonElement(
        text="Take it",
        action_id=ACTION_TAKE,
        value=_value(resource=resource, fence=seq),
        style="primary",
    )
    give = ButtonElement(
        text="Pass",
        action_id=ACTION_PASS,
        value=_value(resource=resource, fence=seq),
    )
    text = (
        f":bell: You're up for *{escape(resource)}*. It is kept for you for "
        f"{format_duration(window)}: take it, or pass it to the next in line."
    )
    return Message(
        f"You're up for {resource}",
        _render([_section(text), ActionsBlock(elements=[take, give])]),
    )


def announce_up(
    resource: str, principal: str, namer: Namer, window: timedelta
) -> Message:
    """For the resource's channel: whose turn it is."""
    text = (
        f":bell: {namer(principal)} is up for *{escape(resource)}*: it is kept for "
        f"them for {format_duration(window)}."
    )
    return Message(f"{principal} is up for {resource}", _render([_section(text)]))


def announce_turn_ended(
    resource: str, principal: str, how: str, namer: Namer
) -> Message:
    """For the resource's channel: a turn that ended without a take."""
    said = {
        "passed": f":fast_forward: {namer(principal)} passed their turn for",
        "left": f":wave: {namer(principal)} left the line for",
    }.get(how, f":hourglass: {namer(principal)}'s turn lapsed for")
    text = f"{said} *{escape(resource)}*; it goes to the next in line."
    return Message(
        f"{principal}'s turn for {resource} ended", _render([_section(text)])
    )


# -- asking the holder -----------------------------------------------------------


def asked(resource: str, holder: str, namer: Namer, already: bool) -> Message:
    """To the asker."""
    what = f"{namer(holder)} to release *{escape(resource)}*"
    text = (
        f":speech_balloon: You asked {what} already; I'll tell you what they choose."
        if already
        else f":speech_balloon: I asked {what}. I'll tell you what they choose."
    )
    return Message(f"Asked the holder of {resource}", _render([_section(text)]))


def ask_holder(lease: Lease, asker: str) -> Message:
    """To the holder, in private: release, keep it a while, or on it."""
    value = _value(resource=lease.resource, fence=lease.fence, asker=asker)
    choices = [
        ButtonElement(
            text="Release now",
            action_id=ACTION_REPLY_RELEASE,
            value=value,
            style="danger",
        ),
        ButtonElement(
            text="Keep it 30 more minutes", action_id=ACTION_REPLY_KEEP, value=value
        ),
        ButtonElement(text="I'm on it", action_id=ACTION_REPLY_ON_IT, value=value),
    ]
    text = (
        f":raising_hand: <@{asker}> asks you to release *{escape(lease.resource)}*"
        f" (yours since {when(lease.created)} until {when(lease.expires)})."
    )
    if lease.note:
        text += f"\n_{escape(lease.note)}_"
    return Message(
        f"You are asked to release {lease.resource}",
        _render([_section(text), ActionsBlock(elements=choices)]),
    )


def on_it(resource: str, asker: str) -> Message:
    text = (
        f":construction: I told <@{asker}> you're on it; release "
        f"*{escape(resource)}* when you're done."
    )
    return Message(f"Told them you're on {resource}", _render([_section(text)]))


def ask_answered(
    resource: str,
    holder: str,
    reply: str,
    until: datetime | None,
    namer: Namer,
) -> Message:
    """To the asker: what became of the ask."""
    who, name = namer(holder), f"*{escape(resource)}*"
    texts = {
        "released": f":unlock: {who} released {name} for you.",
        "keeping": f":hourglass: {who} keeps {name} 30 more minutes, until "
        f"{when(until)}.",
        "on-it": f":construction: {who} is on it and will release {name} soon.",
        "unanswered": f":mute: {who} has not answered your ask to release {name}.",
        "ended": f":unlock: {who}'s lease on {name} ended before they answered.",
    }
    shown: list[AnyBlock] = [_section(texts.get(reply, texts["unanswered"]))]
    if reply in ("released", "ended"):
        shown.append(
            ActionsBlock(
                elements=[
                    ButtonElement(
                        text=f"Acquire {resource}"[:75],
                        action_id=ACTION_ACQUIRE,
                        value=_value(resource=resource),
                        style="primary",
                    )
                ]
            )
        )
    return Message(f"About your ask to release {resource}", _render(shown))


def ask_escalated(resource: str, holder: str, asker: str, namer: Namer) -> Message:
    """To admins (`[bot] escalate`): an ask the holder left unanswered."""
    text = (
        f":rotating_light: <@{asker}> asked {namer(holder)} to release "
        f"*{escape(resource)}*, and they have not answered. "
        f"`/stormlock release {escape(resource)} --force` frees it."
    )
    return Message(f"An unanswered ask for {resource}", _render([_section(text)]))


def released(resource: str) -> Message:
    return Message(
        f"Released {resource}",
        _render([_section(f":unlock: You released *{escape(resource)}*.")]),
    )


def announce_released(
    lease: Lease, namer: Namer, actor: str, forced: bool = False
) -> Message:
    """The channel hears who acted: the holder, someone with the holder's
    lease id, or an admin who forced it."""
    resource = escape(lease.resource)
    if forced:
        text = (
            f":warning: {namer(actor)} force-released *{resource}*"
            f" from {namer(lease.principal)}"
        )
    elif same_principal(actor, lease.principal):
        text = f":unlock: {namer(actor)} released *{resource}*"
    else:
        text = (
            f":unlock: {namer(actor)} released *{resource}*"
            f" (held by {namer(lease.principal)}, with its lease id)"
        )
    return Message(f"{lease.resource} is free", _render([_section(text)]))


def force_released_notice(lease: Lease, namer: Namer, forced_by: str) -> Message:
    text = (
        f":warning: {namer(forced_by)} force-released your lease on"
        f" *{escape(lease.resource)}*. It is no longer yours; stop what needs it."
    )
    return Message(
        f"Your lease on {lease.resource} was force-released", _render([_section(text)])
    )


def renewed(lease: Lease, renew_choices: Sequence[timedelta]) -> Message:
    text = f":repeat: You hold *{escape(lease.resource)}* until {when(lease.expires)}."
    return Message(
        f"Renewed {lease.resource}",
        _render([_section(text), lease_buttons(lease, renew_choices)]),
    )


def current(
    resource: str,
    lease: Lease | None,
    namer: Namer,
    line: Sequence[str] = (),
    place: int | None = None,
) -> Message:
    """Who holds it; who waits in its line, and your place in it."""
    if lease is None and not line:
        return Message(
            f"{resource} is free",
            _render([_section(f":white_check_mark: *{escape(resource)}* is free.")]),
        )
    if lease is None:
        text = (
            f":white_check_mark: *{escape(resource)}* is free, kept for the "
            "first in its line."
        )
    else:
        text = _lease_line(lease, namer)
    if line:
        shown = ", ".join(
            f"{n}. {namer(principal)}" for n, principal in enumerate(line[:10], 1)
        )
        more = f" and {len(line) - 10} more" if len(line) > 10 else ""
        text += f"\n:hourglass: {len(line)} in line: {shown}{more}."
    if place is not None:
        text += f"\nYou're {_place(place, len(line))}."
    summary = f"{resource} is held" if lease else f"{resource} is kept for its line"
    return Message(summary, _render([_section(text)]))


def _place(place: int, of: int) -> str:
    from ..line import ordinal

    return f"{ordinal(place)} in line of {of}"


def is_held(resource: str, active: bool) -> Message:
    if active:
        said = "That lease is the active lease of {}."
        icon = ":white_check_mark:"
    else:
        said, icon = "That lease is not active on {}.", ":x:"
    text = f"{icon} " + said.format(f"*{escape(resource)}*")
    return Message(said.format(resource), _render([_section(text)]))


def _lease_sections(
    leases: Sequence[Lease],
    namer: Namer,
    max_blocks: int,
    limit: int | None = None,
    note_limit: int | None = None,
    pools: Mapping[str, str] | None = None,
    waiting: Mapping[str, int] | None = None,
    max_chars: int | None = MAX_MESSAGE_CHARS,
) -> list[AnyBlock]:
    """Leases as a few sections, each under Slack's text limit; the rest (past
    the block budget, `max_chars` of text in all or `limit` leases)
    summarised. With `pools` (member -> pool), a pool's members are listed
    together and say their pool."""
    pools = pools or {}
    if pools:
        leases = sorted(
            leases,
            key=lambda lease: (
                pools.get(lease.resource, lease.resource),
                lease.resource,
            ),
        )
    blocks: list[AnyBlock] = []
    lines: list[str] = []
    size = 0
    shown = 0
    # Room for the summary line at the end.
    left = None if max_chars is None else max_chars - 100
    for lease in leases[:limit]:
        line = _lease_line(lease, namer, note_limit)
        if lease.resource in pools:
            kind = "set" if lease.members else "pool"
            line = f"{line} · {kind} *{escape(pools[lease.resource])}*"
        if waiting and waiting.get(lease.resource):
            line = f"{line} · :hourglass: {waiting[lease.resource]} in line"
        line = line[: MAX_TEXT - 10]
        if left is not None:
            left -= len(line) + 1
            if left < 0:
                break
        if size + len(line) + 1 > MAX_TEXT:
            if len(blocks) + 2 >= max_blocks:
                break
            blocks.append(_section("\n".join(lines)))
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
        shown += 1
    if lines:
        blocks.append(_section("\n".join(lines)))
    if shown < len(leases):
        more = len(leases) - shown
        blocks.append(
            ContextBlock(
                elements=[
                    MarkdownTextObject(
                        text=f"…and {more} more. `stormlock list` shows them all."
                    )
                ]
            )
        )
    return blocks


def lease_list(
    leases: Sequence[Lease],
    namer: Namer,
    pools: Mapping[str, str] | None = None,
    waiting: Mapping[str, int] | None = None,
) -> Message:
    if not leases:
        return Message(
            "Nothing is held",
            _render([_section(":white_check_mark: Nothing is held right now.")]),
        )
    header = HeaderBlock(text=f"{len(leases)} held right now")
    blocks: list[AnyBlock] = [
        header,
        *_lease_sections(leases, namer, MAX_BLOCKS - 1, pools=pools, waiting=waiting),
    ]
    return Message(f"{len(leases)} leases held", _render(blocks))


def help_message(
    unknown: str | None = None, left_out: frozenset[str] = frozenset()
) -> Message:
    """Every command that works here (`left_out`: those that do not)."""
    lines = [f"I don't know `{escape(unknown)}`. " if unknown else ""]
    lines[0] += "*Stormlock* gives leases on named resources:"
    lines += [
        f"• `{escape(usage)}`" for name, usage in USAGE.items() if name not in left_out
    ]
    if not left_out & {"queue", "ask"}:
        lines.append(
            "Busy? `queue` joins its line (first in, first out, with the CLI's "
            "waiters): when you're up I DM you, and it is kept for you for a while "
            "(the claim window) to *Take it* or *Pass*. Or `ask` its holder to "
            "release it: they choose, and I tell you what they chose."
        )
    lines.append(
        "Aliases: lock, unlock, extend, status, who, wait, line. "
        "TTLs: 30m, 2h, 1h30m, 1 days."
    )
    return Message("Stormlock help", _render([_section("\n".join(lines))]))


def not_here(channels: Sequence[str]) -> Message:
    said = "Stormlock is not enabled in this channel; use {}."
    names = [f"<#{c}>" if CHANNEL_ID.match(c) else f"#{escape(c)}" for c in channels]
    plain = [f"#{c}" for c in channels]
    text = f":warning: {said.format(', '.join(names))}"
    return Message(said.format(", ".join(plain)), _render([_section(text)]))


def problem(message: str) -> Message:
    text = f":warning: {escape(message)}"
    return Message(message, _render([_section(text)]))


def announce_failed(error: str) -> Message:
    """For the person whose change Slack would not let the channel hear."""
    hint = " Invite the app to the channel." if error == "not_in_channel" else ""
    return problem(f"I could not announce this in the channel ({error}).{hint}")


_EVENT_ICONS = {
    "acquired": ":lock:",
    "renewed": ":repeat:",
    "released": ":unlock:",
    "forced": ":warning:",
    "expired": ":alarm_clock:",
    "joined": ":hourglass:",
    "left": ":wave:",
    "handed": ":bell:",
    "passed": ":fast_forward:",
    "took": ":arrow_right:",
}


def event_line(
    event: Event,
    namer: Namer,
    with_resource: bool = False,
    note_limit: int | None = None,
) -> str:
    """One event, for people: when (in the reader's time zone), who, why."""
    holder = namer(event.principal)
    what = {
        "acquired": f"{holder} took it until {when(event.until)}",
        "renewed": f"{holder} renewed it until {when(event.until)}",
        "released": f"{holder} released it",
        "forced": f"{namer(event.actor)} force-released it from {holder}",
        "expired": f"{holder}'s lease expired",
        "joined": f"{holder} joined its line",
        "left": f"{holder} left its line",
        "handed": f"it was kept for {holder}, first in line",
        "passed": f"{holder} passed their turn",
        "took": f"{holder} took their turn",
    }.get(event.event, f"{escape(event.event)} ({holder})")
    if event.event == "released" and not same_principal(event.actor, event.principal):
        what = f"{namer(event.actor)} released {holder}'s lease (with its id)"
    line = f"{_EVENT_ICONS.get(event.event, '•')} {when(event.time)}: "
    if with_resource:
        line += f"*{escape(event.resource)}*: "
    line += what
    note = one_line(event.note or "")
    if note_limit is not None and len(note) > note_limit:
        note = note[:note_limit].rstrip() + "…"
    if note and event.event in ("acquired", "renewed"):
        line += f" — _{escape(note)}_"
    return line


def _text_sections(
    lines: Sequence[str], max_chars: int = MAX_MESSAGE_CHARS
) -> list[AnyBlock]:
    """Lines as sections, each under Slack's text limit; past `max_chars` in
    all, the rest is counted instead."""
    blocks: list[AnyBlock] = []
    chunk: list[str] = []
    size = 0
    left = max_chars - 100  # room for the count
    for shown, line in enumerate(lines):
        line = line[: MAX_TEXT - 10]
        left -= len(line) + 1
        if left < 0:
            line = f"…and {len(lines) - shown} more."
        if chunk and size + len(line) + 1 > MAX_TEXT:
            blocks.append(_section("\n".join(chunk)))
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
        if left < 0:
            break
    if chunk:
        blocks.append(_section("\n".join(chunk)))
    return blocks


def history(resource: str, events: Sequence[Event], namer: Namer) -> Message:
    """The last events of a resource, newest last."""
    if not events:
        text = f"No history for *{escape(resource)}* yet."
        return Message(f"No history for {resource}", _render([_section(text)]))
    header = HeaderBlock(text=f"History of {resource}"[:150])
    if all(event.resource == resource for event in events):
        lines = [event_line(event, namer) for event in events]
    else:  # a pool's or a set's members: name them, a set's change once
        lines = [
            event_line(event._replace(resource=", ".join(names)), namer, True)
            for event, names in _changes(events)
        ]
    return Message(f"History of {resource}", _render([header, *_text_sections(lines)]))


def _changes(events: Sequence[Event]) -> list[tuple[Event, list[str]]]:
    """Events merged into changes: a set's members' events (alike, written
    within a second of each other) become one, naming every member."""
    changes: list[tuple[Event, list[str]]] = []
    for event in events:
        if changes:
            first, names = changes[-1]
            alike = (first.event, first.principal, first.actor, first.note) == (
                event.event,
                event.principal,
                event.actor,
                event.note,
            )
            if alike and event.time - first.time < timedelta(seconds=1):
                names.append(event.resource)
                continue
        changes.append((event, [event.resource]))
    return changes


def home(
    everyone: Sequence[Lease],
    mine: Sequence[Lease],
    namer: Namer,
    renew_choices: Callable[[Lease], Sequence[timedelta]],
    recent: Sequence[Event] = (),
    pools: Mapping[str, str] | None = None,
    lines: Mapping[str, Sequence[str]] | None = None,
    places: Sequence[tuple[str, int, int]] = (),
) -> dict[str, Any]:
    """The App Home tab: your leases with buttons, your places in lines, your
    recent ones, then everything held; within Slack's view size, by cutting
    long notes first."""
    waiting = {resource: len(line) for resource, line in (lines or {}).items()}
    for note_limit, held_limit in _HOME_FITS:
        view = _home(
            everyone,
            mine,
            namer,
            renew_choices,
            recent,
            note_limit,
            held_limit,
            pools,
            waiting,
            places,
        )
        if len(json.dumps(view).encode()) <= MAX_VIEW_BYTES:
            break
    return view


# Ever shorter notes, then fewer leases, until the Home fits.
_HOME_FITS = ((None, HOME_HELD_LIMIT), (200, HOME_HELD_LIMIT), (60, 25), (0, 10))


def _home(
    everyone: Sequence[Lease],
    mine: Sequence[Lease],
    namer: Namer,
    renew_choices: Callable[[Lease], Sequence[timedelta]],
    recent: Sequence[Event],
    note_limit: int | None,
    held_limit: int,
    pools: Mapping[str, str] | None = None,
    waiting: Mapping[str, int] | None = None,
    places: Sequence[tuple[str, int, int]] = (),
) -> dict[str, Any]:
    blocks: list[AnyBlock] = [HeaderBlock(text="Your leases")]
    if not mine:
        blocks.append(
            _section("You hold nothing. `/stormlock acquire <resource>` takes a lease.")
        )
    for lease in mine[:HOME_OWN_LIMIT]:
        blocks.append(_section(_lease_line(lease, namer, note_limit)))
        blocks.append(lease_buttons(lease, renew_choices(lease)))
    if len(mine) > HOME_OWN_LIMIT:
        more = len(mine) - HOME_OWN_LIMIT
        blocks.append(_section(f"…and {more} more of yours: `/stormlock list`."))
    if places:
        blocks.append(HeaderBlock(text="Your places in line"))
        blocks += _text_sections(
            [
                f"• *{escape(resource)}*: {_place(place, of)}"
                for resource, place, of in places[:HOME_OWN_LIMIT]
            ]
        )
    if recent:
        blocks.append(HeaderBlock(text="Your recent leases"))
        lines = [
            event_line(event, namer, with_resource=True, note_limit=note_limit)
            for event in recent
        ]
        blocks += _text_sections(lines)
    blocks += [DividerBlock(), HeaderBlock(text="Held right now")]
    if everyone:
        budget = MAX_VIEW_BLOCKS - len(blocks)
        blocks += _lease_sections(
            everyone, namer, budget, held_limit, note_limit, pools, waiting
        )
    else:
        blocks.append(_section("Nothing is held right now."))
    return {"type": "home", "blocks": [_defused(b) for b in _render(blocks)]}


def home_of(
    drawn: core.Home | core.Problem,
    namer: Namer,
    renew_choices: Callable[[Lease], Sequence[timedelta]],
) -> dict[str, Any]:
    """The App Home view of what the core drew (or of why it could not)."""
    if isinstance(drawn, core.Problem):
        return {"type": "home", "blocks": problem(drawn.text).blocks}
    return home(
        drawn.everyone,
        drawn.mine,
        namer,
        renew_choices,
        drawn.recent,
        drawn.pools,
        drawn.lines,
        drawn.places,
    )


def warning(lease: Lease, renew_choices: Sequence[timedelta]) -> Message:
    """A DM to the holder before expiry, with Renew and Release."""
    text = (
        f":hourglass_flowing_sand: Your lease on *{escape(lease.resource)}*"
        f" expires {when(lease.expires)}. Renew it if you still need it."
    )
    return Message(
        f"Your lease on {lease.resource} expires soon",
        _render([_section(text), lease_buttons(lease, renew_choices)]),
    )


def warning_in_channel(lease: Lease, namer: Namer) -> Message:
    """A warning for a holder nobody can DM (a service), told in the channel."""
    text = (
        f":hourglass_flowing_sand: The lease of {namer(lease.principal)} on "
        f"*{escape(lease.resource)}* expires {when(lease.expires)}."
    )
    return Message(
        f"The lease on {lease.resource} expires soon", _render([_section(text)])
    )


def expired_notice(resource: str, expires: datetime | None) -> Message:
    text = (
        f":alarm_clock: Your lease on *{escape(resource)}* expired"
        f" {when(expires)}. It is free for others now."
    )
    return Message(f"Your lease on {resource} expired", _render([_section(text)]))


def announce_expired(resource: str, principal: str, namer: Namer) -> Message:
    text = f":alarm_clock: *{escape(resource)}* lock held by {namer(principal)} expired"
    return Message(f"{resource} lock expired", _render([_section(text)]))


def free_now(resource: str) -> Message:
    button = ButtonElement(
        text=f"Acquire {resource}"[:75],
        action_id=ACTION_ACQUIRE,
        value=_value(resource=resource),
        style="primary",
    )
    text = f":bell: *{escape(resource)}* is free now. You asked to be told."
    return Message(
        f"{resource} is free",
        _render([_section(text), ActionsBlock(elements=[button])]),
    )


def waiting(resource: str, cancelled: bool = False) -> Message:
    if cancelled:
        said, icon = "You are off the wait list of {}.", ":no_bell:"
    else:
        said, icon = "I'll DM you when {} is free.", ":bell:"
    text = f"{icon} " + said.format(f"*{escape(resource)}*")
    return Message(said.format(resource), _render([_section(text)]))


def board(
    leases: Sequence[Lease],
    namer: Namer,
    pools: Mapping[str, str] | None = None,
    waiting: Mapping[str, int] | None = None,
) -> Message:
    """The live status board: every active lease, kept current."""
    header = HeaderBlock(text="Stormlock: held right now")
    if not leases:
        body: list[AnyBlock] = [_section("Nothing is held right now.")]
    else:
        body = _lease_sections(
            leases, namer, MAX_BLOCKS - 2, pools=pools, waiting=waiting
        )
    updated = ContextBlock(
        elements=[MarkdownTextObject(text=f"Updated {when(datetime.now(UTC))}")]
    )
    return Message(f"{len(leases)} leases held", _render([header, *body, updated]))


def _scope(token: Token) -> str:
    globs = (
        ", ".join(f"`{escape(glob)}`" for glob in token.resources) or "every resource"
    )
    mode = "read-only" if token.read_only else "read-write"
    expires = f"expires {when(token.expires)}" if token.expires else "never expires"
    return f"{globs}, {mode}, {expires}"


def token_created(token: Token, secret: str, namer: Namer) -> Message:
    """The one place a token's secret is ever shown: to its creator, once."""
    text = (
        f":key: Token *{escape(token.name)}* acts as {namer(token.principal)} "
        f"({_scope(token)}). Copy it now: it is shown only this once. Give it "
        "to a CI job as the secret `STORMLOCK_TOKEN`."
    )
    return Message(
        f"Your new token {token.name} (shown once)",
        _render([_section(text), _section(f"```{secret}```")]),
    )


def token_list(principal: str, tokens: Sequence[Token], namer: Namer) -> Message:
    if not tokens:
        text = (
            f"No tokens for {namer(principal)}. "
            "`/stormlock token create <name>` makes one."
        )
        return Message(f"No tokens for {principal}", _render([_section(text)]))
    lines = [
        f"• *{escape(token.name)}*: {_scope(token)}; created {when(token.created)}, "
        + (f"last used {when(token.last_used)}" if token.last_used else "never used")
        for token in tokens
    ]
    header = _section(f"Tokens of {namer(principal)}:")
    return Message(
        f"{len(tokens)} tokens of {principal}",
        _render([header, *_text_sections(lines)]),
    )


def token_revoked(name: str, principal: str, namer: Namer) -> Message:
    text = (
        f":wastebasket: Token *{escape(name)}* of {namer(principal)} is revoked: "
        "it works no more."
    )
    return Message(f"Token {name} revoked", _render([_section(text)]))


# -- outcomes of the core ----------------------------------------------------------


def answer(said: core.Answer, namer: Namer) -> Message:
    """The asker's answer."""
    match said:
        case core.Acquired(lease, offer):
            return acquired(lease, offer)
        case core.Renewed(lease, offer):
            return renewed(lease, offer)
        case core.Released(resource):
            return released(resource)
        case core.Held(resource=resource, holders=holders, every=every) if holders:
            return members_held(resource, holders, namer, every)
        case core.AlreadyYours(lease, offer):
            return already_yours(lease, offer)
        case core.MembersNow(name, members, pool):
            return members_now(name, members, pool, namer)
        case core.Held(resource, lease, can_wait, _, count, can_queue, can_ask):
            return held(lease, resource, namer, can_wait, count, can_queue, can_ask)
        case core.Asked(resource, holder, already):
            return asked(resource, holder, namer, already)
        case core.OnIt(resource, asker):
            return on_it(resource, asker)
        case core.Queued(resource, position, usual, already):
            return queued(resource, position, usual, already)
        case core.LeftLine(resource, was_in):
            return left_line(resource, was_in)
        case core.LineFree(resource):
            return line_free(resource)
        case core.Passed(resource):
            return passed(resource)
        case core.Current(resource, lease, line, place):
            return current(resource, lease, namer, line, place)
        case core.IsHeld(resource, active):
            return is_held(resource, active)
        case core.Listing(leases, pools, counts):
            return lease_list(leases, namer, pools, counts)
        case core.Help(unknown, left_out):
            return help_message(unknown, left_out)
        case core.Waiting(resource, cancelled):
            return waiting(resource, cancelled)
        case core.History(resource, events):
            return history(resource, events, namer)
        case core.Problem(text):
            return problem(text)
        case core.NotHere(channels):
            return not_here(channels)
        case core.TokenCreated(token, secret):
            return token_created(token, secret, namer)
        case core.TokenList(principal, tokens):
            return token_list(principal, tokens, namer)
        case core.TokenRevoked(name, principal):
            return token_revoked(name, principal, namer)


def notice(told: core.Told | core.Reminder, namer: Namer) -> Message:
    """What a channel or a person other than the asker is told."""
    match told:
        case core.TookLease(_channel, lease, pool):
            return announce_acquired(lease, namer, pool)
        case core.GaveUpLease(_channel, lease, actor, forced):
            return announce_released(lease, namer, actor, forced)
        case core.ForcedOff(_holder, lease, by):
            return force_released_notice(lease, namer, by)
        case core.AskHolder(_holder, asker, lease):
            return ask_holder(lease, asker)
        case core.AskAnswered(_asker, holder, resource, _fence, reply, until):
            return ask_answered(resource, holder, reply, until, namer)
        case core.ExpiresSoon(_holder, lease, renew):
            return warning(lease, renew)
        case core.ExpiresSoonHere(_channel, lease):
            return warning_in_channel(lease, namer)
        case core.Expired(_holder, resource, expires):
            return expired_notice(resource, expires)
        case core.ExpiredHere(_channel, resource, principal):
            return announce_expired(resource, principal, namer)
        case core.YourTurn(_user, resource, seq, window):
            return your_turn(resource, seq, window)
        case core.TurnUp(_channel, resource, principal, window):
            return announce_up(resource, principal, namer, window)
        case core.TurnEnded(_channel, resource, principal, how):
            return announce_turn_ended(resource, principal, how, namer)
        case core.FreeNow(_user, resource):
            return free_now(resource)
        case core.AskEscalated(_admin, resource, holder, asker):
            return ask_escalated(resource, holder, asker, namer)
    raise TypeError(f"not a notice: {told!r}")
