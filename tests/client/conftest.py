"""The client tests run against the same kind of real server as the service tests: the
`server` and `start_server` fixtures come from tests/service/conftest.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).parents[1] / "service" / "conftest.py"
_spec = importlib.util.spec_from_file_location("rnnserve_test_servers", _path)
assert _spec and _spec.loader
servers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = servers  # dataclasses look their module up there
_spec.loader.exec_module(servers)

server = servers.server
start_server = servers.start_server
