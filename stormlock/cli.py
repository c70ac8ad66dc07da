"""The `stormlock` command line. Exit codes are documented in the README."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from . import errors
from .backends import configured_backend
from .config import Config, load_config
from .contract import Backend, Feature
from .lock import StormLock, Target, list_all, lock_for, resolve
from .names import validate_resource
from .render import (
    lease_cols,
    lease_dict,
    lease_json,
    lease_lines,
    lease_oneline,
    lease_rows,
    lease_table,
    line_table,
)
from .ttl import attempts_a_duration, parse_duration
from .version import VersionAction
from .workers import worker_count

PROG = "stormlock"
# `--wait` with no duration waits this long (docs/cli.md).
DEFAULT_WAIT = "10m"

CURRENT_FORMATS = {
    "oneline": lease_oneline,
    "id": lambda lease: lease.id,
    "json": lease_json,
    "lines": lease_lines,
    "rows": lease_rows,
    "cols": lease_cols,
}


class _Parser(argparse.ArgumentParser):
    def format_help(self) -> str:
        if self.prog == PROG:  # built only for --help: it costs start-up time
            self.epilog = errors.exit_code_epilog()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        # One line, and never exit 2: scripts read 2 as "held".
        self.exit(
            errors.EXIT_USAGE, f"{self.prog}: {message}; see '{self.prog} --help'\n"
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Leases on named resources, so two operators never run the "
        "same risky operation at once.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-c", "--config", help="config file (default: $STORMLOCK_CONFIG, then search)"
    )
    parser.add_argument("--version", action=VersionAction)
    # An explicit prog spares argparse a help formatter (and its imports).
    sub = parser.add_subparsers(
        dest="cmd", metavar="COMMAND", parser_class=_Parser, prog=PROG
    )
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        return cmd

    def ttl_option(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "-t", "--ttl", help="lease duration, e.g. '30m', '2h', '1 days'"
        )

    def wait_option(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "-w",
            "--wait",
            metavar="DURATION",
            nargs="?",
            const=DEFAULT_WAIT,
            help=f"wait in line up to DURATION (alone: {DEFAULT_WAIT})",
        )

    acquire = command("acquire", "acquire a lease; prints the lease id")
    ttl_option(acquire)
    acquire.add_argument("-n", "--note", help="why you take the lease")
    wait_option(acquire)
    acquire.add_argument(
        "-f",
        "--format",
        choices=["id", "json"],
        default="id",
        help="id (default: the lease id alone) or json (id, resource, fence, "
        "expires, members)",
    )
    acquire.add_argument(
        "resource",
        nargs="*",
        help="a resource, a pool, a group, or several resources: one lease on "
        "all of them or on none",
    )

    release = command("release", "release a lease (idempotent)")
    release.add_argument("resource")
    release.add_argument("lease_id")

    renew = command("renew", "renew a lease for another TTL from now")
    ttl_option(renew)
    renew.add_argument("resource")
    renew.add_argument("lease_id")

    current = command("current", "show the active lease on a resource")
    current.add_argument(
        "--id-only", action="store_true", help="print only the lease id"
    )
    current.add_argument(
        "-f", "--format", choices=sorted(CURRENT_FORMATS), default="oneline"
    )
    current.add_argument("resource")

    is_held = command("is-held", "exit 0 if the lease is active, else 1")
    is_held.add_argument("resource")
    is_held.add_argument("lease_id")

    queue = command(
        "queue", "who waits in a resource's line, first first (join with --wait)"
    )
    queue.add_argument("-f", "--format", choices=["table", "json"], default="table")
    queue.add_argument("resource")

    list_ = command("list", "list every active lease")
    list_.add_argument("-f", "--format", choices=["table", "json"], default="table")
    list_.add_argument("--ids", action="store_true", help="include lease ids")

    run = command("run", "hold a lease while COMMAND runs; exits with its exit code")
    ttl_option(run)
    run.add_argument("-n", "--note", help="why you take the lease")
    wait_option(run)
    run.add_argument("resource", nargs="?")
    run.add_argument("command", nargs="*", help="-- COMMAND [ARGS...]")
    run.set_defaults(command_after_dashes=None)

    history = command(
        "history", "who held what, when and why (the last events, oldest first)"
    )
    history.add_argument(
        "resource", nargs="?", help="a resource, pool, group or a,b (default: all)"
    )
    history.add_argument(
        "--since", metavar="WHEN", help="a duration ago (7d, 2h) or an ISO time"
    )
    history.add_argument("--principal", help="only events of this holder or actor")
    history.add_argument(
        "-n",
        "--limit",
        type=int,
        default=100,
        help="at most this many, the newest (default 100; 0: all)",
    )
    history.add_argument(
        "-f", "--format", choices=["table", "json", "csv"], default="table"
    )

    setup = command("setup", "create the tables a backend needs (idempotent)")
    setup.add_argument(
        "target", nargs="?", help="a backend name or a resource (default: [default])"
    )

    serve = command("serve", "serve the HTTP API (/v1/) for automation, under gunicorn")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8080))
    serve.add_argument(
        "--workers",
        type=worker_count,
        default=None,
        help="worker processes (default $WEB_CONCURRENCY or 1)",
    )
    serve.add_argument("--threads", type=int, default=16)
    serve.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    serve.add_argument("--log-json", action="store_true", help="log JSON lines")
    serve.add_argument("--certfile", help="TLS certificate (PEM), to serve https")
    serve.add_argument("--keyfile", help="TLS private key (PEM)")

    token = command("token", "API tokens: create, list, revoke")
    token_sub = token.add_subparsers(
        dest="action", metavar="ACTION", parser_class=_Parser
    )
    token_sub.required = True
    create = token_sub.add_parser(
        "create", help="create a token; prints only the token (shown once)"
    )
    create.add_argument("name")
    create.add_argument(
        "--as", dest="principal", help="whom it acts as (default: your principal)"
    )
    create.add_argument(
        "--resources", help="globs of the resources it may touch: prod-*,staging-*"
    )
    create.add_argument("--read-only", action="store_true")
    create.add_argument(
        "--expires", metavar="DURATION", help="e.g. 90d (default: never)"
    )
    create.add_argument(
        "--delegate",
        action="store_true",
        help="it may name the principal of each request (for a bridge such as a bot)",
    )
    tlist = token_sub.add_parser("list", help="list tokens (never their secrets)")
    tlist.add_argument("--as", dest="principal", help="only this principal's")
    tlist.add_argument("-f", "--format", choices=["table", "json"], default="table")
    revoke = token_sub.add_parser("revoke", help="revoke a token")
    revoke.add_argument("name")
    revoke.add_argument(
        "--as", dest="principal", help="whose token (default: your principal)"
    )

    doctor = command(
        "doctor", "check the store's safety settings; exit 1 if one is unsafe"
    )
    doctor.add_argument(
        "target", nargs="?", help="a backend name or a resource (default: [default])"
    )
    return parser


def _ttl(text: str | None) -> timedelta | None:
    return parse_duration(text) if text is not None else None


def _backend(config: Config, name: str) -> Backend:
    if name != "sqlite" and not os.environ.get("STORMLOCK_DEBUG"):
        # Drivers log their retries; the CLI's one-line errors say it all.
        import logging

        logging.getLogger().addHandler(logging.NullHandler())
    return configured_backend(config, name)


def _lock(config: Config, target: Target) -> StormLock:
    """The lock of a resolved name (a resource, a pool, or a set: its members
    were checked when it was resolved, before any backend is built)."""
    backend = _backend(config, target.settings.backend)
    try:
        return lock_for(target, backend)
    except errors.StormlockError:
        backend.close()
        raise


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _private_store_note(backend: Backend) -> None:
    """With no config file the leases live in a file of this user's: say so,
    or two people on one host would both "hold" prod-db."""
    path = getattr(backend, "path", None)
    if getattr(backend, "implicit", False):
        _err(
            f"note: no config file, so this lease is in {path}, private to this "
            "user on this host; to share leases, configure a shared backend "
            "(README: Configuration)"
        )


def _acquire(lock: StormLock, args: argparse.Namespace, backend_name: str) -> int:
    if args.note and not lock.backend.supports(Feature.NOTES):
        _err(f"warning: the {backend_name} backend cannot store notes; ignored")
    lease = lock.acquire_lease(_ttl(args.ttl), args.note, _ttl(args.wait))
    if args.format == "json":
        import json

        from .sets import SetLock
        from .times import iso

        each = lock.leases if isinstance(lock, SetLock) else [lease]
        record = {
            "id": lease.id,
            "resource": lease.resource,
            "fence": lease.fence,
            "expires": iso(lease.expires) if lease.expires else None,
            "members": [member.resource for member in each],
            "pool": lock.resource if lock.resource != lease.resource else None,
        }
        if isinstance(lock, SetLock):
            record["fences"] = {member.resource: member.fence for member in each}
            record["group"] = lock.group
        print(json.dumps(record))
    else:
        print(lease.id)
    return 0


def _current(lock: StormLock, args: argparse.Namespace) -> int:
    from .pool import PoolLock
    from .sets import SetLock

    if isinstance(lock, PoolLock | SetLock):  # each held member, one per line
        held = lock.held()
        if not held:
            kind = "pool" if isinstance(lock, PoolLock) else "set"
            _err(f"no member of {kind} {lock.resource!r} is held")
            return errors.EXIT_NOT_HELD
        fmt = "id" if args.id_only else args.format
        print("\n".join(CURRENT_FORMATS[fmt](lease) for lease in held))
        return 0
    lease = lock.current()
    fmt = "id" if args.id_only else args.format
    line = lock._line() if fmt != "id" else None
    waiting = len(line.waiting()) if line is not None else 0
    # On stderr: the formats on stdout stay the original tool's.
    in_line = f"; {waiting} waiting in line (stormlock queue {lock.resource})"
    if lease is None:
        _err(f"no active lease on {lock.resource!r}" + (in_line if waiting else ""))
        return errors.EXIT_NOT_HELD
    if lease.members and fmt not in ("id", "json"):  # a set's lease: all of it
        found = [lock.backend.current(m) for m in lease.members]
        leases = [x for x in found if x is not None and x.id == lease.id] or [lease]
        print("\n".join(CURRENT_FORMATS[fmt](x) for x in leases))
        return 0
    if fmt == "json":
        import json

        print(json.dumps({**lease_dict(lease), "waiting": waiting}))
        return 0
    print(CURRENT_FORMATS[fmt](lease))
    if waiting:
        _err(in_line[2:])
    return 0


def _list(config: Config, args: argparse.Namespace) -> int:
    backends = {name: _backend(config, name) for name in config.backend_names()}
    try:
        leases = list_all(config, backends)
        waiting = _waiting(backends.values())
    finally:
        for backend in backends.values():
            backend.close()
    if args.format == "json":
        import json

        records = [lease_dict(lease, args.ids) for lease in leases]
        for record in records:
            record["waiting"] = waiting.get(record["resource"], 0)
        print(json.dumps(records, indent=2))
    elif leases:
        from .sets import group_labels

        labels = group_labels(config, leases)
        print(lease_table(leases, args.ids, labels, waiting))
    else:
        _err("no active leases")
    return 0


def _waiting(backends: Iterable[Backend]) -> dict[str, int]:
    """How many wait in each line, over `backends`."""
    from .line import waiting_counts

    counts: dict[str, int] = {}
    for backend in backends:
        counts.update(waiting_counts(backend))
    return counts


def _queue(lock: StormLock, args: argparse.Namespace) -> int:
    from .line import has_line

    line = lock._line()
    served = getattr(lock.backend, "waiting_in_line", None)
    if line is None and served is not None and lock._line_served:
        _show_line(served(lock.resource), lock.resource, args.format)  # the server's
        return 0
    if line is None:
        kind = type(lock).__name__
        if has_line(lock.backend):  # a pool or a set
            raise errors.UnsupportedOperation(
                f"{lock.resource!r} has no line of its own yet ({kind}); "
                "`--wait` retries with backoff"
            )
        raise errors.UnsupportedOperation(
            f"the {type(lock.backend).__name__} backend keeps no line; "
            "`--wait` retries with backoff"
        )
    _show_line(line.listed(), lock.resource, args.format)
    return 0


def _show_line(waiting: list[dict[str, Any]], resource: str, form: str) -> None:
    if form == "json":
        import json

        print(json.dumps(waiting))
    elif waiting:
        print(line_table(waiting))
    else:
        _err(f"nobody is waiting for {resource!r}")


def _target_backend(config: Config, target: str | None) -> Backend:
    """The backend `setup` or `doctor` means: named, a resource's, or the default."""
    from .backends import available_backends

    if target is None:
        name = config.default_backend
    elif target in available_backends() or config.backend_options(target):
        name = target
    else:
        name = config.settings(validate_resource(target)).backend
    return _backend(config, name)


def _setup(config: Config, target: str | None) -> int:
    with _target_backend(config, target) as backend:
        for line in backend.setup():
            print(line)
    return 0


def _doctor(config: Config, target: str | None) -> int:
    with _target_backend(config, target) as backend:
        findings = backend.doctor()
    for finding in findings:
        print(f"{finding.level}: {finding.text}")
    unsafe = any(finding.level == "unsafe" for finding in findings)
    return errors.EXIT_NOT_HELD if unsafe else 0


def _since(text: str | None) -> datetime | None:
    """`--since`: a duration ago, or an ISO 8601 time (UTC if no zone)."""
    if text is None:
        return None
    from .times import utcnow

    try:
        return utcnow() - parse_duration(text)
    except errors.InvalidTTL:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidTTL(
            f"--since {text!r} is neither a duration (7d, 2h) nor an ISO time "
            "(2026-11-28T09:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _history(config: Config, args: argparse.Namespace) -> int:
    from .lock import lease_history
    from .render import history_csv, history_json, history_table

    if args.limit < 0:
        raise errors.UsageError("--limit must be 0 (all) or more")
    since = _since(args.since)
    events = lease_history(
        args.resource, since, args.principal, args.limit or None, config
    )
    if not events:
        _err("no history" + (f" for {args.resource!r}" if args.resource else ""))
        return 0
    render = {"json": history_json, "csv": history_csv, "table": history_table}
    print(render[args.format](events))
    return 0


def _serve(config: Config, args: argparse.Namespace) -> int:
    from .api.serve import serve_api

    return serve_api(config, args)


def _token(config: Config, args: argparse.Namespace) -> int:
    from .tokens import Tokens

    name = config.default_backend
    if name == "http":
        raise errors.UnsupportedOperation(
            "tokens are managed where the store's credentials are (a config "
            "with the store's backend), or in Slack with /stormlock token"
        )
    mine = config.settings("-").principal  # [default] principal
    principal = args.principal or mine
    with _backend(config, name) as backend:
        tokens = Tokens(backend)
        if args.action == "create":
            secret, _ = tokens.create(
                args.name,
                principal,
                args.resources,
                args.read_only,
                _ttl(args.expires),
                args.delegate,
                created_by=mine,
            )
            print(secret)
            return 0
        if args.action == "revoke":
            if not tokens.revoke(args.name, principal):
                _err(f"{principal} has no token named {args.name!r}; nothing revoked")
                return errors.EXIT_NOT_HELD
            return 0
        found = tokens.list(args.principal)
    from .render import token_json, token_table

    if args.format == "json":
        print(token_json(found))
    elif found:
        print(token_table(found))
    else:
        _err("no tokens")
    return 0


def _wait_as_typed(args: argparse.Namespace) -> None:
    """`--wait prod-db`, as people type it, is `--wait` alone (the default
    wait) then the resource; `--wait 10m prod-db` waits 10 minutes. A word
    that starts like a number is a duration, or an error, never a name."""
    wait = args.wait
    if wait is not None and not (wait[:1].isdigit() or attempts_a_duration(wait)):
        if args.cmd == "acquire":
            args.resource = [wait, *args.resource]
        elif args.resource is None:
            args.resource = wait
        else:
            raise errors.UsageError(
                f"--wait takes a duration, not {wait!r}: "
                f"e.g. --wait 10m {args.resource}"
            )
        args.wait = DEFAULT_WAIT
    if not args.resource:
        raise errors.UsageError(
            f"which resource? e.g. stormlock {args.cmd} prod-db"
            + (" -- COMMAND" if args.cmd == "run" else "")
        )


def _dispatch(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.cmd == "serve":
        return _serve(config, args)
    if args.cmd == "token":
        return _token(config, args)
    if args.cmd == "list":
        return _list(config, args)
    if args.cmd == "history":
        return _history(config, args)
    if args.cmd == "setup":
        return _setup(config, args.target)
    if args.cmd == "doctor":
        return _doctor(config, args.target)
    if args.cmd == "run":
        command = args.command_after_dashes or list(args.command)
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            raise errors.UsageError(
                "run needs a command: stormlock run RESOURCE -- COMMAND"
            )
    if args.cmd in ("acquire", "run"):
        _wait_as_typed(args)
    if args.cmd in ("acquire", "release", "renew", "run"):
        from .history import set_default_source  # changes are recorded

        set_default_source("cli")
    if args.cmd == "acquire":
        from .sets import check_set, split_names

        names = split_names(args.resource)
        if len(args.resource) > 1 or len(names) > 1:
            args.resource = ",".join(check_set(names))
        else:
            args.resource = args.resource[0]
    target = resolve(config, args.resource)
    lock = _lock(config, target)
    try:
        implicit = config.path is None
        if args.cmd == "acquire":
            code = _acquire(lock, args, target.settings.backend)
            if implicit:
                _private_store_note(lock.backend)
            return code
        if args.cmd == "release":
            if lock.release(args.lease_id) is False:
                _err(f"that lease is not active on {lock.resource!r}; nothing released")
            return 0
        if args.cmd == "renew":
            lock.renew(args.lease_id, _ttl(args.ttl))
            return 0
        if args.cmd == "current":
            return _current(lock, args)
        if args.cmd == "queue":
            return _queue(lock, args)
        if args.cmd == "is-held":
            return 0 if lock.is_current(args.lease_id) else errors.EXIT_NOT_HELD
        if args.cmd == "run":
            from .runner import run_command

            started = (lambda: _private_store_note(lock.backend)) if implicit else None
            return run_command(
                lock, command, _ttl(args.ttl), _ttl(args.wait), args.note, started
            )
        raise errors.UsageError(f"unknown command {args.cmd!r}")
    finally:
        lock.backend.close()


def _command_index(argv: list[str]) -> int | None:
    """Where the subcommand stands in `argv` (past global options), if any."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in ("-c", "--config"):
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return index
    return None


def _split_run_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For `run`, everything after the first `--` is the command, so that
    options may come after the resource: `run db --ttl 1h -- make deploy`."""
    index = _command_index(argv)
    if index is not None and argv[index] == "run" and "--" in argv[index:]:
        dashes = argv.index("--", index)
        return argv[:dashes], argv[dashes + 1 :]
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    arguments, command = _split_run_command(
        list(sys.argv[1:] if argv is None else argv)
    )
    args = _build_parser().parse_args(arguments)
    if command is not None:
        args.command_after_dashes = command
    return errors.run_main(PROG, lambda: _dispatch(args))


def run() -> None:
    """Entry point kept for compatibility with the original tool."""
    sys.exit(main())


if __name__ == "__main__":
    run()
