"""This installation's version, for `--version` and the API's document:
read from the distribution's metadata only when asked (importing
importlib.metadata costs the CLI's start-up some 30 ms)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

DISTRIBUTION = "stormlock-leases"


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


class VersionAction(argparse.Action):
    """`--version`: prints "PROG VERSION" and exits 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest, nargs=0, help="show the version and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()
