"""Decimation to a target face count (§9.3 role; §13 item 23: the official target is a *face* count).

The official step is CuMesh's parallel GPU QEM edge collapse. We use ``fast-simplification`` (the
Fast-Quadric-Mesh-Simplification library that trimesh uses; binary wheels for Linux/Windows/macOS, nothing to
compile): a serial QEM edge collapse on the CPU at about 1 M input faces per second (performance.md §5:
1.35 M → 200 K faces in 1.2 s on one core). It is not bit-identical to CuMesh (no implementation is: CuMesh's
result depends on its version, §13 item 31) but minimises the same quadric error. Large meshes are collapsed in a
child process (:mod:`.simplify_process`: the library holds the GIL), which also lets :func:`start_decimation` run
the collapse while the caller keeps the GPU busy.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..cancel import checkpoint
from ..errors import BackendError, InputError
from ..mesh.checks import check_int, check_mesh, check_number
from ..mesh.types import Mesh
from .simplify_process import PendingSimplify, WorkerUnavailable, shared_worker

__all__ = ["DecimationJob", "decimate_mesh", "start_decimation", "start_decimation_worker"]

log = logging.getLogger(__name__)

_INSTALL_HINT = "pip install 'fast-simplification>=0.1.7'"
WORKER_MIN_FACES = 200_000  # below this the child process's round trip is not worth it (~0.2 s of collapse)


def start_decimation_worker() -> None:
    """Start this process's decimation child now (it imports its library in ~0.3 s), e.g. when a run that will
    decimate begins; never raises (without a usable worker, large meshes are decimated in-process)."""
    try:
        shared_worker().start()
    except WorkerUnavailable as err:
        log.info("no decimation worker: %s", err)


def _simplifier():
    try:
        import fast_simplification
    except ImportError as err:
        raise BackendError(f"mesh decimation needs the fast-simplification package: {_INSTALL_HINT}") from err
    return fast_simplification


def decimate_mesh(mesh: Mesh, target_faces: int, aggressiveness: float = 7.0, *,
                  use_worker: bool | None = None) -> Mesh:
    """Return ``mesh`` reduced to at most about ``target_faces`` faces (QEM edge collapse).

    ``target_faces == 0`` disables the step, and meshes already at or below the target are returned unchanged.
    Unreferenced vertices are dropped. Runs on the CPU; the result goes back to the input's device.
    ``aggressiveness`` is fast-simplification's ``agg`` (higher = faster, coarser error control).
    ``use_worker``: run the collapse in a child process (:mod:`.simplify_process`; None = for meshes of at least
    :data:`WORKER_MIN_FACES` faces), which keeps this process's threads and cancel responsive; the result is the
    same either way.

    Never returns an empty mesh: when the collapse leaves no face (a target of a few faces on a closed surface, or
    a mesh made only of degenerate faces) it raises :class:`~trellis2_core.errors.InputError` saying to raise
    ``target_faces``. Empty or corrupt inputs (NaN vertices, faces out of range) are InputErrors too.
    """
    return start_decimation(mesh, target_faces, aggressiveness, use_worker=use_worker).result()


class DecimationJob:
    """A decimation started by :func:`start_decimation`: :meth:`result` returns the mesh, :meth:`cancel` drops it.

    With a worker the collapse runs while this process does other work (e.g. samples the texture latent); without
    one it runs inside :meth:`result`."""

    def __init__(self, mesh: Mesh, target_faces: int, aggressiveness: float, use_worker: bool | None) -> None:
        self._source = mesh
        self._target, self._agg = int(target_faces), float(aggressiveness)
        self._result: Mesh | None = None
        self._pending: PendingSimplify | None = None
        if target_faces == 0 or mesh.num_faces <= target_faces:
            self._result = mesh
            return
        fs = _simplifier()
        checkpoint("decimation")
        # fast-simplification's collapse thresholds are absolute: work at a power-of-two scale with the longest side
        # in [0.5, 1) (exact: no rounding; a decoder mesh in the unit cube keeps scale 1), so any size decimates alike
        points64 = mesh.vertices.detach().to("cpu", torch.float64)
        extent = float((points64.amax(0) - points64.amin(0)).max())
        self._scale = 2.0 ** -math.ceil(math.log2(extent)) if extent > 0 else 1.0
        self._points = (points64 * self._scale).numpy()
        self._triangles = mesh.faces.detach().to("cpu", torch.int32).numpy()
        self._fs = fs
        if use_worker is None:
            use_worker = mesh.num_faces >= WORKER_MIN_FACES
        if use_worker:
            try:
                self._pending = shared_worker().submit(self._points, self._triangles, self._target, self._agg)
            except WorkerUnavailable as err:
                log.info("decimating in this process: %s", err)

    @property
    def in_worker(self) -> bool:
        """Whether the collapse runs in the child process."""
        return self._pending is not None

    def done(self) -> bool:
        """Whether :meth:`result` would return without waiting for a collapse."""
        return self._result is not None or (self._pending is not None and self._pending.done())

    def result(self) -> Mesh:
        if self._result is not None:
            return self._result
        out = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            try:
                out = pending.result()
            except WorkerUnavailable as err:
                log.warning("the decimation worker failed (%s); decimating in this process", err)
        if out is None:
            out = self._collapse_here()
        checkpoint("decimation")
        self._result = self._finish(*out)
        self._points = self._triangles = None  # the inputs are no longer needed
        return self._result

    def cancel(self) -> None:
        """Drop the job (kills the worker's collapse if it is still running)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

    def _collapse_here(self):
        fs, points, triangles = self._fs, self._points, self._triangles
        try:
            return fs.simplify(points, triangles, target_count=self._target, agg=self._agg)
        except TypeError:  # fast-simplification < 0.1.9 has no target_count
            reduction = 1.0 - self._target / triangles.shape[0]
            return fs.simplify(points, triangles, target_reduction=reduction, agg=self._agg)

    def _finish(self, out_points, out_faces) -> Mesh:
        out_faces = np.asarray(out_faces).reshape(-1, 3)
        if out_faces.shape[0] == 0:
            raise InputError(f"decimating {self._source.num_faces} faces to target_faces={self._target} left no "
                             "face; raise target_faces (a closed surface needs at least a few dozen) or set it to 0 "
                             "to keep the mesh as it is")
        device = self._source.vertices.device
        vertices = torch.from_numpy(np.ascontiguousarray(np.asarray(out_points).reshape(-1, 3) / self._scale,
                                                         dtype=np.float32)).to(device)
        faces = torch.from_numpy(np.ascontiguousarray(out_faces, dtype=np.int32)).to(device)
        return Mesh(vertices, faces)


def start_decimation(mesh: Mesh, target_faces: int, aggressiveness: float = 7.0, *,
                     use_worker: bool | None = None) -> DecimationJob:
    """Begin :func:`decimate_mesh` and return at once when a worker takes the job (see :class:`DecimationJob`).
    Arguments and errors as :func:`decimate_mesh` (input errors are raised here, the empty-result one by
    ``result()``)."""
    target_faces = check_int(target_faces, "target_faces (0 disables decimation)", 0)
    aggressiveness = check_number(aggressiveness, "decimation aggressiveness", 0.0, 100.0, open_lo=True)
    check_mesh(mesh, "decimate")
    return DecimationJob(mesh, target_faces, aggressiveness, use_worker)
