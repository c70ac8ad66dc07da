"""Running Stormlock's programs as a user would: the installed scripts, in a
clean environment with an empty HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
"""Where this interpreter's scripts (`stormlock`, `stormlock-bot`) live."""
STORMLOCK = str(BIN / "stormlock")

CliRunner = Callable[..., subprocess.CompletedProcess[str]]
"""`cli(*args, env=None, timeout=60, input=None)`: runs `stormlock ARGS`."""


def clean_env(home: Path) -> dict[str, str]:
    """The environment with no Stormlock, XDG or Slack settings, and `home`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STORMLOCK_", "XDG_", "SLACK_"))
    }
    env["HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env
