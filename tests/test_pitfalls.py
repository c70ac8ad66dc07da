"""Regression tests for defects of the original tool, one per known pitfall,
and store-specific guarantees the shared conformance suite cannot see."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from stormlock import Lease, LockExpiredException, LockHeldException
from stormlock.backends import build_backend
from stormlock.backends.etcd import Etcd
from stormlock.errors import ConfigError, InvalidTTL
from stormlock.testing.backends import isolated_options, wait_for_expiry
from stormlock.testing.servers import Server

# -- DynamoDB ------------------------------------------------------------------


@pytest.fixture
def dynamodb_options(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return isolated_options("dynamodb", request, tmp_path)


def test_dynamodb_expired_lease_can_be_acquired_without_deleting_the_item(
    dynamodb_options: dict[str, str],
) -> None:
    # The original tool's condition kept one clause (Python `or`), so an
    # expired item blocked the resource forever.
    backend = build_backend("dynamodb", dynamodb_options)
    backend.acquire_lease("db", "alice", timedelta(seconds=1))
    wait_for_expiry(backend, "db")
    assert backend.acquire_lease("db", "bob", timedelta(minutes=1)).principal == "bob"


def test_dynamodb_another_id_cannot_renew_a_live_lease(
    dynamodb_options: dict[str, str],
) -> None:
    backend = build_backend("dynamodb", dynamodb_options)
    lease = backend.acquire_lease("db", "alice", timedelta(minutes=1))
    with pytest.raises(LockExpiredException):
        backend.renew_lease("db", str(uuid.uuid4()), timedelta(days=1))
    current = backend.current("db")
    assert current is not None and current.expires == lease.expires


def test_dynamodb_setup_is_idempotent(dynamodb_options: dict[str, str]) -> None:
    backend = build_backend("dynamodb", dynamodb_options)
    first = backend.setup()
    assert any("created table" in line for line in first)
    assert any("TTL" in line for line in first)
    second = backend.setup()
    assert any("exists" in line for line in second)
    assert not any("created" in line for line in second)


def test_dynamodb_rejects_bad_table_name(dynamodb_options: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="table"):
        build_backend("dynamodb", {**dynamodb_options, "table": "x; drop"})


# -- PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def pg_options(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return isolated_options("postgresql", request, tmp_path)


def _in_zone(options: dict[str, str], zone: str) -> dict[str, str]:
    return {
        **options,
        "connection": f"{options['connection']}?options=-c%20TimeZone%3D{zone}",
    }


def test_postgresql_clients_in_different_time_zones_cannot_steal(
    pg_options: dict[str, str],
) -> None:
    # UTC+14 and UTC-12: 26 hours apart. With `timestamp without time zone`
    # the western client saw the eastern lease as long expired.
    east = build_backend("postgresql", _in_zone(pg_options, "Pacific/Kiritimati"))
    west = build_backend("postgresql", _in_zone(pg_options, "Etc/GMT%2B12"))
    try:
        lease = east.acquire_lease("db", "alice", timedelta(minutes=5))
        with pytest.raises(LockHeldException):
            west.acquire_lease("db", "bob", timedelta(minutes=5))
        assert west.is_current("db", lease.id)
        seen = west.current("db")
        assert seen is not None and seen.expires == lease.expires
        west_lease = west.renew_lease("db", lease.id, timedelta(minutes=10))
        assert west_lease.expires is not None and lease.expires is not None
        assert west_lease.expires > lease.expires
    finally:
        east.close()
        west.close()


def test_postgresql_table_uses_timestamptz(
    pg_options: dict[str, str], postgres_server: Server
) -> None:
    backend = build_backend("postgresql", pg_options)
    backend.setup()
    with psycopg.connect(pg_options["connection"]) as conn:
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = %s",
                [pg_options["table"]],
            ).fetchall()
        )
    assert types["expires"] == "timestamp with time zone"
    assert types["created"] == "timestamp with time zone"
    backend.close()


def test_postgresql_setup_is_idempotent(pg_options: dict[str, str]) -> None:
    backend = build_backend("postgresql", pg_options)
    assert "ready" in backend.setup()[0]
    assert "ready" in backend.setup()[0]
    backend.close()


@pytest.mark.parametrize("table", ["leases; DROP TABLE x", "a-b", "1abc", "x" * 64])
def test_postgresql_table_name_is_never_interpolated(
    pg_options: dict[str, str], table: str
) -> None:
    with pytest.raises(ConfigError, match="identifier"):
        build_backend("postgresql", {**pg_options, "table": table})


def test_postgresql_malformed_id_never_reaches_the_uuid_column(
    pg_options: dict[str, str],
) -> None:
    backend = build_backend("postgresql", pg_options)
    backend.acquire_lease("db", "alice", timedelta(minutes=1))
    assert backend.is_current("db", "not-a-uuid") is False
    assert backend.release_lease("db", "not-a-uuid") is False
    backend.close()


# -- Redis -------------------------------------------------------------------


@pytest.fixture
def redis_options(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return isolated_options("redis", request, tmp_path)


def test_redis_keys_stay_under_the_prefix(
    redis_options: dict[str, str], redis_server: Server
) -> None:
    backend = build_backend("redis", redis_options)
    lease = backend.acquire_lease("db", "alice", timedelta(minutes=1), "n")
    backend.release_lease("db", lease.id)
    backend.acquire_lease("other", "bob", timedelta(minutes=1))
    client = redis.Redis.from_url(redis_options["url"])
    keys = {
        key.decode() for key in client.scan_iter(match=f"{redis_options['prefix']}*")
    }
    assert keys
    assert all(key.startswith(redis_options["prefix"]) for key in keys)
    assert backend.list_leases()[0].resource == "other"


def test_redis_list_does_not_scan_the_keyspace(redis_options: dict[str, str]) -> None:
    backend = build_backend("redis", redis_options)
    client = redis.Redis.from_url(redis_options["url"])
    for i in range(50):
        client.set(f"unrelated:{uuid.uuid4().hex}:{i}", "x")
    backend.acquire_lease("db", "alice", timedelta(minutes=1))
    client.config_resetstat()
    assert [lease.resource for lease in backend.list_leases()] == ["db"]
    stats = client.info("commandstats")
    assert not any(name in stats for name in ("cmdstat_scan", "cmdstat_keys"))


def test_redis_tiny_ttl_never_reaches_redis(
    redis_options: dict[str, str],
) -> None:
    # A 1 ms renewal once ran PEXPIREAT at "now" inside the script, which
    # dropped the lease before the script failed.
    backend = build_backend("redis", redis_options)
    lease = backend.acquire_lease("db", "alice", timedelta(minutes=1))
    for tiny in (timedelta(microseconds=10), timedelta(milliseconds=1)):
        with pytest.raises(InvalidTTL, match="minimum of 1s"):
            backend.renew_lease("db", lease.id, tiny)
        with pytest.raises(InvalidTTL):
            backend.acquire_lease("tiny", "alice", tiny)
    assert backend.is_current("db", lease.id)
    assert backend.current("tiny") is None


# -- etcd ---------------------------------------------------------------------


@pytest.fixture
def etcd_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Etcd:
    backend = build_backend("etcd", isolated_options("etcd", request, tmp_path))
    assert isinstance(backend, Etcd)
    return backend


def test_etcd_failed_acquire_revokes_its_grant(etcd_backend: Etcd) -> None:
    etcd_backend.acquire_lease("db", "alice", timedelta(minutes=1))
    before = set(etcd_backend.granted_leases())
    for _ in range(5):
        with pytest.raises(LockHeldException):
            etcd_backend.acquire_lease("db", "bob", timedelta(minutes=1))
    # No new grant survives (others may expire meanwhile, hence <=).
    assert set(etcd_backend.granted_leases()) <= before


def test_etcd_release_of_expired_lease_is_idempotent(etcd_backend: Etcd) -> None:
    lease = etcd_backend.acquire_lease("db", "alice", timedelta(seconds=2))
    wait_for_expiry(etcd_backend, "db")
    assert etcd_backend.release_lease("db", lease.id) is False
    etcd_backend.unlock("db", lease.id)


def test_etcd_lease_id_is_not_the_etcd_lease_id(etcd_backend: Etcd) -> None:
    lease = etcd_backend.acquire_lease("db", "alice", timedelta(minutes=1))
    assert uuid.UUID(lease.id).version == 4
    assert lease.id not in etcd_backend.granted_leases()


def test_etcd_renew_replaces_the_grant_without_leaking(etcd_backend: Etcd) -> None:
    lease = etcd_backend.acquire_lease("db", "alice", timedelta(seconds=5))
    old_grant = etcd_grant(etcd_backend, "db")
    renewed = etcd_backend.renew_lease("db", lease.id, timedelta(minutes=10))
    assert renewed.expires is not None and lease.expires is not None
    assert renewed.expires - lease.expires > timedelta(minutes=9)
    new_grant = etcd_grant(etcd_backend, "db")
    granted = etcd_backend.granted_leases()
    assert new_grant in granted
    assert old_grant not in granted
    assert renewed.fence == lease.fence


def etcd_grant(backend: Etcd, resource: str) -> str:
    kv = backend._read(resource)
    assert kv is not None
    return str(kv["lease"])


def _stale_key(backend: Etcd, resource: str, etcd_lease: str) -> Lease:
    """A holder's key whose reported expiry has passed, attached to
    `etcd_lease` ("0": none, as when etcd's lessor is late to delete it)."""
    from stormlock.backends import etcd

    now = datetime.now(UTC)
    old = Lease("alice", now - timedelta(minutes=2), "x" * 32, resource, now, None)
    epoch = backend._load_epoch()
    body: dict[str, str] = {
        "key": etcd._b64(backend._key(resource)),
        "value": backend._value(old, etcd_lease, epoch),
    }
    if etcd_lease != "0":
        body["lease"] = etcd_lease
    backend._call("/v3/kv/put", body)
    current = backend._read(resource)
    assert current is not None
    return backend._lease(current)[0]


def test_etcd_takes_over_a_key_its_lease_has_outlived(etcd_backend: Etcd) -> None:
    """Past its expiry, and its etcd lease gone: taken at once, with a higher
    fence, not refused as held by someone whose time is over."""
    stale = _stale_key(etcd_backend, "db", "0")
    taken = etcd_backend.acquire_lease("db", "bob", timedelta(minutes=1))
    assert taken.principal == "bob" and taken.fence > stale.fence


def test_etcd_never_takes_over_by_the_clients_clock_alone(etcd_backend: Etcd) -> None:
    """The value says its time is over, but etcd's lease is alive (a client
    whose clock runs fast wrote it, or reads it): it stays held."""
    alive, _ = etcd_backend._grant(timedelta(minutes=1))
    _stale_key(etcd_backend, "db", alive)
    with pytest.raises(LockHeldException):
        etcd_backend.acquire_lease("db", "bob", timedelta(minutes=1))
