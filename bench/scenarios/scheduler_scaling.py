"""The reconcile job's wall time as active leases grow, with 10 of them due."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis

from stormlock.backends import build_backend
from stormlock.bot.app import build_app
from stormlock.bot.service import LeaseService
from stormlock.bot.settings import BotSettings
from stormlock.config import load_config
from stormlock.testing.backends import BackendConfig
from stormlock.testing.localslack import LocalSlack
from stormlock.testing.servers import Server
from stormlock.testing.slack import ALICE

DUE = 10
SCALED = ("sqlite", "redis", "postgresql")


def _rows(count: int) -> list[tuple[str, str, str, float, float, int]]:
    """(resource, lease id, principal, created, expires, fence): DUE due soon."""
    now = time.time()
    rows = []
    for i in range(count):
        due = i < DUE
        principal = ALICE.email if due else f"user{i}@example.com"
        expires = now + (1800 if due else 86400)
        # Taken two hours ago: long enough for a 1-hour warning to apply.
        created = now - 7200
        rows.append(
            (f"svc-{i:06d}", str(uuid.uuid4()), principal or "", created, expires, 1)
        )
    return rows


def _populate(name: str, options: dict[str, str], count: int) -> None:
    build_backend(name, options).setup()
    rows = _rows(count)
    if name == "sqlite":
        import sqlite3

        with sqlite3.connect(options["path"]) as conn:
            conn.executemany(
                "INSERT INTO stormlock_leases (resource, lease_id, principal, created, "
                "expires, note, fence) VALUES (?, ?, ?, ?, ?, NULL, ?)",
                rows,
            )
    elif name == "postgresql":
        with psycopg.connect(options["connection"], autocommit=True) as conn:
            cursor = conn.cursor()
            copy_sql = f'COPY "{options["table"]}" (resource, lease_id, principal, created, expires, fence) FROM STDIN'
            with cursor.copy(copy_sql) as copy:
                for resource, lease_id, principal, created, expires, fence in rows:
                    copy.write_row(
                        (
                            resource,
                            lease_id,
                            principal,
                            datetime.fromtimestamp(created, UTC),
                            datetime.fromtimestamp(expires, UTC),
                            fence,
                        )
                    )
    else:
        client = redis.Redis.from_url(options["url"])
        prefix = options["prefix"]
        for start in range(0, len(rows), 5000):
            pipe = client.pipeline(transaction=False)
            for resource, lease_id, principal, created, expires, fence in rows[
                start : start + 5000
            ]:
                key = f"{prefix}lease:{resource}"
                pipe.hset(
                    key,
                    mapping={
                        "id": lease_id,
                        "principal": principal,
                        "created": int(created * 1000),
                        "expires": int(expires * 1000),
                        "note": "",
                        "fence": fence,
                    },
                )
                pipe.pexpireat(key, int(expires * 1000))
                pipe.zadd(f"{prefix}active", {resource: int(expires * 1000)})
            pipe.execute()


def _reconcile_times(
    name: str, options: dict[str, str], slack: LocalSlack
) -> tuple[float, float, int]:
    path = Path(tempfile.mkdtemp()) / "stormlock.cfg"
    path.write_text(
        BackendConfig(name, options).ini("bench", "")
        + "\n[bot]\nwarn_before = 1 hour\n"
    )
    settings = BotSettings.load(
        load_config(path),
        {"SLACK_BOT_TOKEN": slack.token, "SLACK_API_URL": slack.api_url},
    )
    service = LeaseService(settings)
    bot = build_app(settings, service, verify_requests=False)
    start = time.perf_counter()
    stats = bot.reminders.run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    bot.reminders.run()
    second = time.perf_counter() - start
    bot.close()
    service.close()
    return first, second, stats.warnings


def section(
    running: dict[str, Server],
    options_for: Callable[[str, dict[str, Server], str], dict[str, str] | None],
    sizes: list[int],
) -> str:
    from bench.run import ms, table

    slack = LocalSlack(users=[ALICE]).start()
    rows = []
    for name in SCALED:
        for size in sizes:
            options = options_for(name, running, f"sched{size}")
            if options is None:
                continue
            _populate(name, options, size)
            first, second, warned = _reconcile_times(name, options, slack)
            rows.append(
                [name, f"{size:,}", str(DUE), str(warned), ms(first), ms(second)]
            )
    slack.stop()
    return (
        "### Scheduler scaling (one reconcile run; warn_before = 1 hour)\n\n"
        + table(
            [
                "backend",
                "active leases",
                "due",
                "warnings sent",
                "first run ms",
                "next run ms",
            ],
            rows,
        )
        + "\n\nThe first run sends the due warnings (claim, DM, watch record each); the next "
        "finds them claimed. SQLite and PostgreSQL read due leases through a partial index "
        "on `expires`, Redis through its expiry-sorted index, so the cost follows the due "
        "leases. DynamoDB and etcd have no expiry index here: `list_expiring` falls back to "
        "listing every active lease (DynamoDB: a query of the sparse index; etcd: a prefix "
        "range) and filtering, so their runs grow with all active leases."
    )
