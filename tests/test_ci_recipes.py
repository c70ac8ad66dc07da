"""The CI recipes in deploy/ci/ run as GitHub Actions and GitLab CI would run
them: their scripts, with their inputs in the environment, against the API
(`stormlock serve`). Only the package install step is skipped: the test's
own installation is on PATH."""

from __future__ import annotations

import subprocess
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
