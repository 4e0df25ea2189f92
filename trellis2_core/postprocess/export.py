"""Decoded mesh + PBR voxels → textured GLB, stage by stage (role of the official ``o_voxel.postprocess.to_glb``, §9).

Stages: fill small holes (§8.2; the result is the *original* surface the textures are sampled from) → geometry →
UV unwrap (§9.4, our fast chart unwrapper) → vertex normals → bake the PBR textures from the voxels, projecting every
texel onto the original surface first (§9.5) → write the GLB (§9.6).

Geometry, two official branches (``ExportConfig.remesh``):

* ``remesh=False`` (default here; §9.2' branch B): clean (degenerate/duplicate faces, tiny components) → decimate to
  ``target_faces`` (§9.3) → clean again and unify the face orientation (outwards). Material double-sided.
* ``remesh=True`` (the official demo's choice; §9.2 branch A): narrow-band dual-contouring remesh of the original at
  the voxel resolution (a closed shell ``remesh_band`` cells outside the surface) → decimate → drop degenerate and
  duplicate faces (§9.4 step 1). No orientation pass (dual contouring is consistently oriented). Single-sided.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor

from ..cancel import cancel_scope, checkpoint
from ..errors import InputError
from ..mesh.checks import check_mesh, check_voxels
from ..mesh.types import Mesh, PbrVoxels, TexturedMesh
from .bake import bake_pbr_textures
from .clean import clean_mesh, remove_unreferenced_vertices
from .closest import TriangleGrid
from .decimate import DecimationJob, decimate_mesh, start_decimation
from .glb import ALPHA_MODES, TEXTURE_FORMATS, check_output_path, write_glb
from .holes import fill_holes
from .remesh import remesh_narrow_band
from .unwrap import UvAtlas, unwrap_uv

__all__ = ["ExportConfig", "ExportReport", "GeometryJob", "export_glb", "simplify_mesh", "start_geometry",
           "texture_mesh", "vertex_normals"]

log = logging.getLogger(__name__)


class ExportProgress(Protocol):
    """What :func:`export_glb` reports to; ``cancelled`` is optional (polled between stages and inside their long
    loops, at most every 10 ms: see :mod:`trellis2_core.cancel`)."""

    def step(self, stage: str, i: int, n: int) -> None: ...


@dataclass(frozen=True)
class ExportConfig:
    """GLB export settings (defaults: the official demo's 500 k faces and 2048² textures, §13 item 23)."""

    target_faces: int = 500_000  # faces after decimation; 0 disables decimation
    texture_size: int = 2048  # texels per side of both textures, 256..8192
    alpha_mode: str = "OPAQUE"  # glTF alphaMode: OPAQUE (official), MASK or BLEND
    alpha_cutoff: float = 0.5  # alphaCutoff for MASK, in [0, 1]
    double_sided: bool | None = None  # glTF doubleSided; None = official rule, ``not remesh``
    texture_format: str = "png"  # png (portable) or webp (smaller; needs EXT_texture_webp in the viewer)
    png_compress_level: int = 3  # zlib level of PNG textures, 0..9 (6 = Pillow's default: ~2x slower, ~25 % smaller)
    fill_holes_perimeter: float = 3e-2  # close boundary loops shorter than this (world units); 0 disables
    min_component_area: float = 1e-5  # drop face components smaller than this (world units²); 0 disables
    uv_padding: int = 2  # minimum gap between UV charts, texels
    remesh: bool = False  # narrow-band dual-contouring remesh (official demo: True; §9.2 branch A)
    remesh_band: float = 1.0  # remesh shell offset, in voxels of the decoded grid (official 1), (0, 4]
    remesh_project: float = 0.0  # move remeshed vertices this fraction back onto the surface, [0, 1] (demo 0)

    @property
    def material_double_sided(self) -> bool:
        """The glTF ``doubleSided`` written: ``double_sided`` if set, else ``not remesh`` (§9.6)."""
        return (not self.remesh) if self.double_sided is None else bool(self.double_sided)

    def __post_init__(self) -> None:
        if not isinstance(self.target_faces, int) or self.target_faces < 0:
            raise InputError(f"target_faces must be an int >= 0 (0 disables decimation), got {self.target_faces!r}")
        if not isinstance(self.texture_size, int) or not 256 <= self.texture_size <= 8192:
            raise InputError(f"texture_size must be an int in 256..8192, got {self.texture_size!r}")
        if self.alpha_mode not in ALPHA_MODES:
            raise InputError(f"alpha_mode must be one of {', '.join(ALPHA_MODES)}, got {self.alpha_mode!r}")
        if not 0.0 <= self.alpha_cutoff <= 1.0:
            raise InputError(f"alpha_cutoff must be in [0, 1], got {self.alpha_cutoff!r}")
        if self.texture_format not in TEXTURE_FORMATS:
            raise InputError(f"texture_format must be one of {', '.join(TEXTURE_FORMATS)}, "
                             f"got {self.texture_format!r}")
        for name in ("fill_holes_perimeter", "min_component_area"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0 (0 disables), got {value!r}")
        if not isinstance(self.png_compress_level, int) or not 0 <= self.png_compress_level <= 9:
            raise InputError(f"png_compress_level must be an int in 0..9, got {self.png_compress_level!r}")
        if not isinstance(self.uv_padding, int) or not 1 <= self.uv_padding <= 64:
            raise InputError(f"uv_padding must be an int in 1..64 texels, got {self.uv_padding!r}")
        if not isinstance(self.remesh, bool):
            raise InputError(f"remesh must be True or False, got {self.remesh!r}")
        if self.double_sided is not None and not isinstance(self.double_sided, bool):
            raise InputError(f"double_sided must be True, False or None (official rule), got {self.double_sided!r}")
        if not (isinstance(self.remesh_band, (int, float)) and 0 < self.remesh_band <= 4):
            raise InputError(f"remesh_band must be in (0, 4] voxels (official 1), got {self.remesh_band!r}")
        if not (isinstance(self.remesh_project, (int, float)) and 0 <= self.remesh_project <= 1):
            raise InputError(f"remesh_project must be in [0, 1] (official demo 0), got {self.remesh_project!r}")


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_glb` wrote."""

    path: str
    bytes: int
    faces: int
    vertices: int  # after cutting UV seams
    charts: int
    atlas_coverage: float  # fraction of texels covered by a triangle
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    asset: TexturedMesh | None = field(default=None, compare=False, repr=False)  # what the GLB holds


_NOTHING_LEFT = ("no faces are left after clean-up (every face was degenerate, duplicate or part of a piece smaller "
                 "than min_component_area); lower min_component_area or check the decoder output")
_MAX_COORDINATE = 1e3  # the decoder's frame is the unit cube; far beyond it the voxels cannot texture anything


def _validate(mesh: object, voxels: object) -> None:
    check_mesh(mesh, "GLB export", max_abs=_MAX_COORDINATE)
    check_voxels(voxels, "GLB export")


def vertex_normals(mesh: Mesh) -> Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` (sum of face cross products); a vertex whose sum vanishes takes
    the normal of its first face (§9.4 step 4), one without faces gets +z."""
    f = mesh.faces.to(torch.int64)
    p = mesh.vertices.to(torch.float64)[f]
    cross = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1)  # [F, 3]
    acc = torch.zeros(mesh.num_vertices, 3, dtype=torch.float64, device=cross.device)
    acc.index_add_(0, f.reshape(-1), cross.repeat_interleave(3, dim=0))
    length = acc.norm(dim=1, keepdim=True)
    first = torch.full((mesh.num_vertices,), f.shape[0], dtype=torch.int64, device=f.device)
    first.scatter_reduce_(0, f.reshape(-1), torch.arange(f.shape[0], device=f.device).repeat_interleave(3), "amin")
    unit_face = cross / cross.norm(dim=1, keepdim=True).clamp(min=1e-300)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=f.device)
    fallback = torch.cat((unit_face, up[None]), 0)[first]
    fallback = torch.where(fallback.norm(dim=1, keepdim=True) > 0, fallback, up)
    return torch.where(length > 1e-300, acc / length.clamp(min=1e-300), fallback).to(torch.float32)


def simplify_mesh(mesh: Mesh, target_faces: int, min_component_area: float = 1e-5) -> tuple[Mesh, bool]:
    """The export's geometry without remeshing (§9.2' branch B): clean (degenerate/duplicate faces, components
    smaller than ``min_component_area``) → decimate to ``target_faces`` (0 disables) → clean again and unify the
    orientation → drop unreferenced vertices. Returns (the mesh, whether decimation moved the surface, i.e. the
    texels must be projected back onto ``mesh``). The Decimate node and :func:`export_glb` both call this."""
    return _decimate(_clean(mesh, min_component_area), target_faces)


def _clean(mesh: Mesh, min_component_area: float) -> Mesh:
    work = clean_mesh(mesh, min_component_area, orient=False)
    if work.num_faces == 0:
        raise InputError(_NOTHING_LEFT)
    return work


def _decimate(work: Mesh, target_faces: int) -> tuple[Mesh, bool]:
    return _after_decimation(work, decimate_mesh(work, target_faces))


def _after_decimation(work: Mesh, decimated: Mesh) -> tuple[Mesh, bool]:
    moved = decimated is not work
    # QEM quadrics ignore winding, so orientation is unified once, on the (smaller) decimated mesh
    work, _ = remove_unreferenced_vertices(clean_mesh(decimated))
    if work.num_faces == 0:
        raise InputError(_NOTHING_LEFT)
    return work, moved


class GeometryJob:
    """The export's geometry begun early by :func:`start_geometry`; hand it to :func:`export_glb` (``geometry=``).

    Hole filling and clean-up (or the remesh) have run; the decimation runs in a child process meanwhile when the
    mesh is large (see :mod:`.simplify_process`). Call :meth:`cancel` if the export will not happen."""

    def __init__(self, mesh: Mesh, config: ExportConfig, resolution: int | None,
                 advance: Callable[[str], None] | None = None) -> None:
        self.mesh, self.config, self.resolution = mesh, config, resolution
        self.timings: dict[str, float] = {}
        clock = time.perf_counter()
        self.original = fill_holes(mesh, config.fill_holes_perimeter)  # §9.1 step 2: kept for attribute transfer
        self.surface: TriangleGrid | None = None
        self.timings["fill_holes"] = time.perf_counter() - clock
        if advance is not None:
            advance("fill_holes")
        clock = time.perf_counter()
        if config.remesh:
            if resolution is None:
                raise InputError("start_geometry with remesh=True needs the decoded grid resolution")
            self.surface = TriangleGrid(self.original.vertices, self.original.faces)
            self.work = remesh_narrow_band(self.original, int(resolution), float(config.remesh_band),
                                           float(config.remesh_project), grid=self.surface)
            stage = "remesh"
        else:
            self.work = _clean(self.original, config.min_component_area)
            stage = "clean"
        self.timings[stage] = time.perf_counter() - clock
        if advance is not None:
            advance(stage)
        self.job: DecimationJob = start_decimation(self.work, config.target_faces)

    def cancel(self) -> None:
        self.job.cancel()

    def finish(self) -> tuple[Mesh, Mesh | TriangleGrid | None]:
        """(the simplified mesh, what the texels are projected onto: None when they lie on it).

        While a worker still collapses the mesh, the closest-point grid of the original surface (which the bake
        needs then) is built meanwhile."""
        grid = None
        if not self.config.remesh and self.job.in_worker and not self.job.done():
            grid = TriangleGrid(self.original.vertices, self.original.faces)
        decimated = self.job.result()
        if self.config.remesh:
            work, _ = remove_unreferenced_vertices(clean_mesh(decimated, orient=False))
            if work.num_faces == 0:
                raise InputError(_NOTHING_LEFT)
            return work, self.surface
        work, moved = _after_decimation(self.work, decimated)
        return work, ((self.original if grid is None else grid) if moved else None)


def start_geometry(mesh: Mesh, config: ExportConfig | None = None, resolution: int | None = None) -> GeometryJob:
    """Begin :func:`export_glb`'s geometry for ``mesh`` now (fill holes, clean or remesh, and start decimating), so
    that the decimation's seconds on the CPU overlap whatever the caller does next on the GPU; then call
    ``export_glb(mesh, voxels, path, config, geometry=job)`` with the same mesh and config. ``resolution`` is the
    decoded grid's (``PbrVoxels.resolution``), needed only with ``remesh``."""
    if config is not None and not isinstance(config, ExportConfig):
        raise InputError(f"export config must be an ExportConfig, got {type(config).__name__}")
    check_mesh(mesh, "GLB export", max_abs=_MAX_COORDINATE)
    return GeometryJob(mesh, config or ExportConfig(), resolution)


def texture_mesh(mesh: Mesh, atlas: UvAtlas, pbr_voxels: PbrVoxels, texture_size: int,
                 surface: Mesh | TriangleGrid | None = None) -> TexturedMesh:
    """Bake ``pbr_voxels`` into ``atlas`` (unwrapped from ``mesh``): vertex normals + textures (§9.4 step 4, §9.5).

    ``surface`` is the hole-filled original the texels are projected onto (None: ``mesh`` lies on it). The atlas
    must have been packed for ``texture_size`` (its padding is in those texels)."""
    return _texture(mesh, atlas, pbr_voxels, texture_size, surface)[0]


def _texture(mesh: Mesh, atlas: UvAtlas, pbr_voxels: PbrVoxels, texture_size: int,
             surface: Mesh | TriangleGrid | None) -> tuple[TexturedMesh, float]:
    if atlas.texture_size and atlas.texture_size != texture_size:
        raise InputError(f"the UV atlas was packed for {atlas.texture_size} px textures but the export bakes "
                         f"{texture_size} px: use the same texture_size in UV Unwrap and Export GLB")
    normals = vertex_normals(mesh)[atlas.vmap]
    textures = bake_pbr_textures(atlas.uvs, atlas.faces, atlas.vertices, pbr_voxels, texture_size, surface=surface)
    return TexturedMesh(atlas.vertices, atlas.faces, normals, atlas.uvs, textures.base_color,
                        textures.metallic_roughness), textures.coverage


def export_glb(mesh: Mesh, pbr_voxels: PbrVoxels, path: str | os.PathLike, config: ExportConfig | None = None,
               progress: ExportProgress | None = None, *, atlas: UvAtlas | None = None,
               surface: Mesh | None = None, geometry: GeometryJob | None = None) -> ExportReport:
    """Post-process ``mesh`` (Z-up, inside [-0.5, 0.5]³), bake ``pbr_voxels`` into textures and write a GLB.

    With ``atlas`` (``mesh`` already simplified and unwrapped, e.g. by the staged nodes) only the bake and the
    write run; ``surface`` is then the original mesh before simplification, hole-filled here like the one-call
    path's, onto which every texel is projected (None: ``mesh`` is that surface). Runs on the mesh's device
    (decimation on the CPU). Raises :class:`InputError` for empty/corrupt inputs (NaN
    vertices or voxel attributes, faces out of range, coordinates far outside the unit cube, nothing left after
    clean-up) or an unusable ``path`` (checked before any work), and
    :class:`~trellis2_core.errors.CancelledError` within about a second of ``progress.cancelled()`` (or any
    enclosing :func:`~trellis2_core.cancel.cancel_scope` poll) turning true; a cancelled or failed export leaves
    no file behind. The report's ``asset`` holds what was written.

    ``geometry``: the job :func:`start_geometry` began for this ``mesh`` and ``config`` (its stages are not run
    again; a failed export cancels it).
    """
    try:
        return _export_checked(mesh, pbr_voxels, path, config, progress, atlas, surface, geometry)
    except BaseException:
        if geometry is not None:
            geometry.cancel()
        raise


def _export_checked(mesh: Mesh, pbr_voxels: PbrVoxels, path: str | os.PathLike, config: ExportConfig | None,
                    progress: ExportProgress | None, atlas: UvAtlas | None, surface: Mesh | None,
                    geometry: GeometryJob | None) -> ExportReport:
    if config is not None and not isinstance(config, ExportConfig):
        raise InputError(f"export config must be an ExportConfig, got {type(config).__name__}")
    cfg = config or ExportConfig()
    _validate(mesh, pbr_voxels)
    if geometry is not None:
        if not isinstance(geometry, GeometryJob):
            raise InputError(f"geometry must be what start_geometry returned, got {type(geometry).__name__}")
        if geometry.mesh is not mesh or geometry.config != cfg or atlas is not None or surface is not None:
            raise InputError("geometry was started for another mesh or export config (or with an atlas/surface): "
                             "pass the same mesh and config to start_geometry and export_glb")
        if cfg.remesh and geometry.resolution != pbr_voxels.resolution:
            raise InputError(f"geometry was remeshed at resolution {geometry.resolution}, the voxels are at "
                             f"{pbr_voxels.resolution}")
    if atlas is not None and cfg.remesh:
        raise InputError("remesh cannot change a mesh that is already UV-unwrapped: turn remesh off or remove the "
                         "UV Unwrap node")
    if surface is not None:
        check_mesh(surface, "GLB export (projection surface)", max_abs=_MAX_COORDINATE)
    target = check_output_path(path)
    with contextlib.ExitStack() as scope:
        return _export(mesh, pbr_voxels, target, cfg, progress, scope, atlas, surface, geometry)


def _export(mesh: Mesh, pbr_voxels: PbrVoxels, target, cfg: ExportConfig, progress: ExportProgress | None,
            scope: contextlib.ExitStack, atlas: UvAtlas | None, given_surface: Mesh | None,
            geometry: GeometryJob | None) -> ExportReport:
    """The export stages of :func:`export_glb` (inputs checked). ``progress.cancelled`` becomes an active cancel
    poll once the first stage has been reported (so a progress object is always asked after its first step)."""
    if atlas is not None:
        stages = ["fill_holes", "bake", "write"]
    else:
        stages = ["fill_holes", "remesh" if cfg.remesh else "clean", "decimate", "unwrap", "bake", "write"]
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def advance(stage: str, seconds: float | None = None) -> None:
        now = time.perf_counter()
        timings[stage] = now - clock[0] if seconds is None else seconds
        clock[0] = now
        log.debug("export stage %s: %.3f s", stage, timings[stage])
        if progress is not None:
            progress.step(stage, stages.index(stage) + 1, len(stages))
            if stage == stages[0]:
                scope.enter_context(cancel_scope(getattr(progress, "cancelled", None)))
        if stage != stages[-1]:  # once written, the export stands
            checkpoint(f"GLB export (after stage {stage!r})", force=True)

    surface: Mesh | TriangleGrid | None = None  # what the texels are projected onto (None: they lie on it)
    if atlas is not None:
        if given_surface is not None:  # §9.1 step 2 / §9.5 step 3: the hole-filled original, as below
            surface = fill_holes(given_surface, cfg.fill_holes_perimeter)
        advance("fill_holes")
        work = mesh
    else:
        if geometry is not None:  # begun earlier by start_geometry: report its stages
            for stage in ("fill_holes", "remesh" if cfg.remesh else "clean"):
                advance(stage, geometry.timings[stage])
        else:
            geometry = GeometryJob(mesh, cfg, pbr_voxels.resolution, advance)
        work, surface = geometry.finish()
        advance("decimate")
        atlas = unwrap_uv(work, cfg.texture_size, padding=cfg.uv_padding)
        advance("unwrap")
    asset, coverage = _texture(work, atlas, pbr_voxels, cfg.texture_size, surface)
    advance("bake")
    size = write_glb(target, asset.vertices, asset.faces, asset.normals, asset.uvs, asset.base_color,
                     asset.metallic_roughness, alpha_mode=cfg.alpha_mode, alpha_cutoff=cfg.alpha_cutoff,
                     double_sided=cfg.material_double_sided, texture_format=cfg.texture_format,
                     png_compress_level=cfg.png_compress_level)
    advance("write")
    report = ExportReport(path=str(target), bytes=size, faces=int(asset.faces.shape[0]),
                          vertices=int(asset.vertices.shape[0]), charts=atlas.num_charts,
                          atlas_coverage=coverage, timings=timings, asset=asset)
    log.info("GLB export: %d faces, %d charts, %.1f %% atlas coverage, %.2f s -> %s", report.faces, report.charts,
             100 * report.atlas_coverage, sum(timings.values()), report.path)
    return report
