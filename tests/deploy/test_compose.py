"""docker-compose.yml: valid for Compose v2 and the Compose Specification schema, wiring the
server, the one-shot model build, Prometheus, Grafana and the redis profile together; and the
deployment test's override keeps every container on the host's network at 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from deploytools import ROOT, run, venv_tool

COMPOSE_FILE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "deploy" / "compose.cpu.yml"
TEST_OVERRIDE = ROOT / "tests" / "deploy" / "compose.host.yml"
TEST_ENV = {
    "TEST_GRPC_PORT": "18001",
    "TEST_METRICS_PORT": "18002",
    "TEST_REDIS_PORT": "18003",
    "TEST_PROMETHEUS_PORT": "18004",
    "TEST_PROMETHEUS_CONFIG": "/tmp/prometheus.yml",
    "TEST_HTTP_PORT": "18005",
}


def resolved(
    compose_binary: Path,
    *files: Path,
    profile: str | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """The configuration as Compose itself resolves it, with `env` added to the environment."""
    options = [arg for f in files for arg in ("-f", f)]
    if profile:
        options += ["--profile", profile]
    changed = {**os.environ, **(env or {})}
    environment = {name: value for name, value in changed.items() if value is not None}
    result = run(compose_binary, *options, "config", "--format", "json", env=environment)
    assert result.code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the known-bad variant needs {old!r} in docker-compose.yml"
    path = tmp_path / "docker-compose.yml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_compose_v2_accepts_the_file(compose_binary: Path) -> None:
    result = run(compose_binary, "-f", COMPOSE_FILE, "config", "-q")
    assert result.code == 0, result.output


def test_compose_v2_accepts_the_cpu_override(compose_binary: Path) -> None:
    result = run(compose_binary, "-f", COMPOSE_FILE, "-f", CPU_OVERRIDE, "config", "-q")
    assert result.code == 0, result.output


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    restart: unless-stopped\n", "    restart_policy: unless-stopped\n"),  # unknown key
        ("      models:\n        condition", "      modelz:\n        condition"),  # no such service
    ],
    ids=["unknown-key", "missing-dependency"],
)
def test_compose_v2_rejects_a_broken_file(
    compose_binary: Path, tmp_path: Path, old: str, new: str
) -> None:
    bad = broken_copy(tmp_path, old, new)
    assert run(compose_binary, "-f", bad, "config", "-q").code != 0


def test_compose_spec_schema_accepts_the_file() -> None:
    result = run(
        venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE
    )
    assert result.code == 0, result.output


def test_compose_spec_schema_rejects_a_broken_file(tmp_path: Path) -> None:
    bad = broken_copy(tmp_path, "capabilities: [gpu]", "capabilities: gpu")  # must be a list
    result = run(venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad)
    assert result.code != 0, result.output


def test_server_reserves_a_gpu_and_mounts_the_models(compose_binary: Path) -> None:
    server = resolved(compose_binary, COMPOSE_FILE)["services"]["rnnserve"]
    [device] = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert {
        "type": "volume",
        "source": "models",
        "target": "/models",
        "read_only": True,
    }.items() <= next(v for v in server["volumes"] if v["target"] == "/models").items()
    assert "healthcheck.py" in " ".join(server["healthcheck"]["test"])
    assert server["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert server["build"]["target"] == "server-gpu"


def test_cpu_override_builds_the_cpu_image_without_a_gpu(compose_binary: Path) -> None:
    server = resolved(compose_binary, COMPOSE_FILE, CPU_OVERRIDE)["services"]["rnnserve"]
    assert server["build"]["target"] == "server-cpu"
    assert "deploy" not in server


def test_models_job_builds_into_the_shared_volume(compose_binary: Path) -> None:
    job = resolved(compose_binary, COMPOSE_FILE)["services"]["models"]
    assert job["build"]["target"] == "builder"
    assert [v["source"] for v in job["volumes"]] == ["models"]
    assert job["environment"]["RNNSERVE_BUILD_PRESET"] == "default"


def test_build_inputs_are_taken_from_the_environment_when_set(compose_binary: Path) -> None:
    """The Dockerfile's build arguments pass through; unset ones keep its defaults."""
    plain = resolved(compose_binary, COMPOSE_FILE, env={"PIP_NO_INDEX": None})["services"]
    offline = resolved(compose_binary, COMPOSE_FILE, env={"PIP_NO_INDEX": "1"})["services"]
    for service in ("models", "rnnserve"):
        assert "PIP_NO_INDEX" not in plain[service]["build"].get("args", {})
        assert offline[service]["build"]["args"]["PIP_NO_INDEX"] == "1"


def test_the_test_override_keeps_every_container_on_127_0_0_1(compose_binary: Path) -> None:
    services = resolved(
        compose_binary, COMPOSE_FILE, CPU_OVERRIDE, TEST_OVERRIDE, profile="redis", env=TEST_ENV
    )["services"]
    assert set(services) == {"models", "rnnserve", "prometheus", "redis"}  # no Grafana
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports"), name
        assert service["build"]["network"] == "host", name
    server = services["rnnserve"]["environment"]
    assert server["RNNSERVE_HOST"] == "127.0.0.1"
    assert server["RNNSERVE_REDIS_URL"] == "redis://127.0.0.1:18003/0"
    assert "--web.listen-address=127.0.0.1:18004" in services["prometheus"]["command"]
    assert services["redis"]["command"][1:3] == ["--bind", "127.0.0.1"]


# The host ports, each moved by a variable: (service, port in the container) -> variable.
HOST_PORTS = {
    ("rnnserve", 8000): "RNNSERVE_HTTP_PORT",
    ("rnnserve", 8001): "RNNSERVE_GRPC_PORT",
    ("rnnserve", 8002): "RNNSERVE_METRICS_PORT",
    ("prometheus", 9090): "RNNSERVE_PROMETHEUS_PORT",
    ("grafana", 3000): "RNNSERVE_GRAFANA_PORT",
}


def published(services: dict) -> dict[tuple[str, int], int]:
    return {
        (name, port["target"]): int(port["published"])
        for name, service in services.items()
        for port in service.get("ports", [])
    }


def test_host_ports_default_to_the_containers_own(compose_binary: Path) -> None:
    unset = {variable: None for variable in HOST_PORTS.values()}
    services = resolved(compose_binary, COMPOSE_FILE, env=unset)["services"]

    assert published(services) == {key: key[1] for key in HOST_PORTS}


def test_each_host_port_moves_with_its_variable(compose_binary: Path) -> None:
    """A machine whose ports are taken runs the stack elsewhere; inside, nothing moves."""
    moved = {variable: str(18000 + index) for index, variable in enumerate(HOST_PORTS.values())}
    services = resolved(compose_binary, COMPOSE_FILE, env=moved)["services"]

    assert published(services) == {
        key: int(moved[variable]) for key, variable in HOST_PORTS.items()
    }
    assert "RNNSERVE_HTTP_PORT" not in services["rnnserve"]["environment"]


def test_redis_runs_only_with_its_profile(compose_binary: Path) -> None:
    assert "redis" not in resolved(compose_binary, COMPOSE_FILE)["services"]
    with_redis = resolved(compose_binary, COMPOSE_FILE, profile="redis")["services"]
    assert with_redis["redis"]["profiles"] == ["redis"]
    assert with_redis["rnnserve"]["environment"]["RNNSERVE_REDIS_URL"] == "redis://redis:6379/0"


def test_prometheus_and_grafana_read_their_config_from_deploy(compose_binary: Path) -> None:
    services = resolved(compose_binary, COMPOSE_FILE)["services"]
    sources = {
        Path(v["source"]).relative_to(ROOT).as_posix()
        for name in ("prometheus", "grafana")
        for v in services[name]["volumes"]
        if v["type"] == "bind"
    }
    assert sources == {
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/provisioning",
        "deploy/grafana/dashboards",
    }
    for source in sources:
        assert (ROOT / source).exists(), source
