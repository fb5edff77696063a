"""The device ONNX Runtime runs the models on, its settings, and session states resident on
it (device_state).

With the CUDA provider, a step that starts from a state in host memory copies it to the
GPU and the state it ends with back, every step. With device_state on, the memory store
keeps its sessions' states where the models run (sessions/device_slab.py) and a step's
state stays there: its run reads the rows the store gathered and leaves its state outputs
there (runtime.py), for the store to scatter back. The same code runs with the CPU
provider, whose "device" is host memory, so every equality test covers it without a GPU.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
from numpy.lib.mixins import NDArrayOperatorsMixin

from rnnserve.service.settings import Settings

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver sees


def gpu_visible() -> bool:
    """Whether this machine (or container) has an NVIDIA GPU its driver sees, without
    loading CUDA: the driver's folder per GPU, or a GPU's device file."""
    if _NVIDIA_GPUS.is_dir() and any(_NVIDIA_GPUS.iterdir()):
        return True
    return any(Path("/dev").glob("nvidia[0-9]*"))


def provider_options(settings: Settings, provider: str) -> dict[str, str]:
    """The options ORT takes for `provider`: the GPU settings for CUDA, none for others."""
    if provider != CUDA_PROVIDER:
        return {}
    options = {
        "device_id": str(settings.gpu_device_id),
        "arena_extend_strategy": settings.arena_extend_strategy,
        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
    }
    if settings.gpu_mem_limit:
        options["gpu_mem_limit"] = str(settings.gpu_mem_limit)
    return options


@functools.cache
def preload_cuda() -> None:
    """Loads CUDA and cuDNN from the nvidia pip packages (cublas, cudnn-cu13, ...), where
    onnxruntime-gpu's CUDA provider finds them: a machine whose CUDA came with pip (as
    torch's does) has none on the loader's path. Once per process, before the first CUDA
    session; a library it cannot find is left to the loader's path."""
    try:
        ort.preload_dlls()
    except (AttributeError, OSError) as error:  # an ORT without it, or a library not found
        log.warning("preloading CUDA's libraries: %s", error)


class StateDevice:
    """Where resident states live: ORT's name for the device (`cuda`, `cpu`) and its id,
    and the providers that run the row graphs there (as the models', so that a graph's
    inputs and outputs need no copy)."""

    def __init__(self, provider: str, settings: Settings) -> None:
        self.provider = provider
        self.kind = "cuda" if provider == CUDA_PROVIDER else "cpu"
        self.device_id = settings.gpu_device_id if self.kind == "cuda" else 0
        self.providers: list[str | tuple[str, dict[str, str]]] = [CPU_PROVIDER]
        if self.kind == "cuda":
            preload_cuda()
            self.providers.insert(0, (provider, provider_options(settings, provider)))

    def upload(self, array: np.ndarray) -> ort.OrtValue:
        """A copy of `array` on the device."""
        return ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.kind, self.device_id
        )

    def describe(self) -> str:
        return f"{self.kind}:{self.device_id}"


def state_device(settings: Settings) -> StateDevice | None:
    """The device the memory store keeps states on (device_state), or None: on the host.

    auto: on with the CUDA provider, off with the CPU one (on the CPU a state is already
    where the run reads it, and the row graphs' runs cost more than the numpy copies they
    replace: docs/gpu.md). Only the memory store keeps states on a device (the Redis stores
    read and write them on the host), and only for steps run one request at a time: the
    batcher merges the steps of several requests on the host."""
    if settings.device_state == "off" or settings.state_store != "memory" or settings.batching:
        return None
    cuda = (
        CUDA_PROVIDER in settings.providers
        and CUDA_PROVIDER in ort.get_available_providers()
        and gpu_visible()  # the GPU build lists CUDA on a machine without a GPU too
    )
    if settings.device_state == "auto" and not cuda:
        return None
    return StateDevice(CUDA_PROVIDER if cuda else CPU_PROVIDER, settings)


class DeviceArray(NDArrayOperatorsMixin):
    """A state tensor held by ONNX Runtime on the device (an OrtValue), passing for the
    numpy array a State holds.

    With device_state on, the memory store gives a step the rows it gathered as these, and
    the step's run gives its state outputs back as these, for the store to scatter. The code
    between them only reads a state's shape and reshapes it to itself (every state of such
    a model is `(before, rows, after)` already: sessions/device_slab.py), which stays on
    the device; anything else that reads one (a client asking for `hn`, the record kept
    for a retry of a final step, a hand-over) converts it, which copies it to the host:
    np.asarray, indexing, arithmetic. Writing rows into one (a restart that carried an offset) goes
    through the host too.
    """

    __slots__ = ("_device", "value")

    def __init__(self, value: ort.OrtValue, device: StateDevice) -> None:
        self.value = value
        self._device = device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def reshape(self, *shape: Any) -> DeviceArray | np.ndarray:
        """Itself for its own shape (what every step asks); else a host copy reshaped."""
        wanted = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if wanted == self.shape:
            return self
        return self.numpy().reshape(wanted)

    def numpy(self) -> np.ndarray:
        """A host copy (a CPU OrtValue's numpy() shares its memory: copied too)."""
        return np.array(self.value.numpy(), copy=True)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Arithmetic (the operators, through NDArrayOperatorsMixin) on a host copy."""
        host = [value.numpy() if isinstance(value, DeviceArray) else value for value in inputs]
        return getattr(ufunc, method)(*host, **kwargs)

    def __getitem__(self, key: Any) -> np.ndarray:
        return cast(np.ndarray, self.numpy()[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        host = self.numpy()
        host[key] = np.asarray(value)
        self.value = self._device.upload(host)


def held_on_device(value: DeviceArray) -> np.ndarray:
    """A DeviceArray as the state array it passes for (see DeviceArray)."""
    return cast(np.ndarray, value)


def resident_value(array: object) -> ort.OrtValue | None:
    """The OrtValue a resident state holds on the device; None for any other array. (Takes
    an object: code that holds a state as np.ndarray, compiled code above all, must not be
    told by the type checker that a DeviceArray cannot be one.)"""
    return array.value if isinstance(array, DeviceArray) else None


def as_host(array: np.ndarray) -> np.ndarray:
    """A state array in host memory: a resident one copied there, any other as it is."""
    if isinstance(array, DeviceArray):
        return array.numpy()
    return array
