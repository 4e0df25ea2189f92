"""Surrogate geometry injected into the real pipeline, so random weights give realistic voxel and face counts.

Random weights decode to noise: thousands of scattered voxels, a mesh of confetti. For a benchmark of what a user
waits for, :func:`inject` makes every *geometric decision* of the real :class:`~trellis2_core.pipeline.Pipeline`
follow one closed surface (a sphere of radius ~0.29 with mild bumps, signed distance :func:`surface_sdf`), while
every network still runs at full size on those voxels:

* structure decoder (``SparseStructureDecoder.forward``, patched): its occupancy logits are replaced by the
  surface band at 32³ whose width is fitted to ``N_LR`` tokens;
* cascade ``upsample`` (``FlexiDualGridVaeDecoder.upsample``): the decoder's first four levels run with guided
  subdivisions (children within a fitted band of the surface), fitted so that the official quantisation gives
  ``N_HR`` tokens (bench_pipeline's ``_TARGETS``: ~20 K at 1024_cascade, ~47 K at 1536_cascade);
* shape decoding (``FlexiDualGridVaeDecoder.decode``): the decoder runs in full with guided subdivisions fitted to
  the finest-level voxel counts of performance.md §1.2 (621 K / 2.50 M / 5.62 M); its 7 raw output channels are
  then replaced by the exact dual-grid values of the surface (dual vertex = mean of the edge crossings, edge flags,
  unit split weights), so the mesher makes a clean closed surface of millions of faces, as
  ``bench_export.make_blob_surface``. The texture decoder follows the same subdivisions (its normal guided path).

Subdivision masks are computed from the coordinates each call actually receives, so row order never matters.
:func:`inject` is a context manager; the patches and hooks are removed on exit. ``mark(label)`` (optional) is
called at the end of each injected step (structure decoder, upsample, shape decoder, mesh extraction), so that a
stage clock can split the time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Iterator

import torch
from torch import Tensor

from trellis2_core.models.shape_decoder import FlexiDualGridVaeDecoder, ShapeDecoding
from trellis2_core.models.structure_decoder import SparseStructureDecoder
from trellis2_core.pipeline.cascade import hr_coords_from_lr, quantize_coords
from trellis2_core.pipeline.stages import PipelineType
from trellis2_core.sparse import SparseTensor, subdivide

from bench_export import dual_vertices  # noqa: E402  (benchmarks/ is on sys.path)
from bench_pipeline import guided_upsample  # noqa: E402

__all__ = ["TARGETS", "TARGETS_TINY", "Geometry", "fit_geometry", "inject", "surface_sdf", "surrogate_raw"]

#: (N_LR at 32³, N_HR, finest decoder level) per pipeline type (bench_pipeline's targets, performance.md §1.2/§1.4)
TARGETS = {"512": (3_000, None, 621_000), "1024_cascade": (4_000, 20_000, 2_500_000),
           "1536_cascade": (4_000, 47_000, 5_620_000)}
TARGETS_TINY = {"512": (300, None, 8_000), "1024_cascade": (400, 1_500, 30_000), "1536_cascade": (400, 3_000, 60_000)}
LR_RES = 32
_MAX_TOKENS = 49152
_SLOTS = [[s & 1, (s >> 1) & 1, (s >> 2) & 1] for s in range(8)]
_RADIUS = 0.29  # sphere radius: a ~1-voxel band at the finest level then holds the §1.2 voxel counts


def surface_sdf(p: Tensor) -> Tensor:
    """Approximate signed distance of the bumpy sphere at points ``p [K, 3]`` in the unit cube (Lipschitz ~1.1)."""
    q = p - 0.5
    bump = 1.0 + 0.03 * torch.sin(7.0 * q[:, 0]) * torch.sin(9.0 * q[:, 1] + 0.3) * torch.sin(5.0 * q[:, 2] + 1.1)
    return q.norm(dim=1) - _RADIUS * bump


def band_grid(res: int, width: float, device: torch.device) -> Tensor:
    """``[N, 4]`` int32 coords (lexicographic) of the ``res``³ cells within ``width`` voxels of the surface."""
    ax = torch.arange(res, device=device)
    ijk = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)
    ijk = ijk[surface_sdf((ijk.float() + 0.5) / res).abs() <= width / res]
    return torch.cat([torch.zeros_like(ijk[:, :1]), ijk], dim=1).to(torch.int32)


def subdivision_chain(coords: Tensor, res: int, width: float, levels: int) -> tuple[list[Tensor], Tensor]:
    """Bool masks ``[N_i, 8]`` keeping children within ``width`` child voxels of the surface, and the last coords."""
    masks = []
    slots = torch.tensor(_SLOTS, device=coords.device, dtype=coords.dtype)
    for _ in range(levels):
        child = coords[:, None, 1:] * 2 + slots
        mask = surface_sdf((child.reshape(-1, 3).float() + 0.5) / (2 * res)).abs().view(-1, 8) <= width / (2 * res)
        masks.append(mask)
        coords = subdivide(SparseTensor(coords.new_empty(coords.shape[0], 1), coords, validate=False), mask).coords
        res *= 2
    return masks, coords


def fit_width(count: Callable[[float], int], target: int, lo: float = 0.05, hi: float = 8.0,
              iters: int = 14) -> float:
    """Smallest band width (bisection) whose voxel count reaches ``target``."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return hi


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Fitted band widths (voxels of the level they select) and the token counts they give."""

    lr_width: float
    up_width: float | None
    dec_width: float
    tokens: dict


def fit_geometry(ptype: PipelineType, targets: tuple, device: torch.device) -> Geometry:
    """Fit the three band widths of ``ptype`` to ``targets`` = (N_LR, N_HR or None, finest-level voxels)."""
    n_lr, n_hr, n_final = targets
    w_lr = fit_width(lambda x: band_grid(LR_RES, x, device).shape[0], n_lr)
    lr = band_grid(LR_RES, w_lr, device)
    w_up, hr, hr_res = None, lr, LR_RES * 16
    if ptype.cascade:
        w_up = fit_width(lambda x: quantize_coords(subdivision_chain(lr, LR_RES, x, 4)[1], 512,
                                                   ptype.resolution).shape[0], n_hr)
        hr, hr_res = hr_coords_from_lr(subdivision_chain(lr, LR_RES, w_up, 4)[1], 512, ptype.resolution, _MAX_TOKENS)
    w_dec = fit_width(lambda x: subdivision_chain(hr, hr_res // 16, x, 4)[1].shape[0], n_final)
    final = subdivision_chain(hr, hr_res // 16, w_dec, 4)[1].shape[0]
    return Geometry(w_lr, w_up, w_dec, {"N_LR": int(lr.shape[0]), "N_HR": int(hr.shape[0]), "hr_res": int(hr_res),
                                        "final_voxels": int(final)})


# ------------------------------------------------------------------------------------------------ decoder outputs
def surrogate_raw(coords: Tensor, res: int, voxel_margin: float, chunk: int = 1 << 20) -> Tensor:
    """Raw ``[M, 7]`` shape-decoder outputs that the head (§13 item 16) turns into the surface's dual grid.

    Per voxel (``coords [M, 3]`` at grid ``res``): dual vertex = mean of the surface crossings on its 12 edges
    (the centre if none), edge flag per axis = the surface crosses the edge at the voxel's max corner in the other
    two axes (§8.1), split weight 1. Inverse head: offset ``o = logit((v + m) / (1 + 2m))``, flags ±10,
    ``softplus⁻¹(1)``.
    """
    out = []
    corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=coords.device)
    for start in range(0, coords.shape[0], chunk):
        c = coords[start:start + chunk].long()
        n = c.shape[0]
        cv = surface_sdf(((c[:, None] + corners).reshape(-1, 3).float()) / res).view(n, 8)  # corner b = 4i+2j+k
        vert, flags = dual_vertices(cv)
        frac = ((vert + voxel_margin) / (1 + 2 * voxel_margin)).clamp(1e-4, 1 - 1e-4)
        raw = torch.cat([torch.logit(frac), flags.float() * 20 - 10,
                         torch.full((n, 1), math.log(math.expm1(1.0)), device=c.device)], dim=1)
        out.append(raw)
    return torch.cat(out) if out else torch.zeros(0, 7, device=coords.device)


# ------------------------------------------------------------------------------------------------ injection
@contextlib.contextmanager
def inject(geo: Geometry, mark: Callable[[str], None] | None = None) -> Iterator[None]:
    """Make the real pipeline follow the surrogate surface (see the module docstring) inside the ``with`` body."""
    note = mark or (lambda _label: None)

    ss_forward = SparseStructureDecoder.forward

    def ss_decode(self: SparseStructureDecoder, *args: object, **kwargs: object) -> Tensor:
        output = ss_forward(self, *args, **kwargs)  # the network runs in full; its occupancy is replaced
        size = output.shape[2]
        lr = band_grid(LR_RES, geo.lr_width, output.device).long()
        occ = torch.zeros(output.shape[0], LR_RES, LR_RES, LR_RES, dtype=torch.bool, device=output.device)
        for b in range(output.shape[0]):
            occ[b, lr[:, 1], lr[:, 2], lr[:, 3]] = True
        ratio = size // LR_RES
        occ = occ.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2).repeat_interleave(ratio, 3)[:, None]
        note("structure_decoder")
        return torch.where(occ, 1.0, -1.0).to(output.dtype)

    def upsample(self: FlexiDualGridVaeDecoder, latent: SparseTensor, upsample_times: int = 4) -> Tensor:
        if geo.up_width is None or upsample_times != 4:
            raise RuntimeError("surrogate upsample: only the cascade's upsample(latent, 4) is injected")
        masks, _ = subdivision_chain(latent.coords, LR_RES, geo.up_width, 4)
        coords = guided_upsample(self, latent, masks)
        note("upsample")
        return coords

    def decode(self: FlexiDualGridVaeDecoder, latent: SparseTensor, resolution: int) -> ShapeDecoding:
        note("decode_setup")
        masks, _ = subdivision_chain(latent.coords, resolution // 16, geo.dec_width, 4)
        guides = [m.float() * 2 - 1 for m in masks]
        raw, _ = self.forward_with_subs(latent, guide_subs=guides)
        note("shape_decoder")
        raw = raw.replace(surrogate_raw(raw.coords[:, 1:], resolution, self.voxel_margin).to(raw.feats.dtype))
        meshes = self.meshes_from_raw(raw, resolution)
        note("mesh_extraction")
        return ShapeDecoding(meshes, guides, raw)

    # Class-level patches, never a global module hook: torch.compile guards the global hook dict of every module
    # call it inlines, so a global hook registered anew for each run makes the compiled DiT block recompile each run
    # (measured: 8 graphs and dynamo's recompile limit within three runs).
    saved = FlexiDualGridVaeDecoder.upsample, FlexiDualGridVaeDecoder.decode
    FlexiDualGridVaeDecoder.upsample, FlexiDualGridVaeDecoder.decode = upsample, decode
    SparseStructureDecoder.forward = ss_decode
    try:
        yield
    finally:
        FlexiDualGridVaeDecoder.upsample, FlexiDualGridVaeDecoder.decode = saved
        SparseStructureDecoder.forward = ss_forward
