"""The GPUs' utilisation and memory, read through NVML (nvidia-ml-py, in the server's `gpu`
extra) for `rnnserve_gpu_*` (metrics.GpuMetrics). Without the package, the driver's
library or a GPU, there is nothing to read and the series are absent."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from rnnserve.service.metrics import GpuMetrics, GpuReading

log = logging.getLogger(__name__)


def open_nvml() -> Any | None:
    """NVML's module, initialised, when this machine has a GPU it can read; else None."""
    try:
        import pynvml  # nvidia-ml-py: optional, and untyped
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() > 0:
            return pynvml
    except pynvml.NVMLError as error:  # no driver (a CPU-only machine): nothing to read
        log.debug("NVML: %s", error)
    return None


class NvmlReader:
    """Each GPU's reading now (called at each /metrics scrape)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def __call__(self) -> list[GpuReading]:
        nvml = self._nvml
        readings = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            readings.append(
                GpuReading(str(index), rates.gpu / 100, int(memory.used), int(memory.total))
            )
        return readings


def register_gpu_metrics(registry: CollectorRegistry) -> None:
    """`rnnserve_gpu_*` in the registry /metrics serves, where a GPU can be read."""
    nvml = open_nvml()
    if nvml is not None:
        registry.register(GpuMetrics(NvmlReader(nvml)))
