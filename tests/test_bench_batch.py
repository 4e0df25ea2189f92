"""``benchmarks/bench_batch.py``'s arithmetic and its 1-worker loop (with a stand-in worker; the GPU run is real)."""
from __future__ import annotations

import pytest

from tests.tools.bench_modules import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_batch", on_path=True) as module:  # spawned workers import it by name
        yield module


class StandInWorker:
    """Replaces SurrogateWorker in spawned processes (importable by name: tests.test_bench_batch)."""

    def __init__(self, device, *args):
        self.device = device

    def image(self, seed, warmup=False):
        return {"pipeline_s": 0.01, "export_s": 0.01, "total_s": 0.02, "faces": seed}


def _run(workers, wall, per_image):
    images = [{"pipeline_s": per_image - 1.0, "export_s": 1.0, "total_s": per_image, "faces": 10}] * (4 * workers)
    return {"workers": workers, "launcher": "processes", "wall_s": wall, "images": images}


def test_images_per_minute_and_scaling_efficiency(bench):
    one = bench.summarize(_run(1, 40.0, 10.0), None)
    assert one["images_per_min"] == 6.0 and one["median_image_s"] == 10.0 and "efficiency" not in one
    two = bench.summarize(_run(2, 42.0, 10.5), one["images_per_min"])
    assert two["images_per_min"] == pytest.approx(60 * 8 / 42, abs=1e-3)
    assert two["scaling"] == pytest.approx(8 / 42 * 40 / 4, abs=1e-3)
    assert two["efficiency"] == pytest.approx(two["scaling"] / 2, abs=1e-3)
    text = bench.table([one, two])
    assert "| 2 | processes | 8 |" in text and "0.95" in text


def test_local_loop_times_the_images_after_one_warm_up(bench, monkeypatch):
    seen = []

    class Worker:
        def __init__(self, device, *args):
            self.device = device

        def image(self, seed, warmup=False):
            seen.append((seed, warmup))
            return {"pipeline_s": 0.1, "export_s": 0.1, "total_s": 0.2, "faces": 1}

    monkeypatch.setattr(bench, "SurrogateWorker", Worker)
    args = bench.argparse.Namespace(type="1024_cascade", mode="fast", tiny=True, export_res=0, faces=1,
                                    texture_size=256)
    run = bench.run_local("cpu", 3, args, lambda msg: None)
    assert seen == [(0, True), (1000, False), (1001, False), (1002, False)]
    assert len(run["images"]) == 3 and run["workers"] == 1 and run["wall_s"] >= 0


def test_bad_counts_are_refused_before_anything_builds(bench):
    with pytest.raises(SystemExit):
        bench.main(["--gpus", "0", "--device", "cpu"])
    with pytest.raises(SystemExit):
        bench.main(["--mode", "fastest", "--device", "cpu"])


def test_process_launcher_gives_every_image_to_one_worker(bench):
    args = bench.argparse.Namespace(type="1024_cascade", mode="fast", tiny=True, export_res=0, faces=1,
                                    texture_size=256)
    run = bench.run_processes(["cpu", "cpu"], 5, args, lambda msg: None, factory=StandInWorker)
    assert sorted(i["faces"] for i in run["images"]) == [1000, 1001, 1002, 1003, 1004]  # each seed once
    assert {i["worker"] for i in run["images"]} <= {0, 1} and run["workers"] == 2 and len(run["build_s"]) == 2
