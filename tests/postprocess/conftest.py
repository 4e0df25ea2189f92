"""Shared fixtures for the post-processing tests: small synthetic dual-grid surfaces with PBR voxel shells.

The generator lives in ``benchmarks/bench_export.py`` (the benchmark uses it at ~1 M faces); here it runs at tiny
grids so every test stays fast.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_REPO = Path(__file__).resolve().parents[2]


def _bench_module():
    name = "_trellis2_bench_export"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _REPO / "benchmarks" / "bench_export.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@contextlib.contextmanager
def one_thread():
    """Run torch single-threaded, then restore. These tests use many small tensor ops; on a 2-core machine that is
    busy with other work, every multi-threaded op can wait a scheduler slice for its second thread (measured: an
    8 k-face unwrap went from 0.14 s to 7.6 s under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _single_threaded_module():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def make_blob():
    """``make_blob(res) -> (Mesh, PbrVoxels)``: the benchmark's synthetic object at grid ``res``."""
    return _bench_module().make_blob_surface


@pytest.fixture(scope="session")
def blob48(make_blob):
    """~8 k-face closed, unoriented dual-grid surface and its voxel shell (res 48)."""
    with one_thread():
        return make_blob(48)


@pytest.fixture(scope="session")
def oriented_blob(blob48):
    """The res-48 blob cleaned and consistently oriented (what the unwrapper receives in an export)."""
    from trellis2_core.postprocess import clean_mesh, remove_unreferenced_vertices

    mesh, voxels = blob48
    with one_thread():
        return remove_unreferenced_vertices(clean_mesh(mesh))[0], voxels


def _icosphere(subdivisions: int = 2):
    trimesh = pytest.importorskip("trimesh")

    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.4)
    return torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int32)


@pytest.fixture(scope="session")
def icosphere():
    """``icosphere(subdivisions) -> (vertices float32 [V,3], faces int32 [F,3])``: closed, outward-wound, r = 0.4."""
    return _icosphere
