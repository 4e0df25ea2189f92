"""Texture baking: UV rasterisation, sparse trilinear sampling of the PBR voxels, uint8 conversion, seam fill (§9.5).

Steps (official numbering):

1. Rasterise the atlas in UV space at ``T × T`` (``trellis2_kernels.uv_raster``: Triton on GPU, vectorised torch
   reference elsewhere). Row ``r`` ↔ ``v ≈ (r + 0.5)/T``, column ``c`` ↔ ``u ≈ (c + 0.5)/T``; higher face ids win.
2. Interpolate the 3-D vertex positions at every covered texel centre (barycentrics).
3. Each point moves to its closest point on the hole-filled *original* mesh (official: ``cubvh`` BVH,
   ``unsigned_distance(..., return_uvw=True)``; here :class:`~.closest.TriangleGrid`, exact). This undoes the
   remesher's ~1-voxel shell offset and the decimation error before sampling. Two deviations, both documented at
   :func:`project_to_surface`: points with no original face within ``max_distance`` (8 voxels by default; the
   official search is unbounded) keep their position, and points whose 8 voxel neighbours are all absent after
   projection fall back to the nearest voxel within 2 voxels instead of baking 0 (``fallback``).
4. Sparse trilinear sampling with renormalisation over existing voxels: ``q = (p − origin)/voxel_size``; the 8
   neighbours ``floor(q − 0.5) + {0,1}³``; weights ``Π(1 − |q − (i + 0.5)|)``; absent voxels dropped; divide by
   ``max(Σw, 1e-12)``; 0 when no neighbour exists.
5. ``uint8 = trunc(clip(v·255, 0, 255))``.
6. Seam fill of uncovered texels. Instead of OpenCV's Telea inpainting (radius 3 / 1) we run a few rounds of 3×3
   average dilation (crisp seams) and then push-pull (every remaining texel gets the coverage-weighted average of
   the coarsest mip level that has data), so mip-mapping never pulls in black. No OpenCV dependency.

Every step polls for cancellation between chunks (:func:`~trellis2_core.cancel.checkpoint`): rasterisation per
face chunk on the CPU, projection per closest-point batch, sampling per texel chunk, seam fill per round/level.
Inputs are checked first (finite UVs and positions, faces in range, finite voxel attributes): a corrupt input is an
:class:`~trellis2_core.errors.InputError`, never a crash inside a step.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._kernels import kernels  # noqa: F401  (registers trellis2_kernels)
from ..cancel import checkpoint
from ..errors import InputError
from ..mesh.checks import check_int, check_mesh, check_voxels
from ..mesh.types import PBR_LAYOUT, Mesh, PbrVoxels
from .closest import TriangleGrid

from trellis2_kernels import KernelPolicy  # noqa: E402
from trellis2_kernels.uv_raster import uv_raster  # noqa: E402

__all__ = ["BakedTextures", "bake_pbr_textures", "rasterize_positions", "project_to_surface", "sample_pbr_voxels",
           "to_uint8", "fill_uncovered", "PROJECTION_RADIUS_VOXELS"]

_CHUNK = 1 << 18  # texels sampled per chunk (bounds temporary memory: ~300 B per texel; one cancel poll each)
_RASTER_FACES = 1 << 15  # faces rasterised per call on the CPU (one cancel poll each; the highest id still wins)
_FALLBACK_RADIUS = 2  # voxels searched around points whose 8 neighbours are all absent
PROJECTION_RADIUS_VOXELS = 8.0  # step 3 search radius; farther points keep their position
_RING = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)  # 8-neighbourhood


@dataclass(frozen=True)
class BakedTextures:
    """glTF-ready texture images, rows top to bottom in file order (row 0 ↔ v ≈ 0, §9.6)."""

    base_color: Tensor  # [T, T, 4] uint8: base colour RGB + alpha
    metallic_roughness: Tensor  # [T, T, 3] uint8: (0, roughness, metallic), glTF channel convention
    coverage: float  # fraction of texels covered by a triangle before seam filling


def rasterize_positions(uvs: Tensor, faces: Tensor, positions: Tensor, size: int,
                        policy: KernelPolicy | None = None) -> tuple[Tensor, Tensor]:
    """Steps 1–2: ``(covered [T, T] bool, points [K, 3])`` with the interpolated position of every covered texel
    (row-major order).

    Barycentrics are affine in the pixel position, so each face gets its coefficients once
    (``w_a = α0 + α1·x + α2·y``, same for ``w_b``; ``w_c = 1 − w_a − w_b``) and each texel needs one gather of
    per-face rows (component-major, contiguous) and a few multiply-adds. Weights are clamped at 0 and
    renormalised, so rounding never extrapolates off the face.
    """
    uv_px = (uvs.to(torch.float32) * size).contiguous()
    f64 = faces.to(torch.int64)
    face_id = _raster(uv_px, faces.to(torch.int32).contiguous(), size, policy)  # [T, T] int32
    checkpoint("texture rasterisation")
    covered = face_id >= 0
    flat = covered.reshape(-1).nonzero().squeeze(1)
    fid = face_id.reshape(-1).index_select(0, flat).to(torch.int64)
    a, b, c = uv_px[f64[:, 0]], uv_px[f64[:, 1]], uv_px[f64[:, 2]]  # [F, 2] each
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    inv = torch.where(area2 != 0, 1.0 / torch.where(area2 != 0, area2, 1.0), 0.0)
    third = torch.where(area2 != 0, 0.0, 1.0 / 3.0)  # zero-area faces: the centroid
    coef = torch.stack((
        (b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0]) * inv + third, (b[:, 1] - c[:, 1]) * inv, (c[:, 0] - b[:, 0]) * inv,
        (c[:, 0] * a[:, 1] - c[:, 1] * a[:, 0]) * inv + third, (c[:, 1] - a[:, 1]) * inv, (a[:, 0] - c[:, 0]) * inv,
    ))  # [6, F]
    corner = positions.to(torch.float32)[f64].reshape(-1, 9).t().contiguous()  # [9, F]: a xyz, b xyz, c xyz
    k = coef.index_select(1, fid)  # [6, K]
    px = (flat % size).to(torch.float32) + 0.5
    py = (flat // size).to(torch.float32) + 0.5
    w_a = (k[0] + k[1] * px + k[2] * py).clamp_(min=0.0)
    w_b = (k[3] + k[4] * px + k[5] * py).clamp_(min=0.0)
    w_c = (1.0 - (k[0] + k[1] * px + k[2] * py) - (k[3] + k[4] * px + k[5] * py)).clamp_(min=0.0)
    norm = (w_a + w_b + w_c).clamp_(min=1e-12)
    w_a, w_b, w_c = w_a / norm, w_b / norm, w_c / norm
    checkpoint("texture rasterisation")
    pos = corner.index_select(1, fid)  # [9, K]
    points = torch.stack([w_a * pos[i] + w_b * pos[3 + i] + w_c * pos[6 + i] for i in range(3)], dim=1)
    checkpoint("texture rasterisation")
    return covered, points


def _raster(uv_px: Tensor, faces: Tensor, size: int, policy: KernelPolicy | None) -> Tensor:
    """``uv_raster`` of all faces; on the CPU in face chunks merged by maximum (same result: higher ids win),
    polling for cancellation between chunks."""
    if uv_px.device.type != "cpu" or faces.shape[0] <= _RASTER_FACES:
        checkpoint("texture rasterisation")
        return uv_raster(uv_px, faces, size, size, policy=policy)
    face_id: Tensor | None = None
    for start in range(0, faces.shape[0], _RASTER_FACES):
        checkpoint("texture rasterisation")
        part = uv_raster(uv_px, faces[start:start + _RASTER_FACES], size, size, policy=policy)
        part = torch.where(part >= 0, part + start, part)
        face_id = part if face_id is None else torch.maximum(face_id, part)
    assert face_id is not None
    return face_id


class _VoxelIndex:
    """Sorted packed keys of voxel coordinates shifted by +1, in a radix of ``res + 3`` so that every neighbour of
    a query clamped to ``[-0.5, res + 0.5]`` (grid units) has a valid, unique key."""

    def __init__(self, coords: Tensor, resolution: int):
        self.resolution = resolution
        self.radix = resolution + 3
        self.keys, self.order = torch.sort(self.key(coords.to(torch.int64)))

    def key(self, i: Tensor) -> Tensor:
        """Packed key of integer voxel coords ``i`` [..., 3] in ``[-1, res + 1]``."""
        j = i + 1
        return (j[..., 0] * self.radix + j[..., 1]) * self.radix + j[..., 2]

    def find(self, key: Tensor) -> tuple[Tensor, Tensor]:
        """Row of each key (``-1`` if absent) and its insertion position."""
        pos = torch.searchsorted(self.keys, key)
        pos_c = pos.clamp(max=self.keys.numel() - 1)
        return torch.where(self.keys.index_select(0, pos_c) == key, self.order.index_select(0, pos_c), -1), pos


def _trilinear_chunk(index: _VoxelIndex, attrs: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """Renormalised trilinear values [K, C] at grid positions ``q`` [K, 3] and Σw [K] over existing voxels.

    ``attrs`` [M + 1, C] carries a zero row at index M for absent neighbours, so the 8 terms accumulate with plain
    row gathers (no [K, 8, C] intermediate)."""
    # Clamping to [-0.5, res + 0.5] changes nothing: beyond it both neighbours per axis are outside the grid, and at
    # the clamp value the outer neighbour's weight is exactly 0.
    q = q.clamp(-0.5, index.resolution + 0.5)
    base_f = torch.floor(q - 0.5)
    frac = q - 0.5 - base_f  # [K, 3] weight of the +1 neighbour per axis
    fx, fy, fz = frac.unbind(1)
    k000 = index.key(base_f.to(torch.int64))
    n, r = index.keys.numel(), index.radix
    absent = attrs.shape[0] - 1
    value = torch.zeros(q.shape[0], attrs.shape[1], dtype=attrs.dtype, device=q.device)
    wsum = torch.zeros(q.shape[0], dtype=attrs.dtype, device=q.device)
    for dx, dy in itertools.product((0, 1), (0, 1)):
        key0 = k000 + (dx * r * r + dy * r)
        row0, pos = index.find(key0)
        # z + 1 has key0 + 1: right after key0 when key0 exists, at key0's insertion point otherwise
        pos1 = (pos + (row0 >= 0).to(torch.int64)).clamp(max=n - 1)
        row1 = torch.where(index.keys.index_select(0, pos1) == key0 + 1, index.order.index_select(0, pos1), -1)
        wxy = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        for row, w in ((row0, wxy * (1 - fz)), (row1, wxy * fz)):
            w = torch.where(row >= 0, w, 0.0)  # absent voxels are dropped
            value.addcmul_(attrs.index_select(0, torch.where(row >= 0, row, absent)), w[:, None])
            wsum += w
    return value / wsum.clamp(min=1e-12)[:, None], wsum


def _nearest_fallback(index: _VoxelIndex, attrs: Tensor, q: Tensor) -> Tensor:
    """Attributes of the nearest existing voxel centre within ``_FALLBACK_RADIUS`` voxels (0 if none)."""
    r = _FALLBACK_RADIUS
    cell = torch.floor(q).to(torch.int64)
    best_d = torch.full((q.shape[0],), float("inf"), dtype=q.dtype, device=q.device)
    best_row = torch.full((q.shape[0],), -1, dtype=torch.int64, device=q.device)
    for off in itertools.product(range(-r, r + 1), repeat=3):
        checkpoint("texture sampling")
        i = cell + torch.tensor(off, device=q.device)
        inside = ((i >= -1) & (i <= index.resolution + 1)).all(1)
        row, _ = index.find(index.key(i.clamp(-1, index.resolution + 1)))
        row = torch.where(inside, row, -1)
        d = (q - (i.to(q.dtype) + 0.5)).square().sum(1)
        better = (row >= 0) & (d < best_d)
        best_d = torch.where(better, d, best_d)
        best_row = torch.where(better, row, best_row)
    out = attrs[best_row.clamp(min=0)]
    return torch.where((best_row >= 0)[:, None], out, torch.zeros_like(out))


def project_to_surface(points: Tensor, surface: Mesh | TriangleGrid, max_distance: float) -> Tensor:
    """Step 3: the closest point on ``surface`` (the hole-filled original mesh) of every row of ``points`` [K, 3].

    Points with no face within ``max_distance`` (world units) keep their position: with the remesher's ~1-voxel
    offset and a decimation error of a fraction of a voxel, only stray points are that far, and sampling them where
    they are (plus the nearest-voxel fallback of step 4) beats a jump to a distant part of the object.
    """
    grid = surface if isinstance(surface, TriangleGrid) else TriangleGrid(
        surface.vertices.to(points.device), surface.faces.to(points.device))
    hit = grid.query(points.to(grid.dtype), max_distance)
    return torch.where(hit.found[:, None], hit.point.to(points.dtype), points)


def sample_pbr_voxels(voxels: PbrVoxels, points: Tensor, fallback: bool = True) -> Tensor:
    """Step 4: renormalised sparse trilinear attributes [K, 6] at world ``points`` [K, 3] (§9.5).

    With ``fallback``, points whose 8 neighbours are all absent take the nearest voxel within 2 voxels; without it
    they get 0 as official. After the projection of step 3 this only concerns points of the original surface that
    the decoder left without attribute voxels (and points too far from it to be projected).
    """
    attrs = voxels.attrs.to(device=points.device, dtype=torch.float32)
    if voxels.coords.shape[0] == 0:
        return torch.zeros(points.shape[0], attrs.shape[1], dtype=torch.float32, device=points.device)
    padded = torch.cat((attrs, attrs.new_zeros(1, attrs.shape[1])))  # row M: absent neighbour
    index = _VoxelIndex(voxels.coords.to(points.device), voxels.resolution)
    out = torch.empty(points.shape[0], attrs.shape[1], dtype=torch.float32, device=points.device)
    for start in range(0, points.shape[0], _CHUNK):
        checkpoint("texture sampling")
        p = points[start:start + _CHUNK].to(torch.float32)
        q = (p + 0.5) * voxels.resolution  # origin −0.5, voxel size 1/res (§8.3)
        value, wsum = _trilinear_chunk(index, padded, q)
        if fallback:
            miss = (wsum <= 0).nonzero().squeeze(1)
            if miss.numel() > 0:
                value[miss] = _nearest_fallback(index, attrs, q[miss])
        out[start:start + _CHUNK] = value
    return out


def to_uint8(values: Tensor) -> Tensor:
    """Step 5: ``trunc(clip(v·255, 0, 255))`` as uint8."""
    return (values * 255.0).clamp(0.0, 255.0).to(torch.uint8)


def _dilate_once(values: Tensor, known: Tensor) -> None:
    """One 3×3 dilation round in place: every unknown texel next to a known one takes their mean.

    ``values`` [T, T, C] float32, ``known`` [T, T] bool. Works on the band of new texels only.
    """
    h, w = known.shape
    pad = F.pad(known[None].to(torch.uint8), (1, 1, 1, 1))[0].bool()  # [T+2, T+2]
    near = torch.zeros_like(known)
    for dy, dx in _RING:
        near |= pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    band = (near & ~known).nonzero()  # [K, 2] (row, col)
    if band.shape[0] == 0:
        return
    flat_values, flat_known = values.view(h * w, -1), known.view(-1)  # row gathers beat 2-D fancy indexing
    total = torch.zeros(band.shape[0], values.shape[-1], dtype=values.dtype, device=values.device)
    count = torch.zeros(band.shape[0], dtype=values.dtype, device=values.device)
    for dy, dx in _RING:
        r, c = band[:, 0] + dy, band[:, 1] + dx
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        idx = r.clamp(0, h - 1) * w + c.clamp(0, w - 1)
        use = (ok & flat_known.index_select(0, idx)).to(values.dtype)
        total.addcmul_(flat_values.index_select(0, idx), use[:, None])
        count += use
    at = band[:, 0] * w + band[:, 1]
    flat_values.index_copy_(0, at, total / count.clamp(min=1.0)[:, None])
    flat_known.index_fill_(0, at, True)


def fill_uncovered(image: Tensor, covered: Tensor, dilate_rounds: int = 3) -> Tensor:
    """Step 6: fill texels outside ``covered`` [T, T] of ``image`` [T, T, C] uint8 (dilation, then push-pull)."""
    if bool(covered.all()) or not bool(covered.any()):
        return image
    values = image.to(torch.float32)
    known = covered.clone()
    for _ in range(dilate_rounds):
        checkpoint("texture seam fill")
        _dilate_once(values, known)
    # push: coverage-weighted mip pyramid; pull: every empty texel takes the next coarser level's value
    x = values.permute(2, 0, 1)[None]  # [1, C, T, T]
    wt = known.to(torch.float32)[None, None]
    levels = [(x * wt, wt)]
    while levels[-1][1].shape[-1] > 1 or levels[-1][1].shape[-2] > 1:
        checkpoint("texture seam fill")
        xs, ws = levels[-1]
        levels.append((F.avg_pool2d(xs, 2, ceil_mode=True), F.avg_pool2d(ws, 2, ceil_mode=True)))
    filled = levels[-1][0] / levels[-1][1].clamp(min=1e-12)
    for xs, ws in reversed(levels[1:-1]):
        checkpoint("texture seam fill")
        up = F.interpolate(filled, size=ws.shape[-2:], mode="nearest")
        filled = torch.where(ws > 0, xs / ws.clamp(min=1e-12), up)
    checkpoint("texture seam fill")
    up = F.interpolate(filled, size=wt.shape[-2:], mode="nearest")[0].permute(1, 2, 0)
    out = torch.where(known[..., None], values, up)
    return out.round().clamp(0, 255).to(torch.uint8).contiguous()


def bake_pbr_textures(uvs: Tensor, faces: Tensor, positions: Tensor, voxels: PbrVoxels, size: int,
                      policy: KernelPolicy | None = None, fallback: bool = True,
                      surface: Mesh | TriangleGrid | None = None) -> BakedTextures:
    """Bake the base-colour/alpha and metallic-roughness textures of a UV-mapped mesh from PBR voxels (§9.5–9.6).

    ``uvs`` [V, 2] in [0, 1], ``faces`` [F, 3] into ``uvs``/``positions`` [V, 3] (world, Z-up, same frame as the
    voxels). ``surface`` is the hole-filled original mesh the texel points are projected onto (step 3); leave it
    out only when ``positions`` already lie on it (e.g. the mesh was neither decimated nor remeshed). Runs on the
    device of ``uvs``. Raises :class:`~trellis2_core.errors.InputError` for corrupt inputs (module docstring) and
    :class:`~trellis2_core.errors.CancelledError` when an active cancel poll fires.
    """
    size = _check_bake_inputs(uvs, faces, positions, voxels, size, surface)
    covered, points = rasterize_positions(uvs, faces, positions, size, policy)
    if surface is not None and points.shape[0] > 0:
        points = project_to_surface(points, surface, PROJECTION_RADIUS_VOXELS / voxels.resolution)
    attrs = sample_pbr_voxels(voxels, points, fallback=fallback)  # [K, 6]
    checkpoint("texture baking")
    texels = torch.zeros(size * size, 6, dtype=torch.uint8, device=uvs.device)
    texels[covered.reshape(-1)] = to_uint8(attrs)
    texels = fill_uncovered(texels.view(size, size, 6), covered)
    checkpoint("texture baking")
    lay = PBR_LAYOUT
    rgba = torch.cat((texels[..., lay["base_color"]], texels[..., lay["alpha"]]), dim=-1)
    mr = torch.cat((torch.zeros_like(texels[..., :1]), texels[..., lay["roughness"]], texels[..., lay["metallic"]]),
                   dim=-1)
    return BakedTextures(base_color=rgba.contiguous(), metallic_roughness=mr.contiguous(),
                         coverage=float(covered.float().mean()))


def _check_bake_inputs(uvs: Tensor, faces: Tensor, positions: Tensor, voxels: PbrVoxels, size: int,
                       surface: Mesh | TriangleGrid | None) -> int:
    """Shapes, dtypes, index range and finiteness of the bake inputs; returns ``size`` as an int."""
    size = check_int(size, "texture size", 1, 16384)
    for name, t, cols in (("uvs", uvs, 2), ("positions", positions, 3)):
        if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != cols or not t.dtype.is_floating_point:
            raise InputError(f"bake: {name} must be a float tensor [V, {cols}], got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {list(getattr(t, 'shape', []))}")
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"bake: the {name} contain NaN or infinite values; unwrap a valid mesh again")
    if uvs.shape[0] != positions.shape[0]:
        raise InputError(f"bake: {uvs.shape[0]} uvs but {positions.shape[0]} positions; they must match per vertex")
    if not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype.is_floating_point:
        raise InputError(f"bake: faces must be an integer tensor [F, 3], got {getattr(faces, 'dtype', type(faces))} "
                         f"{list(getattr(faces, 'shape', []))}")
    if faces.shape[0] == 0:
        raise InputError("bake: the mesh has no faces, nothing to bake; check the previous mesh step")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= uvs.shape[0]:
        raise InputError(f"bake: faces index vertices {lo}..{hi} but there are {uvs.shape[0]} vertices")
    check_voxels(voxels, "bake")
    if isinstance(surface, Mesh):
        check_mesh(surface, "bake (projection surface)")
    return size
