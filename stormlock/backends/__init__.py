"""Finding backends by name: the built-ins, then the entry points of plugins."""

from __future__ import annotations

import importlib
from typing import Any

from ..backend import Backend
from ..errors import UnknownBackendError

ENTRY_POINT_GROUP = "stormlock.backends"

# Built-ins are imported directly: scanning entry points costs start-up time.
BUILTIN: dict[str, tuple[str, str, str]] = {
    "sqlite": ("stormlock.backends.sqlite", "SQLite", ""),
    "redis": ("stormlock.backends.redis", "Redis", "redis"),
    "postgresql": ("stormlock.backends.postgresql", "Postgresql", "postgresql"),
    "dynamodb": ("stormlock.backends.dynamodb", "DynamoDB", "dynamodb"),
    "etcd": ("stormlock.backends.etcd", "Etcd", "etcd"),
}


def _plugins() -> list[Any]:
    # Imported here: scanning installed packages costs start-up time that a
    # built-in backend never needs.
    from importlib import metadata

    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def available_backends() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in _plugins())
    return sorted(names)


def find_backend(name: str) -> type[Backend]:
    """The backend class registered under `name`."""
    if name in BUILTIN:
        module_name, class_name, extra = BUILTIN[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownBackendError(
                f"backend {name!r} needs packages that are not installed ({exc.name}); "
                f"run: pip install 'stormlock[{extra}]'"
            ) from None
        cls: type[Backend] = getattr(module, class_name)
        return cls
    for entry_point in _plugins():
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


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Instantiate the backend registered under `name` with `kwargs`."""
    return find_backend(name)(**kwargs)
