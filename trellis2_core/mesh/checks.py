"""Input checks shared by every mesh operation: a real :class:`Mesh`, faces inside the vertex range, finite
coordinates. Each failure is a one-line :class:`~trellis2_core.errors.InputError` that names the operation and the
fix, raised before any work (never a deep ``IndexError`` or ``ValueError`` from inside a step)."""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from .types import Mesh, PbrVoxels

__all__ = ["check_mesh", "check_voxels", "check_int", "check_number"]


def check_mesh(mesh: object, what: str, *, allow_empty: bool = False, max_abs: float | None = None) -> Mesh:
    """Return ``mesh`` if it is a usable :class:`Mesh` for operation ``what``; raise :class:`InputError` otherwise.

    Refused: another type; no faces (unless ``allow_empty``); faces indexing missing vertices (a mesh built with
    ``Mesh.unchecked``); NaN/Inf vertex coordinates; with ``max_abs``, coordinates beyond ``±max_abs``.
    """
    if not isinstance(mesh, Mesh):
        raise InputError(f"{what} needs a trellis2_core Mesh (vertices float32 [V, 3], faces int32 [F, 3]), got "
                         f"{type(mesh).__name__}")
    if mesh.num_faces == 0:
        if allow_empty:
            return mesh
        raise InputError(f"{what}: the mesh is empty (no faces); check the decoder output or the previous mesh step")
    lo, hi = int(mesh.faces.min()), int(mesh.faces.max())
    if lo < 0 or hi >= mesh.num_vertices:
        raise InputError(f"{what}: mesh faces index vertices {lo}..{hi} but there are {mesh.num_vertices} "
                         "vertices; the mesh is corrupt (rebuild it with valid face indices)")
    finite = torch.isfinite(mesh.vertices)
    if not bool(finite.all()):
        bad = int((~finite.all(dim=1)).sum())
        raise InputError(f"{what}: {bad} mesh vertices have NaN or infinite coordinates (corrupt decoder output: "
                         "decode again in float32/bfloat16, or remove those vertices)")
    if max_abs is not None and mesh.num_vertices > 0:
        reach = float(mesh.vertices.abs().max())
        if reach > max_abs:
            raise InputError(f"{what}: mesh coordinates reach {reach:.3g}, but this step expects the decoder's frame "
                             f"(inside the unit cube [-0.5, 0.5]³, at most ±{max_abs:g}); scale the mesh back or use "
                             "the voxels it was decoded with")
    return mesh


def check_voxels(voxels: object, what: str) -> PbrVoxels:
    """Return ``voxels`` if they are :class:`PbrVoxels` with finite attributes; raise :class:`InputError` otherwise."""
    if not isinstance(voxels, PbrVoxels):
        raise InputError(f"{what} needs PbrVoxels for the textures (from Decode Mesh with a material latent), got "
                         f"{type(voxels).__name__}")
    if voxels.coords.shape[0] > 0:
        finite = torch.isfinite(voxels.attrs)
        if not bool(finite.all()):
            bad = int((~finite.all(dim=1)).sum())
            raise InputError(f"{what}: {bad} PBR voxels have NaN or infinite attributes (corrupt texture decoder "
                             "output: decode again in float32/bfloat16)")
        lo, hi = int(voxels.coords.min()), int(voxels.coords.max())
        if lo < 0 or hi > voxels.resolution + 1:
            raise InputError(f"{what}: PBR voxel coordinates span {lo}..{hi} but must be grid indices in "
                             f"0..{voxels.resolution - 1} (resolution {voxels.resolution}); the voxels are corrupt")
    return voxels


def check_int(value: object, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]`` (bools and non-integral numbers are refused) or :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(value)  # numpy / torch integers, integral floats
        except (TypeError, ValueError, OverflowError):
            as_int = None
        if isinstance(value, bool) or as_int is None or as_int != value:
            raise InputError(f"{name} must be an integer, got {value!r}")
        value = as_int
    if value < lo or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise InputError(f"{name} must be {span}, got {value}")
    return int(value)


def check_number(value: object, name: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``) or :class:`InputError`."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x) or x < lo or x > hi or (open_lo and x == lo):
        if math.isinf(hi):
            span = f"> {lo:g}" if open_lo else f">= {lo:g}"
        else:
            span = f"in ({lo:g}, {hi:g}]" if open_lo else f"in [{lo:g}, {hi:g}]"
        raise InputError(f"{name} must be a finite number {span}, got {value!r}")
    return x
