"""ONNX Runtime sessions: provider choice, threads, and the bookkeeping of every run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import REGISTRY

from rnnserve.service import runtime
from rnnserve.service.device import gpu_visible, provider_options
from rnnserve.service.logs import OncePerCause
from rnnserve.service.runtime import ModelRuntime, Statistics, choose_providers, session_options
from rnnserve.service.settings import Settings


def test_configured_providers_are_filtered_to_what_ort_offers_with_cpu_last() -> None:
    available = ort.get_available_providers()
    chosen = choose_providers(Settings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    assert chosen[-1] == "CPUExecutionProvider"
    names = [one if isinstance(one, str) else one[0] for one in chosen]
    assert ("CUDAExecutionProvider" in names) == ("CUDAExecutionProvider" in available)
    assert choose_providers(Settings(providers=["NoSuchExecutionProvider"])) == [
        "CPUExecutionProvider"
    ]


def test_cuda_gets_the_gpu_settings_as_its_options() -> None:
    settings = Settings(gpu_device_id=1, gpu_mem_limit=2**30, cudnn_conv_algo_search="HEURISTIC")
    assert provider_options(settings, "CUDAExecutionProvider") == {
        "device_id": "1",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": str(2**30),
    }
    assert provider_options(settings, "CPUExecutionProvider") == {}


def test_cuda_missing_is_told_only_where_it_was_asked_for_or_a_gpu_is_visible(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers() or gpu_visible():
        pytest.skip("CUDA is here: nothing is missing, or a GPU could have served")
    monkeypatch.setattr(runtime, "_missing_providers", OncePerCause(runtime.log))
    choose_providers(Settings())  # CUDA is in the default list
    assert "lacks it" not in caplog.text
    choose_providers(Settings(providers=["CUDAExecutionProvider"]))
    assert "CUDAExecutionProvider is configured but this ONNX Runtime build lacks it" in caplog.text


def test_thread_counts_come_from_settings() -> None:
    options = session_options(Settings(intra_op_threads=3, inter_op_threads=2))
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)


def test_a_run_reports_its_provider_and_is_counted(tiny_repository: Path) -> None:
    graph = tiny_repository / "sine-gru" / "1" / "model.onnx"
    runtime = ModelRuntime("runtime-test", "1", {"model": graph}, Settings())
    assert runtime.provider == "CPUExecutionProvider"
    assert runtime.input_names("model") == ["x", "h0"]
    x = np.zeros((3, 5, 1), np.float32)
    h0 = np.zeros((1, 3, 8), np.float32)
    outputs = runtime.run("model", {"x": x, "h0": h0})
    runtime.run("model", {"x": x[:1], "h0": h0[:, :1]})
    assert outputs["y"].shape == (3, 5, 1) and outputs["hn"].shape == (1, 3, 8)
    stats = runtime.statistics.snapshot()
    assert stats.execution_count == 2
    assert {rows: part.count for rows, part in stats.batch_stats.items()} == {3: 1, 1: 1}
    labels = {"model": "runtime-test", "version": "1"}
    assert REGISTRY.get_sample_value("rnnserve_compute_duration_seconds_count", labels) == 2
    assert REGISTRY.get_sample_value("rnnserve_batch_size_sum", labels) == 4


def test_statistics_accumulate_per_request_phases() -> None:
    statistics = Statistics("m", "1")
    statistics.record_success(4, total_ns=100, queue_ns=10, input_ns=20, infer_ns=50, output_ns=20)
    statistics.record_success(1, total_ns=60, queue_ns=5, input_ns=5, infer_ns=40, output_ns=10)
    statistics.record_failure(total_ns=7)
    stats = statistics.snapshot()
    assert (stats.success.count, stats.success.ns) == (2, 160)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (2, 90)
    assert (stats.queue.ns, stats.compute_input.ns, stats.compute_output.ns) == (15, 25, 30)
    assert (stats.fail.count, stats.fail.ns) == (1, 7)
    assert stats.inference_count == 5
