"""Plain-text and JSON views of leases, for the CLI and the bot's shell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .contract import Lease
from .errors import one_line, printable
from .times import iso

if TYPE_CHECKING:
    from .history import Event
    from .tokens import Token


def short_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lease_dict(lease: Lease, with_id: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "resource": lease.resource,
        "principal": lease.principal,
        "created": iso(lease.created),
        "expires": iso(lease.expires) if lease.expires else None,
        "note": lease.note,
        "fence": lease.fence,
    }
    if lease.members:
        data["members"] = list(lease.members)
    if with_id:
        data["id"] = lease.id
    return data


def lease_json(lease: Lease) -> str:
    import json  # only this format needs it; the CLI starts faster without

    return json.dumps(lease_dict(lease))


# Every value a terminal shows goes through `printable`: a tab, a newline or
# an escape sequence in a principal or a note can neither split a tab- or
# line-separated format (`current | cut -f3`) nor rewrite the screen.


def lease_oneline(lease: Lease) -> str:
    """The original tool's format: principal, created, lease id, tab-separated."""
    return f"{printable(lease.principal)}\t{iso(lease.created)}\t{lease.id}"


def lease_lines(lease: Lease) -> str:
    """The original tool's older format: principal, id, created, one per line."""
    return f"{printable(lease.principal)}\n{lease.id}\n{iso(lease.created)}"


def lease_rows(lease: Lease) -> str:
    """One `field: value` row per field."""
    return "\n".join(
        f"{key}: {'' if value is None else printable(str(value))}"
        for key, value in lease_dict(lease).items()
    )


_COLS = ("resource", "principal", "created", "expires", "note", "fence", "id")


def lease_cols(lease: Lease) -> str:
    """A header line and a value line, tab-separated."""
    data = lease_dict(lease)
    values = ["" if data[key] is None else printable(str(data[key])) for key in _COLS]
    return "\t".join(_COLS) + "\n" + "\t".join(values)


def lease_table(
    leases: Sequence[Lease],
    with_ids: bool = False,
    pools: Mapping[str, str] | None = None,
    waiting: Mapping[str, int] | None = None,
) -> str:
    """Leases as a table; with `pools` (member -> pool or group), a pool's
    or a set's members are listed together, under a GROUP column; with
    `waiting` (resource -> how many are in its line), a WAITING column."""
    pools = pools or {}
    grouped = any(lease.resource in pools for lease in leases)
    if grouped:
        leases = sorted(
            leases,
            key=lambda lease: (
                pools.get(lease.resource, lease.resource),
                lease.resource,
            ),
        )
    headers = ["RESOURCE", "PRINCIPAL", "SINCE", "EXPIRES", "NOTE"]
    if grouped:
        headers.insert(1, "GROUP")
    if waiting:
        headers.append("WAITING")
    if with_ids:
        headers.append("LEASE ID")
    rows = [headers]
    for lease in leases:
        row = [
            printable(lease.resource),
            printable(lease.principal),
            short_time(lease.created),
            short_time(lease.expires),
            printable(one_line(lease.note or "-")),
        ]
        if grouped:
            row.insert(1, printable(pools.get(lease.resource, "-")))
        if waiting:
            row.append(str(waiting.get(lease.resource, 0)))
        if with_ids:
            row.append(lease.id)
        rows.append(row)
    return _aligned(rows)


def line_table(waiting: Sequence[Mapping[str, Any]]) -> str:
    """A resource's line, first in line first (`Ticket.as_dict`'s, or the
    API server's, which are the same)."""
    rows = [["POSITION", "PRINCIPAL", "SINCE", "SOURCE", "NOTE"]]
    for waiter in waiting:
        try:
            since = short_time(datetime.fromisoformat(str(waiter.get("since"))))
        except ValueError:
            since = "-"
        rows.append(
            [
                str(waiter.get("position", "?")),
                printable(str(waiter.get("principal", ""))),
                since,
                printable(str(waiter.get("source", ""))),
                printable(one_line(str(waiter.get("note") or "-"))),
            ]
        )
    return _aligned(rows)


def _aligned(rows: list[list[str]]) -> str:
    """Rows as columns two spaces apart (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    )


def history_table(events: Sequence[Event]) -> str:
    """Events as a table; a derived expiry is marked (nobody acted)."""
    headers = ["TIME", "EVENT", "RESOURCE", "PRINCIPAL", "ACTOR", "FENCE", "SOURCE"]
    rows = [[*headers, "NOTE"]]
    for event in events:
        rows.append(
            [
                short_time(event.time),
                event.event + ("*" if event.derived else ""),
                printable(event.resource),
                printable(event.principal),
                "-" if event.derived else printable(event.actor),
                str(event.fence),
                "-" if event.derived else event.source,
                printable(one_line(event.note or "-")),
            ]
        )
    table = _aligned(rows)
    if any(event.derived for event in events):
        table += "\n* derived: the lease ended at its expiry, with no release"
    return table


def history_json(events: Sequence[Event]) -> str:
    """One JSON object per line, per event."""
    import json

    return "\n".join(json.dumps(event.as_dict()) for event in events)


def history_csv(events: Sequence[Event]) -> str:
    import csv
    import io

    from .history import FIELDS

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for event in events:
        record = event.as_dict()
        writer.writerow([_cell(record[f]) for f in FIELDS])
    return out.getvalue().rstrip("\n")


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or a
    tab or carriage return) gets a leading ' (OWASP's CSV injection advice)."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def token_table(tokens: Sequence[Token]) -> str:
    """Tokens as a table: never their secrets (nobody has them)."""
    rows = [["NAME", "PRINCIPAL", "SCOPE", "CREATED", "LAST USED", "EXPIRES"]]
    for token in tokens:
        rows.append(
            [
                printable(token.name),
                printable(token.principal),
                printable(token.scope()),
                short_time(token.created),
                short_time(token.last_used),
                short_time(token.expires) if token.expires else "never",
            ]
        )
    return _aligned(rows)


def token_json(tokens: Sequence[Token]) -> str:
    import json

    return json.dumps([token.as_dict() for token in tokens], indent=2)
