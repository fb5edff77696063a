"""Every Dockerfile passes hadolint with no finding at all; the server images hold only the
server: non-root, health-checked through gRPC, no torch; and the stages are ordered for the
classic builder, which builds every stage before its target."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from deploytools import ROOT, run, venv_tool

DOCKERFILES = sorted(
    path
    for pattern in (
        "Dockerfile",
        "deploy/**/Dockerfile*",
        "deploy/**/*.Dockerfile",
        "tests/deploy/images/*.Dockerfile",
    )
    for path in ROOT.glob(pattern)
)
DOCKERFILE = ROOT / "Dockerfile"


def hadolint(path: Path) -> int:
    result = run(venv_tool("hadolint"), "--no-color", path)
    print(result.output)
    return result.code


def stage(name: str) -> str:
    """The text of one build stage of the main Dockerfile."""
    text = DOCKERFILE.read_text()
    start = next(i for i, line in enumerate(text.splitlines()) if line.endswith(f"AS {name}"))
    lines = text.splitlines()[start:]
    end = next((i for i, line in enumerate(lines[1:], 1) if line.startswith("FROM ")), len(lines))
    return "\n".join(lines[:end])


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_hadolint_finds_nothing(path: Path) -> None:
    assert hadolint(path) == 0


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("USER 10001:10001", "USER root"),  # the server must not run as root
        ("WORKDIR /opt/rnnserve", "WORKDIR opt/rnnserve"),  # relative WORKDIR
        ("apt-get install -y --no-install-recommends", "apt-get install"),  # prompts, bloats
    ],
)
def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path, old: str, new: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace(old, new))
    assert hadolint(bad) != 0


def stages() -> list[tuple[str, str]]:
    """(base, name) of each stage of the main Dockerfile, in order."""
    return re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE.read_text(), flags=re.M)


def built_before(target: str) -> list[str]:
    """What the classic builder builds for `--target target`: every stage up to it."""
    names = [name for _, name in stages()]
    return names[: names.index(target) + 1]


def test_default_target_is_the_gpu_server() -> None:
    assert stages()[-1][1] == "server-gpu"


def test_no_remote_syntax_frontend() -> None:
    """A `# syntax=` line makes BuildKit fetch a frontend image from a registry."""
    assert "syntax=" not in DOCKERFILE.read_text().splitlines()[0]


@pytest.mark.parametrize("target", ["server-cpu", "builder"])
def test_cpu_targets_never_touch_the_cuda_image(target: str) -> None:
    bases = dict((name, base) for base, name in stages())
    cuda = [name for name, base in bases.items() if base == "${CUDA_IMAGE}"]
    assert cuda and not set(cuda) & set(built_before(target))


def test_server_cpu_builds_no_torch_even_under_the_classic_builder() -> None:
    assert built_before("server-cpu") == ["runtime", "deps-cpu", "wheel", "server-cpu"]


@pytest.mark.parametrize(("server", "extra"), [("server-cpu", "cpu"), ("server-gpu", "gpu")])
def test_servers_run_unprivileged_with_a_grpc_health_check(server: str, extra: str) -> None:
    text = stage(server)
    assert "USER 10001:10001" in text
    assert 'CMD ["python3", "/opt/rnnserve/healthcheck.py"]' in text
    assert "EXPOSE 8000 8001 8002" in text
    assert f"COPY --from=deps-{extra} /opt/venv /opt/venv" in text
    assert f"install.sh rnnserve {extra}\n" in text


def test_the_gpu_build_is_pinned_to_the_cuda_of_its_base() -> None:
    """onnxruntime-gpu 1.31.1's CUDA provider links libcudart.so.13 and libcublas.so.13."""
    model = tomllib.loads((ROOT / "model" / "pyproject.toml").read_text())["project"]
    assert model["optional-dependencies"]["gpu"] == ["onnxruntime-gpu>=1.31,<1.32"]
    assert "onnxruntime-gpu==1.31.1" in (ROOT / "requirements.lock").read_text().splitlines()
    assert "ARG CUDA_IMAGE=nvidia/cuda:13." in DOCKERFILE.read_text()
    assert "cudnn-runtime" in DOCKERFILE.read_text()
    assert "install.sh deps gpu" in stage("deps-gpu")
    server = tomllib.loads((ROOT / "service" / "pyproject.toml").read_text())["project"]
    server_requirements = " ".join(server["dependencies"])
    assert "torch" not in server_requirements and "onnx>" not in server_requirements


@pytest.mark.parametrize(
    ("server", "wheels"), [("server-cpu", ["wheel"]), ("server-gpu", ["wheel", "wheel-gpu"])]
)
def test_each_server_image_gets_the_server_compiled_for_its_own_python(
    server: str, wheels: list[str]
) -> None:
    # mypyc's extension modules are built for one Python: the wheel stage's, on the CPU
    # images' base, builds them beside the pure wheels; the GPU image's Python (Ubuntu's, on
    # the CUDA base) is another, for which wheel-gpu builds them on that base.
    bases = dict((name, base) for base, name in stages())
    assert "install.sh wheel " in stage("wheel") and bases["wheel"] == "runtime"
    assert "install.sh compiled " in stage("wheel-gpu") and bases["wheel-gpu"] == "runtime-gpu"
    assert [line for line in stage(server).splitlines() if "/dist /dist" in line] == [
        f"COPY --from={wheel} /dist /dist" for wheel in wheels
    ]


def test_only_the_builder_gets_torch() -> None:
    assert "install.sh deps cpu,export" in stage("deps-builder")
    assert "COPY --from=deps-builder /opt/venv /opt/venv" in stage("builder")
    servers = ("runtime", "deps-cpu", "wheel", "server-cpu", "wheel-gpu", "deps-gpu", "server-gpu")
    for name in servers:
        assert "cpu,export" not in stage(name) and "torch" not in stage(name), name


def test_the_wheel_is_built_from_the_filtered_context() -> None:
    """`pip wheel` over the build context, whatever the repository's Python folders are."""
    assert "COPY . /src" in stage("wheel")
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", "tests", "docs"} <= set(ignored)
