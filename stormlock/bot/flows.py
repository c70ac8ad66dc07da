"""What the bot does for each Slack request, between the thin listeners and
the chat-independent service: parse, identify, call the service, render,
deliver (ephemeral reply, channel announcement, DM, App Home)."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from ..backend import Lease, LockHeldException
from ..errors import BackendUnavailable, StormlockError
from . import blocks
from .blocks import Message
from .identity import Directory
from .metrics import SLACK_ERRORS, count_request
from .parsing import parse
from .service import LeaseService, Person
from .settings import BotSettings

if TYPE_CHECKING:
    from .reminders import Reminders

log = logging.getLogger(__name__)
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")

Respond = Callable[..., Any]


class Bot:
    def __init__(
        self,
        service: LeaseService,
        settings: BotSettings,
        client: WebClient,
        directory: Directory | None = None,
        work: Executor | None = None,
    ) -> None:
        self.service = service
        # Work after the ack runs here, not in the request's thread, so an ack
        # never waits behind other requests' work.
        self.work = work
        self.settings = settings
        self.client = client
        self.directory = directory or Directory(client)
        # Set by build_app: wait lists, boards, origin channels.
        self.reminders: Reminders | None = None
        self._home_lock = threading.Lock()
        self._home_drawing: set[str] = set()
        self._home_stale: set[str] = set()

    def later(self, task: Callable[..., None], *args: Any) -> None:
        """Run `task(*args)` after the ack (inline when there is no executor)."""
        if self.work is None:
            task(*args)
        else:
            self.work.submit(task, *args)

    # -- delivery -------------------------------------------------------------

    def post(self, channel: str, message: Message) -> str | None:
        """Post to a channel; returns Slack's error code, if any."""
        try:
            self.client.chat_postMessage(channel=channel, **message.kwargs())
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            SLACK_ERRORS.labels("chat.postMessage", error).inc()
            log.warning("chat.postMessage to %s failed: %s", channel, error)
            return error
        return None

    def dm(self, user_id: str, message: Message) -> str | None:
        try:
            opened = self.client.conversations_open(users=user_id)
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            SLACK_ERRORS.labels("conversations.open", error).inc()
            log.warning("conversations.open for %s failed: %s", user_id, error)
            return error
        return self.post(opened["channel"]["id"], message)

    def announce(
        self,
        resource: str,
        channel: str | None,
        message: Message,
        respond: Respond | None,
    ) -> None:
        target = self.settings.announce_channel(resource) or channel
        if not target:
            return
        error = self.post(target, message)
        if error and respond is not None:
            hint = (
                " Invite the app to the channel." if error == "not_in_channel" else ""
            )
            respond(
                **blocks.problem(
                    f"I could not announce this in the channel ({error}).{hint}"
                ).kwargs()
            )

    def publish_home(self, user_id: str) -> None:
        """Redraw a user's App Home. Bursts coalesce: while one redraw runs,
        later requests for the same user only mark it stale, and it is drawn
        once more at the end, from the newest state."""
        with self._home_lock:
            if user_id in self._home_drawing:
                self._home_stale.add(user_id)
                return
            self._home_drawing.add(user_id)
        try:
            while True:
                self._draw_home(user_id)
                with self._home_lock:
                    if user_id not in self._home_stale:
                        return
                    self._home_stale.discard(user_id)
        finally:
            with self._home_lock:
                self._home_drawing.discard(user_id)

    def _draw_home(self, user_id: str) -> None:
        try:
            person = self.directory.person(user_id)
            everyone = self.service.list_leases()
        except StormlockError as exc:
            view = {"type": "home", "blocks": blocks.problem(str(exc)).blocks}
        else:
            mine = [lease for lease in everyone if person.is_principal(lease.principal)]
            view = blocks.home(everyone, mine, self.directory.display, self.renew_offer)
        try:
            self.client.views_publish(user_id=user_id, view=view)
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            SLACK_ERRORS.labels("views.publish", error).inc()
            log.warning("views.publish failed: %s", error)

    # -- slash command ----------------------------------------------------------

    def command(self, body: dict[str, Any], respond: Respond) -> None:
        """Handle `/stormlock ...`; every outcome ends in a reply."""
        user_id = str(body.get("user_id", ""))
        channel = body.get("channel_id")
        allowed = self.settings.channels
        if (
            allowed
            and channel not in allowed
            and body.get("channel_name") not in allowed
        ):
            names = ", ".join(
                f"<#{c}>" if _CHANNEL_ID.match(c) else f"#{c}" for c in sorted(allowed)
            )
            respond(
                **blocks.problem(
                    f"Stormlock is not enabled in this channel; use {names}."
                ).kwargs()
            )
            return
        words = str(body.get("text", "")).split()
        done = count_request(words[0].lower()[:20] if words else "help")
        try:
            command = parse(str(body.get("text", "")))
            done = count_request(command.name)
            self._run(command, user_id, channel, respond)
            done("ok")
        except LockHeldException as held:
            done("held")
            respond(
                **blocks.held(
                    held.lease, held.resource, self.directory.display
                ).kwargs()
            )
        except BackendUnavailable as exc:
            done("unavailable")
            respond(
                **blocks.problem(
                    "The lease store is unreachable, so nothing changed. "
                    f"Try again in a moment. ({exc})"
                ).kwargs()
            )
        except StormlockError as exc:
            done("rejected")
            respond(**blocks.problem(exc.message).kwargs())
        except Exception:
            done("error")
            log.exception("command failed")
            respond(
                **blocks.problem(
                    "Something went wrong on our side; nothing was changed. "
                    "Try again, or tell your Stormlock admins."
                ).kwargs()
            )

    def _run(
        self, command: Any, user_id: str, channel: str | None, respond: Respond
    ) -> None:
        name = command.name
        if name == "help":
            respond(**blocks.help_message(command.unknown).kwargs())
            return
        if name == "list":
            respond(
                **blocks.lease_list(
                    self.service.list_leases(), self.directory.display
                ).kwargs()
            )
            return
        if name == "board":
            target = channel or user_id
            error = self.reminders.post_board(target) if self.reminders else "off"
            if error:
                message = f"I could not post the board here ({error})."
                respond(**blocks.problem(message).kwargs())
            return
        resource = command.resource
        if name == "current":
            lease = self.service.current(resource)
            respond(**blocks.current(resource, lease, self.directory.display).kwargs())
            return
        if name == "is-held":
            respond(
                **blocks.is_held(
                    resource, self.service.is_held(resource, command.lease_id)
                ).kwargs()
            )
            return
        if name == "notify":
            self._wait(user_id, resource, command.cancel, respond)
            return
        person = self.directory.person(user_id)
        if name == "acquire":
            lease = self.service.acquire(person, resource, command.ttl, command.note)
            respond(
                **blocks.acquired(lease, self.renew_offer(lease, command.ttl)).kwargs()
            )
            self.announce(
                resource,
                channel,
                blocks.announce_acquired(lease, self.directory.display),
                respond,
            )
            self._acquired(lease, channel)
        elif name == "release":
            self._release(
                person, resource, channel, respond, command.lease_id, command.force
            )
            return
        elif name == "renew":
            lease = self.service.renew(person, resource, command.ttl)
            respond(
                **blocks.renewed(lease, self.renew_offer(lease, command.ttl)).kwargs()
            )
            self._changed()
        self.publish_home(user_id)

    def _wait(
        self, user_id: str, resource: str, cancel: bool, respond: Respond
    ) -> None:
        if self.reminders is None:
            respond(**blocks.problem("Wait lists are off on this bot.").kwargs())
            return
        if cancel:
            self.reminders.cancel_wait(user_id, resource)
            respond(**blocks.waiting(resource, cancelled=True).kwargs())
            return
        self.reminders.wait(user_id, resource)
        respond(**blocks.waiting(resource).kwargs())
        self.reminders.notify_waiters(resource)  # it may be free already

    def _acquired(self, lease: Lease, channel: str | None) -> None:
        if self.reminders is not None and channel and lease.expires is not None:
            ttl = lease.expires - lease.created + timedelta(days=1)
            key = f"origin/{lease.fence}/{lease.resource}"
            self.reminders.records.claim(key, ttl, channel)
        self._changed()

    def _changed(self, freed: str | None = None) -> None:
        """After a change: redraw boards; tell the waiters of a freed resource."""
        if self.reminders is None:
            return
        try:
            if freed is not None:
                self.reminders.notify_waiters(freed)
            self.reminders.refresh_boards()
        except StormlockError as exc:
            log.warning("after-change update failed: %s", exc)

    def renew_offer(
        self, lease: Lease, asked: timedelta | None = None
    ) -> list[timedelta]:
        """The TTLs its Renew buttons offer: the one asked for (or configured)
        first, then the usual choices."""
        original = asked or self.service.config.settings(lease.resource).ttl
        return self.settings.renew_choices(lease.resource, original)

    def _release(
        self,
        person: Person,
        resource: str,
        channel: str | None,
        respond: Respond,
        lease_id: str | None = None,
        force: bool = False,
        replace: bool = False,
        fence: int | None = None,
    ) -> None:
        result = self.service.release(person, resource, lease_id, force, fence)
        respond(replace_original=replace, **blocks.released(resource).kwargs())
        actor = person.principal
        if person.is_principal(result.lease.principal):
            actor = result.lease.principal  # the holder, however recorded
        self.announce(
            resource,
            channel,
            blocks.announce_released(
                result.lease, self.directory.display, actor, result.forced
            ),
            respond,
        )
        if result.forced:
            holder = self.directory.user_id_for(result.lease.principal)
            if holder:
                self.dm(
                    holder,
                    blocks.force_released_notice(
                        result.lease, self.directory.display, person.principal
                    ),
                )
        self._changed(freed=resource)
        self.publish_home(person.user_id)

    # -- buttons --------------------------------------------------------------

    def button(
        self, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        user_id = str(body.get("user", {}).get("id", ""))
        container = body.get("container", {})
        from_home = container.get("type") == "view"
        channel = container.get("channel_id") or body.get("channel", {}).get("id")
        try:
            value = json.loads(action.get("value") or "{}")
            resource = str(value["resource"])
            fence = int(value["fence"]) if "fence" in value else None
        except (ValueError, KeyError, TypeError):
            log.warning("button with an unreadable value")
            return
        reply: Respond = respond if not from_home else (lambda **_: None)
        action_id = str(action.get("action_id", ""))
        try:
            person = self.directory.person(user_id)
            if action_id.startswith(blocks.ACTION_RENEW):
                ttl = timedelta(seconds=float(value["ttl"]))
                lease = self.service.renew(person, resource, ttl, fence)
                reply(
                    replace_original=True,
                    **blocks.renewed(lease, self.renew_offer(lease, ttl)).kwargs(),
                )
                self._changed()
                self.publish_home(user_id)
            elif action_id == blocks.ACTION_RELEASE:
                self._release(
                    person,
                    resource,
                    None if from_home else channel,
                    reply,
                    replace=True,
                    fence=fence,
                )
            elif action_id == blocks.ACTION_NOTIFY:
                self._wait(user_id, resource, False, reply)
            elif action_id == blocks.ACTION_ACQUIRE:
                lease = self.service.acquire(person, resource)
                offer = self.renew_offer(lease, None)
                reply(replace_original=True, **blocks.acquired(lease, offer).kwargs())
                target = self.settings.announce_channel(resource)
                if target:
                    announcement = blocks.announce_acquired(
                        lease, self.directory.display
                    )
                    self.post(target, announcement)
                self._changed()
                self.publish_home(user_id)
        except LockHeldException as held:
            reply(
                **blocks.held(
                    held.lease, held.resource, self.directory.display
                ).kwargs()
            )
        except StormlockError as exc:
            if from_home:
                self.publish_home(user_id)
            reply(**blocks.problem(exc.message).kwargs())
        except Exception:
            log.exception("button failed")
            reply(
                **blocks.problem(
                    "Something went wrong on our side; nothing was changed."
                ).kwargs()
            )
