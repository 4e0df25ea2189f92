"""``workers='ray'`` on a local 2-CPU Ray instance: the same GLBs as the local batch; a dead worker is detected.

Skipped without Ray (``pip install -r requirements-ray.txt``).
"""
from __future__ import annotations

import json
import os

import pytest

from tests.batch.conftest import FAST, OUTPUTS, REPO, Recorder
from trellis2_core.batch import run_batch
from trellis2_core.errors import CancelledError

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")


@pytest.fixture(scope="module")
def ray_session():
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def test_ray_workers_make_the_same_files(ray_session, local_batch, batch_inputs, tmp_path):
    _, local_out, _ = local_batch
    out = tmp_path / "ray"
    progress = Recorder()
    options = {k: v for k, v in FAST.items() if k != "threads"}  # 2 CPUs / 2 workers: 1 thread each
    result = run_batch(batch_inputs, out, workers="ray", ray_workers=2, device="cpu", progress=progress, **options)
    assert result.counts == {"ok": 4, "failed": 1}
    for name in OUTPUTS.values():  # same seed, same thread count: the same bytes
        assert (out / name).read_bytes() == (local_out / name).read_bytes(), name
    data = json.loads((out / "manifest.json").read_text())
    workers = {e["worker"] for e in data["items"]}
    assert workers == {"ray:0", "ray:1"}  # the images were spread over both actors
    broken = next(e for e in data["items"] if e["input"] == "broken.png")
    assert broken["status"] == "failed" and broken["error"].startswith("InputError: cannot read image")
    assert progress.batches[-1] == (5, 5, "")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # marker and temporary files gone


def test_a_killed_actor_is_a_lost_worker(ray_session, tmp_path):
    from trellis2_core.batch.inputs import BatchInput
    from trellis2_core.batch.manifest import Entry
    from trellis2_core.batch.ray_pool import WorkerLost, _ActorImpl, _outcome

    actor = ray.remote(num_cpus=1, max_restarts=0)(_ActorImpl).remote(None, str(tmp_path), "m", "t", "ray:0")
    ray.kill(actor)
    item = BatchInput("a.png", tmp_path / "a.png", "a.glb", 1)
    got = _outcome(ray, actor.run.remote(item, Entry("a.png", "a.glb", 1)))
    assert isinstance(got, WorkerLost) and "Actor" in got.message


def test_cancel_stops_the_ray_workers_and_leaves_a_consistent_manifest(ray_session, batch_inputs, tmp_path):
    out = tmp_path / "cancelled"

    class CancelAfterFirst(Recorder):
        def cancelled(self) -> bool:  # Cancel pressed once the first image is done
            return any(done >= 1 for done, _, _ in self.batches)

    options = {k: v for k, v in FAST.items() if k != "threads"}
    with pytest.raises(CancelledError):
        run_batch(batch_inputs, out, workers="ray", ray_workers=2, device="cpu", progress=CancelAfterFirst(),
                  **options)
    data = json.loads((out / "manifest.json").read_text())
    status = {e["input"]: e["status"] for e in data["items"]}
    assert set(status.values()) <= {"ok", "failed", "cancelled", "pending"} and "cancelled" in status.values()
    made = sorted(p.name for p in out.iterdir() if p.suffix == ".glb")
    assert made == sorted(e["output"] for e in data["items"] if e["status"] == "ok")  # every GLB is claimed, whole
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no .part, no marker
