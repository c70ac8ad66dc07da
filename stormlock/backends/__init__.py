"""Backends by name: finding them, and building one from its config section.

The `stormlock.backends` entry points (pyproject.toml) are the one registry,
of the built-ins and plugins alike. A built-in is found without reading them,
by convention: backend NAME is the `BACKEND` of module stormlock.backends.NAME
(reading entry points imports importlib.metadata, some 30 ms of start-up; a
test checks that the entry points and the modules agree).
"""

from __future__ import annotations

import importlib
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..contract import Backend
from ..errors import ConfigError, UnknownBackendError

if TYPE_CHECKING:
    from ..config import Config

ENTRY_POINT_GROUP = "stormlock.backends"
_PACKAGE = __name__


def _entry_points() -> list[Any]:
    from importlib import metadata

    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def available_backends() -> list[str]:
    return sorted({entry_point.name for entry_point in _entry_points()})


def builtin_backends() -> list[str]:
    """The backends Stormlock itself ships, by name."""
    prefix = _PACKAGE + "."
    return sorted(ep.name for ep in _entry_points() if ep.value.startswith(prefix))


def _builtin(name: str) -> type[Backend] | None:
    if not name.isidentifier():
        return None
    module_name = f"{_PACKAGE}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name:
            return None  # no such built-in: maybe a plugin
        raise UnknownBackendError(
            f"backend {name!r} needs packages that are not installed ({exc.name}); "
            f"run: pip install 'stormlock-leases[{name}]'"
        ) from None
    found: type[Backend] | None = getattr(module, "BACKEND", None)
    return found


def find_backend(name: str) -> type[Backend]:
    """The backend class registered under `name`."""
    builtin = _builtin(name)
    if builtin is not None:
        return builtin
    for entry_point in _entry_points():
        if entry_point.name == name:
            try:
                loaded = entry_point.load()
            except ImportError as exc:
                raise UnknownBackendError(
                    f"backend plugin {name!r} failed to import: {exc}"
                ) from None
            if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
                raise UnknownBackendError(
                    f"backend plugin {name!r} ({entry_point.value}) is not a "
                    "stormlock.Backend subclass"
                )
            return loaded
    raise UnknownBackendError(
        f"unknown backend {name!r}; available: {', '.join(available_backends())}"
    )


def configured_backend(config: Config, name: str) -> Backend:
    """Build backend `name` from its `[backend.NAME]` section of `config`."""
    return build_backend(name, config.backend_options(name), config)


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate the backend registered under `name` with `kwargs`."""
    return find_backend(name)(**kwargs)


def build_backend(
    name: str, options: Mapping[str, str], config: Config | None = None
) -> Backend:
    """Build backend `name` from INI-style string options."""
    backend = _construct(name, options, config)
    if config is not None:
        backend.history_retention = config.history_retention()
    return backend


def _construct(name: str, options: Mapping[str, str], config: Config | None) -> Backend:
    cls = find_backend(name)
    where = f"[backend.{name}]"
    if not options:
        try:  # the zero-config path: no signature to inspect
            return cls()
        except TypeError:
            pass  # a required option is missing: let the mapping say which
    kwargs = options_for_signature(cls, options, where, config)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        source = f"{config.source}: " if config else ""
        raise ConfigError(f"{source}{where}: {exc}") from None


_EMPTY = object()


def _convert(kind: Any, raw: str, key: str, where: str) -> Any:
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if optional:
        kinds = [k for k in typing.get_args(kind) if k is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else str
    if kind in (str, Any) or kind is _EMPTY:
        return raw
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "yes", "true", "on"):
                return True
            if lowered in ("0", "no", "false", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"{where} {key} = {raw!r} is not a valid {kind.__name__}; fix the value"
        ) from None
    return raw


def options_for_signature(
    cls: type, options: Mapping[str, str], where: str, config: Config | None = None
) -> dict[str, Any]:
    """Map INI options onto the keyword parameters of `cls.__init__`."""
    import inspect  # only when there are options to map: it is slow to import

    signature = inspect.signature(cls)
    try:
        hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except Exception:  # unresolvable annotations in a plugin: treat as str
        hints = {}
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = {
        name: p
        for name, p in params.items()
        if p.kind
        not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    source = f"{config.source}: " if config else ""
    kwargs: dict[str, Any] = {}
    for key, raw in options.items():
        if key in known:
            kind = hints.get(key, known[key].annotation)
            if kind is inspect.Parameter.empty:
                kind = _EMPTY
            if kind in (dict, dict[str, str]) and config is not None:
                continue
            kwargs[key] = _convert(kind, raw, key, f"{source}{where}")
        elif takes_any:
            kwargs[key] = raw
        else:
            valid = ", ".join(sorted(known)) or "none"
            raise ConfigError(
                f"{source}{where} has unknown option {key!r}; valid options: {valid}"
            )
    for name, param in known.items():
        kind = hints.get(name, param.annotation)
        if kind in (dict, dict[str, str]) and config is not None:
            sub = config.section(f"{where[1:-1]}.{name}")
            if sub is not None:
                kwargs[name] = sub
        if name not in kwargs and param.default is inspect.Parameter.empty:
            raise ConfigError(f"{source}{where} needs option {name!r}; add it")
    return kwargs
