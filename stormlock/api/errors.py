"""The API's error codes: one per CLI exit code, both ways.

An error body is `{"error": {"code": ..., "exit_code": ..., "message": ...}}`
(and `holder` when the resource is held). The `http` backend turns it back
into the exception the CLI would have raised, so a CI job sees the same one
line and exit code as with the store's own credentials.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import errors as e


class ApiError(NamedTuple):
    code: str
    status: int
    exit_code: int


ERRORS = (
    ApiError("not_held", 404, e.EXIT_NOT_HELD),
    ApiError("held", 409, e.EXIT_HELD),
    ApiError("expired", 410, e.EXIT_EXPIRED),
    ApiError("usage", 400, e.EXIT_USAGE),
    ApiError("bad_resource", 400, e.EXIT_BAD_RESOURCE),
    ApiError("bad_ttl", 400, e.EXIT_BAD_TTL),
    ApiError("config", 500, e.EXIT_CONFIG),
    ApiError("unknown_backend", 500, e.EXIT_UNKNOWN_BACKEND),
    ApiError("unavailable", 503, e.EXIT_UNAVAILABLE),
    ApiError("lease_lost", 409, e.EXIT_LEASE_LOST),
    ApiError("unsupported", 501, e.EXIT_UNSUPPORTED),
    ApiError("internal", 500, e.EXIT_INTERNAL),
    ApiError("rate_limited", 429, e.EXIT_RATE_LIMITED),
    ApiError("forbidden", 403, e.EXIT_NOT_ALLOWED),
    ApiError("unauthenticated", 401, e.EXIT_UNAUTHENTICATED),
    ApiError("interrupted", 503, e.EXIT_INTERRUPTED),
)

BY_EXIT = {error.exit_code: error for error in ERRORS}
BY_CODE = {error.code: error for error in ERRORS}


def for_exit(exit_code: int) -> ApiError:
    return BY_EXIT.get(exit_code, BY_EXIT[e.EXIT_INTERNAL])
