"""The INI configuration file: where it is, and what its sections mean.

[default] holds defaults, a section named after a resource overrides them,
[backend.NAME] configures a backend (stormlock.backends builds it from the
section, by its constructor's signature), [bot] configures the Slack bot and
[api] the HTTP API.
"""

from __future__ import annotations

import functools
import getpass
import os
import unicodedata
from configparser import ConfigParser
from configparser import Error as ConfigParserError
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError, InvalidTTL
from .names import control_characters
from .paths import search_paths
from .ttl import parse_duration

DEFAULT_BACKEND = "sqlite"
DEFAULT_TTL = timedelta(days=1)
DEFAULT_HISTORY = timedelta(days=90)  # stormlock.history.DEFAULT_RETENTION
DEFAULT_SECTION = "default"
BOT_SECTION = "bot"
API_SECTION = "api"
BACKEND_PREFIX = "backend."
POOL_PREFIX = "pool."
GROUP_PREFIX = "group."
# A section prefix a later version may give a meaning: never a resource.
_RESERVED_PREFIXES = (BACKEND_PREFIX, POOL_PREFIX, GROUP_PREFIX)
_NOT_RESOURCES = (DEFAULT_SECTION, BOT_SECTION, API_SECTION)
# Resources whose settings a Config keeps read (then it starts afresh).
_SETTINGS_KEPT = 4096


@functools.cache  # asked for on every lock made; the user and host stay put
def default_principal() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = f"uid{os.getuid()}"
    return f"{user}@{os.uname().nodename}"  # = socket.gethostname(), cheaper


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use: explicit, $STORMLOCK_CONFIG, or the search path.

    An explicit or environment path must exist; finding nothing on the search
    path is fine and means "built-in defaults".
    """
    chosen = explicit or os.environ.get("STORMLOCK_CONFIG")
    if chosen:
        path = Path(chosen).expanduser()
        if path.is_dir():
            raise ConfigError(
                f"config file {str(path)!r} is a directory; "
                "give the path of the file itself with -c/--config or STORMLOCK_CONFIG"
            )
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} does not exist; "
                "fix the path given with -c/--config or STORMLOCK_CONFIG"
            )
        return path
    for path in search_paths():
        try:
            if path.is_file():
                return path
        except PermissionError:
            # Skipping it could pick another store than the file names.
            raise ConfigError(
                f"cannot look for a config file at {str(path)!r}: permission "
                "denied; fix the permissions or name the file with STORMLOCK_CONFIG"
            ) from None
    return None


class Pool(NamedTuple):
    """`[pool.NAME]`: acquiring NAME takes any one free member."""

    name: str
    members: tuple[str, ...]


class Group(NamedTuple):
    """`[group.NAME]`: acquiring NAME takes every member in one lease."""

    name: str
    members: tuple[str, ...]
    """Sorted: the one order every client takes them in."""


class ResourceSettings(NamedTuple):
    resource: str
    backend: str
    principal: str
    ttl: timedelta
    max_ttl: timedelta | None


class Config:
    """A parsed config file (or the built-in defaults when there is none)."""

    def __init__(self, parser: ConfigParser, path: Path | None = None) -> None:
        self.parser = parser
        self.path = path
        # A resource's section, whichever Unicode form the file spells it in.
        self._sections = {
            unicodedata.normalize("NFC", name): name for name in parser.sections()
        }
        self._pools: dict[str, Pool] | None = None
        self._settings: dict[str, ResourceSettings] = {}
        # Which pool section each name falls back on (the pool's own name and
        # its members): read raw, checked by `pools()`.
        self._pool_of: dict[str, str] = {}
        for section in parser.sections():
            if section.startswith(POOL_PREFIX):
                name = unicodedata.normalize("NFC", section[len(POOL_PREFIX) :])
                self._pool_of.setdefault(name, section)
                for member in _members(parser.get(section, "members", fallback="")):
                    self._pool_of.setdefault(member, section)
        self._groups: dict[str, Group] | None = None
        self._group_section = {
            unicodedata.normalize("NFC", section[len(GROUP_PREFIX) :]): section
            for section in parser.sections()
            if section.startswith(GROUP_PREFIX)
        }

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "built-in defaults"

    def value(self, resource: str | None, key: str, *fallbacks: str) -> str | None:
        """`key` from the resource's section, then each fallback section."""
        name = unicodedata.normalize("NFC", resource or "")
        section = self._sections.get(name)
        sections = [section] if section and self.is_resource_section(section) else []
        if name in self._pool_of:  # a pool, or a member of one: the pool's section
            sections.append(self._pool_of[name])
        if name in self._group_section:
            sections.append(self._group_section[name])
        sections += [*fallbacks, DEFAULT_SECTION]
        for section in sections:
            if self.parser.has_option(section, key):
                raw = self.parser.get(section, key).strip()
                if raw:
                    return raw
        return None

    def duration(
        self, resource: str | None, key: str, *fallbacks: str
    ) -> timedelta | None:
        raw = self.value(resource, key, *fallbacks)
        if raw is None:
            return None
        try:
            return parse_duration(raw)
        except InvalidTTL as exc:
            raise ConfigError(f"{self.source}: {key}: {exc}") from None

    @staticmethod
    def is_resource_section(name: str) -> bool:
        return name not in _NOT_RESOURCES and not name.startswith(_RESERVED_PREFIXES)

    def pools(self) -> dict[str, Pool]:
        """Every `[pool.NAME]`, checked: members listed, valid, distinct, in
        one pool only, on the pool's backend; no pool named like a resource."""
        if self._pools is None:
            self._pools = self._checked_pools()
        return self._pools

    def pool(self, name: str) -> Pool | None:
        return self.pools().get(unicodedata.normalize("NFC", name))

    def pool_of(self, member: str) -> str | None:
        """The pool `member` belongs to, if any."""
        for pool in self.pools().values():
            if member in pool.members:
                return pool.name
        return None

    def _checked_pools(self) -> dict[str, Pool]:
        from .errors import InvalidResourceName
        from .names import validate_resource

        pools: dict[str, Pool] = {}
        owner: dict[str, str] = {}
        resources = {unicodedata.normalize("NFC", r) for r in self.resource_sections()}
        for section in self.parser.sections():
            if not section.startswith(POOL_PREFIX):
                continue
            where = f"{self.source}: [{section}]"
            name = unicodedata.normalize("NFC", section[len(POOL_PREFIX) :])
            raw = self.parser.get(section, "members", fallback="")
            members = _members(raw)
            try:
                validate_resource(name)
                for member in members:
                    validate_resource(member)
            except InvalidResourceName as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if not members:
                raise ConfigError(
                    f"{where} has no members; list them: members = {name}-1, {name}-2"
                )
            if len(set(members)) != len(members):
                twice = sorted({m for m in members if members.count(m) > 1})
                raise ConfigError(f"{where} lists {twice[0]!r} twice; list it once")
            if name in resources:
                raise ConfigError(
                    f"{where}: {name!r} is also a resource ([{name}]); rename one"
                )
            backend = self.value(name, "backend") or DEFAULT_BACKEND
            for member in members:
                if member in owner:
                    raise ConfigError(
                        f"{where}: {member!r} is already a member of pool "
                        f"{owner[member]!r}; a resource belongs to one pool at most"
                    )
                owner[member] = name
                own = self.value(member, "backend") or DEFAULT_BACKEND
                if own != backend:
                    raise ConfigError(
                        f"{where}: member {member!r} lives on backend {own!r}, the "
                        f"pool on {backend!r}; a pool's members share one backend"
                    )
            pools[name] = Pool(name, tuple(members))
        for name in pools:
            if name in owner:
                raise ConfigError(
                    f"{self.source}: pool {name!r} is also a member of pool "
                    f"{owner[name]!r}; pools do not nest"
                )
        return pools

    def groups(self) -> dict[str, Group]:
        """Every `[group.NAME]`, checked: members listed, valid, distinct, at
        most MAX_SET, on one backend; no group named like a resource or a
        pool, and no pool or group among the members."""
        if self._groups is None:
            self._groups = self._checked_groups()
        return self._groups

    def group(self, name: str) -> Group | None:
        if not self._group_section:
            return None
        return self.groups().get(unicodedata.normalize("NFC", name))

    def _checked_groups(self) -> dict[str, Group]:
        from .errors import InvalidInput, InvalidResourceName
        from .sets import check_set

        resources = {unicodedata.normalize("NFC", r) for r in self.resource_sections()}
        pools = self.pools()
        groups: dict[str, Group] = {}
        for name, section in self._group_section.items():
            where = f"{self.source}: [{section}]"
            members = _members(self.parser.get(section, "members", fallback=""))
            if not members:
                raise ConfigError(
                    f"{where} has no members; list them: members = prod-db, prod-api"
                )
            try:
                from .names import validate_resource

                validate_resource(name)
                checked = check_set(members)
            except (InvalidInput, InvalidResourceName) as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if name in resources or name in pools:
                kind = "resource" if name in resources else "pool"
                raise ConfigError(f"{where}: {name!r} is also a {kind}; rename one")
            for member in checked:
                if member in pools or member in self._group_section:
                    kind = "pool" if member in pools else "group"
                    raise ConfigError(
                        f"{where}: member {member!r} is a {kind}; a group lists "
                        "resources (groups and pools do not nest)"
                    )
            try:
                self.set_backend(checked, name)
            except InvalidResourceName as exc:
                raise ConfigError(f"{where}: {exc}") from None
            groups[name] = Group(name, checked)
        return groups

    def set_backend(self, members: tuple[str, ...], group: str | None = None) -> str:
        """The one backend every member lives on (a group's own, if it names
        one); else InvalidResourceName: one lease is one store's transaction."""
        wanted = self.value(group, "backend") if group else None
        backends = {m: self.value(m, "backend") or DEFAULT_BACKEND for m in members}
        chosen = wanted or backends[members[0]]
        for member, backend in backends.items():
            if backend != chosen:
                from .errors import InvalidResourceName

                raise InvalidResourceName(
                    f"{member!r} lives on backend {backend!r}, {members[0]!r} on "
                    f"{chosen!r}; one lease is one store's transaction, so lock "
                    "resources of one backend together"
                )
        return chosen

    def set_settings(
        self, members: tuple[str, ...], group: str | None = None
    ) -> ResourceSettings:
        """Settings for one lease on `members`: the group's section first;
        else the shortest of the members' TTLs, and the strictest max_ttl."""
        backend = self.set_backend(members, group)
        each = [self.settings(member) for member in members]
        own = self.settings(group) if group else None
        ttl = (own.ttl if own and self.value(group, "ttl") else None) or min(
            s.ttl for s in each
        )
        limits = [s.max_ttl for s in [*each, *([own] if own else [])] if s.max_ttl]
        max_ttl = min(limits) if limits else None
        if max_ttl is not None and ttl > max_ttl:
            ttl = max_ttl
        principal = (own or each[0]).principal
        return ResourceSettings(
            group or ",".join(members), backend, principal, ttl, max_ttl
        )

    def resource_sections(self) -> list[str]:
        return [s for s in self.parser.sections() if self.is_resource_section(s)]

    def settings(self, resource: str) -> ResourceSettings:
        # Asked for several times per request; the file does not change
        # under a loaded Config. Bounded: names come from users.
        known = self._settings.get(resource)
        if known is not None:
            return known
        found = self._read_settings(resource)
        if len(self._settings) >= _SETTINGS_KEPT:
            self._settings.clear()
        self._settings[resource] = found
        return found

    def _read_settings(self, resource: str) -> ResourceSettings:
        ttl = self.duration(resource, "ttl") or DEFAULT_TTL
        max_ttl = self.duration(resource, "max_ttl")
        if max_ttl is not None and ttl > max_ttl:
            raise ConfigError(
                f"{self.source}: ttl is longer than max_ttl for {resource!r}; "
                "lower ttl or raise max_ttl"
            )
        principal = self.value(resource, "principal") or default_principal()
        if control_characters(principal):
            raise ConfigError(
                f"{self.source}: principal {principal!r} holds a control character; "
                "write it as one line of plain text"
            )
        return ResourceSettings(
            resource=resource,
            backend=self.value(resource, "backend") or DEFAULT_BACKEND,
            principal=principal,
            ttl=ttl,
            max_ttl=max_ttl,
        )

    def history_retention(self) -> timedelta | None:
        """`history = 90 days` in [default], or `none`: keep no history."""
        raw = self.value(None, "history")
        if raw is None:
            return DEFAULT_HISTORY
        if raw.strip().lower() in ("none", "off", "no", "0"):
            return None
        try:
            return parse_duration(raw)
        except InvalidTTL as exc:
            raise ConfigError(
                f"{self.source}: [default] history = {raw!r}: {exc}; "
                "or write 'none' to keep no history"
            ) from None

    @property
    def default_backend(self) -> str:
        return self.value(None, "backend") or DEFAULT_BACKEND

    def backend_names(self) -> list[str]:
        """Every backend the config uses: the default and the per-resource ones."""
        names = {self.default_backend}
        names.update(self.settings(r).backend for r in self.resource_sections())
        return sorted(names)

    def backend_options(self, name: str) -> dict[str, str]:
        section = BACKEND_PREFIX + name
        if not self.parser.has_section(section):
            return {}
        return {key: self.parser.get(section, key) for key in self.parser[section]}

    def section(self, name: str) -> dict[str, str] | None:
        """The keys of section `name`, or None if the file has no such section."""
        if not self.parser.has_section(name):
            return None
        return dict(self.parser[name])


def _members(raw: str) -> list[str]:
    """`members = a, b, c` (commas or whitespace between names)."""
    return [
        unicodedata.normalize("NFC", part)
        for part in raw.replace(",", " ").split()
        if part
    ]


# A comment after a value: `#` or `;` with whitespace on both sides, as
# people write them (`ttl = 2h   # the usual`); `#deploys` or `ticket #123`
# stay values.
INLINE_COMMENTS = ("# ", "#\t", "; ", ";\t")


def new_parser() -> ConfigParser:
    """The INI reader every config goes through: comments after values
    (`INLINE_COMMENTS`); a value that needs a literal ` # ` or ` ; ` writes
    `\\#` or `\\;` (see `unescape`)."""
    return ConfigParser(
        interpolation=None,
        default_section="\0none",
        inline_comment_prefixes=INLINE_COMMENTS,
    )


def unescape(parser: ConfigParser) -> ConfigParser:
    """`\\#` and `\\;` in every value become `#` and `;` (after the reader
    has stripped the comments, which they do not start)."""
    for section in parser.sections():
        for key, raw in parser.items(section, raw=True):
            if "\\" in raw:
                parser.set(section, key, raw.replace("\\#", "#").replace("\\;", ";"))
    return parser


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config file (see `find_config_file`); none found means defaults."""
    found = find_config_file(path)
    parser = new_parser()
    if found is not None:
        try:
            with found.open(encoding="utf-8") as handle:
                parser.read_file(handle)
            unescape(parser)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read config file {str(found)!r}: {exc}"
            ) from None
        except ConfigParserError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"config file {str(found)!r} is not valid INI: {first}"
            ) from None
    return Config(parser, found)
