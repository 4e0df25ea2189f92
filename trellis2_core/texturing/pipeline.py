"""The official texturing computation (``Trellis2TexturingPipeline.run`` up to the bake, spec §11).

mesh → :func:`~.frame.preprocess_mesh` (centre, scale, Y-up → Z-up) → flexible dual grid at ``resolution``
(face 1.0, boundary 0.2, regularisation 1e-2) → shape encoder (posterior mean) → texture flow with the normalised
shape latent as ``concat_cond`` (noise ``randn(N, 32)``: the first draw after seeding) → texture decoder onto the
encoder's own voxels (its down-block layouts guide the up-blocks) → PBR voxels ``×0.5 + 0.5``. The models come
from a getter (normally a :class:`~trellis2_core.loading.ModelStore` over ``texturing_pipeline.json``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from torch import nn

from ..cancel import cancel_on_forward, cancel_scope, checkpoint
from ..errors import InputError
from ..loading import ModelStore, PipelineConfig, load_image_cond_model
from ..loading.texturing import resolve_texturing_config
from ..mesh.types import PbrVoxels
from ..models.shape_encoder import ShapeEncoding, encoder_input
from ..models.streaming import execution_device, weights_on_device
from ..models.texture_decoder import pbr_voxels
from ..params import check_device_name, check_dtype_name, check_seed
from ..pipeline.sampler import SamplerParams
from ..pipeline.stages import MaterialLatent, StageHooks, sample_material
from .dual_grid import FlexibleDualGrid, mesh_to_flexible_dual_grid
from .frame import PreparedMesh

__all__ = ["TexturingPipeline", "TexturingResult", "check_resolution", "flow_resolution", "FDG_WEIGHTS", "RESOLUTIONS"]

log = logging.getLogger(__name__)

#: the converter weights of the official ``encode_shape_slat`` (§11 step 4)
FDG_WEIGHTS = {"face_weight": 1.0, "boundary_weight": 0.2, "regularization_weight": 1e-2}
RESOLUTIONS = (512, 1024, 1536)  # the official app's choices; any multiple of 16 in 64..2048 runs
_IMAGE_COND_KEY = "image_cond_model"


def check_resolution(resolution: Any, label: str = "resolution") -> int:
    """A texturing grid resolution: an int, multiple of 16, in 64..2048 (official: 512, 1024, 1536)."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution % 16 or \
            not 64 <= resolution <= 2048:
        raise InputError(f"{label} must be a multiple of 16 between 64 and 2048 (official: 512, 1024, 1536), got "
                         f"{resolution!r}")
    return resolution


def flow_resolution(resolution: int) -> int:
    """Which texture flow and DINOv3 size a resolution uses: 512 up to 512, else 1024 (official: ``== 512``)."""
    return 512 if resolution <= 512 else 1024


@dataclass(frozen=True)
class TexturingResult:
    """Everything one texturing run produced (all in the working frame, Z-up, unit cube)."""

    mesh: PreparedMesh
    grid: FlexibleDualGrid
    encoding: ShapeEncoding  # latent = the unnormalised shape SLat
    material: MaterialLatent  # denormalised texture SLat on the shape SLat's voxels
    pbr: PbrVoxels  # on the grid's voxels, in the grid's row order
    resolution: int
    seed: int
    timings: Mapping[str, float]


class TexturingPipeline:
    """TRELLIS.2 mesh texturing over a ``texturing_pipeline.json`` config and a model getter (no global state)."""

    def __init__(self, config: PipelineConfig, models: Callable[[str], nn.Module] | None = None, *,
                 image_cond_model: nn.Module | None = None, models_dir: str | Path | None = None) -> None:
        self.config = config
        self.models = models if models is not None else ModelStore(config)
        self.models_dir = models_dir
        self._image_cond_model = image_cond_model

    @classmethod
    def from_pretrained(cls, source: str | Path, *, models_dir: str | Path | None = None,
                        device: str | torch.device = "cpu", dtype_override: torch.dtype | str | None = None,
                        offline: bool | None = None, vram_preset: str = "high") -> "TexturingPipeline":
        """Resolve ``source`` (folder, ComfyUI models-dir name, ``demo`` or HF repo id) and set up lazy loading."""
        check_device_name(device)
        check_dtype_name(dtype_override, "dtype_override")
        config = resolve_texturing_config(source, models_dir=models_dir, offline=offline)
        store = ModelStore(config, device=device, dtype_override=dtype_override, offline=offline,
                           vram_preset=vram_preset)
        return cls(config, store, models_dir=models_dir)

    # ------------------------------------------------------------------ stages
    def sampler_params(self, overrides: Mapping[str, Any] | None = None) -> SamplerParams:
        """The texture sampler of ``texturing_pipeline.json`` with user overrides merged on top (§1.4)."""
        spec = self.config.sampler("tex_slat")
        block = {"name": spec.name, "args": dict(spec.args), "params": dict(spec.params)}
        return SamplerParams.from_pipeline(block, overrides)

    def condition(self, image: Image.Image, resolution: int) -> torch.Tensor:
        """DINOv3 tokens ``[1, T, C]`` at the one size the texture flow of ``resolution`` uses (official
        ``get_cond(image, 512 if resolution == 512 else 1024)``)."""
        if self._image_cond_model is None:
            device = getattr(self.models, "device", "cpu")
            self._image_cond_model = load_image_cond_model(self.config, models_dir=self.models_dir, device=device,
                                                           offline=getattr(self.models, "offline", None))
        extractor = self._image_cond_model
        size = flow_resolution(check_resolution(resolution))
        with weights_on_device(extractor), cancel_on_forward(extractor, where="image conditioning (DINOv3)"):
            return extractor.features(image, size)

    @torch.no_grad()
    def encode(self, mesh: PreparedMesh, resolution: int) -> tuple[FlexibleDualGrid, ShapeEncoding]:
        """Flexible dual grid of ``mesh`` at ``resolution`` and its shape latent (§11 step 4)."""
        resolution = check_resolution(resolution)
        encoder = self.models("shape_slat_encoder")
        device = execution_device(encoder)
        grid = mesh_to_flexible_dual_grid(mesh.vertices.to(device), mesh.faces.to(device), resolution, **FDG_WEIGHTS)
        if grid.num_voxels == 0:
            raise InputError("the mesh crosses no voxel of the grid (all faces degenerate?); nothing to texture")
        checkpoint("mesh encoding")
        return grid, self.encode_grid(grid)

    @torch.no_grad()
    def encode_grid(self, grid: FlexibleDualGrid) -> ShapeEncoding:
        """Shape latent of a flexible dual grid (encoder input ``dual_vertices·grid − coords``, batch 0)."""
        encoder = self.models("shape_slat_encoder")
        device = execution_device(encoder)
        coords = torch.nn.functional.pad(grid.coords.to(device), (1, 0))  # (0, x, y, z)
        offsets, flags = encoder_input(coords, grid.local_offsets().to(device), grid.intersected.to(device))
        with weights_on_device(encoder), cancel_on_forward(encoder, where="mesh encoding"):
            return encoder(offsets, flags)

    @torch.no_grad()
    def decode(self, encoding: ShapeEncoding, material: MaterialLatent, resolution: int) -> PbrVoxels:
        """Texture decoder onto the encoder's voxels (no subdivision prediction, §11 step 6)."""
        decoder = self.models("tex_slat_decoder")
        with weights_on_device(decoder), cancel_on_forward(decoder, where="texture decoding"):
            raw = decoder(material.slat.to(execution_device(decoder)), guide_subs=encoding.guide_subs)
        return pbr_voxels(raw, int(resolution))[0]

    # ------------------------------------------------------------------ runs
    @torch.no_grad()
    def run_from_conditioning(self, mesh: PreparedMesh, cond: torch.Tensor, *, seed: int = 42,
                              resolution: int = 1024, sampler: Mapping[str, Any] | None = None,
                              hooks: StageHooks = StageHooks()) -> TexturingResult:
        """Encode → sample → decode for a prepared mesh and the conditioning tokens of :meth:`condition`."""
        resolution = check_resolution(resolution)
        seed = check_seed(seed)
        params = self.sampler_params(sampler)
        times: dict[str, float] = {}
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)  # the texture noise is the first draw after seeding (§11 step 3)
        report = hooks.progress or (lambda stage, i, n: None)
        with cancel_scope(hooks.should_cancel):
            start = time.perf_counter()
            report("encode", 0, 1)
            grid, encoding = self.encode(mesh, resolution)
            report("encode", 1, 1)
            times["encode"] = time.perf_counter() - start
            log.info("texturing: %d voxels at %d, %d latent tokens (%.2fs)", grid.num_voxels, resolution,
                     encoding.latent.num_voxels, times["encode"])
            start = time.perf_counter()
            flow_res = flow_resolution(resolution)
            material = sample_material(
                self.models(f"tex_slat_flow_model_{flow_res}"), cond, encoding.latent, params,
                self.config.normalization("shape_slat"), self.config.normalization("tex_slat"), gen, hooks)
            times["sample"] = time.perf_counter() - start
            start = time.perf_counter()
            report("decode", 0, 1)
            pbr = self.decode(encoding, material, resolution)
            report("decode", 1, 1)
            times["decode"] = time.perf_counter() - start
        if not bool(torch.isfinite(pbr.attrs).all()):
            raise InputError("the decoded PBR voxels contain NaN/Inf values; use dtype float32 or bfloat16")
        return TexturingResult(mesh=mesh, grid=grid, encoding=encoding, material=material, pbr=pbr,
                               resolution=resolution, seed=seed, timings=times)
