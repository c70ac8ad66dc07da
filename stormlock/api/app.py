"""The HTTP API under `/v1/`: Flask, with flask-openapi3 for routing,
request validation (pydantic models) and the OpenAPI document at
`/v1/openapi.json`, which is generated from these routes.

Every route but the document needs `Authorization: Bearer <token>`. Lease
ids travel in bodies, never in URLs (proxies log URLs). Errors are JSON
with a code that maps one-to-one onto the CLI's exit codes (errors.py).
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, g, jsonify, request
from flask_openapi3.models.info import Info
from flask_openapi3.openapi import OpenAPI
from pydantic import (
    BaseModel,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from ..config import API_SECTION, Config
from ..contract import Lease, LockHeldException
from ..errors import (
    EXIT_INTERNAL,
    BackendUnavailable,
    ConfigError,
    InvalidTTL,
    StoreRefused,
    StormlockError,
    one_line,
)
from ..history import Event
from ..render import lease_dict
from ..times import iso
from ..ttl import parse_duration
from ..version import version
from .errors import BY_CODE, ERRORS, for_exit
from .service import ApiService, Caller, Context

log = logging.getLogger(__name__)

#: A request body larger than this is refused before it is read.
MAX_BODY = 64 * 1024
OPENAPI_PATH = "/v1/openapi.json"
_PUBLIC = (OPENAPI_PATH, "/healthz")
_ID = r"^[A-Za-z0-9._:{}-]{1,256}$"
_SECURITY: list[dict[str, list[Any]]] = [{"token": []}]

# -- request and response models (the OpenAPI document is made of them) ----


def _duration(value: object) -> timedelta | None:
    """Seconds, or text such as '2h' (as the CLI takes it)."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and 0 < value <= 10 * 365 * 86400:  # type: ignore[operator]
        return timedelta(seconds=value)  # type: ignore[arg-type]
    raise InvalidTTL(f"duration {value!r} must be seconds above 0 or text such as '2h'")


# A number of seconds or text such as '2h'; never a boolean (`true` is not 1 s).
Seconds = StrictFloat | StrictInt | StrictStr | None


def _aware(value: datetime | None) -> datetime | None:
    """A time without a zone is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class _Body(BaseModel):
    model_config = {"extra": "forbid"}


class ContextIn(_Body):
    """Delegate tokens only (ignored otherwise): who acted, from where."""

    actor: str | None = Field(None, max_length=200)
    source: str | None = Field(None, max_length=20)
    forced: bool = False
    channel: str | None = Field(None, max_length=40)


class AcquireIn(_Body):
    resource: str = Field(max_length=400)
    ttl: Seconds = Field(
        None, description="seconds, or text such as '2h' (default: the config's)"
    )
    note: str | None = Field(None, max_length=4000)
    wait: Seconds = Field(
        None, description="wait up to this long for the lease (at most 60 s)"
    )
    request_id: str | None = Field(
        None,
        pattern=_ID,
        description="chosen by the client: a retry with the same id returns "
        "the lease an earlier try was granted",
    )
    principal: str | None = Field(
        None,
        max_length=200,
        description="delegate tokens only (ignored otherwise): whom to act for",
    )
    keep_place: bool = Field(
        False,
        description="a wait in line that runs out keeps your place: the "
        "refusal's `ticket` resumes it in your next acquire (within 10 s)",
    )
    ticket: str | None = Field(
        None, max_length=100, description="the `ticket` of your last refusal"
    )
    context: ContextIn | None = None
    record: bool = Field(True, description="delegate tokens only: record history")


class LeaseIdIn(_Body):
    resource: str = Field(max_length=400)
    id: str = Field(max_length=300)
    principal: str | None = Field(None, max_length=200)
    context: ContextIn | None = None
    record: bool = True


class RenewIn(LeaseIdIn):
    ttl: Seconds = None


class ResourceQuery(BaseModel):
    resource: str = Field(max_length=400)
    principal: str | None = Field(None, max_length=200)


class ListQuery(BaseModel):
    prefix: str = Field("", max_length=400)
    expiring_before: datetime | None = None
    principal: str | None = Field(None, max_length=200)

    _zone = field_validator("expiring_before")(_aware)


class HistoryQuery(BaseModel):
    resource: str | None = Field(None, max_length=400)
    since: datetime | None = None
    principal: str | None = Field(None, max_length=200)
    limit: int | None = Field(None, ge=0, le=100_000)
    who: str | None = Field(None, max_length=200)

    _zone = field_validator("since")(_aware)


class LeaseOut(BaseModel):
    resource: str
    principal: str
    created: str
    expires: str | None
    note: str | None
    fence: int
    id: str | None = Field(None, description="only for its holder")
    members: list[str] | None = Field(
        None, description="a lease on a set: every resource it covers"
    )


class AcquiredOut(BaseModel):
    lease: LeaseOut
    replayed: bool = Field(description="granted to an earlier try of this request")
    leases: list[LeaseOut] | None = Field(
        None, description="a set ('a,b' or a group): each member's lease and fence"
    )


class MaybeLeaseOut(BaseModel):
    lease: LeaseOut | None
    leases: list[LeaseOut] | None = Field(
        None, description="a set's renewal: each member's lease"
    )


class LeasesOut(BaseModel):
    leases: list[LeaseOut]


class WaiterOut(BaseModel):
    position: int
    principal: str
    since: str
    source: str
    note: str | None


class LineOut(BaseModel):
    waiting: list[WaiterOut]


class ReleasedOut(BaseModel):
    released: bool | None


class HeldOut(BaseModel):
    held: bool


class EventOut(BaseModel):
    time: str
    resource: str
    event: str
    principal: str
    actor: str
    note: str | None
    fence: int
    source: str
    until: str | None
    derived: bool
    channel: str | None = Field(description="where the bot announced it, if it did")


class HistoryOut(BaseModel):
    events: list[EventOut]


class TokenOut(BaseModel):
    name: str
    principal: str
    resources: list[str]
    read_only: bool
    delegate: bool
    created: str
    expires: str | None
    created_by: str
    last_used: str | None


class ErrorDetail(BaseModel):
    code: str
    exit_code: int
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail
    holder: LeaseOut | None = None
    ticket: str | None = Field(
        None, description="a wait with keep_place that ran out: your place in line"
    )
    retry_after: float | None = Field(
        None,
        description="ask again in this many seconds (as Retry-After): a 429, or "
        "a wait cut short because the server's waiting slots were busy",
    )


# Every status a route can answer with: each error of errors.ERRORS (a
# route may meet any of them: an unsupported store is 501 on every route),
# a wrong method (405) and a body over MAX_BODY (413).
_ERRORS: dict[str | int, type[BaseModel] | dict[Any, Any] | None] = {
    status: ErrorOut for status in sorted({e.status for e in ERRORS} | {405, 413})
}

# -- rendering ----------------------------------------------------------------


def _lease(lease: Lease, caller: Caller) -> dict[str, Any]:
    data = lease_dict(lease, with_id=False)
    data["id"] = lease.id if caller.sees_id(lease) else None
    return data


def _holder(lease: Lease | None) -> dict[str, Any] | None:
    return None if lease is None else {**lease_dict(lease, with_id=False), "id": None}


def _event(event: Event) -> dict[str, Any]:
    return {
        **event.as_dict(),
        "until": iso(event.until) if event.until else None,
        "derived": event.derived,
        "channel": event.channel,
    }


def _error(
    code: str,
    message: str,
    holder: Lease | None = None,
    retry: float | None = None,
    status: int | None = None,
    ticket: str | None = None,
) -> Response:
    kind = BY_CODE[code]
    body: dict[str, Any] = {
        "error": {"code": code, "exit_code": kind.exit_code, "message": message}
    }
    if holder is not None:
        body["holder"] = _holder(holder)
    if ticket is not None:  # only ever in the answer to the waiter itself
        body["ticket"] = ticket
    if retry is not None:
        body["retry_after"] = retry  # as the header, for clients that read bodies
    response = jsonify(body)
    response.status_code = status or kind.status
    if retry is not None:
        response.headers["Retry-After"] = str(math.ceil(retry))
    return response


# What a caller is told of a store failure: the store's address and its
# driver's words are for the operator's log.
STORE_DOWN = (
    "the lease store is unreachable or did not answer in time; a change may "
    "or may not have been made: look with GET /v1/current before retrying"
)
STORE_REFUSED = "the lease store refused the request; the API server's log says why"


def _failed(error: StormlockError) -> Response:
    kind = for_exit(error.exit_code)
    message = one_line(error.message)
    if isinstance(error, BackendUnavailable | StoreRefused):
        log.warning("the store failed: %s", message)
        message = STORE_REFUSED if isinstance(error, StoreRefused) else STORE_DOWN
    holder = ticket = retry = None
    if isinstance(error, LockHeldException):
        holder, ticket, retry = error.lease, error.ticket, error.retry_after
    return _error(kind.code, message, holder, retry=retry, ticket=ticket)


_TYPES = frozenset({"float", "int", "str", "bool"})


def _invalid(error: ValidationError) -> Response:
    details = error.errors()
    first: dict[str, Any] = dict(details[0]) if details else {}
    # A union's member ("ttl.float") is pydantic's, not a field the caller knows.
    loc = [str(part) for part in first.get("loc", ()) if part not in _TYPES]
    where = ".".join(loc) or "body"
    message = first.get("msg", "invalid request")
    # pydantic's text for a value error raised by parse_duration, verbatim
    message = str(message).removeprefix("Value error, ")
    return _error("usage", one_line(f"{where}: {message}; see {OPENAPI_PATH}"))


def _address() -> str:
    return request.remote_addr or "unknown"


def _peer() -> str:
    """The socket's own address: what a client cannot choose (ProxyFix keeps
    it where X-Forwarded-For replaced it)."""
    original = request.environ.get("werkzeug.proxy_fix.orig") or {}
    return original.get("REMOTE_ADDR") or _address()


def _proxies(config: Config) -> int:
    """`[api] proxies`: how many proxies in front may set X-Forwarded-For."""
    raw = config.value(None, "proxies", API_SECTION) or "0"
    if not raw.isdigit() or int(raw) > 10:
        raise ConfigError(
            f"{config.source}: [api] proxies = {raw!r} must be the number of "
            "proxies in front of the API (0 to 10)"
        )
    return int(raw)


def create_app(config: Config, service: ApiService | None = None) -> OpenAPI:
    """The API's WSGI app over `config`'s backends."""
    service = service or ApiService(config)
    app = OpenAPI(
        __name__,
        info=Info(title="Stormlock", version=version()),
        security_schemes={"token": {"type": "http", "scheme": "bearer"}},
        doc_ui=False,
        validation_error_status=400,
        validation_error_callback=_invalid,
        static_folder=None,
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["stormlock"] = service
    proxies = _proxies(config)
    if proxies:
        # Behind a TLS proxy, the client's address (for the failed-auth
        # limit and the log) is the one the trusted proxies saw.
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies)  # type: ignore[method-assign]

    @app.before_request
    def guard() -> Response | None:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            # Refused on the header alone: the body is never read.
            return _error(
                "usage", f"the body is over {MAX_BODY} bytes; send less", status=413
            )
        if request.path in _PUBLIC:
            return None
        try:
            g.token = service.authenticate(
                request.headers.get("Authorization"), _address(), _peer()
            )
        except StormlockError as error:
            kind = for_exit(error.exit_code)
            retry = 60.0 if kind.code == "rate_limited" else None
            log.warning("refused an API request from %s: %s", _address(), kind.code)
            return _error(kind.code, one_line(error.message), retry=retry)
        if request.method == "POST" and not request.is_json:
            return _error(
                "usage",
                "send the body as JSON, with Content-Type: application/json; "
                f"see {OPENAPI_PATH}",
            )
        return None

    @app.route("/healthz")
    def healthz() -> Response:  # for `stormlock serve` alone; not an API route
        return Response("ok\n", mimetype="text/plain")

    @app.errorhandler(StormlockError)
    def stormlock_error(error: StormlockError) -> Response:
        return _failed(error)

    @app.errorhandler(404)
    def not_found(_: Exception) -> Response:
        return _error("usage", f"no such API route; see {OPENAPI_PATH}", status=404)

    @app.errorhandler(405)
    def wrong_method(_: Exception) -> Response:
        return _error(
            "usage", f"wrong method for this route; see {OPENAPI_PATH}", status=405
        )

    @app.errorhandler(413)
    def too_large(_: Exception) -> Response:
        return _error(
            "usage", f"the body is over {MAX_BODY} bytes; send less", status=413
        )

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        if isinstance(getattr(error, "code", None), int) and error.code < 500:  # type: ignore[attr-defined]
            return _error("usage", one_line(str(error)))
        log.exception("the API failed")
        kind = for_exit(EXIT_INTERNAL)
        return _error(kind.code, "unexpected error in the API server; see its log")

    def caller(
        principal: str | None = None,
        context: ContextIn | None = None,
        record: bool = True,
    ) -> Caller:
        said = Context(**(context.model_dump() if context else {}), record=record)
        return Caller(g.token, principal, said)

    @app.get(OPENAPI_PATH)
    def openapi() -> Response:
        """This document."""
        return jsonify(app.api_doc)

    @app.post(
        "/v1/acquire",
        security=_SECURITY,
        responses={200: AcquiredOut, 409: ErrorOut, **_ERRORS},
    )
    def acquire(body: AcquireIn) -> Response:
        """Acquire a lease (optionally waiting up to 60 s); the id is in it."""
        who = caller(body.principal, body.context, body.record)
        lease, replayed, each = service.acquire(
            who,
            body.resource,
            _duration(body.ttl),
            body.note,
            _duration(body.wait),
            body.request_id,
            body.ticket,
            body.keep_place,
            _address(),
        )
        answer: dict[str, Any] = {"lease": _lease(lease, who), "replayed": replayed}
        if each:
            answer["leases"] = [_lease(member, who) for member in each]
        return jsonify(answer)

    @app.post(
        "/v1/renew",
        security=_SECURITY,
        responses={200: MaybeLeaseOut, 410: ErrorOut, **_ERRORS},
    )
    def renew(body: RenewIn) -> Response:
        """Renew a lease for another TTL from now."""
        who = caller(body.principal, body.context, body.record)
        lease, each = service.renew(who, body.resource, body.id, _duration(body.ttl))
        answer: dict[str, Any] = {"lease": _lease(lease, who)}
        if each:
            answer["leases"] = [_lease(member, who) for member in each]
        return jsonify(answer)

    @app.post(
        "/v1/release", security=_SECURITY, responses={200: ReleasedOut, **_ERRORS}
    )
    def release(body: LeaseIdIn) -> Response:
        """Release a lease (idempotent): whether it was the active one."""
        who = caller(body.principal, body.context, body.record)
        return jsonify({"released": service.release(who, body.resource, body.id)})

    @app.post("/v1/is-held", security=_SECURITY, responses={200: HeldOut, **_ERRORS})
    def is_held(body: LeaseIdIn) -> Response:
        """Whether a lease id is the active lease on its resource."""
        who = caller(body.principal)
        return jsonify({"held": service.is_held(who, body.resource, body.id)})

    @app.get(
        "/v1/current", security=_SECURITY, responses={200: MaybeLeaseOut, **_ERRORS}
    )
    def current(query: ResourceQuery) -> Response:
        """The active lease on a resource (its id only for its holder)."""
        who = caller(query.principal)
        lease = service.current(who, query.resource)
        return jsonify({"lease": _lease(lease, who) if lease else None})

    @app.get("/v1/line", security=_SECURITY, responses={200: LineOut, **_ERRORS})
    def line(query: ResourceQuery) -> Response:
        """Who waits in the resource's line, first first (`stormlock queue`)."""
        who = caller(query.principal)
        return jsonify({"waiting": service.line(who, query.resource)})

    @app.get("/v1/leases", security=_SECURITY, responses={200: LeasesOut, **_ERRORS})
    def leases(query: ListQuery) -> Response:
        """Active leases in the token's scope, by resource (ids only for
        their holder)."""
        who = caller(query.principal)
        found = service.leases(who, query.prefix, query.expiring_before)
        if query.expiring_before is not None:
            found.sort(
                key=lambda lease: lease.expires or datetime.max.replace(tzinfo=UTC)
            )
        return jsonify({"leases": [_lease(lease, who) for lease in found]})

    @app.get("/v1/history", security=_SECURITY, responses={200: HistoryOut, **_ERRORS})
    def history(query: HistoryQuery) -> Response:
        """Who held what, when and why: the last `limit` events, oldest first."""
        who = caller(query.principal)
        events = service.history(
            who, query.resource, query.since, query.who, query.limit or None
        )
        return jsonify({"events": [_event(event) for event in events]})

    @app.get("/v1/whoami", security=_SECURITY, responses={200: TokenOut, **_ERRORS})
    def whoami() -> Response:
        """The token's name, principal and scope (never its secret)."""
        return jsonify(g.token.as_dict())

    return app
