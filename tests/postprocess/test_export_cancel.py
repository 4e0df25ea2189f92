"""Cancel inside the long loops of the GLB export (clean-up, decimation, unwrap, bake, write) and of the separate
mesh steps: CancelledError comes at the first poll that says yes, before the next step is reported, and no file
(final or temporary) is left."""
from __future__ import annotations

import time

import pytest

from trellis2_core import cancel
from trellis2_core.cancel import cancel_scope
from trellis2_core.errors import CancelledError
from trellis2_core.postprocess import ExportConfig, bake_pbr_textures, export_glb, unwrap_uv
from trellis2_core.postprocess import output_file

pytest.importorskip("trimesh")
pytest.importorskip("fast_simplification")


@pytest.fixture(autouse=True)
def _every_checkpoint_polls(monkeypatch):
    """Poll at every checkpoint (no rate limit), so 'the n-th poll' is a fixed point of the run."""
    monkeypatch.setattr(cancel, "DEFAULT_INTERVAL", 0.0)


class CancelAfterStep:
    """``cancelled()`` turns true at the ``polls``-th poll after step ``after`` was reported (or at once)."""

    def __init__(self, after: str | None, polls: int) -> None:
        self.after, self.polls = after, polls
        self.steps: list[str] = []
        self.count = 0
        self.fired: tuple[float, int] | None = None

    def step(self, stage: str, i: int, n: int) -> None:
        self.steps.append(stage)

    def cancelled(self) -> bool:
        if self.fired is None and (self.after is None or self.after in self.steps):
            self.count += 1
            if self.count >= self.polls:
                self.fired = (time.perf_counter(), len(self.steps))
        return self.fired is not None


@pytest.mark.parametrize("after, polls, where", [
    ("fill_holes", 2, "clean"),  # inside the clean-up (between passes / union-find rounds)
    ("clean", 2, "decimat"),
    ("decimate", 3, "UV"),  # inside the unwrapper: clustering rounds
    ("decimate", 12, "UV"),  # … further in: projection, chart raster, packing
    ("unwrap", 2, "texture"),  # inside the bake: raster chunks
    ("unwrap", 6, "texture|closest-point"),  # … projection onto the original, sampling, seam fill
    ("bake", 2, "GLB"),  # inside the write: texture encoding or file chunks
])
def test_cancel_inside_an_export_step(tmp_path, blob48, monkeypatch, after, polls, where):
    monkeypatch.setattr(output_file, "_CHUNK", 4096)  # several write chunks even for a small file
    mesh, voxels = blob48
    progress = CancelAfterStep(after, polls)
    with pytest.raises(CancelledError, match=where) as info:
        export_glb(mesh, voxels, tmp_path / "out" / "x.glb", ExportConfig(target_faces=3000, texture_size=512),
                   progress=progress)
    assert progress.fired is not None, f"only {progress.count} polls after {after}"
    fired_at, steps_then = progress.fired
    assert time.perf_counter() - fired_at < 1.0
    assert len(progress.steps) == steps_then, f"{progress.steps[steps_then:]} ran after the cancel ({info.value})"
    assert list(tmp_path.rglob("*")) == []  # no GLB, no temporary file, no folder created for it


def test_cancel_inside_the_closest_point_projection(tmp_path, blob48):
    """Bake with projection onto the original surface (a decimated mesh): the closest-point batches poll."""
    from trellis2_core.postprocess import clean_mesh, decimate_mesh, remove_unreferenced_vertices

    mesh, voxels = blob48
    work, _ = remove_unreferenced_vertices(clean_mesh(decimate_mesh(clean_mesh(mesh, orient=False), 2000)))
    atlas = unwrap_uv(work, 512)
    where = []

    def poll() -> bool:
        import traceback

        names = [f.name for f in traceback.extract_stack()]
        where.append("query" in names)
        return where[-1]  # says yes at the first poll made inside a closest-point query

    with cancel_scope(poll, interval=0), pytest.raises(CancelledError, match="closest-point"):
        bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, voxels, 512, surface=mesh)
    assert where[-1] and where.count(True) == 1


def test_unwrap_alone_polls_inside_every_phase(oriented_blob):
    mesh, _ = oriented_blob
    seen: list[str] = []

    def poll() -> bool:
        import traceback

        seen.append(traceback.extract_stack()[-5].name)  # the function that called checkpoint()
        return False

    with cancel_scope(poll, interval=0):
        unwrap_uv(mesh, 1024)
    assert {"cluster_charts", "_chart_cells", "pack_charts"} <= set(seen), set(seen)
    for n in (1, len(seen) // 2, len(seen)):  # early, middle and the very last poll all stop the unwrap
        calls = []
        with cancel_scope(lambda: calls.append(1) or len(calls) >= n, interval=0):
            with pytest.raises(CancelledError, match="UV"):
                unwrap_uv(mesh, 1024)
        assert len(calls) == n
