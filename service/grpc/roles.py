"""Who may call what: each RPC of GRPCInferenceService by the role it needs, the one place
RPCs are classified for authorization. `infer`: probes, metadata and inference; `admin`:
what reads or changes the server's own state (statistics, configuration, the repository's
index and its model control)."""

from __future__ import annotations

from typing import Literal

Role = Literal["infer", "admin"]

RPC_ROLES: dict[str, Role] = {
    "ServerLive": "infer",
    "ServerReady": "infer",
    "ModelReady": "infer",
    "ServerMetadata": "infer",
    "ModelMetadata": "infer",
    "ModelInfer": "infer",
    "ModelStreamInfer": "infer",
    "ModelConfig": "admin",
    "ModelStatistics": "admin",
    "RepositoryIndex": "admin",
    "RepositoryModelLoad": "admin",
    "RepositoryModelUnload": "admin",
}
