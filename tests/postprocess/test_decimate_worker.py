"""Decimation in a child process (postprocess/simplify_process.py) and the export's geometry begun early
(export.start_geometry): same results as in-process, cancel kills the child, any failure falls back."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import torch

from trellis2_core.cancel import cancel_scope
from trellis2_core.errors import CancelledError, InputError
from trellis2_core.mesh.types import Mesh, PbrVoxels
from trellis2_core.postprocess import ExportConfig, decimate_mesh, export_glb, start_decimation, start_geometry
from trellis2_core.postprocess import simplify_process

pytest.importorskip("fast_simplification")


@pytest.fixture
def sphere(icosphere) -> Mesh:
    return Mesh(*icosphere(6))  # 81 920 faces


@pytest.fixture
def worker():
    """A fresh shared worker for the test, ended afterwards (no child outlives the test)."""
    simplify_process.shutdown_shared_worker()
    yield simplify_process.shared_worker()
    simplify_process.shutdown_shared_worker()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_child_computes_exactly_what_the_process_computes(sphere, worker):
    here = decimate_mesh(sphere, 5000, use_worker=False)
    job = start_decimation(sphere, 5000, use_worker=True)
    assert job.in_worker and worker.pid is not None
    there = job.result()
    assert torch.equal(here.vertices, there.vertices) and torch.equal(here.faces, there.faces)
    again = decimate_mesh(sphere, 7000, use_worker=True)  # the same child takes a second job
    assert torch.equal(again.faces, decimate_mesh(sphere, 7000, use_worker=False).faces)


def test_this_process_runs_while_the_child_collapses(icosphere, worker):
    big = Mesh(*icosphere(7))  # 327 680 faces: the collapse takes ~0.5 s
    decimate_mesh(Mesh(*icosphere(3)), 100, use_worker=True)  # child started and warm
    stamps: list[float] = []
    stop = threading.Event()

    def tick() -> None:  # a Python thread: it only runs while nobody holds the GIL for long
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.001)

    def longest_stall(use_worker: bool) -> float:
        start = len(stamps)
        decimate_mesh(big, 20_000, use_worker=use_worker)
        seen = stamps[start:]
        return max(b - a for a, b in zip(seen, seen[1:]))

    thread = threading.Thread(target=tick)
    thread.start()
    try:
        in_process, in_child = longest_stall(False), longest_stall(True)
    finally:
        stop.set()
        thread.join()
    # in-process, fast-simplification holds the GIL for the whole collapse: the other thread stalls that long
    assert in_process > 0.15 and in_child < 0.1, (in_process, in_child)


def test_cancel_while_waiting_kills_the_child_and_the_next_job_restarts_it(icosphere, worker):
    big = Mesh(*icosphere(7))
    job = start_decimation(big, 1000, use_worker=True)
    pid = worker.pid
    assert pid is not None
    polls = [0]

    def poll() -> bool:
        polls[0] += 1
        return polls[0] >= 3

    start = time.perf_counter()
    with pytest.raises(CancelledError, match="decimation"), cancel_scope(poll, interval=0.0):
        job.result()
    assert time.perf_counter() - start < 1.0
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(pid)
    out = decimate_mesh(Mesh(*icosphere(5)), 2000, use_worker=True)
    assert out.num_faces <= 2000 and worker.pid not in (None, pid)


def test_no_python_to_start_falls_back_to_this_process(sphere, worker, monkeypatch):
    monkeypatch.setattr(simplify_process, "_python_executable", lambda: None)
    job = start_decimation(sphere, 5000, use_worker=True)
    assert not job.in_worker
    assert torch.equal(job.result().faces, decimate_mesh(sphere, 5000, use_worker=False).faces)


def test_a_child_that_dies_mid_job_falls_back_with_a_warning(sphere, worker, tmp_path, monkeypatch, caplog):
    script = tmp_path / "dies.py"
    script.write_text("import json, sys\nsys.stdout.buffer.write(b'trellis2-simplify ready\\n'); sys.stdout.flush()\n"
                      "job = json.loads(sys.stdin.buffer.readline())\n"
                      "sys.stdin.buffer.read(job['points'] * 24 + job['faces'] * 12); sys.exit(3)\n")
    monkeypatch.setattr(simplify_process, "_SCRIPT", script)
    job = start_decimation(sphere, 5000, use_worker=True)
    assert job.in_worker
    with caplog.at_level("WARNING"):
        out = job.result()
    assert "decimation worker failed" in caplog.text
    assert torch.equal(out.faces, decimate_mesh(sphere, 5000, use_worker=False).faces)


def test_a_child_that_cannot_import_the_library_is_not_used(sphere, worker, tmp_path, monkeypatch):
    script = tmp_path / "broken.py"
    script.write_text("import sys\nsys.stdout.buffer.write(b'ERROR no module\\n'); sys.stdout.flush()\n")
    monkeypatch.setattr(simplify_process, "_SCRIPT", script)
    job = start_decimation(sphere, 5000, use_worker=True)
    assert not job.in_worker and job.result().num_faces <= 5000


def test_an_empty_result_is_still_an_input_error_from_the_child(icosphere, worker):
    job = start_decimation(Mesh(*icosphere(3)), 1, use_worker=True)  # a closed sphere collapses to nothing
    assert job.in_worker
    with pytest.raises(InputError, match="raise target_faces"):
        job.result()


def _voxels(res: int = 64) -> PbrVoxels:
    g = torch.arange(res)
    coords = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    keep = ((coords.float() + 0.5) / res - 0.5).norm(dim=1).sub(0.25).abs() < 2.0 / res
    coords = coords[keep].int()
    attrs = torch.rand(coords.shape[0], 6, generator=torch.Generator().manual_seed(0))
    return PbrVoxels(coords=coords, attrs=attrs, resolution=res)


@pytest.mark.parametrize("remesh, in_worker", [(False, False), (False, True), (True, False), (True, True)])
def test_export_with_geometry_begun_early_writes_the_same_asset(icosphere, worker, tmp_path, monkeypatch, remesh,
                                                                in_worker):
    from trellis2_core.postprocess import decimate

    v, f = icosphere(4 if remesh else 6)
    mesh = Mesh(v * 0.625, f)  # radius 0.25, on the voxel shell
    voxels = _voxels(32 if remesh else 64)
    cfg = ExportConfig(target_faces=1000 if remesh else 4000, texture_size=256, remesh=remesh)
    plain = export_glb(mesh, voxels, tmp_path / "plain.glb", cfg)
    if in_worker:
        monkeypatch.setattr(decimate, "WORKER_MIN_FACES", 0)
    job = start_geometry(mesh, cfg, voxels.resolution)
    assert job.job.in_worker is in_worker  # else the collapse runs in result()
    early = export_glb(mesh, voxels, tmp_path / "early.glb", cfg, geometry=job)
    assert (tmp_path / "plain.glb").read_bytes() == (tmp_path / "early.glb").read_bytes()
    assert set(early.timings) == set(plain.timings)


def test_export_refuses_geometry_begun_for_another_config(icosphere, tmp_path):
    mesh, voxels = Mesh(*icosphere(3)), _voxels(16)
    job = start_geometry(mesh, ExportConfig(target_faces=100, texture_size=256), voxels.resolution)
    with pytest.raises(InputError, match="same mesh and config"):
        export_glb(mesh, voxels, tmp_path / "x.glb", ExportConfig(target_faces=200, texture_size=256),
                   geometry=job)
    assert not (tmp_path / "x.glb").exists()


def test_the_worker_script_imports_nothing_of_ours():
    source = simplify_process._SCRIPT.read_text()
    imports = [line.split()[1] for line in source.splitlines() if line.strip().startswith(("import ", "from "))]
    assert set(imports) <= {"json", "sys", "numpy", "fast_simplification"}, imports
    assert sys.executable  # the tests run the worker with this interpreter
