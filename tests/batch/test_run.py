"""``run_batch`` end to end on the demo pipeline: 5 inputs (one broken) → 4 GLBs, manifest, resume, cancel."""
from __future__ import annotations

import csv
import json

import pytest

from tests.batch.conftest import FAST, GOOD, OUTPUTS, Recorder, write_inputs
from trellis2_core.batch import run_batch
from trellis2_core.batch.manifest import file_sha256
from trellis2_core.errors import CancelledError, InputError


def test_four_valid_glbs_and_the_broken_image_in_the_manifest(local_batch):
    import trimesh

    result, out, _ = local_batch
    assert result.counts == {"ok": 4, "failed": 1} and result.skipped == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS.values(), "manifest.csv", "manifest.json"])
    for name in OUTPUTS.values():
        mesh = trimesh.load(str(out / name), force="mesh", process=False)
        assert len(mesh.faces) > 0 and mesh.visual.uv is not None
    data = json.loads((out / "manifest.json").read_text())
    items = {e["input"]: e for e in data["items"]}
    assert set(items) == {*GOOD, "broken.png"}  # notes.txt is not an input
    broken = items["broken.png"]
    assert broken["status"] == "failed" and broken["error"].startswith("InputError: cannot read image")
    assert "\n" not in broken["error"]
    for key, name in OUTPUTS.items():
        e = items[key]
        assert e["status"] == "ok" and e["output"] == name and e["seed"] == 42 and e["worker"] == "local"
        assert e["sha256"] == file_sha256(out / name) and e["bytes"] == (out / name).stat().st_size
        assert e["seconds"]["generate"] > 0 and e["seconds"]["total"] >= e["seconds"]["generate"]
        assert e["faces"] > 0
    assert data["counts"] == {"ok": 4, "failed": 1, "cancelled": 0, "pending": 0}
    rows = {r["input"]: r for r in csv.DictReader((out / "manifest.csv").open())}
    assert rows["broken.png"]["status"] == "failed" and rows["broken.png"]["error"] == broken["error"]
    assert rows["a.png"]["output"] == "a.glb" and float(rows["a.png"]["total_s"]) > 0


def test_progress_covers_the_batch_and_each_image(local_batch):
    _, _, progress = local_batch
    assert progress.batches[0] == (0, 5, "a.png") and progress.batches[-1] == (5, 5, "")
    assert [d for d, _, c in progress.batches if not c] == [1, 2, 3, 4, 5]
    assert progress.stages.count("condition") == 8  # start and end, for each of the 4 readable images
    assert "shape" in progress.stages and any(s.startswith("export:") for s in progress.stages)


def test_same_image_same_seed_as_the_single_image_call(local_batch, tmp_path, batch_inputs):
    from trellis2_core.api import image_to_glb
    from trellis2_core.batch.worker import set_threads

    _, out, _ = local_batch
    before = set_threads(1)
    try:
        image_to_glb(batch_inputs / "b.png", tmp_path / "b.glb", pipeline="demo", pipeline_type="512", steps=2,
                     export=FAST["export"], seed=42)
    finally:
        set_threads(before)
    assert (tmp_path / "b.glb").read_bytes() == (out / "b.glb").read_bytes()


def test_rerun_skips_the_finished_images(local_batch, batch_inputs):
    result, out, _ = local_batch
    stamps = {n: (out / n).stat().st_mtime_ns for n in OUTPUTS.values()}
    progress = Recorder()
    again = run_batch(batch_inputs, out, progress=progress, **FAST)
    assert again.skipped == 4 and again.counts == {"ok": 4, "failed": 1}
    assert {n: (out / n).stat().st_mtime_ns for n in OUTPUTS.values()} == stamps  # not rewritten
    assert progress.stages.count("condition") == 0  # the broken image was tried again, nothing generated
    assert [e.sha256 for e in again.entries] == [e.sha256 for e in result.entries]


def test_cancel_and_interrupt_leave_a_consistent_manifest_and_no_partial_file(tmp_path):
    folder = write_inputs(tmp_path / "in")
    for name in ("b.png", "c d.png", "c_d.webp", "broken.png"):
        (folder / name).unlink()
    (folder / "z.png").write_bytes((folder / "a.png").read_bytes())
    out = tmp_path / "out"

    class CancelInExport(Recorder):
        def cancelled(self) -> bool:  # Cancel pressed while the first GLB is being exported
            return any(s.startswith("export:") and s != "export:start" for s in self.stages)

    with pytest.raises(CancelledError):
        run_batch(folder, out, progress=CancelInExport(), **FAST)
    data = json.loads((out / "manifest.json").read_text())
    assert [(e["input"], e["status"]) for e in data["items"]] == [("a.png", "cancelled"), ("z.png", "pending")]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "manifest.json"]  # no GLB, no .part

    class Interrupt(Recorder):
        def step(self, stage, i, n):
            super().step(stage, i, n)
            if stage == "tex":
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(folder, out, progress=Interrupt(), **FAST)
    data = json.loads((out / "manifest.json").read_text())
    assert [(e["input"], e["status"], e["error"]) for e in data["items"]] == [
        ("a.png", "cancelled", "interrupted"), ("z.png", "pending", "")]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "manifest.json"]


@pytest.mark.parametrize("case", ["glb_name", "file", "workers", "threads"])
def test_bad_arguments_fail_before_anything_loads(tmp_path, batch_inputs, case):
    (tmp_path / "file").write_bytes(b"x")
    out, extra = tmp_path / "out", {}
    if case == "glb_name":
        out = tmp_path / "models.glb"
    elif case == "file":
        out = tmp_path / "file"
    elif case == "workers":
        extra = {"workers": "threads"}
    else:
        extra = {"threads": 0}
    with pytest.raises(InputError) as err:
        run_batch(batch_inputs, out, pipeline=tmp_path / "no-such-pipeline", **extra)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_ray_workers_without_ray_is_a_backend_error_with_the_pip_command(tmp_path, batch_inputs, monkeypatch):
    import types

    from trellis2_core import optional
    from trellis2_core.errors import BackendError

    def no_ray(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(optional, "installed_version", lambda dist: None)
    monkeypatch.setattr(optional, "importlib", types.SimpleNamespace(import_module=no_ray))
    with pytest.raises(BackendError, match=r"ray is not installed: run .*pip install 'ray>=2.40,<3'"):
        run_batch(batch_inputs, tmp_path / "out", workers="ray", names={"workers": "--workers"}, **FAST)
    assert not (tmp_path / "out").exists()  # refused before anything was written
