"""The chat-free core: a parsed request in, an outcome out.

The core knows leases, people and the bot's rules (who may release what,
wait lists, where a change is announced). It knows nothing of Slack or of a
terminal: an `Outcome` says what happened and who must be told, renderers
turn it into messages and a delivery (the outbox in Slack, print in the
shell) sends them. Commands and buttons take the same path.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, NamedTuple, Protocol

from ..contract import Backend, InLine, Lease, LockHeldException, SetHeld
from ..errors import (
    BackendUnavailable,
    NotAllowed,
    StormlockError,
    UnsupportedOperation,
)
from ..history import ACQUIRED, FORCED, RELEASED, Event
from ..line import Ticket
from ..pool import PoolHeld
from ..tokens import Token
from ..ttl import readable
from .metrics import CoolingDown
from .parsing import Command
from .service import SOURCE, LeaseService, Person, PersonUnknown
from .settings import USER_ID, BotSettings
from .state import BotState

log = logging.getLogger(__name__)

API_SOURCE = "api"  # stormlock.api.service.SOURCE, without importing Flask


class Via(StrEnum):
    """Where a request came from: it decides where the answer goes."""

    COMMAND = "command"
    BUTTON = "button"  # a button in a message: the answer replaces it
    HOME = "home"  # a button in the App Home: the Home is redrawn instead


@dataclass(frozen=True)
class Ask:
    """One parsed request."""

    user_id: str
    command: Command
    channel: str | None = None
    """The channel it was asked in; None from the App Home or a DM."""
    channel_name: str | None = None
    """That channel's name, as Slack sent it (renamable: never an id's match)."""
    via: Via = Via.COMMAND
    fence: int | None = None
    """A button's: act only on the lease it was shown for."""


class People(Protocol):
    def person(self, user_id: str) -> Person: ...

    def user_id_for(self, principal: str, strict: bool = False) -> str | None: ...


# -- answers: what the asker is told ---------------------------------------------


@dataclass(frozen=True)
class Acquired:
    lease: Lease
    offer: Sequence[timedelta]


@dataclass(frozen=True)
class Renewed:
    lease: Lease
    offer: Sequence[timedelta]


@dataclass(frozen=True)
class Released:
    resource: str


@dataclass(frozen=True)
class AlreadyYours:
    """An acquire of what the asker holds already: until when, and Renew."""

    lease: Lease
    offer: Sequence[timedelta]


@dataclass(frozen=True)
class MembersNow:
    """`current` of a pool or a group: each member's lease, or None if free."""

    name: str
    members: Sequence[tuple[str, Lease | None]]
    pool: bool
    """A pool (any one member is taken) rather than a group (all at once)."""


@dataclass(frozen=True)
class Held:
    resource: str
    lease: Lease | None
    can_wait: bool = True
    """Whether a wait list can be offered (not in the shell)."""
    holders: Sequence[Lease] = ()
    """For a pool: every member's lease (all are held); for a set: the
    members' leases that stopped it (only those are held)."""
    waiting: int = 0
    """How many wait in its line."""
    can_queue: bool = False
    """Whether it has a line to join."""
    can_ask: bool = False
    """Whether its holder can be asked, in Slack, to release it."""
    every: bool = True
    """`holders` are every member's (a pool), not some of them (a set)."""


@dataclass(frozen=True)
class Current:
    resource: str
    lease: Lease | None
    line: Sequence[str] = ()
    """Who waits in its line (principals), first first."""
    place: int | None = None
    """The asker's place in that line, if in it."""


@dataclass(frozen=True)
class IsHeld:
    resource: str
    active: bool


@dataclass(frozen=True)
class Listing:
    leases: Sequence[Lease]
    pools: Mapping[str, str] = field(default_factory=dict)
    """Member -> pool, to list a pool's members together."""
    waiting: Mapping[str, int] = field(default_factory=dict)
    """How many wait in each resource's line."""


@dataclass(frozen=True)
class History:
    resource: str
    events: Sequence[Event]


@dataclass(frozen=True)
class Help:
    unknown: str | None = None
    left_out: frozenset[str] = frozenset()
    """Commands that do not work here (the shell's: what needs Slack's DMs)."""


@dataclass(frozen=True)
class Problem:
    text: str


@dataclass(frozen=True)
class NotHere:
    """Asked outside the `channels` allowlist: where to ask instead."""

    channels: Sequence[str]


@dataclass(frozen=True)
class Waiting:
    resource: str
    cancelled: bool = False


@dataclass(frozen=True)
class Queued:
    """In a resource's line: your place, and how long it is usually held."""

    resource: str
    position: int
    usual: timedelta | None = None
    already: bool = False
    """You were in it already: you keep your place."""


@dataclass(frozen=True)
class LeftLine:
    resource: str
    was_in: bool = True


@dataclass(frozen=True)
class LineFree:
    """Nobody holds it and nobody waits: take it instead."""

    resource: str


@dataclass(frozen=True)
class Passed:
    resource: str


@dataclass(frozen=True)
class Asked:
    """The holder was asked to release (or had been, by you, already)."""

    resource: str
    holder: str
    already: bool = False


@dataclass(frozen=True)
class OnIt:
    """To a holder who answered "I'm on it"."""

    resource: str
    asker: str


@dataclass(frozen=True)
class TokenCreated:
    """A new API token: its secret goes to its creator alone, once."""

    token: Token
    secret: str

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"TokenCreated({self.token.name!r}, secret=...)"


@dataclass(frozen=True)
class TokenList:
    principal: str
    tokens: Sequence[Token]


@dataclass(frozen=True)
class TokenRevoked:
    name: str
    principal: str


Answer = (
    (Acquired | Renewed | Released | Held | Current | IsHeld | Listing | Help | Problem)
    | (AlreadyYours | MembersNow)
    | (Waiting | History | NotHere | TokenCreated | TokenList | TokenRevoked)
    | (Queued | LeftLine | LineFree | Passed | Asked | OnIt)
)


# -- notices: who else is told ---------------------------------------------------


# A notice's key names it across replicas and restarts (ledger.py): the
# same change gives the same key whether the outcome or history tells it.


def _first(lease: Lease) -> str:
    """Whose change a notice is keyed by: a set's first member (its fence is
    the set lease's, and only its history event carries the channel), so
    the live notice and one recovered from history share one key."""
    return lease.members[0] if lease.members else lease.resource


@dataclass(frozen=True)
class TookLease:
    """For a channel: someone took a lease."""

    channel: str
    lease: Lease
    pool: str | None = None
    """The pool it was taken from, if any ("took staging-3 from staging")."""

    @property
    def key(self) -> str:
        return f"told/{self.lease.fence}/{ACQUIRED}/{_first(self.lease)}"


@dataclass(frozen=True)
class GaveUpLease:
    """For a channel: a lease was released, by its holder or forced."""

    channel: str
    lease: Lease
    actor: str
    forced: bool

    @property
    def key(self) -> str:
        event = FORCED if self.forced else RELEASED
        return f"told/{self.lease.fence}/{event}/{_first(self.lease)}"


@dataclass(frozen=True)
class ForcedOff:
    """For the holder, in private: an admin released their lease."""

    holder: str
    lease: Lease
    by: str

    @property
    def key(self) -> str:
        return f"told/{self.lease.fence}/dm/{self.lease.resource}"


Notice = TookLease | GaveUpLease | ForcedOff


@dataclass(frozen=True)
class AskHolder:
    """For the holder, in private: someone asks them to release."""

    holder: str
    """The holder's Slack user id."""
    asker: str
    lease: Lease

    @property
    def key(self) -> str:
        return f"ask/{self.lease.fence}/{self.lease.resource}/{self.asker}"


class Reply(StrEnum):
    """What became of an ask, as its asker is told."""

    RELEASED = "released"
    KEEPING = "keeping"
    ON_IT = "on-it"
    UNANSWERED = "unanswered"
    ENDED = "ended"
    """The lease ended (expired, or released elsewhere) before an answer."""


@dataclass(frozen=True)
class AskAnswered:
    """For the asker, in private: what the holder chose (or did not)."""

    asker: str
    holder: str
    """The holder's principal."""
    resource: str
    fence: int
    reply: Reply
    until: datetime | None = None
    """Keeping: until when."""

    @property
    def key(self) -> str:
        return f"asked/{self.fence}/{self.resource}/{self.asker}"


Told = Notice | AskHolder | AskAnswered
"""Everything an outcome may have to tell someone other than the asker."""


# -- what the reminder jobs tell: values too, rendered and sent elsewhere -----


@dataclass(frozen=True)
class ExpiresSoon:
    """For the holder, in private: their lease ends soon (Renew, Release)."""

    holder: str
    """The holder's principal."""
    lease: Lease
    renew: tuple[timedelta, ...]
    """The TTLs its Renew buttons offer."""


@dataclass(frozen=True)
class ExpiresSoonHere:
    """For a channel: the lease of a holder nobody can DM ends soon."""

    channel: str
    lease: Lease


@dataclass(frozen=True)
class Expired:
    """For the holder, in private: their lease expired."""

    holder: str
    """The holder's principal."""
    resource: str
    expires: datetime | None


@dataclass(frozen=True)
class ExpiredHere:
    """For a channel: a lease announced there expired."""

    channel: str
    resource: str
    principal: str


@dataclass(frozen=True)
class YourTurn:
    """For the first in line, in private: it is free, take it or pass."""

    user: str
    resource: str
    seq: int
    window: timedelta


@dataclass(frozen=True)
class TurnUp:
    """For the line's channel: whose turn it is."""

    channel: str
    resource: str
    principal: str
    window: timedelta


@dataclass(frozen=True)
class TurnEnded:
    """For the line's channel: a turn that ended without a take."""

    channel: str
    resource: str
    principal: str
    how: str
    """passed, left or lapsed."""


@dataclass(frozen=True)
class FreeNow:
    """For someone on the wait list, in private: it is free."""

    user: str
    resource: str


@dataclass(frozen=True)
class AskEscalated:
    """For an admin (`[bot] escalate`), in private: an unanswered ask."""

    admin: str
    resource: str
    holder: str
    asker: str


Reminder = (
    ExpiresSoon
    | ExpiresSoonHere
    | Expired
    | ExpiredHere
    | YourTurn
    | TurnUp
    | TurnEnded
    | FreeNow
    | AskEscalated
)


class To(NamedTuple):
    """Whom a notice is for: a channel, a Slack user, or a principal (the
    delivery looks up their Slack user; nobody found: nobody is told)."""

    kind: Literal["channel", "user", "principal"]
    id: str


def recipient(told: Told | Reminder) -> To:
    """The one rule of who hears a notice, for every surface."""
    match told:
        case (
            TookLease(channel=channel)
            | GaveUpLease(channel=channel)
            | ExpiresSoonHere(channel=channel)
            | ExpiredHere(channel=channel)
            | TurnUp(channel=channel)
            | TurnEnded(channel=channel)
        ):
            return To("channel", channel)
        case ForcedOff(holder=who) | ExpiresSoon(holder=who) | Expired(holder=who):
            return To("principal", who)
        case AskHolder(holder=who) | AskAnswered(asker=who) | AskEscalated(admin=who):
            return To("user", who)
        case YourTurn(user=who) | FreeNow(user=who):
            return To("user", who)
    raise TypeError(f"not a notice: {told!r}")


# -- what to deliver: an outcome as messages to whom, for any surface -------


@dataclass(frozen=True)
class Announce:
    """Post `notice` in `channel` (paced and coalesced per channel in Slack)."""

    channel: str
    notice: TookLease | GaveUpLease


@dataclass(frozen=True)
class DirectMessage:
    """Tell one person `notice` in private."""

    to: str
    """A Slack user id, or a principal when `by_principal` (looked up)."""
    notice: Told
    by_principal: bool = False


@dataclass(frozen=True)
class TellWaiters:
    """`resource` may be free: tell its wait list."""

    resource: str


@dataclass(frozen=True)
class RedrawBoards:
    """Leases changed: redraw the channels' boards (batched)."""


@dataclass(frozen=True)
class RedrawHome:
    """Redraw `user_id`'s App Home (the ask came from it)."""

    user_id: str


Delivery = Announce | DirectMessage | TellWaiters | RedrawBoards | RedrawHome


def deliveries(outcome: Outcome, home_of: str | None = None) -> list[Delivery]:
    """What an outcome asks to be delivered beyond the asker's answer, in
    order; `home_of`: the user whose App Home the ask came from. Slack's
    pipeline and the shell both deliver these; neither decides them."""
    out: list[Delivery] = []
    for told in outcome.notices:
        to = recipient(told)
        if isinstance(told, TookLease | GaveUpLease):
            out.append(Announce(told.channel, told))
        else:
            out.append(DirectMessage(to.id, told, to.kind == "principal"))
    if outcome.freed is not None:
        out.append(TellWaiters(outcome.freed))
    if outcome.changed:
        out.append(RedrawBoards())
    if home_of is not None:
        out.append(RedrawHome(home_of))
    return out


def notice_record(notice: Notice) -> str:
    """A notice as the JSON the bot keeps until it is sent, where history
    cannot give it back (never the lease id)."""
    lease = notice.lease
    data: dict[str, object] = {
        "principal": lease.principal,
        "created": lease.created.isoformat(),
        "resource": lease.resource,
        "expires": lease.expires.isoformat() if lease.expires else None,
        "note": lease.note,
        "fence": lease.fence,
        "members": list(lease.members),
    }
    if isinstance(notice, TookLease):
        data.update(kind="took", channel=notice.channel, pool=notice.pool)
    elif isinstance(notice, GaveUpLease):
        data.update(
            kind="gave",
            channel=notice.channel,
            actor=notice.actor,
            forced=notice.forced,
        )
    else:
        data.update(kind="forced", holder=notice.holder, by=notice.by)
    return json.dumps(data)


def notice_of_record(text: str) -> Notice | None:
    """The notice `notice_record` wrote; None if the record is unreadable."""
    try:
        data = json.loads(text)
        expires = data["expires"]
        lease = Lease(
            str(data["principal"]),
            datetime.fromisoformat(data["created"]),
            "",  # never kept, never shown
            str(data["resource"]),
            datetime.fromisoformat(expires) if expires else None,
            data["note"],
            int(data["fence"]),
            tuple(str(m) for m in data["members"]),
        )
        kind = data["kind"]
        if kind == "took":
            return TookLease(str(data["channel"]), lease, data["pool"])
        if kind == "gave":
            return GaveUpLease(
                str(data["channel"]), lease, str(data["actor"]), bool(data["forced"])
            )
        if kind == "forced":
            return ForcedOff(str(data["holder"]), lease, str(data["by"]))
    except (ValueError, KeyError, TypeError):
        pass
    return None


def notices_of(event: Event, pools: Mapping[str, str] | None = None) -> list[Notice]:
    """The notices the bot owes for a change it recorded in history: the
    same as its outcome carried (`Core._took`, `Core._release`), so one
    the bot died before sending can be sent from history."""
    # The bot's own changes, and the API's (a CI job's lease is announced
    # like anyone's where its resource's changes are).
    if event.source not in (SOURCE, API_SOURCE) or event.derived:
        return []
    lease = Lease(
        event.principal,
        event.time,
        "",  # never known here, never shown
        event.resource,
        event.until,
        event.note,
        event.fence,
    )
    told: list[Notice] = []
    if event.event == ACQUIRED and event.channel:
        pool = (pools or {}).get(event.resource)  # member -> pool: "from staging"
        told.append(TookLease(event.channel, lease, pool))
    elif event.event in (RELEASED, FORCED):
        forced = event.event == FORCED
        # Through the API the actor is the token: its holder is who released.
        actor = event.principal if event.source == API_SOURCE else event.actor
        if event.channel:
            told.append(GaveUpLease(event.channel, lease, actor, forced))
        if forced:
            told.append(ForcedOff(event.principal, lease, event.actor))
    return told


@dataclass(frozen=True)
class Home:
    """What a person's App Home shows."""

    everyone: Sequence[Lease]
    mine: Sequence[Lease]
    recent: Sequence[Event]
    pools: Mapping[str, str] = field(default_factory=dict)
    lines: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Who waits in each line (principals), first first."""
    places: Sequence[tuple[str, int, int]] = ()
    """The person's places: (resource, place, how many in that line)."""


@dataclass
class Outcome:
    answer: Answer
    status: str = "ok"
    """For metrics: ok, held, rejected, unavailable, error."""
    notices: list[Told] = field(default_factory=list)
    freed: str | None = None
    """A resource that may be free now: its wait list is told."""
    changed: bool = False
    """Leases changed: boards are redrawn."""
    verify: bool = False
    """The change's outcome is unknown: look again (`Core.verify`) later."""


# A holder's buttons, as commands.
ASK_REPLIES = {
    "ask-release": Reply.RELEASED,
    "ask-keep": Reply.KEEPING,
    "ask-onit": Reply.ON_IT,
}

# `/stormlock history` shows this many of the resource's last events.
HISTORY_SHOWN = 20
# The App Home shows your last few leases, found among the last events.
HOME_RECENT = 5
HOME_SCAN = 500

# The commands that change a lease: a time-out leaves their outcome unknown.
CHANGES = frozenset({"acquire", "renew", "release"})
UNKNOWN = (
    "The lease store did not answer in time, so I cannot tell whether that "
    "went through. I'll look again once it answers and tell you here."
)
UNREACHABLE = (
    "The lease store is unreachable, so nothing changed. Try again in a moment."
)
NO_ASKS = (
    "Asking the holder lives in Slack, where I can DM them; here, look "
    "again with current."
)
# "Keep it 30 more minutes": the holder's lease then ends this long from now.
KEEP_MORE = timedelta(minutes=30)
# Commands that need Slack (its DMs, its channels): the shell has none.
SLACK_ONLY = frozenset({"notify", "queue", "ask", "board"})
NO_LINE = (
    "The line's turn is offered by DM, which lives in Slack; here, wait in "
    "line with the CLI: stormlock acquire --wait DURATION RESOURCE."
)
NO_WAIT_LISTS = (
    "Wait lists live in Slack, where I can DM you when it is free; "
    "here, look again with current."
)
OUR_FAULT = (
    "Something went wrong on our side; nothing was changed. "
    "Try again, or tell your Stormlock admins."
)


def _yours(ticket: Ticket, user_id: str, person: Person | None) -> bool:
    """Whether `ticket` is the asker's: joined from Slack as them, or with
    their principal (the CLI)."""
    return ticket.user == user_id or (
        person is not None and person.is_principal(ticket.principal)
    )


def _state_of(resource: str, lease: Lease | None, mine: bool) -> str:
    if lease is None:
        return f"{resource} is free"
    return f"you still hold {resource}" if mine else f"{resource} is held"


class Core:
    def __init__(
        self,
        service: LeaseService,
        settings: BotSettings,
        people: People,
        state: BotState | None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.people = people
        self.state = state

    def handle(self, ask: Ask) -> Outcome:
        """Every request ends in an outcome with an answer; never raises."""
        try:
            return self._handle(ask)
        except LockHeldException as held:
            yours = self._yours(ask, held)
            if yours is not None:
                return Outcome(AlreadyYours(yours, self.renew_offer(yours)), "held")
            waits = self.state is not None
            holders = held.holders if isinstance(held, PoolHeld | SetHeld) else ()
            waiting = held.waiting if isinstance(held, InLine) else 0
            lined = waits and self.service.has_line(held.resource)
            askable = (
                waits
                and held.lease is not None
                and not holders
                and self.people.user_id_for(held.lease.principal)
                not in (None, ask.user_id)
            )
            every = not isinstance(held, SetHeld)
            answer = Held(
                held.resource, held.lease, waits, holders, waiting, lined, askable
            )
            answer = replace(answer, every=every)
            return Outcome(answer, "held")
        except PersonUnknown as exc:
            return Outcome(Problem(f"{exc.message}; nothing changed."), "unavailable")
        except BackendUnavailable as exc:
            # Which host failed is for the operator's log, not for Slack.
            log.warning("%s: the store failed: %s", ask.command.name, exc)
            unsure = not exc.nothing_sent and not isinstance(exc, CoolingDown)
            if ask.command.name in CHANGES and unsure:
                # Sent, maybe applied, not confirmed: say so, and look again.
                return Outcome(Problem(UNKNOWN), "unavailable", verify=True)
            return Outcome(Problem(UNREACHABLE), "unavailable")
        except StormlockError as exc:
            return Outcome(Problem(exc.message), "rejected")
        except Exception:
            log.exception("%s failed", ask.command.name)
            return Outcome(Problem(OUR_FAULT), "error")

    def _yours(self, ask: Ask, held: LockHeldException) -> Lease | None:
        """The lease an acquire was refused for, if the asker holds it
        themselves (a plain resource; a set or pool says which members)."""
        lease = held.lease
        if ask.command.name != "acquire" or lease is None or isinstance(held, InLine):
            return None
        if isinstance(held, PoolHeld | SetHeld) and len(held.holders) != 1:
            return None
        try:
            person = self.people.person(ask.user_id)
        except PersonUnknown:
            return None
        return lease if person.is_principal(lease.principal) else None

    def home(self, user_id: str) -> Home | Problem:
        """The App Home of `user_id`, or the problem that stopped drawing it."""
        try:
            person = self.people.person(user_id)
            everyone = self.service.list_leases()
        except StormlockError as exc:
            return Problem(str(exc))
        mine = [lease for lease in everyone if person.is_principal(lease.principal)]
        try:
            recent = self.service.recent_of(person, HOME_SCAN, HOME_RECENT)
        except StormlockError as exc:  # the rest of the Home still helps
            log.warning("App Home history: %s", exc)
            recent = []
        try:
            lines = self.service.lines()
        except StormlockError as exc:
            log.warning("App Home lines: %s", exc)
            lines = {}
        places = [
            (resource, place, len(line))
            for resource, line in sorted(lines.items())
            for place, ticket in enumerate(line, 1)
            if _yours(ticket, user_id, person)
        ]
        waiting = {r: [t.principal for t in line] for r, line in lines.items()}
        pools = self.service.pools(everyone)
        return Home(everyone, mine, recent, pools, waiting, places)

    def verify(self, ask: Ask) -> Outcome | None:
        """What became of a change whose outcome was unknown, told as its
        answer would have been: None while the store still does not answer.
        A lease that did go through is announced as the change would have; a
        change not found applied is marked `verify` (look once more)."""
        command = ask.command
        resource = command.resource or ""
        try:
            person = self.people.person(ask.user_id)
            lease = self.service.lease_of(resource)
        except StormlockError:
            return None
        mine = lease is not None and person.is_principal(lease.principal)
        if command.name == "acquire" and lease is not None and mine:
            return self._took(ask, lease)
        if command.name == "renew" and lease is not None and mine:
            return Outcome(Renewed(lease, self.renew_offer(lease, command.ttl)))
        if command.name == "acquire" and lease is not None:
            return Outcome(Held(resource, lease, self.state is not None), "held")
        if command.name == "release" and not mine:
            return Outcome(Released(resource), freed=resource, changed=True)
        # Not applied, as far as the store says now (a late one may still come).
        return Outcome(
            Problem(f"It did not go through; {_state_of(resource, lease, mine)}."),
            verify=True,
        )

    def renew_offer(
        self, lease: Lease, asked: timedelta | None = None
    ) -> list[timedelta]:
        """The TTLs its Renew buttons offer: the one asked for first, then the
        usual choices. Unasked (the App Home, a warning), the first is the
        lease's own length, at most the configured TTL: a 30-minute lease is
        never renewed for a day by its first button."""
        original = asked
        if original is None:
            configured = self.service.config.settings(lease.resource).ttl
            own = lease.expires - lease.created if lease.expires else configured
            # A renewed lease's span creeps by seconds: offer what people read.
            own = readable(own)
            original = min(configured, own) if own > timedelta(0) else configured
        return self.settings.renew_choices(lease.resource, original)

    def refusal(self, ask: Ask) -> NotHere | Problem | None:
        """Why `ask` may not be served where it was asked, if so. The one
        place for the `channels` allowlist, commands and buttons alike."""
        command = ask.command
        # A button in a DM or the App Home acts on your own lease: no channel.
        private_button = ask.via is not Via.COMMAND and ask.channel is None
        settings = self.settings
        if not private_button and not settings.channel_allowed(
            ask.channel, ask.channel_name
        ):
            return NotHere(sorted(settings.channels))
        if command.name == "acquire" and ask.channel is None:
            resource = command.resource or ""
            if not self.settings.announce_channel(resource):
                return Problem(
                    f"Take {resource} in a channel, where the team sees it: from a "
                    "DM or the App Home this lease would be announced nowhere "
                    "(an admin can set announce_channel for it)."
                )
        return None

    def _handle(self, ask: Ask) -> Outcome:
        command = ask.command
        name = command.name
        if not USER_ID.match(ask.user_id):
            log.warning("a request without a valid user id (%r)", ask.user_id[:20])
            return Outcome(
                Problem("Slack did not say who you are, so nothing changed."),
                "rejected",
            )
        refused = self.refusal(ask)
        if refused is not None:
            return Outcome(refused, "rejected")
        if name == "help":
            left_out = SLACK_ONLY if self.state is None else frozenset()
            return Outcome(Help(command.unknown, left_out))
        if name == "list":
            leases = self.service.list_leases()
            counts = {r: len(line) for r, line in self.service.lines().items()}
            return Outcome(Listing(leases, self.service.pools(leases), counts))
        resource = command.resource or ""
        if name == "current":
            return self._current(ask, resource)
        if name == "is-held":
            active = self.service.is_held(resource, command.lease_id or "")
            return Outcome(IsHeld(resource, active))
        if name == "notify":
            return self._wait(ask.user_id, resource, command.cancel)
        if name == "history":
            events = self.service.history(resource, HISTORY_SHOWN)
            return Outcome(History(resource, events))
        person = self.people.person(ask.user_id)
        if name == "token":
            return self._token(person, command)
        if name == "acquire":
            return self._acquire(person, ask, resource)
        if name == "renew":
            lease = self.service.renew(
                person, resource, self._may_renew(person), command.ttl, ask.fence
            )
            offer = self.renew_offer(lease, command.ttl)
            return Outcome(Renewed(lease, offer), changed=True)
        if name == "release":
            return self._release(person, ask, resource)
        if name == "queue":
            return self._queue(person, ask, resource)
        if name == "take-turn":
            lease, channel = self.service.take_turn(
                person,
                resource,
                ask.fence,
                command.ttl,
                self._announce_in(resource, ask),
            )
            return self._took(ask, lease, channel)
        if name == "ask":
            return self._ask(person, ask, resource)
        if name in ASK_REPLIES:
            return self._reply(person, ask, resource, ASK_REPLIES[name])
        if name == "pass-turn":
            if not self.service.leave_line(person, resource, ask.fence):
                return Outcome(LeftLine(resource, was_in=False), "rejected")
            return Outcome(Passed(resource), freed=resource, changed=True)
        return Outcome(Help(name))

    def _current(self, ask: Ask, resource: str) -> Outcome:
        members = self.service.members_now(resource)
        if members is not None:
            pool = self.service.config.pool(resource) is not None
            return Outcome(MembersNow(resource, members, pool))
        lease = self.service.current(resource)
        try:
            line = self.service.line(resource)
        except UnsupportedOperation:  # a pool, a set, a store without lines
            tickets = []
        else:  # one read when nobody waits
            tickets = line.waiting() if line.may_have_waiters() else []
        person = None
        # A CLI waiter with the asker's principal is the asker too; one Slack
        # cannot name now is known by their Slack id alone.
        if tickets:
            with contextlib.suppress(PersonUnknown):
                person = self.people.person(ask.user_id)
        place = next(
            (n for n, t in enumerate(tickets, 1) if _yours(t, ask.user_id, person)),
            None,
        )
        principals = tuple(ticket.principal for ticket in tickets)
        return Outcome(Current(resource, lease, principals, place))

    def _queue(self, person: Person, ask: Ask, resource: str) -> Outcome:
        if self.state is None:  # no DM would ever offer the turn
            return Outcome(Problem(NO_LINE), "rejected")
        command = ask.command
        if command.cancel:
            left = self.service.leave_line(person, resource)
            # The next in line may be up now.
            return Outcome(
                LeftLine(resource, left),
                "ok" if left else "rejected",
                freed=resource,
                changed=left,  # boards show how many wait
            )
        line = self.service.line(resource)
        if not line.waiting() and self._free(resource):
            return Outcome(LineFree(resource), "rejected")
        channel = self._announce_in(resource, ask)
        place, _ticket, already = self.service.join_line(
            person, resource, command.note, channel, self.settings.queue_ttl
        )
        usual = self.service.usual_hold(resource)
        # Free, with you first: your turn is offered at once.
        return Outcome(
            Queued(resource, place, usual, already),
            freed=resource,
            changed=not already,
        )

    def _free(self, resource: str) -> bool:
        """Whether an acquire could take `resource` now: a pool with a free
        member, a set with every member free, a free resource."""
        members = self.service.members_now(resource)
        if members is None:
            return self.service.current(resource) is None
        free = [lease is None for _, lease in members]
        return any(free) if self.service.config.pool(resource) else all(free)

    # -- asking the holder ------------------------------------------------------

    def _ask(self, person: Person, ask: Ask, resource: str) -> Outcome:
        """DM the holder of `resource` that `person` asks them to release it
        (once per asker per lease); they choose, and the asker is told."""
        if self.state is None:
            return Outcome(Problem(NO_ASKS), "rejected")
        lease = self.service.current(resource)
        if lease is None or (ask.fence is not None and lease.fence != ask.fence):
            if lease is None:
                return Outcome(LineFree(resource), "rejected")
            # The lease the button was for has ended: ask anew about this one.
            return Outcome(Held(resource, lease, can_ask=True), "held")
        if person.is_principal(lease.principal):
            return Outcome(Problem(f"You hold {resource} yourself."), "rejected")
        holder = self.people.user_id_for(lease.principal)
        if holder is None:
            return Outcome(
                Problem(
                    f"{lease.principal} is not someone I can reach in Slack; ask "
                    "them another way, or an admin can release it with --force."
                ),
                "rejected",
            )
        timeout = self.settings.ask_timeout
        if not self.state.ask(lease, ask.user_id, holder, timeout):
            return Outcome(Asked(resource, lease.principal, already=True), "rejected")
        outcome = Outcome(Asked(resource, lease.principal))
        outcome.notices.append(AskHolder(holder, ask.user_id, lease))
        return outcome

    def _reply(self, person: Person, ask: Ask, resource: str, reply: Reply) -> Outcome:
        """The holder's answer to an ask: done, and told to the asker once."""
        asker, fence = ask.command.asker, ask.fence
        if self.state is None or asker is None or fence is None:
            return Outcome(Problem(NO_ASKS), "rejected")
        asked = self.state.asked(fence, asker, resource)
        lease = self.service.lease_of(resource)
        if asked is None or lease is None or lease.fence != fence:
            return Outcome(
                Problem(f"That lease on {resource} has ended; nothing to answer."),
                "rejected",
            )
        if not person.is_principal(lease.principal):
            raise NotAllowed(f"only the holder of {resource} can answer this")
        claim = self.state.answer(asked, reply.value)
        if claim is None:
            return Outcome(
                Problem(f"You answered this already; {asker} was told."), "rejected"
            )
        try:
            if reply is Reply.RELEASED:
                outcome = self._release(person, ask, resource)
            elif reply is Reply.KEEPING:
                lease = self.service.renew(
                    person, resource, self._may_renew(person), KEEP_MORE, fence
                )
                outcome = Outcome(Renewed(lease, self.renew_offer(lease)), changed=True)
            else:
                outcome = Outcome(OnIt(resource, asker))
        except Exception:
            self.state.unanswer(claim)  # not done: they may answer again
            raise
        until = lease.expires if reply is Reply.KEEPING else None
        outcome.notices.append(
            AskAnswered(asker, lease.principal, resource, fence, reply, until)
        )
        return outcome

    def announced_in(self, resource: str, fence: int) -> str | None:
        """Where a lease's later news (a warning nobody can take, its expiry)
        goes: the resource's own channel, else where it was announced (the
        origin record, else its history, should the bot have died between
        the change and the record)."""
        assert self.state is not None
        return (
            self.settings.announce_channel(resource)
            or self.state.origin(fence, resource)
            or self.service.channel_of(resource, fence)
        )

    def _announce_in(self, resource: str, ask: Ask) -> str | None:
        """The resource's own channel, else the one it was asked in."""
        return self.settings.announce_channel(resource) or ask.channel

    def _acquire(self, person: Person, ask: Ask, resource: str) -> Outcome:
        command = ask.command
        channel = self._announce_in(resource, ask)
        lease = self.service.acquire(
            person, resource, command.ttl, command.note, channel
        )
        return self._took(ask, lease)

    def _took(self, ask: Ask, lease: Lease, channel: str | None = None) -> Outcome:
        """A lease `ask` took: the answer, the announcement, the origin."""
        offer = self.renew_offer(lease, ask.command.ttl)
        outcome = Outcome(Acquired(lease, offer), changed=True)
        channel = channel or self._announce_in(lease.resource, ask)
        asked = ask.command.resource
        pool = asked if asked and asked != lease.resource else None
        if channel:
            outcome.notices.append(TookLease(channel, lease, pool))
        if ask.channel and self.state and not self.service.keeps_channel(lease):
            # The expiry notice's channel: history has it with the change,
            # unless this backend keeps no history.
            try:
                self.state.remember_origin(lease, ask.channel)
            except StormlockError as exc:  # the lease stands; so does its answer
                log.warning("origin of a lease not recorded: %s", exc)
        self._owe(outcome, lease)
        return outcome

    def _owe(self, outcome: Outcome, lease: Lease) -> None:
        self.owe(outcome.notices, lease)

    def owe(self, notices: Sequence[Told], lease: Lease) -> None:
        """Where history cannot give a change's notices back, keep them
        until they are sent: a bot that dies before does not lose them
        (the API's changes too)."""
        if self.state is None or self.service.keeps_channel(lease):
            return
        for notice in notices:
            if isinstance(notice, TookLease | GaveUpLease | ForcedOff):
                try:
                    self.state.owe(notice.key, notice_record(notice))
                except StormlockError as exc:  # the change stands; so does its answer
                    log.warning("an owed notice was not recorded: %s", exc)

    def _may_release(
        self, person: Person, lease_id: str | None, force: bool
    ) -> Callable[[Lease], None]:
        """Who may release a lease: its holder, whoever has its id, or an
        admin who says --force."""

        def allow(lease: Lease) -> None:
            if lease_id is not None or person.is_principal(lease.principal):
                return
            if not force:
                raise NotAllowed(
                    f"{lease.resource!r} is held by someone else; only the holder "
                    "can release it (or an admin, with --force)"
                )
            if not self.service.is_admin(person):
                raise NotAllowed("only admins can force-release; ask one of them")

        return allow

    @staticmethod
    def _may_renew(person: Person) -> Callable[[Lease], None]:
        """Only the holder renews (an admin forces a release instead)."""

        def allow(lease: Lease) -> None:
            if not person.is_principal(lease.principal):
                raise NotAllowed(
                    f"{lease.resource!r} is held by someone else; only they can renew"
                )

        return allow

    def _release(self, person: Person, ask: Ask, resource: str) -> Outcome:
        command = ask.command
        channel = self._announce_in(resource, ask)
        allow = self._may_release(person, command.lease_id, command.force)
        result = self.service.release(
            person, resource, allow, command.lease_id, ask.fence, channel, self._waits
        )
        member = result.lease.resource or resource  # a pool's: the member
        # Read with the release: nobody in line or on the wait list, nothing
        # to follow up (a waiter who joins later looks for itself).
        nobody = result.looked is not None and not any(result.looked)
        outcome = Outcome(
            Released(member), freed=None if nobody else member, changed=True
        )
        actor = person.principal
        if person.is_principal(result.lease.principal):
            actor = result.lease.principal  # the holder, however recorded
        if channel:
            outcome.notices.append(
                GaveUpLease(channel, result.lease, actor, result.forced)
            )
        if result.forced:
            outcome.notices.append(
                ForcedOff(result.lease.principal, result.lease, person.principal)
            )
        self._owe(outcome, result.lease)
        return outcome

    def _waits(self, resource: str, backend: Backend) -> list[str] | None:
        """What says whether anyone waits for `resource` (its line's mark,
        its wait list's marker), where they share the store it is released in."""
        if self.state is None:
            return None
        try:
            line = self.service.line(resource)
        except StormlockError:
            return None
        return self.state.waiter_keys(line) if line.backend is backend else None

    def _token(self, person: Person, command: Command) -> Outcome:
        """API tokens: your own, or (admins, `--as`) a service's."""
        admin = self.service.is_admin(person)
        principal = command.principal or person.principal
        if principal != person.principal and not admin:
            raise NotAllowed(
                "only admins can create or manage service tokens (--as); ask one, "
                "or leave --as out for a token of your own"
            )
        tokens = self.service.tokens()
        name = command.token or ""
        if command.action == "create":
            secret, token = tokens.create(
                name,
                principal,
                command.globs,
                command.read_only,
                command.expires,
                created_by=person.principal,
            )
            return Outcome(TokenCreated(token, secret))
        if command.action == "revoke":
            if not tokens.revoke(name, principal):
                return Outcome(
                    Problem(
                        f"There is no token named {name} for {principal}; nothing "
                        "revoked. /stormlock token list shows them."
                    ),
                    "rejected",
                )
            return Outcome(TokenRevoked(name, principal))
        return Outcome(TokenList(principal, tokens.list(principal)))

    def _wait(self, user_id: str, resource: str, cancel: bool) -> Outcome:
        if self.state is None:
            return Outcome(Problem(NO_WAIT_LISTS), "rejected")
        self.service.check_resource(resource)
        if cancel:
            self.state.cancel_wait(user_id, resource)
            return Outcome(Waiting(resource, cancelled=True))
        self.state.wait(user_id, resource)
        return Outcome(Waiting(resource), freed=resource)  # it may be free already
