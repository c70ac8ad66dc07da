"""DynamoDB backend.

One item per resource. Acquire is a single conditional UpdateItem that takes
the item only if it has no lease or its lease has expired; on failure the same
call returns the holder (ReturnValuesOnConditionCheckFailure). Conditions are
built with boto3's condition objects combined with `|` and `&` (Python's
`or`/`and` would silently keep one clause).

Clock: DynamoDB has no server clock, so expiry is decided by the clients'
clocks. A client whose clock runs ahead by S seconds can take over a lease up
to S seconds early; keep clocks NTP-synchronised (skew well under a second).

Released leases keep their item, so the fence keeps counting. Items idle for
30 days are deleted by DynamoDB TTL (attribute `purge_at`); a resource that
comes back starts its fence from the clock in microseconds, which stays above
any earlier fence. A sparse index (`active`, `expires`) holds only leased
items, so listing costs O(active leases).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from boto3.dynamodb.conditions import Attr, Key
from boto3.dynamodb.types import TypeDeserializer

from ..backend import Capabilities, Clock, Finding, Lease, LeaseBackend, trips
from ..errors import (
    BackendUnavailable,
    ConfigError,
    StoreRefused,
    StormlockError,
    one_line,
)
from ..history import ACQUIRED, RENEWED, Event, Story

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_INDEX = "active-expires"
_HISTORY_INDEX = "all-at"
_PURGE_AFTER = 30 * 86400
_T = TypeVar("_T")
log = logging.getLogger(__name__)
# Error codes that fail every request alike (throttling, the service or the
# table missing, credentials): the store is down for us, not one request bad.
_OUTAGES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "InternalServerError",
        "ServiceUnavailable",
        "ResourceNotFoundException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
    }
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _moment(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


def _lease(item: dict[str, Any]) -> Lease:
    return Lease(
        principal=item.get("principal", ""),
        created=_moment(item["created"]),
        id=item["lease_id"],
        resource=item["resource"],
        expires=_moment(item["expires"]),
        note=item.get("note"),
        fence=int(item["fence"]),
        members=tuple(item.get("members") or ()),
    )


def _live(item: dict[str, Any] | None, now: int) -> bool:
    return item is not None and "lease_id" in item and int(item["expires"]) > now


# Where fences come from, as the capability table says.
_FENCES = "per-item counter, started from the clock (µs) for a new item"


class DynamoDB(LeaseBackend):
    """Leases in a DynamoDB table (created on first use, or by `stormlock setup`).

    Options: `table` (default `stormlock`), `endpoint`, `region`, `profile`,
    `access_key_id`, `secret_access_key`, `timeout` (seconds, default 5).
    """

    def __init__(
        self,
        table: str = "stormlock",
        endpoint: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not _TABLE_NAME.match(table):
            raise ConfigError(
                f"[backend.dynamodb] table {table!r} is not a valid DynamoDB table "
                "name (3-255 of A-Z a-z 0-9 _ . -)"
            )
        try:
            session = boto3.Session(
                profile_name=profile,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
            )
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(
                f"[backend.dynamodb] profile {profile!r} is not in your AWS config"
            ) from None
        self._set_timeout(timeout)
        # Connecting and reading share the budget, and botocore's own retries
        # (with backoff of up to seconds) are off: `_call` retries within it.
        config = botocore.config.Config(
            connect_timeout=self.timeout / 2,
            read_timeout=self.timeout / 2,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=32,
        )
        try:
            self.resource = session.resource(
                "dynamodb", endpoint_url=endpoint, config=config
            )
        except (botocore.exceptions.NoRegionError, ValueError) as exc:
            raise ConfigError(f"[backend.dynamodb] {exc}; set region") from None
        self.table_name = table
        self.table = self.resource.Table(table)
        self.history_table = self.resource.Table(f"{table}-history")
        self._deserialize = TypeDeserializer().deserialize

    capabilities = Capabilities(
        Clock.CLIENT,
        timedelta(seconds=1),
        _FENCES,
        # A change and then its history event (history on by default).
        trips(acquire=2, renew=2, release=2, current=1, is_current=1, list=1),
        history="second write",
        sets="TransactWriteItems",
    )

    client_errors = (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.NoCredentialsError,
        botocore.exceptions.ClientError,
        LeaseBackend.OutOfTime,
    )

    def _failure(self, error: Exception) -> StormlockError:
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return ConfigError(
                "no AWS credentials for DynamoDB; set [backend.dynamodb] profile or "
                "access_key_id/secret_access_key, or the AWS_* environment"
            )
        if isinstance(error, botocore.exceptions.ClientError):
            detail = error.response.get("Error", {})
            if detail.get("Code") not in _OUTAGES:
                # DynamoDB refused this request: its fault, not an outage.
                return StoreRefused(
                    f"DynamoDB refused the request: {detail.get('Code')}: "
                    f"{one_line(str(detail.get('Message')))}"
                )
            return BackendUnavailable(
                f"DynamoDB refused the request: {detail.get('Code')}: "
                f"{one_line(str(detail.get('Message')))}"
            )
        return BackendUnavailable(
            f"DynamoDB is unreachable or did not answer within {self.timeout:g}s "
            f"({one_line(str(error)) or 'timed out'}); check [backend.dynamodb] "
            "endpoint and region"
        )

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` within the budget; create the table once if it is missing.

        A connection that failed at once (a restart broke it) is retried once.
        """
        for attempt in range(3):
            left = self.time_left()
            if left is not None and left <= 0:
                raise LeaseBackend.OutOfTime(f"no answer within {self.timeout:g}s")
            started = time.monotonic()
            try:
                return fn()
            except self.resource.meta.client.exceptions.ResourceNotFoundException:
                if attempt:
                    raise BackendUnavailable(
                        f"DynamoDB table {self.table_name!r} is missing; "
                        "run: stormlock setup dynamodb"
                    ) from None
                self.setup()
            except (
                botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectionClosedError,
            ):
                if attempt or not self.failed_fast(started):
                    raise
        raise AssertionError("unreachable")

    # -- history ----------------------------------------------------------
    # Events live in the table `{table}-history` (key: resource, at), with an
    # index of all events by time and DynamoDB TTL (purge_at) for retention.
    # An event is a second write after the change it records (documented):
    # a client that dies between the two loses that one event, and a failed
    # event write never fails the change itself.

    def _log(
        self, told: Story | None, event: str, item: dict[str, Any], until: Any
    ) -> None:
        if told is None:
            return
        now_us = int(time.time() * 1_000_000)
        record: dict[str, Any] = {
            "resource": item["resource"],
            "at": now_us * 1000 + secrets.randbelow(1000),
            "all": "1",
            "event": event,
            "principal": item.get("principal", ""),
            "actor": told.actor_for(str(item.get("principal", ""))),
            "fence": item.get("fence", 0),
            "source": told.source,
            "purge_at": now_us // 1_000_000 + int(told.retention.total_seconds()),
        }
        if item.get("note"):
            record["note"] = item["note"]
        if until is not None:
            record["until"] = until
        try:
            self._call(lambda: self.history_table.put_item(Item=record))
        except (StormlockError, *self.client_errors) as exc:
            log.warning("DynamoDB history event not written: %s", one_line(str(exc)))

    def _history(
        self, resource: str | None, since: datetime | None, limit: int | None
    ) -> list[Event]:
        low = int(since.timestamp() * 1e9) if since else 0
        kwargs: dict[str, Any] = {"ScanIndexForward": False}
        if resource is None:
            kwargs["IndexName"] = _HISTORY_INDEX
            kwargs["KeyConditionExpression"] = Key("all").eq("1") & Key("at").gte(low)
        else:
            kwargs["KeyConditionExpression"] = Key("resource").eq(resource) & Key(
                "at"
            ).gte(low)
        if limit:
            kwargs["Limit"] = limit
        events: list[Event] = []
        while True:
            page = self._call(lambda: self.history_table.query(**kwargs))
            for found in page["Items"]:
                item: dict[str, Any] = dict(found)
                until = item.get("until")
                events.append(
                    Event(
                        datetime.fromtimestamp(int(item["at"]) / 1e9, UTC),
                        str(item["resource"]),
                        str(item["event"]),
                        str(item.get("principal", "")),
                        str(item.get("actor", "")),
                        item.get("note"),
                        int(item.get("fence", 0)),
                        str(item.get("source", "")),
                        _moment(until) if until is not None else None,
                    )
                )
            if (limit and len(events) >= limit) or "LastEvaluatedKey" not in page:
                return events[:limit] if limit else events
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @staticmethod
    def _create(
        client: Any,
        name: str,
        keys: list[tuple[str, str, str]],
        index: str,
        index_keys: list[tuple[str, str, str]],
        done: list[str],
    ) -> None:
        """Create table `name` with an index (each key: attribute, type,
        HASH or RANGE) unless it exists; wait until it is usable."""

        def schema(of: list[tuple[str, str, str]]) -> list[dict[str, str]]:
            return [{"AttributeName": a, "KeyType": role} for a, _, role in of]

        kinds = {attribute: kind for attribute, kind, _ in keys + index_keys}
        try:
            client.create_table(
                TableName=name,
                AttributeDefinitions=[
                    {"AttributeName": a, "AttributeType": k} for a, k in kinds.items()
                ],
                KeySchema=schema(keys),
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": index,
                        "KeySchema": schema(index_keys),
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            done.append(f"dynamodb: created table {name}")
        except client.exceptions.ResourceInUseException:
            done.append(f"dynamodb: table {name} exists")
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )

    @staticmethod
    def _purge_with_ttl(client: Any, name: str, why: str, done: list[str]) -> None:
        """DynamoDB TTL on `purge_at` for table `name`, unless already on."""
        ttl = client.describe_time_to_live(TableName=name)
        status = ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus")
        if status not in ("ENABLED", "ENABLING"):
            client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "purge_at"},
            )
            done.append(f"dynamodb: enabled TTL on purge_at of {name} ({why})")

    def setup(self) -> list[str]:
        client = self.resource.meta.client
        done: list[str] = []
        history = self.history_table.name
        with self._errors():
            self._create(
                client,
                self.table_name,
                [("resource", "S", "HASH")],
                _INDEX,
                [("active", "S", "HASH"), ("expires", "N", "RANGE")],
                done,
            )
            self._purge_with_ttl(client, self.table_name, "idle items, 30 days", done)
            self._create(
                client,
                history,
                [("resource", "S", "HASH"), ("at", "N", "RANGE")],
                _HISTORY_INDEX,
                [("all", "S", "HASH"), ("at", "N", "RANGE")],
                done,
            )
            self._purge_with_ttl(client, history, "history retention", done)
        return done

    def _acquire(
        self, resource: str, principal: str, ttl: timedelta, note: str | None
    ) -> tuple[bool, Lease | None]:
        now = _now_ms()
        expires = now + max(1, round(ttl.total_seconds() * 1000))
        update = (
            "SET lease_id = :id, principal = :principal, created = :now, "
            "expires = :expires, active = :active, purge_at = :purge, "
            "fence = if_not_exists(fence, :base) + :one"
        )
        values: dict[str, Any] = {
            ":id": self.new_id(),
            ":principal": principal,
            ":now": now,
            ":expires": expires,
            ":active": "1",
            ":purge": expires // 1000 + _PURGE_AFTER,
            ":base": Decimal(now) * 1000,
            ":one": 1,
        }
        if note:
            update += ", note = :note REMOVE members"
            values[":note"] = note
        else:
            update += " REMOVE note, members"
        client = self.resource.meta.client
        try:
            result = self._call(
                lambda: self.table.update_item(
                    Key={"resource": resource},
                    UpdateExpression=update,
                    ConditionExpression=(
                        Attr("lease_id").not_exists() | Attr("expires").lte(now)
                    ),
                    ExpressionAttributeValues=values,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            )
        except client.exceptions.ConditionalCheckFailedException as exc:
            raw: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            holder = {k: self._deserialize(v) for k, v in raw.items()} if raw else None
            if holder is None:
                holder = self._get(resource)
            return False, _lease(holder) if holder and _live(holder, now) else None
        item = result["Attributes"]
        self._log(self._story(resource), ACQUIRED, item, item["expires"])
        return True, _lease(item)

    def _get(
        self, resource: str, projection: str | None = None
    ) -> dict[str, Any] | None:
        kwargs: dict[str, Any] = {"Key": {"resource": resource}, "ConsistentRead": True}
        if projection:
            kwargs["ProjectionExpression"] = projection
        item: dict[str, Any] | None = self._call(
            lambda: self.table.get_item(**kwargs)
        ).get("Item")
        return item

    def _renew(self, resource: str, lease_id: str, ttl: timedelta) -> Lease | None:
        now = _now_ms()
        expires = now + max(1, round(ttl.total_seconds() * 1000))
        client = self.resource.meta.client
        try:
            result = self._call(
                lambda: self.table.update_item(
                    Key={"resource": resource},
                    UpdateExpression="SET expires = :expires, purge_at = :purge",
                    ConditionExpression=(
                        Attr("lease_id").eq(lease_id) & Attr("expires").gt(now)
                    ),
                    ExpressionAttributeValues={
                        ":expires": expires,
                        ":purge": expires // 1000 + _PURGE_AFTER,
                    },
                    ReturnValues="ALL_NEW",
                )
            )
        except client.exceptions.ConditionalCheckFailedException:
            return None
        item = result["Attributes"]
        self._log(self._story(resource), RENEWED, item, item["expires"])
        return _lease(item)

    def _release(self, resource: str, lease_id: str) -> bool:
        client = self.resource.meta.client
        try:
            result = self._call(
                lambda: self.table.update_item(
                    Key={"resource": resource},
                    UpdateExpression="REMOVE lease_id, active",
                    ConditionExpression=(
                        Attr("lease_id").eq(lease_id) & Attr("expires").gt(_now_ms())
                    ),
                    ReturnValues="ALL_OLD",
                )
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        told = self._story(resource)
        if told is not None:
            self._log(told, told.released_as(), result["Attributes"], None)
        return True

    # -- sets: TransactWriteItems, every member or none -------------------------

    def _transact(
        self, resources: Sequence[str], update: str, condition: str, values: Any
    ) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
        """Update every member in one transaction: (their items after it,
        []), or (None, the items that failed their condition) if cancelled."""
        # The resource's client converts values both ways (but not in errors).
        client = self.resource.meta.client
        items: Any = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": {"resource": resource},
                    "UpdateExpression": update,
                    "ConditionExpression": condition,
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
            for resource in resources
        ]
        cancelled: list[dict[str, Any]] = []
        try:
            self._call(lambda: client.transact_write_items(TransactItems=items))
        except client.exceptions.TransactionCanceledException as exc:
            for reason in exc.response.get("CancellationReasons") or []:
                raw: Any = reason.get("Item")
                if reason.get("Code") == "ConditionalCheckFailed" and raw:
                    cancelled.append({k: self._deserialize(v) for k, v in raw.items()})
            return None, cancelled
        gets: Any = [
            {"Get": {"TableName": self.table_name, "Key": {"resource": r}}}
            for r in resources
        ]
        got = self._call(lambda: client.transact_get_items(TransactItems=gets))
        return [answer.get("Item") or {} for answer in got.get("Responses") or []], (
            cancelled
        )

    def _acquire_set(
        self,
        resources: Sequence[str],
        lease_id: str,
        principal: str,
        ttl: timedelta,
        note: str | None,
    ) -> tuple[bool, list[Lease]]:
        now = _now_ms()
        expires = now + max(1, round(ttl.total_seconds() * 1000))
        update = (
            "SET lease_id = :id, principal = :principal, created = :now, "
            "expires = :expires, active = :active, purge_at = :purge, "
            "members = :members, fence = if_not_exists(fence, :base) + :one"
        )
        values: dict[str, Any] = {
            ":id": lease_id,
            ":principal": principal,
            ":now": now,
            ":expires": expires,
            ":active": "1",
            ":purge": expires // 1000 + _PURGE_AFTER,
            ":base": Decimal(now) * 1000,
            ":one": 1,
            ":members": list(resources),
        }
        if note:
            update += ", note = :note"
            values[":note"] = note
        else:
            update += " REMOVE note"
        condition = "attribute_not_exists(lease_id) OR expires <= :now"
        items, cancelled = self._transact(resources, update, condition, values)
        if items is None:
            return False, [_lease(i) for i in cancelled if _live(i, now)]
        told = self._story(resources[0])
        leases = []
        for resource, item in zip(resources, items, strict=True):
            if item.get("lease_id") != lease_id:  # released and taken since
                item = {**item, "lease_id": lease_id, "resource": resource}
            self._log(told, ACQUIRED, item, expires)
            told = told.quiet() if told is not None else None
            leases.append(_lease({**item, "expires": expires, "created": now}))
        return True, leases

    def _renew_set(
        self, resources: Sequence[str], lease_id: str, ttl: timedelta
    ) -> list[Lease] | None:
        now = _now_ms()
        expires = now + max(1, round(ttl.total_seconds() * 1000))
        values = {
            ":id": lease_id,
            ":now": now,
            ":expires": expires,
            ":purge": expires // 1000 + _PURGE_AFTER,
        }
        items, _ = self._transact(
            resources,
            "SET expires = :expires, purge_at = :purge",
            "lease_id = :id AND expires > :now",
            values,
        )
        if items is None:
            return None
        told = self._story(resources[0])
        for item in items:
            self._log(told, RENEWED, item, expires)
            told = told.quiet() if told is not None else None
        return [_lease({**item, "expires": expires}) for item in items]

    def _release_set(self, resources: Sequence[str], lease_id: str) -> bool:
        values = {":id": lease_id, ":now": _now_ms()}
        items, _ = self._transact(
            resources,
            "REMOVE lease_id, active",
            "lease_id = :id AND expires > :now",
            values,
        )
        if items is None:
            # A member expired (or was never taken): release the rest one by
            # one, each still conditional on the id.
            return any([self._release(r, lease_id) for r in resources])
        told = self._story(resources[0])
        if told is not None:
            for item in items:
                self._log(told, told.released_as(), item, None)
                told = told.quiet()
        return True

    def _current(self, resource: str) -> Lease | None:
        item = self._get(resource)
        return _lease(item) if item and _live(item, _now_ms()) else None

    def _is_current(self, resource: str, lease_id: str) -> bool:
        item = self._get(resource, "lease_id, expires")
        return (
            item is not None and _live(item, _now_ms()) and item["lease_id"] == lease_id
        )

    def _list_leases(self) -> list[Lease]:
        now = _now_ms()
        leases: list[Lease] = []
        kwargs: dict[str, Any] = {
            "IndexName": _INDEX,
            "KeyConditionExpression": Key("active").eq("1") & Key("expires").gt(now),
        }
        while True:
            page = self._call(lambda: self.table.query(**kwargs))
            leases.extend(_lease(item) for item in page["Items"] if "lease_id" in item)
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return leases

    def doctor(self) -> list[Finding]:
        client = self.resource.meta.client
        name = self.table_name
        with self._operation():
            try:
                table = client.describe_table(TableName=name)["Table"]
            except client.exceptions.ResourceNotFoundException:
                return [
                    Finding(
                        "unsafe",
                        f"dynamodb: table {name} is missing; run: stormlock setup "
                        "dynamodb",
                    )
                ]
            ttl = client.describe_time_to_live(TableName=name)
        findings = [Finding("ok", f"dynamodb: table {name} is {table['TableStatus']}")]
        indexes = {
            index["IndexName"]: index.get("IndexStatus", "ACTIVE")
            for index in table.get("GlobalSecondaryIndexes", [])
        }
        if indexes.get(_INDEX) == "ACTIVE":
            findings.append(Finding("ok", f"dynamodb: index {_INDEX} is ACTIVE"))
        else:
            findings.append(
                Finding(
                    "unsafe",
                    f"dynamodb: index {_INDEX} is {indexes.get(_INDEX, 'missing')}: "
                    "list and reminders cannot see leases; run: stormlock setup "
                    "dynamodb",
                )
            )
        description = ttl.get("TimeToLiveDescription", {})
        if (
            description.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
            and description.get("AttributeName") == "purge_at"
        ):
            findings.append(Finding("ok", "dynamodb: TTL purges idle items (purge_at)"))
        else:
            findings.append(
                Finding(
                    "warning",
                    "dynamodb: TTL on purge_at is off: items of resources no longer "
                    "used are kept for ever; run: stormlock setup dynamodb",
                )
            )
        findings.append(
            Finding(
                "warning",
                "dynamodb: expiry is decided by the clients' clocks; keep them "
                "NTP-synchronised (skew well under 0.5 s)",
            )
        )
        return findings

    def close(self) -> None:
        self.resource.meta.client.close()


BACKEND = DynamoDB
