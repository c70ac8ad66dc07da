"""The CI recipes in deploy/ci/ run as GitHub Actions and GitLab CI would run
them: their scripts, with their inputs in the environment, against the API
(`stormlock serve`). Only the package install step is skipped: the test's
own installation is on PATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from stormlock.testing.env import clean_env
from stormlock.testing.servers import ApiServer

CI = Path(__file__).resolve().parent.parent / "deploy" / "ci"
GITHUB = CI / "github" / "stormlock-run" / "action.yml"
GITLAB = CI / "gitlab" / "stormlock.gitlab-ci.yml"
# A note that would run commands if the recipe pasted it into its script.
HOSTILE_NOTE = 'deploy $(touch pwned) `touch pwned2` "; touch pwned3'


@pytest.fixture
def api(api_server: ApiServer) -> ApiServer:
    api_server.reset()
    return api_server


def github_script() -> tuple[str, dict[str, str]]:
    action: dict[str, Any] = yaml.safe_load(GITHUB.read_text())
    assert action["runs"]["using"] == "composite"
    *_, step = action["runs"]["steps"]
    assert "${{" not in step["run"], "inputs must reach the script via env only"
    return step["run"], step["env"]


def run_bash(
    script: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    full = clean_env(cwd)
    full.update(env)
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def history_of(api: ApiServer, token: str, resource: str) -> list[dict[str, Any]]:
    response = requests.get(
        api.url + "/v1/history",
        params={"resource": resource},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_the_github_action_runs_the_command_under_a_lease(
    api: ApiServer, tmp_path: Path
) -> None:
    script, declared = github_script()
    token = api.token("gha", "ci-deploy")
    env = {
        "STORMLOCK_TOKEN": token,
        "LEASE_URL": api.url,
        "LEASE_RESOURCE": "prod-db",
        "LEASE_TTL": "30s",
        "LEASE_WAIT": "",
        "LEASE_NOTE": HOSTILE_NOTE,
        "LEASE_RUN": 'echo "$STORMLOCK_RESOURCE $STORMLOCK_FENCE" > out; exit 3',
        "LEASE_CONFIG": str(tmp_path / "stormlock.cfg"),
    }
    assert set(env) == set(declared), "the test sets exactly the action's env"
    result = run_bash(script, env, tmp_path)
    assert result.returncode == 3, result.stderr  # the command's own exit code
    resource, fence = (tmp_path / "out").read_text().split()
    assert resource == "prod-db" and int(fence) > 0
    assert not list(tmp_path.glob("pwned*")), "the note ran as shell"
    events = history_of(api, token, "prod-db")
    assert [e["event"] for e in events][:1] == ["acquired"]
    assert events[-1]["event"] == "released"
    assert {e["note"] for e in events} == {HOSTILE_NOTE}
    assert {(e["source"], e["actor"]) for e in events} == {("api", "gha")}


def test_the_github_action_fails_on_a_held_resource_without_running(
    api: ApiServer, tmp_path: Path
) -> None:
    script, _ = github_script()
    holder = api.token("holder", "alice")
    requests.post(
        api.url + "/v1/acquire",
        json={"resource": "prod-db", "ttl": "1h"},
        headers={"Authorization": f"Bearer {holder}"},
        timeout=10,
    ).raise_for_status()
    env = {
        "STORMLOCK_TOKEN": api.token("gha", "ci-deploy"),
        "LEASE_URL": api.url,
        "LEASE_RESOURCE": "prod-db",
        "LEASE_TTL": "30s",
        "LEASE_WAIT": "1s",
        "LEASE_NOTE": "",
        "LEASE_RUN": "touch ran",
        "LEASE_CONFIG": str(tmp_path / "stormlock.cfg"),
    }
    result = run_bash(script, env, tmp_path)
    assert result.returncode == 2 and "alice" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_the_gitlab_template_runs_the_command_under_a_lease(
    api: ApiServer, tmp_path: Path
) -> None:
    template: dict[str, Any] = yaml.safe_load(GITLAB.read_text())
    job = template[".stormlock-run"]
    [script] = job["script"]
    token = api.token("gitlab", "ci-deploy")
    env = {
        **{key: str(value) for key, value in job["variables"].items()},
        "CI_PROJECT_DIR": str(tmp_path),
        "STORMLOCK_URL": api.url,
        "STORMLOCK_TOKEN": token,
        "LEASE_RESOURCE": "staging-1",
        "LEASE_NOTE": HOSTILE_NOTE,
        "LEASE_RUN": 'echo "$STORMLOCK_RESOURCE" > out',
    }
    result = run_bash(script, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_text().strip() == "staging-1"
    assert not list(tmp_path.glob("pwned*"))
    events = history_of(api, token, "staging-1")
    assert [e["event"] for e in events] == ["acquired", "released"]
    assert {e["note"] for e in events} == {HOSTILE_NOTE}


def test_each_recipes_install_step_gets_this_tool_from_a_wheel(tmp_path: Path) -> None:
    """The install steps the tests above skip, run as the recipes run them:
    in a fresh environment, with the package input pointing at a wheel built
    from this tree (./scripts/wheel). What they install has `run` and the
    http backend, which the original `stormlock` 0.4.1 has not."""
    root = Path(__file__).resolve().parent.parent
    dist = tmp_path / "dist"
    _pip("wheel", "--no-deps", "--wheel-dir", str(dist), str(root))
    (wheel,) = dist.glob("stormlock_leases-*.whl")
    links = tmp_path / "links"
    _pip("download", "--no-deps", "--dest", str(links), "urllib3>=2.0")
    action: dict[str, Any] = yaml.safe_load(GITHUB.read_text())
    github_install = action["runs"]["steps"][0]
    gitlab: dict[str, Any] = yaml.safe_load(GITLAB.read_text())
    defaults = {
        "github": action["inputs"]["package"]["default"],
        "gitlab": gitlab[".stormlock-run"]["variables"]["LEASE_PACKAGE"],
    }
    assert set(defaults.values()) == {"stormlock-leases[http]"}, defaults
    steps = {
        "github": github_install["run"],
        "gitlab": "\n".join(gitlab[".stormlock-run"]["before_script"]),
    }
    for recipe, step in steps.items():
        venv = tmp_path / f"venv-{recipe}"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "LEASE_PACKAGE": f"{wheel}[http]",
            # The http extra's one dependency, fetched once (from PyPI).
            "PIP_FIND_LINKS": str(links),
            "PIP_NO_INDEX": "1",
        }
        installed = run_bash(step, env, tmp_path)
        assert installed.returncode == 0, (recipe, installed.stderr)
        version = run_bash("stormlock --version", env, tmp_path)
        assert version.stdout.startswith("stormlock 1."), (recipe, version.stdout)
        has_run = run_bash("stormlock run --help", env, tmp_path)
        assert has_run.returncode == 0 and "COMMAND" in has_run.stdout, recipe
        http = run_bash(
            "python3 -c 'from stormlock.backends.http import Http'", env, tmp_path
        )
        assert http.returncode == 0, (recipe, http.stderr)


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--quiet", *args], check=True, timeout=300
    )
