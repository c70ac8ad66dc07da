"""The local shell adapter, driven through piped stdin like a user at a terminal."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import yaml

from stormlock.errors import EXIT_UNKNOWN_BACKEND
from stormlock.testing.env import BIN, CliRunner, clean_env
from tests.support import one_line_error

ROOT = Path(__file__).resolve().parent.parent.parent


def shell(home: Path, lines: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "stormlock-bot"), "shell", *args],
        input="\n".join(lines) + "\n",
        cwd=home,
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_shell_works_with_no_config_and_no_tokens(home: Path, cli: CliRunner) -> None:
    result = shell(
        home,
        [
            "/stormlock acquire prod-db 2h applying terraform",
            "/user bob",
            "/stormlock acquire prod-db",
            "/stormlock list",
        ],
        "--user",
        "alice",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[only alice sees]" in out and "Lease id" in out
    assert "[#general]" in out and "@alice took *prod-db*" in out
    assert "[only bob sees]" in out and "held by @alice" in out
    assert "Traceback" not in out + result.stderr
    # The lease is real: the CLI, on the same embedded SQLite default, sees it.
    current = cli("current", "prod-db", "-f", "json")
    assert current.returncode == 0
    assert f"alice@{socket.gethostname()}" in current.stdout


def test_shell_buttons_and_home(home: Path, cli: CliRunner) -> None:
    result = shell(
        home,
        ["acquire db 1h", "/home", "/press 3", "/stormlock who db"],
        "--user",
        "alice",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[App Home of alice]" in out and "Your leases" in out
    home_buttons = out.split("[App Home of alice]")[1]
    # The first Renew is the lease's own length, never the default day.
    assert "[1: Renew 1h] [2: Renew 4h] [3: Release]" in home_buttons
    assert "You hold nothing" in out, "the Home tab is redrawn after its button"
    assert "*db* is free" in out
    assert cli("current", "db").returncode == 1


def test_shell_shares_leases_with_the_cli(home: Path, cli: CliRunner) -> None:
    import getpass

    lease_id = cli("acquire", "db", "--note", "from the terminal").stdout.strip()
    result = shell(home, ["who db", "release db"])
    out = result.stdout
    assert "from the terminal" in out
    assert "You released *db*" in out, "the holder releases without the lease id"
    assert lease_id not in out.split("You released")[0].split("[#general]")[-1]
    assert getpass.getuser() in out
    assert cli("current", "db").returncode == 1


def test_manifest_declares_what_the_bot_needs() -> None:
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    features = manifest["features"]
    [command] = features["slash_commands"]
    assert command["command"] == "/stormlock" and command["usage_hint"]
    assert features["app_home"]["home_tab_enabled"] is True
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert "app_home_opened" in settings["event_subscriptions"]["bot_events"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {
        "commands",
        "chat:write",
        "users:read",
        "users:read.email",
        "im:write",
    } <= scopes
    assert command["url"].endswith("/slack/events")
    assert settings["interactivity"]["request_url"].endswith("/slack/events")


def test_serve_without_tokens_is_a_one_line_error(home: Path) -> None:
    for args in (["serve"], ["socket"]):
        result = subprocess.run(
            [str(BIN / "stormlock-bot"), *args],
            cwd=home,
            env=clean_env(home),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 68
        assert len(result.stderr.strip().splitlines()) == 1
        assert "SLACK_" in result.stderr


def test_the_shell_offers_no_wait_list(home: Path, cli: CliRunner) -> None:
    cli("acquire", "busy")
    result = shell(home, ["acquire busy", "notify busy"], "--user", "bob")
    assert result.returncode == 0, result.stderr
    assert "held by" in result.stdout
    assert "Notify me when free" not in result.stdout, "no button that cannot work"
    assert "Wait lists live in Slack" in result.stdout


def test_the_bot_without_its_extra_says_how_to_install_it(
    home: Path, tmp_path: Path
) -> None:
    # A module of that name that cannot be imported, as when the extra is absent.
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "slack_bolt.py").write_text(
        "raise ModuleNotFoundError('no slack_bolt', name='slack_bolt')\n"
    )
    env = {**clean_env(home), "PYTHONPATH": str(stub)}
    for args in (["serve"], ["socket"]):
        result = subprocess.run(
            [str(BIN / "stormlock-bot"), *args],
            env={
                **env,
                "SLACK_BOT_TOKEN": "xoxb-1",
                "SLACK_SIGNING_SECRET": "s",
                "SLACK_APP_TOKEN": "xapp-1",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=home,
        )
        assert result.returncode == EXIT_UNKNOWN_BACKEND, result.stderr
        line = one_line_error(result.stderr)
        assert "pip install 'stormlock-leases[bot]'" in line


def test_the_shell_has_line_editing_and_history(home: Path) -> None:
    """At a terminal, Up-arrow brings back the last line (no `^[[A`)."""
    import contextlib
    import os
    import pty
    import select
    import signal

    pid, fd = pty.fork()
    if pid == 0:  # the child: the shell on the terminal
        os.chdir(home)
        program = str(BIN / "stormlock-bot")
        os.execve(program, [program, "shell"], clean_env(home))  # noqa: S606
    seen = b""

    def read_until(marker: bytes, then: bytes = b"") -> None:
        """Until `marker` is seen, and `then` after it."""
        nonlocal seen
        while marker not in seen or then not in seen.split(marker, 1)[1]:
            ready, _, _ = select.select([fd], [], [], 30)
            assert ready, f"no {marker!r} in {seen[-300:]!r}"
            seen += os.read(fd, 4096)

    quit = False
    try:
        read_until(b"> ")
        os.write(fd, b"list\r")
        # Up to the next prompt: readline has the terminal again.
        read_until(b"Nothing is held", then=b"> ")
        seen = b""
        os.write(fd, b"\x1b[A\r")  # Up-arrow, Enter: the same command again
        read_until(b"Nothing is held")
        assert b"^[[A" not in seen
        os.write(fd, b"/quit\r")
        quit = True
        with contextlib.suppress(OSError):  # EIO once the shell has exited
            while os.read(fd, 4096):
                pass
    finally:
        if not quit:
            os.kill(pid, signal.SIGKILL)  # a failed test must not hang on it
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_shell_offers_only_what_works_in_it(tmp_path: Path) -> None:
    """In-process: its help lists no command it refuses, and it never
    promises a DM (the line's turn) that it cannot send."""
    import io
    from configparser import ConfigParser

    from stormlock.bot.shell import Shell
    from stormlock.config import Config

    parser = ConfigParser(interpolation=None, default_section="\0none")
    parser.read_string(f"[backend.sqlite]\npath = {tmp_path / 'locks.db'}\n")
    out = io.StringIO()
    shell = Shell(Config(parser), "alice", "ops", out)
    try:
        shell.handle("/stormlock help")
        shown = out.getvalue()
        assert "/stormlock acquire" in shown and "/stormlock current" in shown
        for refused in ("notify", "queue", "ask", "board"):
            assert f"/stormlock {refused}" not in shown, refused
        assert "DM you" not in shown
        shell.handle("acquire busy")
        shell.become("bob")
        out.truncate(0)
        shell.handle("queue busy")
        said = out.getvalue()
        assert "DM you" not in said and "stormlock acquire --wait" in said
    finally:
        shell.close()
