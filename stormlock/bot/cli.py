"""`stormlock-bot`: placeholder until the Slack bot lands."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("stormlock-bot: the Slack bot is not built yet", file=sys.stderr)
    return 64
