"""Errors a user can act on, each with the CLI exit code that reports it.

Every message is one line that says what went wrong and what to do.
"""

from __future__ import annotations

# Exit codes are part of the CLI contract; the README documents each one.
EXIT_OK = 0
EXIT_NOT_HELD = 1  # `current`: no lease; `is-held`: lease not active
EXIT_HELD = 2  # `acquire`: someone else holds the resource
EXIT_EXPIRED = 3  # `renew`: the lease is not the active lease
EXIT_USAGE = 64  # bad command line
EXIT_BAD_RESOURCE = 65
EXIT_BAD_TTL = 66
EXIT_CONFIG = 68
EXIT_UNKNOWN_BACKEND = 69
EXIT_UNAVAILABLE = 70  # backend unreachable or timed out
EXIT_LEASE_LOST = 71  # `run`: the lease was lost while the command ran
EXIT_UNSUPPORTED = 72  # the backend cannot do what was asked
EXIT_INTERNAL = 73  # a bug: the message says what to report
EXIT_INTERRUPTED = 130


class StormlockError(Exception):
    """Base of every error Stormlock raises on purpose."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(StormlockError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = EXIT_CONFIG


class UnknownBackendError(StormlockError):
    """No installed backend has that name, or its dependencies are missing."""

    exit_code = EXIT_UNKNOWN_BACKEND


class BackendUnavailable(StormlockError):
    """The backend could not be reached, or did not answer in time."""

    exit_code = EXIT_UNAVAILABLE


class InvalidResourceName(StormlockError, ValueError):
    exit_code = EXIT_BAD_RESOURCE


class InvalidTTL(StormlockError, ValueError):
    exit_code = EXIT_BAD_TTL


class UnsupportedOperation(StormlockError):
    """The backend does not implement an optional capability."""

    exit_code = EXIT_UNSUPPORTED


class InvalidInput(StormlockError, ValueError):
    """A value (a note, a principal) that no store can hold."""

    exit_code = EXIT_USAGE
