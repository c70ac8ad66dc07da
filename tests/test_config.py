from datetime import timedelta
from pathlib import Path

import pytest

from stormlock import Backend, Lease, load_lock
from stormlock.backends import configured_backend, options_for_signature
from stormlock.backends.sqlite import SQLite
from stormlock.config import DEFAULT_TTL, find_config_file, load_config
from stormlock.errors import ConfigError, UnknownBackendError


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("STORMLOCK_CONFIG", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def test_no_config_anywhere_means_builtin_defaults(isolated: Path) -> None:
    config = load_config()
    assert config.path is None
    settings = config.settings("prod-db")
    assert settings.backend == "sqlite"
    assert settings.ttl == DEFAULT_TTL
    assert "@" in settings.principal
    backend = configured_backend(config, "sqlite")
    assert isinstance(backend, SQLite)
    assert backend.path == isolated / ".local/state/stormlock/locks.db"


def test_xdg_state_home_moves_the_default_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    backend = configured_backend(load_config(), "sqlite")
    assert isinstance(backend, SQLite)
    assert backend.path == tmp_path / "state/stormlock/locks.db"


def test_search_order_prefers_current_directory(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path(".stormlock.cfg").write_text("[default]\nttl = 1 hours\n")
    (isolated / ".config").mkdir()
    (isolated / ".config/stormlock.cfg").write_text("[default]\nttl = 2 hours\n")
    assert find_config_file() == Path(".stormlock.cfg")
    Path(".stormlock.cfg").unlink()
    assert find_config_file() == isolated / ".config/stormlock.cfg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(isolated / "elsewhere"))
    assert find_config_file() is None
    (isolated / ".stormlock.cfg").write_text("[default]\n")
    assert find_config_file() == isolated / ".stormlock.cfg"


def test_env_and_explicit_path_override_search(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (isolated / ".stormlock.cfg").write_text("[default]\n")
    other = isolated / "other.cfg"
    other.write_text("[default]\n")
    monkeypatch.setenv("STORMLOCK_CONFIG", str(other))
    assert find_config_file() == other
    assert find_config_file(isolated / ".stormlock.cfg") == isolated / ".stormlock.cfg"


def test_missing_explicit_file_is_an_error(isolated: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(isolated / "nope.cfg")


def test_seed_readme_example_config(isolated: Path) -> None:
    path = isolated / "seed.cfg"
    path.write_text(
        "# Default section\n[default]\nttl = 1 days\nprincipal = me@example.com\n"
        "backend = etcd\n\n[special]\nttl = 30 minutes\nbackend = redis\n\n"
        "[backend.etcd]\nhost = etcd.example.com\n\n"
        "[backend.redis]\nurl = redis://example.com:6379\n"
    )
    config = load_config(path)
    default = config.settings("anything")
    assert (default.backend, default.ttl, default.principal) == (
        "etcd",
        timedelta(days=1),
        "me@example.com",
    )
    special = config.settings("special")
    assert (special.backend, special.ttl, special.principal) == (
        "redis",
        timedelta(minutes=30),
        "me@example.com",
    )
    assert config.backend_options("redis") == {"url": "redis://example.com:6379"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no section header\n", "not valid INI"),
        ("[default]\nttl = forever\n", "ttl"),
        ("[default]\nttl = 0 minutes\n", "positive"),
        ("[default]\nttl = 2h\nmax_ttl = 1h\n", "max_ttl"),
        ("[default]\n[default]\n", "not valid INI"),
    ],
)
def test_invalid_config_is_one_line_error(
    isolated: Path, text: str, message: str
) -> None:
    path = isolated / "bad.cfg"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path).settings("x")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_percent_signs_are_taken_literally(isolated: Path) -> None:
    path = isolated / "pct.cfg"
    path.write_text("[backend.sqlite]\npath = %(home)s/x%.db\n")
    assert load_config(path).backend_options("sqlite")["path"] == "%(home)s/x%.db"


class Typed(Backend):
    def __init__(
        self,
        name: str,
        port: int = 1,
        ratio: float = 0.5,
        tls: bool = False,
        user: str | None = None,
    ) -> None:
        self.args = (name, port, ratio, tls, user)

    def lock(self, resource: str, principal: str, ttl: timedelta) -> str:
        raise NotImplementedError

    def unlock(self, resource: str, lease_id: str) -> None:
        raise NotImplementedError

    def renew(self, resource: str, lease_id: str, ttl: timedelta) -> None:
        raise NotImplementedError

    def current(self, resource: str) -> Lease | None:
        raise NotImplementedError


def test_options_map_onto_typed_signature() -> None:
    kwargs = options_for_signature(
        Typed, {"name": "n", "port": "42", "ratio": "1.5", "tls": "yes"}, "[x]"
    )
    assert Typed(**kwargs).args == ("n", 42, 1.5, True, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "n", "port": "many"}, "not a valid int"),
        ({"name": "n", "tls": "maybe"}, "not a valid bool"),
        ({"name": "n", "hots": "x"}, "unknown option 'hots'"),
        ({"port": "1"}, "needs option 'name'"),
    ],
)
def test_bad_backend_options_are_config_errors(
    options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        options_for_signature(Typed, options, "[backend.typed]")


def test_unknown_backend_lists_the_available_ones(isolated: Path) -> None:
    path = isolated / "c.cfg"
    path.write_text("[default]\nbackend = nosuch\n")
    with pytest.raises(UnknownBackendError) as info:
        load_lock("x", path)
    assert "available:" in str(info.value)
    assert "sqlite" in str(info.value)


def test_capability_table_in_docs_matches_the_code() -> None:
    from stormlock.capabilities import embed

    path = Path(__file__).resolve().parent.parent / "docs" / "backends.md"
    text = path.read_text()
    assert embed(text) == text, (
        "run: python -m stormlock.capabilities --write docs/backends.md"
    )


def test_comments_after_values_are_comments_and_an_escaped_hash_is_kept(
    isolated: Path,
) -> None:
    path = isolated / "comments.cfg"
    path.write_text(
        "[default]\nttl = 2h            # the usual\nprincipal = ci@example.com ; us\n"
        "[pool.staging]\nmembers = s-1, s-2   # two for now\n"
        "[ticket]\nnote = fix \\# 123 and a \\; too\nttl=30m#no space: not a comment\n"
        "[bot]\nchannels = C0OPS, #deploys ; and #ops, later\n"
    )
    config = load_config(path)
    assert config.settings("x").ttl == timedelta(hours=2)
    assert config.settings("x").principal == "ci@example.com"
    assert config.pools()["staging"].members == ("s-1", "s-2")
    assert config.value("ticket", "note") == "fix # 123 and a ; too"
    assert config.value(None, "channels", "bot") == "C0OPS, #deploys"
    with pytest.raises(ConfigError, match="30m#no"):
        config.settings("ticket")


def _ini_examples() -> list[tuple[str, str]]:
    root = Path(__file__).resolve().parent.parent
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = path.read_text()
        for n, block in enumerate(text.split("```ini\n")[1:]):
            found.append((f"{path.name}#{n + 1}", block.split("```", 1)[0]))
    return found


@pytest.mark.parametrize(("where", "text"), _ini_examples(), ids=lambda x: str(x))
def test_every_config_example_in_the_docs_loads(
    isolated: Path, where: str, text: str
) -> None:
    """Pasted as it is: every value read as the tools read it (resources,
    pools, groups, backend options by signature, [bot] and [api])."""
    from stormlock.backends import find_backend
    from stormlock.bot.settings import BotSettings

    path = isolated / "example.cfg"
    path.write_text(text)
    config = load_config(path)
    for resource in [*config.resource_sections(), *config.pools(), *config.groups()]:
        config.settings(resource)
    for section in config.parser.sections():
        if section.startswith("backend.") and section.count(".") == 1:
            name = section.split(".", 1)[1]
            options_for_signature(
                find_backend(name), config.backend_options(name), f"[{section}]"
            )
    if config.parser.has_section("bot"):
        settings = BotSettings.load(config, env={})
        for attribute, value in vars(BotSettings).items():
            if isinstance(value, property):
                getattr(settings, attribute)
    if config.parser.has_section("api"):
        from stormlock.api import app, service

        service._failure_limit(config)
        app._proxies(config)


def test_a_run_that_skipped_backends_says_which_and_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last line of a local run without some servers (CI fails instead)."""
    from types import SimpleNamespace

    from stormlock.testing import servers
    from tests.conftest import pytest_terminal_summary

    missing = {"etcd-x": ("etcd", "apt-get install etcd-server")}
    missing["redis-x"] = ("redis", "apt-get install redis-server")
    monkeypatch.setattr(servers, "INSTALLS", missing)

    def skipped(binary: str) -> SimpleNamespace:
        try:
            servers.find_binary(binary)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            return SimpleNamespace(longrepr=("file", 1, f"Skipped: {exc}"))
        raise AssertionError(f"{binary} found")

    lines: list[str] = []
    stats = {"skipped": [skipped("etcd-x"), skipped("etcd-x"), skipped("redis-x")]}
    pytest_terminal_summary(SimpleNamespace(stats=stats, write_line=lines.append))
    assert lines == [
        "not tested here, their servers are not installed: "
        "etcd (apt-get install etcd-server); redis (apt-get install redis-server)"
    ]
