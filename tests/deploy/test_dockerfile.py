"""Every Dockerfile passes hadolint with no finding at all, and the server image holds only the
server: non-root, health-checked through gRPC, no torch."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from deploytools import ROOT, run, venv_tool

DOCKERFILES = sorted(
    path
    for pattern in ("Dockerfile", "deploy/**/Dockerfile*", "deploy/**/*.Dockerfile")
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


def test_default_target_is_the_server() -> None:
    assert DOCKERFILE.read_text().rstrip().splitlines()[-1] == "FROM server"


def test_server_runs_unprivileged_with_a_grpc_health_check() -> None:
    server = stage("server")
    assert "USER 10001:10001" in server
    assert 'CMD ["python3", "/opt/rnnserve/healthcheck.py"]' in server
    assert "EXPOSE 8001 8002" in server


def test_variants_pick_the_onnxruntime_build_and_nothing_else() -> None:
    """The server installs the extra named by VARIANT: cpu or gpu, on its matching base."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert 'install.sh "${VARIANT}"' in stage("server")
    assert "FROM base-${VARIANT} AS server" in stage("server")
    assert "nvidia/cuda:" in DOCKERFILE.read_text() and "cudnn-runtime" in DOCKERFILE.read_text()
    assert extras["optional-dependencies"]["cpu"] == ["onnxruntime>=1.20"]
    assert extras["optional-dependencies"]["gpu"] == ["onnxruntime-gpu>=1.20"]
    server_requirements = " ".join(extras["dependencies"])
    assert "torch" not in server_requirements and "onnx>" not in server_requirements


def test_only_the_builder_gets_torch() -> None:
    assert "install.sh export" in stage("builder")
    assert "export" not in stage("server").replace("PYTHONUNBUFFERED", "")
