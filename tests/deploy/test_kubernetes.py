"""deploy/kubernetes/: each overlay renders offline with `kubectl kustomize`; every object it
renders passes the Kubernetes JSON schemas, strictly (no unknown field), of the oldest and the
newest Kubernetes the manifests support (kubernetes-validate, which bundles them); and the
rendered objects hold what the deployment promises: the server's own settings as the pods read
them, probes on the gRPC health service, a stop that leaves time for the drain and the
owned store's hand-over, capacity kept through rollouts and drains, named ports, scraped
metrics, pinned images, restricted pods and resources sized from the benchmarks.

No cluster runs here: what a cluster would add (scheduling, the kubelet's probes, endpoints
leaving before SIGTERM) is the README's to say, not these tests'."""

from __future__ import annotations

import base64
import copy
import functools
import json
import math
import os
import re
import shutil
import tomllib
from collections.abc import Callable, Iterator

import kubernetes_validate
import pytest
import yaml
from deploytools import ROOT, run

from rnnserve.service.sessions.owned.handover import INBOX_POLL_S
from rnnserve.service.settings import Settings

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["trial", "production", "production-cluster"]
# The oldest: 1.30 turns the preStop sleep action on by default (native gRPC probes: 1.27).
VERSIONS = ["1.30", kubernetes_validate.latest_version()]
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# docs/benchmarks/README.md: resident memory of one server with the nine default models and
# no session (scenario 5, "0 idle sessions"), and bytes per idle session at 100,000 sessions.
BASE_RSS_MIB = 95.7
SESSION_BYTES = 1364
# The owned store's clean stop, measured here: 3.7-4.0 s to leave 100,000 states in a
# redis-server on the same 2-core machine; a network and a busy Redis may take 3 times that.
FLUSH_S_PER_SESSION = 4.0 / 100_000
NETWORK_FACTOR = 3
# Endpoints leaving before SIGTERM: EndpointSlices, then kube-proxy on every node.
ENDPOINTS_S = 5


# Rendering and looking things up --------------------------------------------------------


@functools.cache
def kustomize(folder: str) -> list[dict]:
    """The objects `kubectl kustomize` renders (once per folder: the tests change copies)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is missing: the manifests are rendered with `kubectl kustomize`")
    result = run("kubectl", "kustomize", KUBERNETES / folder)
    assert result.code == 0, result.output
    return [item for item in yaml.safe_load_all(result.output) if item]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def objects(overlay: str) -> list[dict]:
    return kustomize(f"overlays/{overlay}")


def the(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def templates(objects: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, its pod template) for every workload."""
    for item in objects:
        if item["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield item, item["spec"]["template"]


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def server_pod(objects: list[dict]) -> dict:
    return the(objects, "Deployment", "rnnserve")["spec"]["template"]


def server(objects: list[dict]) -> dict:
    [container] = [c for c in server_pod(objects)["spec"]["containers"] if c["name"] == "server"]
    return container


def selects(selector: dict[str, str], template: dict) -> bool:
    return selector.items() <= template["metadata"]["labels"].items()


def environment(objects: list[dict], container: dict) -> dict[str, str | dict]:
    """The container's variables: values, and each Secret reference as written."""
    variables: dict[str, str | dict] = {}
    for source in container.get("envFrom", []):
        variables.update(the(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        variables[variable["name"]] = variable.get("value") or variable["valueFrom"]
    return variables


@pytest.fixture
def settings(objects: list[dict], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """service/settings.py's Settings, as the server process in a pod reads them."""
    for name in list(os.environ):
        if name.startswith("RNNSERVE_"):
            monkeypatch.delenv(name)
    for name, value in environment(objects, server(objects)).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    return Settings()


def quantity(text: str | int) -> float:
    """A Kubernetes quantity: cores for CPU, bytes for memory."""
    units = {"m": 1e-3, "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|)", str(text)).groups()
    return float(number) * units[unit]


def port_number(container: dict, name: str) -> int:
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


# Rendering and the schemas ---------------------------------------------------------------


def test_overlays_render_what_they_promise(overlay: str, objects: list[dict]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    server_side = {
        ("Namespace", "rnnserve"),
        ("ServiceAccount", "rnnserve"),
        ("Deployment", "rnnserve"),
        ("Service", "rnnserve"),
        ("PodDisruptionBudget", "rnnserve"),
    }
    assert server_side <= kinds
    in_cluster_redis = {("StatefulSet", "redis"), ("Service", "redis"), ("NetworkPolicy", "redis")}
    if overlay == "trial":
        assert in_cluster_redis <= kinds
    else:
        assert not in_cluster_redis & kinds
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"rnnserve"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_the_kubernetes_schemas(objects: list[dict], version: str) -> None:
    """Strict: an unknown field (a typo, a field of a newer release) fails too. Every kind
    must have a schema: a warning would let an object through unchecked."""
    for item in objects:
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{item['kind']}/{item['metadata']['name']}: {where}: {error.message}")


def probe_port_by_name(deployment: dict) -> None:
    server_container = deployment["spec"]["template"]["spec"]["containers"][0]
    server_container["readinessProbe"]["grpc"]["port"] = "grpc"  # gRPC probes take a number


def misspelled_field(deployment: dict) -> None:
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriod"] = spec.pop("terminationGracePeriodSeconds")


def quoted_port(deployment: dict) -> None:
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"


@pytest.mark.parametrize("break_it", [probe_port_by_name, misspelled_field, quoted_port])
def test_the_schemas_reject_a_broken_deployment(break_it: Callable[[dict], None]) -> None:
    deployment = the(kustomize("overlays/trial"), "Deployment", "rnnserve")
    kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)
    broken = copy.deepcopy(deployment)
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_the_prestop_sleep_needs_the_oldest_version_named() -> None:
    """1.25 predates the sleep action: the oldest version the tests name is a real floor."""
    deployment = the(kustomize("overlays/trial"), "Deployment", "rnnserve")
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        kubernetes_validate.validate(deployment, "1.25", strict=True)


# The server as the pods run it ---------------------------------------------------------


def test_pods_run_one_owned_store_process_on_the_ports_they_publish(
    objects: list[dict], settings: Settings
) -> None:
    assert settings.state_store == "owned"
    assert settings.workers == 1  # a process saturates a core: replicas scale, not workers
    container = server(objects)
    assert port_number(container, "grpc") == settings.grpc_port
    assert port_number(container, "http") == settings.http_port
    assert port_number(container, "metrics") == settings.metrics_port


def test_the_redis_url_comes_from_a_secret(overlay: str, objects: list[dict]) -> None:
    reference = environment(objects, server(objects))["RNNSERVE_REDIS_URL"]
    assert isinstance(reference, dict), "the URL may carry a password: a Secret, not a value"
    name = reference["secretKeyRef"]["name"]
    if overlay.startswith("production"):
        # The operator creates it (the overlay's header): nothing here may shadow it.
        assert name == "rnnserve-redis"
        assert not [o for o in objects if o["kind"] == "Secret"]
        return
    secret = the(objects, "Secret", name)
    url = base64.b64decode(secret["data"][reference["secretKeyRef"]["key"]]).decode()
    host, port = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", url).groups()
    service = the(objects, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    [redis_pod] = [t for w, t in templates(objects) if w["metadata"]["name"] == "redis"]
    assert selects(service["spec"]["selector"], redis_pod)


def test_over_a_redis_cluster_every_acknowledged_write_is_on_a_replica(
    overlay: str, settings: Settings
) -> None:
    # The cluster overlay's Secret names a redis+cluster:// URL (its header); the stores
    # then WAIT for a replica, within a bound the clients' retries cover.
    durable = overlay == "production-cluster"
    assert settings.state_durability == ("replica" if durable else "none")
    assert settings.state_durability_timeout_s <= settings.grace_period_s


def test_trial_redis_refuses_writes_rather_than_evicting_states() -> None:
    [redis] = containers(
        the(kustomize("overlays/trial"), "StatefulSet", "redis")["spec"]["template"]
    )
    arguments = dict(zip(redis["command"][1::2], redis["command"][2::2], strict=True))
    assert arguments["--maxmemory-policy"] == "noeviction"
    maxmemory = int(arguments["--maxmemory"].removesuffix("mb")) * 2**20  # Redis's mb: MiB
    assert maxmemory < quantity(redis["resources"]["limits"]["memory"])
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert redis["image"] == compose["services"]["redis"]["image"]


def test_models_are_copied_from_the_models_image_into_the_served_repository(
    objects: list[dict], settings: Settings
) -> None:
    pod = server_pod(objects)
    [models] = pod["spec"]["initContainers"]
    assert re.search(r"(^|/)rnnserve-models:", models["image"])
    *_, source, target = models["command"]
    [written] = [m for m in models["volumeMounts"] if m["mountPath"] == target.rstrip("/")]
    [served] = [m for m in server(objects)["volumeMounts"] if m["name"] == written["name"]]
    assert served["mountPath"] == str(settings.model_repository)
    assert served["readOnly"] is True
    # The command is the models image's own, and copies from where that image holds them.
    dockerfile = (KUBERNETES / "models.Dockerfile").read_text()
    assert f"CMD {json.dumps(models['command'])}" in dockerfile
    [held] = re.findall(r"^COPY --from=models .* (\S+)$", dockerfile, flags=re.M)
    assert source == f"{held}/."


# Probes and stopping --------------------------------------------------------------------


def test_readiness_and_startup_ask_the_grpc_health_service(objects: list[dict]) -> None:
    """Service "": the whole server, NOT_SERVING while loading, draining or with no model."""
    container = server(objects)
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": port_number(container, "grpc"), "service": ""}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # models loading


def test_liveness_survives_a_redis_outage_and_the_drain(objects: list[dict]) -> None:
    """Not the health service (it follows readiness), nor anything that asks Redis: only
    that the process listens on its gRPC port."""
    container = server(objects)
    liveness = container["livenessProbe"]
    assert set(liveness) - {"periodSeconds", "timeoutSeconds", "failureThreshold"} == {"tcpSocket"}
    port = liveness["tcpSocket"]["port"]
    assert port in ("grpc", port_number(container, "grpc"))
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30


def test_stopping_leaves_time_to_drain_and_hand_sessions_over(
    objects: list[dict], settings: Settings
) -> None:
    pod = server_pod(objects)
    pause = server(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= ENDPOINTS_S
    hand_over = settings.max_sessions * FLUSH_S_PER_SESSION * NETWORK_FACTOR + INBOX_POLL_S
    needed = pause + settings.grace_period_s + math.ceil(hand_over)
    assert pod["spec"]["terminationGracePeriodSeconds"] >= needed


def test_rollouts_and_drains_keep_serving(objects: list[dict]) -> None:
    deployment = the(objects, "Deployment", "rnnserve")
    assert deployment["spec"]["replicas"] >= 2
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0
    assert rolling["maxSurge"] >= 1
    budget = the(objects, "PodDisruptionBudget", "rnnserve")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    selected = [
        w["metadata"]["name"]
        for w, t in templates(objects)
        if selects(budget["selector"]["matchLabels"], t)
    ]
    assert selected == ["rnnserve"]


# Ports, metrics, images ------------------------------------------------------------------


def test_every_port_is_named_and_each_service_reaches_its_pods(objects: list[dict]) -> None:
    for _, template in templates(objects):
        for container in containers(template):
            assert all(port.get("name") for port in container.get("ports", [])), container["name"]
    for service in (o for o in objects if o["kind"] == "Service"):
        pods = [t for _, t in templates(objects) if selects(service["spec"]["selector"], t)]
        assert len(pods) == 1, service["metadata"]["name"]
        named = {p["name"] for c in containers(pods[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["name"] and port["appProtocol"], port
            assert port["targetPort"] in named, port
    server_ports = the(objects, "Service", "rnnserve")["spec"]["ports"]
    assert {p["name"]: p["appProtocol"] for p in server_ports} == {
        "grpc": "kubernetes.io/h2c",
        "http": "http",
        "metrics": "http",
    }
    assert selects(the(objects, "Service", "rnnserve")["spec"]["selector"], server_pod(objects))


def test_prometheus_scrapes_the_metrics_port(objects: list[dict], settings: Settings) -> None:
    annotations = server_pod(objects)["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_images_name_one_build_each(objects: list[dict]) -> None:
    """A tag or digest that names one build, never `latest`, pulled when the node lacks it:
    a moved tag would leave nodes running different builds. Ours carry the project's
    version."""
    for _, template in templates(objects):
        for container in containers(template):
            image = container["image"]
            tag = image.rsplit("@", 1)[-1] if "@" in image else image.rsplit(":", 1)[-1]
            assert "@sha256:" in image or re.match(r"\d+\.\d+", tag), image
            assert container["imagePullPolicy"] == "IfNotPresent", image
            if re.search(r"(^|/)rnnserve(-models)?:", image):
                assert tag.startswith(PROJECT_VERSION), image


# Security and resources ------------------------------------------------------------------


def test_pods_meet_the_restricted_pod_security_standard(objects: list[dict]) -> None:
    namespace = the(objects, "Namespace", "rnnserve")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    for _, template in templates(objects):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False  # no RNNSERVE_PORT-like variables
        for container in containers(template):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True
    dockerfile_user = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    pod_user = server_pod(objects)["spec"]["securityContext"]
    assert {(str(pod_user["runAsUser"]), str(pod_user["runAsGroup"]))} == set(dockerfile_user)


def test_what_the_pods_may_write_is_a_bounded_volume(objects: list[dict]) -> None:
    """A read-only root file system: what the server may write is /tmp, and what the init
    container writes is the models, both emptyDirs with a size limit."""
    for _, template in templates(objects):
        volumes = {volume["name"]: volume for volume in template["spec"].get("volumes", [])}
        for container in containers(template):
            for mount in container.get("volumeMounts", []):
                if not mount.get("readOnly"):
                    assert volumes[mount["name"]]["emptyDir"]["sizeLimit"], mount
    writable = [m["mountPath"] for m in server(objects)["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"]


def test_resources_are_sized_from_the_benchmarks(
    overlay: str, objects: list[dict], settings: Settings
) -> None:
    for _, template in templates(objects):
        for container in containers(template):
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
            assert "memory" in resources["limits"], container["name"]
    resources = server(objects)["resources"]
    sessions = BASE_RSS_MIB * 2**20 + settings.max_sessions * SESSION_BYTES
    assert quantity(resources["requests"]["memory"]) >= sessions
    # One request at the largest gRPC message, and its decoded copy, on top.
    assert quantity(resources["limits"]["memory"]) >= sessions + 2 * settings.max_message_bytes
    assert quantity(resources["limits"]["cpu"]) >= 1  # one process saturates about a core
    if overlay.startswith("production"):
        assert quantity(resources["requests"]["cpu"]) == 1
