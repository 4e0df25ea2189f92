"""``benchmarks/bench_pipeline.py``'s helpers that decide what a GPU run reports (they run on CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tools.bench_modules import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_pipeline") as module:
        yield module


class _FakeProfile:
    """Stands in for ``torch.profiler.profile``: writes the given trace events as its Chrome trace."""

    def __init__(self, events):
        self.events = events

    def export_chrome_trace(self, path: str) -> None:
        Path(path).write_text(json.dumps({"traceEvents": self.events}))


def _kernel(name, ts, dur, cat="kernel"):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur}


def test_gpu_timeline_busy_idle_and_gaps(bench):
    events = [_kernel("gemm", 0, 100), _kernel("attn", 50, 100),  # overlapping: busy 0..150
              _kernel("gemm", 160, 40),  # gap of 10 µs (not counted as a gap over 20 µs)
              _kernel("copy", 300, 50, "gpu_memcpy"),  # gap of 100 µs
              {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 10_000}]  # not GPU work: ignored
    out = bench.summarize_gpu_timeline(_FakeProfile(events), wall_ms=1.0)
    assert out["events"] == 4
    assert out["gpu_busy_ms"] == pytest.approx(0.24, abs=1e-3)  # 150 + 40 + 50 µs
    assert out["gpu_span_ms"] == pytest.approx(0.35, abs=1e-3)
    assert out["idle_ms"] == pytest.approx(0.76, abs=1e-3)
    assert out["gaps_over_20us"] == 1 and out["largest_gaps_us"] == [100]
    assert out["top_kernels"][0] == {"name": "gemm", "ms": 0.14, "count": 2}


def test_gpu_timeline_without_gpu_events(bench):
    out = bench.summarize_gpu_timeline(_FakeProfile([{"cat": "cpu_op", "name": "x", "ts": 0, "dur": 5}]), 3.0)
    assert out == {"wall_ms": 3.0, "error": "no GPU events recorded"}


def test_mode_names(bench):
    assert bench.parse_mode("fast@cudnn").attention_kernel == "cudnn"
    assert bench.parse_mode("fast-fused_mlp").fused_mlp is False
    assert bench.parse_preset("fast:low") == "low" and bench.parse_preset("fast") == "high"
    with pytest.raises(ValueError, match="unknown switch"):
        bench.parse_mode("fast+warp_speed")
