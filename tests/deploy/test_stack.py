"""The deployment for real: the images built, and the compose stack brought up the way a new
user on a machine without a GPU brings it up,

    docker compose -f docker-compose.yml -f deploy/compose.cpu.yml --profile redis up

on an empty models volume, with the test's override (tests/deploy/compose.host.yml): host
network and 127.0.0.1 only, free ports, Prometheus and Redis from Debian's packages. The
models job trains the tiny preset; the server runs two workers with the owned session store.

These machines reach Debian's archive and PyPI but no image registry, through a proxy that
intercepts TLS: the base image comes from deploy/base-image.sh, the proxy's CA from the
host's store goes in through the CA_CERTIFICATES build input, and every wheel from a local
folder (deploy/wheels.sh, PIP_NO_INDEX=1), so that the builds ask no index at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from compiled_build import compiled_modules
from deploytools import DASHBOARD, ROOT, expressions
from dockerd import apt_install
from processes import free_port
from prometheus_client.parser import text_string_to_metric_families

from rnnserve.client.client import RnnClient, sine_input

pytestmark = [
    pytest.mark.timeout(2400),  # the first test builds everything; cold: minutes
    pytest.mark.docker,
    # One pytest-xdist worker runs them all: the module's stack is built and started once.
    pytest.mark.xdist_group("docker"),
]

BASE_IMAGE = "rnnserve-base:bookworm"
SERVER_IMAGE = "rnnserve-test:cpu"  # tags of tests/deploy/compose.host.yml
BUILDER_IMAGE = "rnnserve-test-builder"
COMPOSE_FILES = ["docker-compose.yml", "deploy/compose.cpu.yml", "tests/deploy/compose.host.yml"]
SERVICES = ["models", "redis", "rnnserve", "prometheus"]
CELLS = ("rnn", "lstm", "gru")
MODELS = [f"{task}-{cell}" for task in ("sine", "tagger", "seq2seq") for cell in CELLS]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
HOST_CA = Path("/usr/local/share/ca-certificates")
# Debian's python3, the interpreter of BASE_IMAGE: the wheels are resolved for it.
DEBIAN_PYTHON = "/usr/bin/python3"
BUILD_LIMIT_S = 1500  # cold: base image, every wheel, apt-get in the test images
READY_LIMIT_S = 180
SCRAPE_LIMIT_S = 60


@dataclass
class Stack:
    env: dict[str, str]
    project: str
    grpc: str  # 127.0.0.1:port of the server
    rest_url: str
    metrics_url: str
    prometheus_url: str

    def compose(self, *args: str, timeout: float = 300) -> str:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", path)]
        command = ["docker", "compose", "-p", self.project, *files, "--profile", "redis", *args]
        return run(command, self.env, timeout)

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def inspect(self, service: str, template: str) -> str:
        return run(["docker", "inspect", "-f", template, self.container(service)], self.env)

    def logs(self, service: str) -> str:
        command = ["docker", "logs", self.container(service)]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr

    def query(self, path: str, **params: str) -> dict:
        """Prometheus's answer; a refused query's too (HTTP 400 with the error in its body)."""
        url = f"{self.prometheus_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as refused:
            return json.load(refused)


def run(command: list[str], env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def timed(label: str, command: list[str], env: dict[str, str], timeout: float) -> str:
    started = time.monotonic()
    output = run(command, env, timeout)
    print(f"{label}: {time.monotonic() - started:.0f} s")
    return output


@pytest.fixture(scope="module")
def build_env(docker_env: dict[str, str]) -> dict[str, str]:
    """The base image made, the wheels and the host's CA certificates in the build inputs,
    and the environment whose variables docker-compose.yml passes as build arguments."""
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    timed("base image", ["deploy/base-image.sh", "--no-pull", BASE_IMAGE], docker_env, 600)
    timed("wheels", ["deploy/wheels.sh"], {**docker_env, "PYTHON": DEBIAN_PYTHON}, 900)
    for certificate in HOST_CA.glob("*.crt"):
        shutil.copy(certificate, ROOT / "deploy" / "ca-certificates" / certificate.name)
    return {**docker_env, "PYTHON_IMAGE": BASE_IMAGE, "BASE_IMAGE": BASE_IMAGE, "PIP_NO_INDEX": "1"}


@pytest.fixture(scope="module")
def stack(build_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    grpc_port, http_port, metrics_port, redis_port, prometheus_port = (
        free_port() for _ in range(5)
    )
    config = tmp_path_factory.mktemp("prometheus") / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(f"127.0.0.1:{metrics_port}")))
    env = {
        **build_env,
        "RNNSERVE_BUILD_PRESET": "tiny",
        "RNNSERVE_WORKERS": "2",
        "RNNSERVE_STATE_STORE": "owned",
        "TEST_GRPC_PORT": str(grpc_port),
        "TEST_HTTP_PORT": str(http_port),
        "TEST_METRICS_PORT": str(metrics_port),
        "TEST_REDIS_PORT": str(redis_port),
        "TEST_PROMETHEUS_PORT": str(prometheus_port),
        "TEST_PROMETHEUS_CONFIG": str(config),
    }
    stack = Stack(
        env,
        f"rnnserve-test-{grpc_port}",  # its own volumes: the models volume starts empty
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{http_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        f"http://127.0.0.1:{prometheus_port}",
    )
    started = time.monotonic()
    stack.compose("build", timeout=BUILD_LIMIT_S)
    print(f"docker compose build: {time.monotonic() - started:.0f} s")
    try:
        started = time.monotonic()
        stack.compose("up", "--detach", timeout=READY_LIMIT_S)
        wait_until_healthy(stack)
        print(f"docker compose up until healthy: {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.compose("down", "--volumes", "--timeout", "60")


def prometheus_config(target: str) -> dict:
    """deploy/prometheus/prometheus.yml scraping `target` every second. Rule files are left
    out: the alert rules' expressions are evaluated through the query API instead."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config.pop("rule_files", None)
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


def wait_until_healthy(stack: Stack) -> None:
    deadline = time.monotonic() + READY_LIMIT_S
    while (health := stack.inspect("rnnserve", "{{.State.Health.Status}}").strip()) != "healthy":
        if health == "unhealthy" or time.monotonic() > deadline:
            pytest.fail(f"the server container is {health}:\n{stack.logs('rnnserve')[-4000:]}")
        time.sleep(1)


# The images.


def test_classic_builder_builds_only_the_cpu_server_stages(build_env: dict[str, str]) -> None:
    """Without BuildKit every stage before the target is built: for server-cpu that is no CUDA
    base and no torch."""
    command = [
        "docker", "build", "--network", "host", "--target", "server-cpu",
        "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "--build-arg", "PIP_NO_INDEX=1",
        "--tag", f"{SERVER_IMAGE}-classic", ".",
    ]  # fmt: skip
    output = timed(
        "classic build of server-cpu", command, {**build_env, "DOCKER_BUILDKIT": "0"}, 900
    )
    stages = re.findall(r"^Step \d+/\d+ : FROM \S+ AS (\S+)$", output, flags=re.M)
    assert stages == ["runtime", "deps-cpu", "wheel", "server-cpu"]


def test_server_image_is_small_and_has_no_torch(stack: Stack) -> None:
    sizes = {
        image: int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image], stack.env))
        for image in (SERVER_IMAGE, BUILDER_IMAGE, BASE_IMAGE)
    }
    print("image sizes:", {image: f"{size / 1e6:.0f} MB" for image, size in sizes.items()})
    assert sizes[SERVER_IMAGE] < 450e6
    probe = "import onnxruntime, importlib.util as u; assert not u.find_spec('torch')"
    run(
        ["docker", "run", "--rm", "--network", "host", SERVER_IMAGE, "python3", "-c", probe],
        stack.env,
    )


def test_server_image_runs_the_compiled_modules(stack: Stack) -> None:
    """The server image ships the server part as mypyc compiled it, not as Python."""
    probe = (
        "import importlib, sys, sysconfig; suffix = sysconfig.get_config_var('EXT_SUFFIX'); "
        "python = [n for n in sys.argv[1:] if not importlib.import_module(n).__file__"
        ".endswith(suffix)]; assert not python, python"
    )
    run(
        ["docker", "run", "--rm", "--network", "host", SERVER_IMAGE, "python3", "-c", probe,
         *compiled_modules()], stack.env,
    )  # fmt: skip


@pytest.mark.parametrize(("cpus", "polls"), [("1", False), ("2", True)])
def test_auto_polling_and_workers_follow_a_containers_cpu_quota(
    stack: Stack, cpus: str, polls: bool
) -> None:
    """`--busy-poll-us auto` and `--workers auto` read the CPU limit from the container's
    control group: polling under a limit of one CPU would spend the quota grpc's threads
    need, and a worker per host core under a limit would be throttled together."""
    if polls and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this machine has one CPU: no container may use two")
    probe = (
        "from rnnserve.service.settings import Settings; "
        "settings = Settings(workers='auto'); print(settings.busy_poll_us, settings.workers)"
    )
    window, workers = run(
        ["docker", "run", "--rm", "--network", "host", "--cpus", cpus, SERVER_IMAGE,
         "python3", "-c", probe], stack.env,
    ).split()  # fmt: skip
    assert (int(window) > 0) == polls, window
    assert workers == cpus


def test_images_trust_the_extra_ca_certificates(stack: Stack) -> None:
    certificates = sorted(HOST_CA.glob("*.crt"))
    if not certificates:
        pytest.skip(f"the host has no extra CA certificates in {HOST_CA}")
    bundle = run(
        ["docker", "run", "--rm", "--network", "host", SERVER_IMAGE,
         "cat", "/etc/ssl/certs/ca-certificates.crt"], stack.env,
    )  # fmt: skip
    for certificate in certificates:
        body = "".join(certificate.read_text().split("-----")[2].split())
        assert body in "".join(bundle.split()), certificate.name


# The stack.


def test_models_job_trained_into_the_empty_volume_and_exited_0(stack: Stack) -> None:
    assert stack.inspect("models", "{{.State.ExitCode}}").strip() == "0"
    assert "building the default models (tiny preset) into /models" in stack.logs("models")


def test_server_runs_as_rnnserve_with_a_home(stack: Stack) -> None:
    """onnxruntime keeps its telemetry device id in the home; without one it warns."""
    whoami = ["docker", "exec", stack.container("rnnserve"), "sh", "-c", 'id; test -w "$HOME"']
    assert run(whoami, stack.env).startswith("uid=10001(rnnserve) gid=10001(rnnserve)")
    assert "Failed to persist telemetry" not in stack.logs("rnnserve")


def test_server_serves_every_model(stack: Stack) -> None:
    with RnnClient(stack.grpc) as client:
        assert client.server_ready()
        assert {name: client.model_ready(name) for name in MODELS} == dict.fromkeys(MODELS, True)


def test_rest_answers_beside_grpc(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.rest_url}/v2/health/ready", timeout=10) as ready:
        assert ready.status == 200
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": ["hello"]}]}).encode()  # fmt: skip
    request = urllib.request.Request(f"{stack.rest_url}/v2/models/tagger-gru/infer", body)
    with urllib.request.urlopen(request, timeout=30) as answer:
        outputs = {output["name"]: output["data"] for output in json.load(answer)["outputs"]}
    assert outputs["text_out"] == ["ohlol"]


def test_client_drives_the_three_tasks(stack: Stack) -> None:
    with RnnClient(stack.grpc) as client:
        y, states = client.infer_sine(np.sin(np.linspace(0.0, 6.0, 40)), model="sine-lstm")
        assert y.shape == (1, 40, 1) and set(states) == {"h0", "c0"}
        for cell in CELLS:
            assert client.tag("hello", model=f"tagger-{cell}") == "ohlol"
        assert isinstance(client.translate("22 nov 2026", model="seq2seq-gru"), str)


def test_a_sequence_continues_across_reconnects(stack: Stack) -> None:
    """Each chunk on a new connection, which lands on either worker: the owned store hands the
    state over, and the chunks' answers are the whole sequence's. Sequences of 4 chunks go on
    until one chunk has changed worker (each sequence does with odds 7/8 once both workers
    listen; on a loaded machine the second may still be loading its models), at most 64."""
    x = np.sin(np.linspace(0.0, 8.0, 48)).astype(np.float32)
    with RnnClient(stack.grpc) as client:
        whole, _ = client.infer_sine(x, model="sine-gru")
    deadline = time.monotonic() + 120
    for sequence in range(64):
        chunks = np.array_split(x, 4)
        answers = []
        for i, chunk in enumerate(chunks):
            parameters = {"sequence_id": 7000 + sequence, "sequence_start": i == 0}
            if i == len(chunks) - 1:
                parameters["sequence_end"] = True
            with RnnClient(stack.grpc) as client:
                out = client.infer("sine-gru", {"x": sine_input(chunk)}, ["y"], parameters)
            answers.append(out["y"])
        np.testing.assert_allclose(np.concatenate(answers, axis=1), whole, rtol=1e-5, atol=1e-6)
        if metric_sum(stack, "rnnserve_sessions_handed_over_total") > 0 or (
            time.monotonic() > deadline
        ):
            break
    assert metric_sum(stack, "rnnserve_sessions_handed_over_total") > 0


def metric_sum(stack: Stack, name: str) -> float:
    with urllib.request.urlopen(stack.metrics_url, timeout=10) as response:
        scrape = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
        if sample.name == name
    )


# Prometheus, the dashboard and the alert rules.


def test_prometheus_scraped_the_requests(stack: Stack) -> None:
    deadline = time.monotonic() + SCRAPE_LIMIT_S
    while not stack.query("/api/v1/query", query="rnnserve_requests_total")["data"]["result"]:
        assert time.monotonic() < deadline, "Prometheus has no rnnserve_requests_total"
        time.sleep(1)


def test_every_dashboard_expression_evaluates(stack: Stack) -> None:
    """Grafana cannot be had here: its panels' PromQL runs against Prometheus instead, with
    the template variables as Grafana fills them (all models, a rate window)."""
    for expr in expressions(json.loads(DASHBOARD.read_text())):
        if match := re.fullmatch(r"label_values\((\w+), (\w+)\)", expr):
            values = stack.query(f"/api/v1/label/{match[2]}/values", **{"match[]": match[1]})
            assert set(MODELS) <= set(values["data"]), expr
            continue
        promql = expr.replace("$model", ".*").replace("$__rate_interval", "1m")
        assert error_of(stack, promql) == "", expr


def test_every_alert_rule_expression_evaluates(stack: Stack) -> None:
    if not ALERT_RULES.exists():
        pytest.skip(f"no {ALERT_RULES.relative_to(ROOT)}: no alert rules to evaluate")
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        assert error_of(stack, rule["expr"]) == "", rule


def error_of(stack: Stack, promql: str) -> str:
    answer = stack.query("/api/v1/query", query=promql)
    return "" if answer["status"] == "success" else answer.get("error", str(answer))


# The end.


def test_every_container_exits_0_when_the_stack_stops(stack: Stack) -> None:
    stack.compose("stop", timeout=120)
    listing = stack.compose("ps", "--all", "--format", "json")
    states = [json.loads(line) for line in listing.splitlines()]
    assert {state["Service"]: (state["State"], state["ExitCode"]) for state in states} == {
        service: ("exited", 0) for service in SERVICES
    }
