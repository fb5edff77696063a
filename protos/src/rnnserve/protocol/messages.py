"""The protocol's messages: `messages.ModelInferRequest`, `messages.DataType`, ...

Loaded from `inference.protoset` (protos/ compiled with its imports by the build, see
hatch_build.py) into a descriptor pool of our own. Names resolve on first use:

    from rnnserve.protocol import messages as pb
    request = pb.ModelInferRequest(model_name="sine-lstm")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

PACKAGE = "inference"
PROTOSET = Path(__file__).with_name("inference.protoset")


def _read_protoset() -> list[descriptor_pb2.FileDescriptorProto]:
    if not PROTOSET.is_file():
        raise ImportError(
            f"{PROTOSET} is missing: it is built from protos/ when rnnserve is installed "
            "(pip install -e protos/ in a source checkout)"
        )
    return list(descriptor_pb2.FileDescriptorSet.FromString(PROTOSET.read_bytes()).file)


def _pool(files: list[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    return pool


FILES = _read_protoset()  # protos/ as compiled, dependencies first
POOL = _pool(FILES)


def __getattr__(name: str) -> Any:
    """The message class, or enum, `inference.<name>`; cached as a module attribute."""
    full_name = f"{PACKAGE}.{name}"
    try:
        found: Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))
    except KeyError:
        try:
            found = EnumTypeWrapper(POOL.FindEnumTypeByName(full_name))
        except KeyError:
            raise AttributeError(f"the protocol has no message or enum {full_name}") from None
    globals()[name] = found
    return found
