"""Errors a user can act on, each with the CLI exit code that reports it.

Every message is one line that says what went wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class ExitCode(NamedTuple):
    code: str
    meaning: str


# Exit codes are part of the CLI contract. This table is the one source: the
# CLI's --help and the README's table are generated from it.
EXIT_OK = 0
EXIT_NOT_HELD = 1
EXIT_HELD = 2
EXIT_EXPIRED = 3
EXIT_USAGE = 64
EXIT_BAD_RESOURCE = 65
EXIT_BAD_TTL = 66
EXIT_CONFIG = 68
EXIT_UNKNOWN_BACKEND = 69
EXIT_UNAVAILABLE = 70
EXIT_LEASE_LOST = 71
EXIT_UNSUPPORTED = 72
EXIT_RATE_LIMITED = 75
EXIT_INTERNAL = 73
EXIT_NOT_ALLOWED = 77
EXIT_UNAUTHENTICATED = 78
EXIT_INTERRUPTED = 130

EXIT_CODES = (
    ExitCode(str(EXIT_OK), "success"),
    ExitCode(
        str(EXIT_NOT_HELD),
        "`current`: no active lease; `is-held`: the lease is not active; "
        "`doctor`: a setting of the store is unsafe; `token revoke`: no token "
        "of that name",
    ),
    ExitCode(
        str(EXIT_HELD),
        "`acquire`/`run`: the resource is held by someone else (the holder, "
        "since, until and note on stderr; never their lease id), or others "
        "are waiting in its line (join it with `--wait`)",
    ),
    ExitCode(
        str(EXIT_EXPIRED),
        "`renew`: the lease is not the active lease (expired, released, or a "
        "wrong or malformed id)",
    ),
    ExitCode(
        str(EXIT_USAGE),
        "bad command line (unknown command, missing argument, a note that is "
        "not UTF-8 text, holds a control character or is over 1,000 characters)",
    ),
    ExitCode(
        str(EXIT_BAD_RESOURCE),
        "invalid resource name, or set of resources (one named twice, over 25, "
        "or on several backends)",
    ),
    ExitCode(str(EXIT_BAD_TTL), "invalid TTL or duration"),
    ExitCode(
        str(EXIT_CONFIG),
        "config file missing (when named with `-c` or `STORMLOCK_CONFIG`), "
        "unreadable or invalid (a value out of range included, such as "
        "`timeout = -1`); a SQLite store this user may not read or write",
    ),
    ExitCode(
        str(EXIT_UNKNOWN_BACKEND),
        "unknown backend (the message lists the available ones), or its "
        "packages are not installed",
    ),
    ExitCode(
        str(EXIT_UNAVAILABLE),
        "backend unreachable, or it did not answer within `timeout`, or it "
        "refused the request (the message says which)",
    ),
    ExitCode(str(EXIT_LEASE_LOST), "`run`: the lease was lost while the command ran"),
    ExitCode(str(EXIT_UNSUPPORTED), "the backend does not support the operation"),
    ExitCode(
        str(EXIT_INTERNAL),
        "unexpected error: a bug; rerun with `STORMLOCK_DEBUG=1` and report it",
    ),
    ExitCode(
        str(EXIT_RATE_LIMITED),
        "try again later: the `http` backend saw too many failed "
        "authentications from this address (HTTP 429; wait a minute), or a "
        "resource's line is full (100 waiting)",
    ),
    ExitCode(
        str(EXIT_NOT_ALLOWED),
        "not allowed: the `http` backend's token does not cover that resource or "
        "is read-only (HTTP 403); the bot's shell: an admin-only action",
    ),
    ExitCode(
        str(EXIT_UNAUTHENTICATED),
        "the `http` backend's token is missing, unknown, revoked or expired (HTTP 401)",
    ),
    ExitCode("126, 127", "`run`: the command could not be executed / was not found"),
    ExitCode(str(EXIT_INTERRUPTED), "interrupted"),
)
"""What each exit code of `stormlock` means."""

EXIT_CODES_BEGIN = "<!-- exit-codes:begin -->"
EXIT_CODES_END = "<!-- exit-codes:end -->"


def exit_code_table() -> str:
    """The README's table of exit codes (Markdown)."""
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| {entry.code} | {entry.meaning} |" for entry in EXIT_CODES]
    return "\n".join(rows)


def exit_code_epilog() -> str:
    """The same table for `--help`: plain text, wrapped."""
    import textwrap

    lines = ["exit codes:"]
    for entry in EXIT_CODES:
        text = entry.meaning.replace("`", "")
        wrapped = textwrap.wrap(text, 66)
        lines.append(f"  {entry.code:<9}{wrapped[0]}")
        lines += [f"  {'':<9}{more}" for more in wrapped[1:]]
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    return " ".join(text.split())


def detail(error: object) -> str:
    """A driver's error as a clause of our message: one line, without the
    full stop that would read ".; check ..." before our advice."""
    return one_line(str(error)).rstrip(" .")


def printable(text: str) -> str:
    """`text` safe for a terminal and for tab- or line-separated output: each
    control character (tab, newline, ESC...) shown as an escape, never sent."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text
    )


class StormlockError(Exception):
    """Base of every error Stormlock raises on purpose."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(StormlockError):
    """A bad command line (or chat command)."""

    exit_code = EXIT_USAGE


class NotAllowed(StormlockError):
    """The person may not do this (the bot's admin-only actions)."""

    exit_code = EXIT_NOT_ALLOWED


class ConfigError(StormlockError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = EXIT_CONFIG


class UnknownBackendError(StormlockError):
    """No installed backend has that name, or its dependencies are missing."""

    exit_code = EXIT_UNKNOWN_BACKEND


class BackendUnavailable(StormlockError):
    """The backend could not be reached, or did not answer in time.

    `nothing_sent`: the request certainly never reached the store (the
    connection was refused), so nothing changed and a waiting acquire may
    simply try again."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, nothing_sent: bool = False) -> None:
        super().__init__(message)
        self.nothing_sent = nothing_sent


class StoreRefused(StormlockError):
    """The store answered, but refused this request (a value or script it
    would not run): the request's fault, not an outage, so it never counts
    towards the bot's fail-fast, and the message names no host."""

    exit_code = EXIT_UNAVAILABLE


class RateLimited(StormlockError):
    """Too many failed authentications from one address (HTTP 429)."""

    exit_code = EXIT_RATE_LIMITED


class Unauthenticated(StormlockError):
    """The API token is missing, unknown, revoked or expired (HTTP 401)."""

    exit_code = EXIT_UNAUTHENTICATED


class InvalidResourceName(StormlockError, ValueError):
    exit_code = EXIT_BAD_RESOURCE


class InvalidTTL(StormlockError, ValueError):
    exit_code = EXIT_BAD_TTL


class UnsupportedOperation(StormlockError):
    """The backend does not implement an optional capability."""

    exit_code = EXIT_UNSUPPORTED


class InvalidInput(UsageError, ValueError):
    """A value (a note, a principal) that no store can hold."""


def missing_extra(
    error: ModuleNotFoundError, modules: frozenset[str], who: str, extra: str
) -> UnknownBackendError:
    """The one-line error for an optional extra that is not installed (`who`
    needs `extra`); any other missing module is a bug, raised as it is."""
    missing = (error.name or "").split(".")[0]
    if missing not in modules:
        raise error
    return UnknownBackendError(
        f"{who} needs packages that are not installed ({missing}); "
        f"install them with: pip install 'stormlock-leases[{extra}]'"
    )


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command-line program's body: every error is one line on stderr
    and its documented exit code, never a traceback. Shared by both CLIs."""
    import os
    import sys

    try:
        return body()
    except StormlockError as exc:
        print(f"{prog}: {printable(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # never a traceback; the message says what to report
        if os.environ.get("STORMLOCK_DEBUG"):
            raise
        detail = " ".join(str(exc).split())[:300]
        print(
            f"{prog}: unexpected error: {type(exc).__name__}: {detail}; "
            "rerun with STORMLOCK_DEBUG=1 and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
