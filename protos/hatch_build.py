"""Build hook: compile protos/*.proto into src/rnnserve/protocol/inference.protoset.

The protoset (a FileDescriptorSet of protos/ and its imports) is what rnnserve.protocol
loads its messages from, and what k6 speaks gRPC with in the benchmarks. It is a build
product, never hand-edited and never committed. It runs for wheels and editable installs
alike, so `pip install -e .` yields an importable protocol package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PROTOSET = Path("rnnserve") / "protocol" / "inference.protoset"  # inside src/ and the wheel


def generate(root: Path) -> Path:
    """Run grpc_tools.protoc over the .proto files in `root` (protos/); returns the
    protoset's path."""
    import grpc_tools
    from grpc_tools import protoc

    protos = root
    out = root / "src" / PROTOSET
    # Written outside the package and renamed into place: a process importing
    # rnnserve.protocol while a build runs (a wheel built from this tree while its servers
    # run) reads the old protoset or the new one, never half of one.
    partial = root / f".{out.name}.{os.getpid()}"
    sources = sorted(str(p.relative_to(protos)) for p in protos.glob("*.proto"))
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{protos}",
            f"-I{well_known}",
            "--include_imports",
            f"--descriptor_set_out={partial}",
            *sources,
        ]
    )
    if code != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"protoc failed with exit code {code}")
    partial.replace(out)
    return out


class ProtoBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        out = generate(Path(self.root))
        if version == "editable":
            return  # the editable install reads it from the source tree
        # The protoset is git-ignored; force it into the wheel anyway.
        build_data["force_include"][str(out)] = PROTOSET.as_posix()
