"""What happens when a store loses data, and `stormlock doctor` saying so.

A fence never goes backwards, even after the store forgets everything: it
is never below the store's clock in microseconds (see docs/backends.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from stormlock import Backend
from stormlock.backend import release_and_look
from stormlock.backends import build_backend
from stormlock.testing.backends import BackendConfig, isolated_options
from stormlock.testing.env import CliRunner
from stormlock.testing.servers import free_port, run_etcd, run_redis


def _forget_everything(name: str, backend: Backend, options: dict[str, str]) -> None:
    """Make the store lose its data, as a restore from an old backup would."""
    if name == "sqlite":
        import sqlite3

        with sqlite3.connect(options["path"]) as conn:
            conn.execute("DELETE FROM stormlock_leases")
    elif name == "postgresql":
        import psycopg

        with psycopg.connect(options["connection"], autocommit=True) as conn:
            conn.execute(f'TRUNCATE "{options["table"]}"')
    elif name == "dynamodb":
        import boto3

        table = boto3.resource(
            "dynamodb",
            endpoint_url=options["endpoint"],
            region_name=options["region"],
            aws_access_key_id=options["access_key_id"],
            aws_secret_access_key=options["secret_access_key"],
        ).Table(options["table"])
        for item in table.scan()["Items"]:
            table.delete_item(Key={"resource": item["resource"]})
    else:
        raise AssertionError(name)


@pytest.mark.parametrize("name", ["sqlite", "postgresql", "dynamodb"])
def test_fence_never_goes_back_after_the_store_loses_its_rows(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    options = isolated_options(name, request, tmp_path)
    with build_backend(name, options) as backend:
        fences = [
            backend.acquire_lease("db", "alice", timedelta(minutes=5)).fence,
        ]
        _forget_everything(name, backend, options)
        assert backend.current("db") is None
        fences.append(backend.acquire_lease("db", "bob", timedelta(minutes=5)).fence)
    assert fences[1] > fences[0]


def test_redis_restart_without_persistence_forgets_leases_but_not_fence_order(
    tmp_path: Path,
) -> None:
    with run_redis() as server:
        options = {**server.options, "timeout": "2"}
        with build_backend("redis", options) as backend:
            before = backend.acquire_lease("db", "alice", timedelta(hours=1))
            server.stop()
            server.start()
            # The hazard doctor warns about: the lease is gone.
            assert backend.current("db") is None
            after = backend.acquire_lease("db", "bob", timedelta(hours=1))
            assert after.fence > before.fence
            unsafe = [f.text for f in backend.doctor() if f.level == "unsafe"]
    assert any("no persistence" in text for text in unsafe), unsafe


def test_redis_restarted_without_its_scripts_still_releases_and_looks() -> None:
    """The release and its look go in one pipeline, by script hash: a store
    that lost its scripts answers NOSCRIPT, and the release is done anyway."""
    with (
        run_redis() as server,
        build_backend("redis", {**server.options, "timeout": "2"}) as backend,
    ):
        lease = backend.acquire_lease("db", "alice", timedelta(hours=1))
        redis.Redis.from_url(server.options["url"]).script_flush()
        done, found = release_and_look(backend, "db", lease.id, ["db", "other"])
        assert done and found == [None, None]
        assert backend.current("db") is None
        assert [e.event for e in backend.history("db")][-1] == "released"


def test_etcd_that_lost_its_data_still_never_hands_out_a_lower_fence() -> None:
    with run_etcd() as server:
        assert server.data_dir is not None
        backend = build_backend("etcd", {**server.options, "timeout": "5"})
        fences = []
        for _ in range(3):
            lease = backend.acquire_lease("db", "alice", timedelta(minutes=5))
            fences.append(lease.fence)
            backend.release_lease("db", lease.id)
        server.stop()
        shutil.rmtree(server.data_dir)  # a new, empty etcd: revisions restart
        server.start()
        fresh = build_backend("etcd", server.options)
        fences.append(fresh.acquire_lease("other", "bob", timedelta(minutes=5)).fence)
        # The object that knew the old epoch notices the new one.
        fences.append(backend.acquire_lease("db", "carol", timedelta(minutes=5)).fence)
        current = fresh.current("db")
        assert current is not None and current.fence == fences[-1]
        backend.close()
        fresh.close()
    assert fences == sorted(fences) and len(set(fences)) == len(fences), fences


def test_redis_eviction_under_maxmemory_is_reported_and_fences_stay_ordered() -> None:
    settings = ("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    with run_redis(*settings) as server:
        backend = build_backend("redis", server.options)
        before = backend.acquire_lease("db", "alice", timedelta(hours=1))
        raw = redis.Redis.from_url(server.options["url"])
        filler = b"x" * 4096
        for i in range(5000):  # 20 MB into a 4 MB Redis
            raw.set(f"filler:{i}", filler)
            if i % 100 == 0 and backend.current("db") is None:
                break
        assert backend.current("db") is None, "the lease was never evicted"
        raw.flushdb()
        after = backend.acquire_lease("db", "bob", timedelta(hours=1))
        assert after.fence > before.fence
        unsafe = [f.text for f in backend.doctor() if f.level == "unsafe"]
        backend.close()
    assert any("maxmemory-policy allkeys-lru" in text for text in unsafe), unsafe


def test_doctor_passes_a_redis_that_persists_and_never_evicts(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    settings = ("--appendonly", "yes", "--appendfsync", "always")
    with run_redis(*settings, "--maxmemory-policy", "noeviction") as server:
        path = write_config(BackendConfig("redis", server.options).ini())
        result = cli("-c", str(path), "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok: ") == 2


def test_doctor_flags_a_postgresql_without_fsync(
    cli: CliRunner,
    write_config: Callable[[str], Path],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    # The test server runs with fsync and full_page_writes off, for speed.
    options = isolated_options("postgresql", request, tmp_path)
    path = write_config(BackendConfig("postgresql", options).ini())
    result = cli("-c", str(path), "doctor")
    assert result.returncode == 1, result.stderr
    assert "unsafe: postgresql: fsync = off" in result.stdout
    assert "ok: postgresql: synchronous_commit = on" in result.stdout


def test_doctor_on_dynamodb_checks_the_table_index_and_ttl(
    cli: CliRunner,
    write_config: Callable[[str], Path],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    options = isolated_options("dynamodb", request, tmp_path)
    path = write_config(BackendConfig("dynamodb", options).ini())
    missing = cli("-c", str(path), "doctor")
    assert missing.returncode == 1
    assert "missing; run: stormlock setup dynamodb" in missing.stdout
    assert cli("-c", str(path), "setup").returncode == 0
    result = cli("-c", str(path), "doctor")
    assert result.returncode == 0, result.stdout
    assert "ok: dynamodb: index active-expires is ACTIVE" in result.stdout
    assert "ok: dynamodb: TTL purges idle items" in result.stdout


@pytest.mark.parametrize("name", ["etcd", "sqlite"])
def test_doctor_passes_a_healthy_store(
    name: str,
    cli: CliRunner,
    write_config: Callable[[str], Path],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    options = isolated_options(name, request, tmp_path)
    path = write_config(BackendConfig(name, options).ini())
    result = cli("-c", str(path), "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: ")


def test_doctor_on_an_unreachable_store_exits_70(
    cli: CliRunner, write_config: Callable[[str], Path]
) -> None:
    options = {"url": f"redis://127.0.0.1:{free_port()}/0", "timeout": "1"}
    path = write_config(BackendConfig("redis", options).ini())
    result = cli("-c", str(path), "doctor")
    assert result.returncode == 70
    assert len(result.stderr.strip().splitlines()) == 1


def test_redis_lists_a_family_of_records_without_reading_the_others() -> None:
    """A line's tickets live in an index of their own family: listing them
    does not read the bot's sent markers (thousands, kept a week). Records
    from before families (one index) are still found until they expire."""
    with run_redis() as server, build_backend("redis", server.options) as backend:
        hour = timedelta(hours=1)
        for n in range(300):
            backend.acquire_lease(f".stormlock/sent/told/{n}/db", "bot", hour)
        ticket = backend.acquire_lease(
            ".stormlock/line/db/000000000000001", "bob", hour
        )
        client = redis.Redis.from_url(server.options["url"])
        # A record written before families: in the one records index.
        old = backend.acquire_lease(".stormlock/line/db/000000000000000", "al", hour)
        prefix = server.options.get("prefix", "stormlock:")
        client.zrem(f"{prefix}records:line", old.resource)
        client.zadd(f"{prefix}records", {old.resource: 2**52})
        assert client.zcard(f"{prefix}records:sent") == 300
        assert client.zcard(f"{prefix}records:line") == 1
        listed = backend.list_prefix(".stormlock/line/db/")
        assert [lease.id for lease in listed] == [old.id, ticket.id]
        assert len(backend.list_prefix(".stormlock/")) == 302
        assert backend.release_lease(ticket.resource, ticket.id)
        assert [lease.id for lease in backend.list_prefix(".stormlock/line/")] == [
            old.id
        ]
