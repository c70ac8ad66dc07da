"""API tokens: who a request to the HTTP API acts as, and what it may touch.

A token is a random secret (`stl_` and 43 URL-safe characters, 256 bits).
The store keeps only its SHA-256, as records in the lease backend itself
(under `.stormlock/api/`, beside the bot's records): `tokenhash/<sha256>`
says who it is and its scope, `token/<principal>/<name>` finds it by name
for `list` and `revoke`. Both are leases that end when the token expires, so an expired
token is gone without a sweep. A secret is never stored, logged or shown
again after `create` returns it.

Scope: resource globs (`prod-*,staging-*`; default every resource) and
read-only or read-write. A *delegate* token (admins only) may name the
principal of each request: it is for a bridge that authenticates people
itself, as the Slack bot does; history records the token as the actor.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Iterable
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, NamedTuple
from urllib.parse import quote

from .contract import MAX_NOTE_LENGTH, Backend
from .errors import (
    InvalidInput,
    NotAllowed,
    StormlockError,
    UsageError,
)
from .names import validate_principal
from .records import Records
from .times import iso, utcnow

PREFIX = "stl_"
#: Every token's form: the bot's and the API's log redaction uses it.
TOKEN_FORM = r"stl_[A-Za-z0-9_-]{43}"  # noqa: S105 - a pattern
_TOKEN = re.compile(TOKEN_FORM)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# A token without --expires lasts this long in the store (and shows "never").
_FOREVER = timedelta(days=3650)
# A token record outlives a shorter --expires (no store keeps less than 2 s).
_AT_LEAST = timedelta(seconds=2)
MAX_EXPIRES = timedelta(days=3650)
MAX_GLOBS = 20
_OWNER = "stormlock-tokens"
#: Under `.stormlock/`: the API's own records (tokens, request ids). No
#: token, not even a delegate's, can read or change them through the API.
API_RECORDS = "api/"
# "Last used" is written at most this often per token and process.
_TOUCH_EVERY = 60.0


class Token(NamedTuple):
    """What a token is, without its secret."""

    name: str
    principal: str
    """Whom it acts as (a person, or a service such as ci-deploy)."""
    resources: tuple[str, ...]
    """Globs of the resources it may touch; empty: every resource."""
    read_only: bool
    created: datetime
    expires: datetime | None
    """None: never (until revoked)."""
    delegate: bool = False
    """It may name the principal of each request (a bridge, such as a bot)."""
    created_by: str = ""
    last_used: datetime | None = None

    def scope(self) -> str:
        globs = ",".join(self.resources) if self.resources else "*"
        mode = "read-only" if self.read_only else "read-write"
        return f"{globs} {mode}" + (" delegate" if self.delegate else "")

    def covers(self, resource: str) -> bool:
        """Whether a glob of the scope matches `resource`, both in NFC (one
        name however it was typed: "café" composed or not)."""
        name = unicodedata.normalize("NFC", resource)
        return not self.resources or any(
            fnmatchcase(name, unicodedata.normalize("NFC", glob))
            for glob in self.resources
        )

    def refusal(self, resource: str | None, write: bool) -> str | None:
        """Why this token may not do that; None if it may."""
        if write and self.read_only:
            return f"token {self.name!r} is read-only; use a read-write token"
        if resource is not None and not self.covers(resource):
            return (
                f"token {self.name!r} may not touch {resource!r} (its scope is "
                f"{','.join(self.resources)}); use a token whose scope covers it"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "principal": self.principal,
            "resources": list(self.resources),
            "read_only": self.read_only,
            "delegate": self.delegate,
            "created": iso(self.created),
            "expires": iso(self.expires) if self.expires else None,
            "created_by": self.created_by,
            "last_used": iso(self.last_used) if self.last_used else None,
        }


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def looks_like_token(secret: str) -> bool:
    return isinstance(secret, str) and _TOKEN.fullmatch(secret) is not None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"token name {name[:40]!r} is not valid; use {NAME_RULE}")
    return name


def parse_globs(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """`prod-*,staging-*` as globs; each one line of printable text."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    globs = tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))
    if len(globs) > MAX_GLOBS:
        raise InvalidInput(
            f"a token takes at most {MAX_GLOBS} resource globs; widen one glob instead"
        )
    for glob in globs:
        if len(glob) > 200 or any(ch.isspace() or not ch.isprintable() for ch in glob):
            raise InvalidInput(
                f"resource glob {glob[:40]!r} must be one word of printable text "
                "of at most 200 characters, such as prod-*"
            )
    return globs


def _key(principal: str, name: str) -> str:
    # Quoted, so that one principal's prefix never lists another's tokens.
    return f"{API_RECORDS}token/{quote(principal, safe='@.-_')}/{name}"


def _hash_key(hashed: str) -> str:
    return f"{API_RECORDS}tokenhash/{hashed}"


def _used_key(hashed: str) -> str:
    return f"{API_RECORDS}tokenused/{hashed}"


def _stored(token: Token, hashed: str) -> str:
    data = token.as_dict()
    del data["last_used"]
    data["hash"] = hashed
    text = json.dumps(data, separators=(",", ":"))
    if len(text) > MAX_NOTE_LENGTH:
        raise InvalidInput(
            "the token's scope is too long to store; use fewer or shorter globs"
        )
    return text


def _loaded(text: str | None) -> tuple[Token, str] | None:
    """A stored token and its hash; None for a record that is not one."""
    try:
        data = json.loads(text or "")
        expires = data["expires"]
        token = Token(
            name=data["name"],
            principal=data["principal"],
            resources=tuple(data["resources"]),
            read_only=bool(data["read_only"]),
            created=datetime.fromisoformat(data["created"]),
            expires=datetime.fromisoformat(expires) if expires else None,
            delegate=bool(data.get("delegate", False)),
            created_by=str(data.get("created_by", "")),
        )
        return token, str(data["hash"])
    except (ValueError, KeyError, TypeError):
        return None


class Tokens:
    """The tokens kept in one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.records = Records(backend, _OWNER)
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def create(
        self,
        name: str,
        principal: str,
        resources: Iterable[str] | str | None = None,
        read_only: bool = False,
        expires: timedelta | None = None,
        delegate: bool = False,
        created_by: str | None = None,
    ) -> tuple[str, Token]:
        """A new token: its secret (shown once) and what it is."""
        name = check_name(name)
        principal = validate_principal(principal.strip())
        if not principal or len(principal) > 120:
            raise InvalidInput(
                "a token's principal must be 1 to 120 characters, such as ci-deploy"
            )
        if expires is not None and not (timedelta(0) < expires <= MAX_EXPIRES):
            raise InvalidInput("--expires must be more than 0 and at most 10 years")
        now = utcnow()
        token = Token(
            name=name,
            principal=principal,
            resources=parse_globs(resources),
            read_only=read_only,
            created=now,
            expires=now + expires if expires else None,
            delegate=delegate,
            created_by=created_by or principal,
        )
        secret = PREFIX + secrets.token_urlsafe(32)
        hashed = digest(secret)
        value = _stored(token, hashed)
        # Kept at least the store's floor; `verify` checks `expires` itself.
        ttl = max(expires, _AT_LEAST) if expires else _FOREVER
        named = self.records.claim(_key(principal, name), ttl, value)
        if named is None:
            raise UsageError(
                f"{principal} already has a token named {name!r}; pick another "
                "name or revoke that one first"
            )
        if self.records.claim(_hash_key(hashed), ttl, value) is None:
            self.records.drop(named)
            raise StormlockError("a token collided with another; try again")
        return secret, token

    def verify(self, secret: str) -> Token | None:
        """The token whose secret this is, if it is valid now."""
        if not looks_like_token(secret):
            return None
        hashed = digest(secret)
        record = self.records.get(_hash_key(hashed))
        loaded = _loaded(record.note if record else None)
        if loaded is None:
            return None
        token, stored = loaded
        # The lookup is by hash; compare in constant time all the same.
        if not hmac.compare_digest(stored, hashed):
            return None
        if token.expires is not None and token.expires <= utcnow():
            return None
        self._touch(hashed)
        return token

    def _touch(self, hashed: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(hashed, -_TOUCH_EVERY) < _TOUCH_EVERY:
                return
            self._touched[hashed] = now
            if len(self._touched) > 10_000:
                self._touched.clear()
        with contextlib.suppress(StormlockError):  # "last used" is a courtesy
            self.records.put(_used_key(hashed), iso(utcnow()), _FOREVER)

    def list(self, principal: str | None = None) -> list[Token]:
        """Tokens of `principal` (of everyone if None), by principal and name."""
        prefix = (
            _key(principal, "") if principal is not None else f"{API_RECORDS}token/"
        )
        found: list[Token] = []
        used = {
            key.rsplit("/", 1)[-1]: lease.note
            for key, lease in self.records.list(_used_key(""))
        }
        for _, lease in self.records.list(prefix):
            loaded = _loaded(lease.note)
            if loaded is None:
                continue
            token, hashed = loaded
            last = used.get(hashed)
            with contextlib.suppress(ValueError, TypeError):
                token = token._replace(last_used=datetime.fromisoformat(last or ""))
            if token.expires is None or token.expires > utcnow():
                found.append(token)
        return sorted(found, key=lambda token: (token.principal, token.name))

    def revoke(self, name: str, principal: str) -> bool:
        """Revoke `principal`'s token `name`; whether there was one."""
        name = check_name(name)
        named = self.records.get(_key(principal, name))
        loaded = _loaded(named.note if named else None)
        if named is None or loaded is None:
            return False
        hashed = loaded[1]
        for key in (_hash_key(hashed), _used_key(hashed)):
            record = self.records.get(key)
            if record is not None:
                self.records.drop(record)
        self.records.drop(named)
        return True


def may_create(creator: str, principal: str, admin: bool, delegate: bool) -> None:
    """Only admins make tokens for someone else or delegate tokens."""
    if (principal != creator or delegate) and not admin:
        raise NotAllowed(
            "only admins can create service or delegate tokens; "
            "ask one, or create a personal token"
        )
