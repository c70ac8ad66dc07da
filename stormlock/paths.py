"""Where Stormlock looks for its config file and keeps its state."""

from __future__ import annotations

import os
from pathlib import Path


def search_paths() -> list[Path]:
    """Where a config file is looked for, in order (the original tool's order)."""
    home = Path.home()
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return [
        Path(".stormlock.cfg"),
        Path(xdg) / "stormlock.cfg",
        home / ".stormlock.cfg",
    ]


def default_state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "stormlock"
