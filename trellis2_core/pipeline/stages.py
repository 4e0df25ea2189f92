"""Pipeline stages, one function each with typed results (spec §1.1–§1.5, §5.4).

condition (``Conditioning``) → :func:`sample_structure` → :func:`sample_shape` / :func:`sample_shape_cascade` →
:func:`sample_material` → :func:`decode`. Every noise tensor is drawn with ``torch.randn`` on a CPU
``torch.Generator`` and then moved to the model's device (§1.5, §13 item 1): drawing in the official order from a
generator seeded with ``seed`` reproduces the official ``torch.manual_seed(seed)`` streams without touching
PyTorch's global RNG.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Mapping, Union

import torch
from torch import Tensor, nn

from ..cancel import cancel_on_forward
from ..config import FastPathConfig
from ..errors import InputError
from ..loading.config import Normalization
from ..mesh.types import Mesh, PbrVoxels
from ..params import parse_pipeline_type
from ..models.structure_decoder import occupancy_to_coords
from ..models.streaming import execution_device, is_offloaded, weights_on_device
from ..models.texture_decoder import pbr_voxels
from ..sparse import SparseTensor
from .cascade import hr_coords_from_lr
from .sampler import ModelCall, SamplerParams, sample_flow_euler

__all__ = [
    "PipelineType", "Conditioning", "SamplingRun", "Structure", "ShapeLatent", "MaterialLatent", "Decoded",
    "StageHooks", "draw_noise", "sample_structure", "sample_shape", "sample_shape_cascade", "sample_material",
    "decode", "decode_shape", "decode_texture",
]

Latent = Union[Tensor, SparseTensor]
LR_RESOLUTION = 512  # §1.3: the cascade's LR stage always decodes to 512³


@dataclass(frozen=True)
class PipelineType:
    """A pipeline type (§1.2): SS grid, which models/conditionings each stage uses, target resolution."""

    name: str
    ss_res: int  # occupancy grid of the structure stage (32 = 64³ max-pooled ×2, or 64)
    resolution: int  # output grid resolution requested (cascade may lower it, §1.3)
    cascade: bool

    @classmethod
    def parse(cls, name: str, label: str = "pipeline type") -> "PipelineType":
        """'512', '1024', '1024_cascade', '1536_cascade' (and ``N_cascade``, N = 1024 + k·128 up to 2048).

        Raises:
            InputError: not a pipeline type, naming ``label`` (the flag or widget the user set).
        """
        res, cascade = parse_pipeline_type(name, label)
        if cascade:
            return cls(str(name), 32, res, True)
        return cls(str(name), 32 if res == 512 else 64, res, False)

    @property
    def shape_model(self) -> str:
        """Shape flow key (the HR one for cascades)."""
        return "shape_slat_flow_model_512" if self.resolution == 512 else "shape_slat_flow_model_1024"

    @property
    def tex_model(self) -> str:
        return "tex_slat_flow_model_512" if self.resolution == 512 else "tex_slat_flow_model_1024"

    def stage_keys(self, stage: str) -> tuple[str, ...]:
        """The pipeline models stage ``stage`` ('structure', 'shape', 'material', 'decode') of this type uses."""
        if stage == "structure":
            return ("sparse_structure_flow_model", "sparse_structure_decoder")
        if stage == "shape":  # cascades decode the LR shape to find the HR voxels (§1.3)
            return (("shape_slat_flow_model_512", "shape_slat_flow_model_1024", "shape_slat_decoder") if self.cascade
                    else (self.shape_model,))
        if stage == "material":
            return (self.tex_model,)
        if stage == "decode":
            return ("shape_slat_decoder", "tex_slat_decoder")
        raise InputError(f"unknown stage {stage!r}; one of structure, shape, material, decode")

    @property
    def model_keys(self) -> tuple[str, ...]:
        """The pipeline models a run of this type uses, in stage order (each once)."""
        keys = [k for stage in ("structure", "shape", "material", "decode") for k in self.stage_keys(stage)]
        return tuple(dict.fromkeys(keys))

    @property
    def cond_resolution(self) -> int:
        """DINOv3 resolution of the shape (HR) and texture stages; the SS and LR stages always use 512."""
        return 512 if self.resolution == 512 else 1024


@dataclass(frozen=True)
class Conditioning:
    """DINOv3 tokens of the image (§3): ``cond_512 [B, 1029, C]``, ``cond_1024 [B, 4101, C]`` (None for '512')."""

    cond_512: Tensor
    cond_1024: Tensor | None = None

    def at(self, resolution: int) -> Tensor:
        cond = self.cond_512 if resolution == 512 else self.cond_1024 if resolution == 1024 else None
        if cond is None:
            raise InputError(f"no conditioning at {resolution} px; compute the DINOv3 features at {resolution}")
        return cond


@dataclass(frozen=True)
class StageHooks:
    """Optional progress report ``(stage, step, steps)`` after each sampler step and a cancellation poll."""

    progress: Callable[[str, int, int], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    record_calls: bool = False  # keep (t_model, branch) of every model evaluation


@dataclass(frozen=True)
class SamplingRun:
    """One sampler invocation: its noise, the raw (still normalised) sample and the model calls if recorded."""

    noise: Latent
    samples: Latent
    calls: tuple[ModelCall, ...] | None


@dataclass(frozen=True)
class Structure:
    """Sparse-structure stage output (§1.1 stage 2)."""

    coords: Tensor  # [N, 4] int32 (b, x, y, z) occupied voxels at `resolution`, lexicographic
    resolution: int  # ss_res
    latent: Tensor  # [B, 8, 16, 16, 16] sampled SS latent
    logits: Tensor  # [B, 1, 64, 64, 64] decoder occupancy logits
    run: SamplingRun


@dataclass(frozen=True)
class ShapeLatent:
    """Shape stage output: the denormalised shape SLat and the grid resolution it decodes at."""

    slat: SparseTensor  # feats [N, 32], denormalised (x·std + mean)
    res: int
    runs: Mapping[str, SamplingRun]  # 'shape', or 'shape_lr' and 'shape_hr' for cascades
    upsample_coords: Tensor | None = None  # cascade: LR decoder voxels at 512³ [M, 4] int32


@dataclass(frozen=True)
class MaterialLatent:
    """Texture stage output: denormalised texture SLat on the shape SLat's voxels."""

    slat: SparseTensor  # feats [N, 32]
    run: SamplingRun


@dataclass(frozen=True)
class Decoded:
    """Decoded meshes (before hole filling) and PBR voxels, one per batch element."""

    meshes: list[Mesh]
    pbr: list[PbrVoxels]
    subs: list[SparseTensor]  # the shape decoder's subdivision logits per up-block
    res: int


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """``torch.randn(shape)`` float32 on the CPU ``generator``, then moved to ``device`` (§1.5)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def _sample(model: nn.Module, noise: Latent, cond: Tensor, params: SamplerParams, hooks: StageHooks, stage: str,
            extra: Mapping[str, object] | None = None, fast: FastPathConfig | None = None) -> SamplingRun:
    device = execution_device(model)
    cond = cond.to(device)
    neg_cond: object = torch.zeros_like(cond)
    cond_in: object = cond
    report = hooks.progress

    def on_step(i: int, n: int, _x: Latent, _x0: Latent) -> None:
        if report is not None:
            report(stage, i + 1, n)

    if fast is not None and (fast.cache_cross_kv or fast.skip_uncond_cross_attn) and hasattr(model, "prepare_context"):
        # the context is fixed for the whole stage: prepare K/V (or the zero-context constants) once. Not the K/V
        # when the model's weights are offloaded (medium/low VRAM): they take 0.76 GB at 1024 for ~0.5 % of time.
        cache_kv = fast.cache_cross_kv and not is_offloaded(model)
        cond_in = model.prepare_context(cond, cache_kv=cache_kv)
        if params.guidance_strength != 1:
            neg_cond = model.prepare_context(neg_cond, cache_kv=cache_kv, zero_const=fast.skip_uncond_cross_attn)
    attn = fast.attention_context(device) if fast is not None else contextlib.nullcontext()
    # approximate fp8 block GEMMs for this stage only (after prepare_context: K/V and constants stay exact)
    fp8: contextlib.AbstractContextManager = contextlib.nullcontext()
    if fast is not None and fast.fp8_linear:
        from ..models.fp8 import fp8_block_linears  # imports torch._dynamo and triton: only when asked for

        fp8 = fp8_block_linears(model)
    with attn, fp8, cancel_on_forward(model, where=f"the {stage} sampler", poll=hooks.should_cancel):
        res = sample_flow_euler(model, noise, cond_in, neg_cond, params, extra=extra, on_step=on_step,
                                should_cancel=hooks.should_cancel, record_calls=hooks.record_calls, stage=stage,
                                fast=fast)
    calls = tuple(res.calls) if res.calls is not None else None
    return SamplingRun(noise=noise, samples=res.samples, calls=calls)


@torch.no_grad()
def sample_structure(flow: nn.Module, decoder: nn.Module, cond: Tensor, params: SamplerParams, ss_res: int,
                     generator: torch.Generator, hooks: StageHooks = StageHooks(), *,
                     fast: FastPathConfig | None = None) -> Structure:
    """SS noise ``[B, C, R, R, R]`` → sampled latent → decoder logits → occupied coords at ``ss_res`` (§5.1)."""
    batch = int(cond.shape[0])
    res = int(flow.resolution)
    noise = draw_noise((batch, int(flow.in_channels), res, res, res), generator, execution_device(flow))
    with weights_on_device(flow):  # on the device for this stage only, under the medium/low VRAM presets
        run = _sample(flow, noise, cond, params, hooks, "sparse_structure", fast=fast)
    latent = run.samples
    with weights_on_device(decoder), cancel_on_forward(decoder, where="structure decoding", poll=hooks.should_cancel):
        logits = decoder(latent.to(execution_device(decoder)))
    coords = occupancy_to_coords(logits, ss_res)
    if coords.shape[0] == 0:
        raise InputError("the sparse-structure stage produced no occupied voxel; try another seed or image")
    return Structure(coords=coords, resolution=ss_res, latent=latent, logits=logits, run=run)


def _sample_slat(flow: nn.Module, cond: Tensor, coords: Tensor, params: SamplerParams, norm: Normalization,
                 generator: torch.Generator, hooks: StageHooks, stage: str,
                 fast: FastPathConfig | None = None) -> tuple[SparseTensor, SamplingRun]:
    device = execution_device(flow)
    noise = SparseTensor(draw_noise((int(coords.shape[0]), int(flow.in_channels)), generator, device),
                         coords.to(device))
    with weights_on_device(flow):
        run = _sample(flow, noise, cond, params, hooks, stage, fast=fast)
    samples = run.samples
    assert isinstance(samples, SparseTensor)
    return samples.replace(norm.denormalize(samples.feats)), run  # §5.4


@torch.no_grad()
def sample_shape(flow: nn.Module, cond: Tensor, coords: Tensor, params: SamplerParams, norm: Normalization,
                 res: int, generator: torch.Generator, hooks: StageHooks = StageHooks(), *,
                 fast: FastPathConfig | None = None) -> ShapeLatent:
    """Shape noise ``[N, 32]`` on ``coords`` → sampled, denormalised shape SLat decoding at ``res`` (§1.2)."""
    slat, run = _sample_slat(flow, cond, coords, params, norm, generator, hooks, "shape", fast)
    return ShapeLatent(slat=slat, res=res, runs={"shape": run})


@torch.no_grad()
def sample_shape_cascade(flow_lr: nn.Module, flow_hr: nn.Module, shape_decoder: nn.Module, lr_cond: Tensor,
                         cond: Tensor, coords: Tensor, params: SamplerParams, norm: Normalization, resolution: int,
                         generator: torch.Generator, max_num_tokens: int = 49152,
                         hooks: StageHooks = StageHooks(), *, fast: FastPathConfig | None = None) -> ShapeLatent:
    """§1.3: LR sample on ``coords`` → decoder ``upsample`` → HR coords (resolution loop) → HR sample."""
    lr_slat, lr_run = _sample_slat(flow_lr, lr_cond, coords, params, norm, generator, hooks, "shape_lr", fast)
    with weights_on_device(shape_decoder), cancel_on_forward(shape_decoder, where="shape upsampling",
                                                             poll=hooks.should_cancel):
        up = shape_decoder.upsample(lr_slat.to(execution_device(shape_decoder)), upsample_times=4)  # [M, 4] at 512³
    hr_coords, hr_res = hr_coords_from_lr(up, LR_RESOLUTION, resolution, max_num_tokens)
    slat, hr_run = _sample_slat(flow_hr, cond, hr_coords, params, norm, generator, hooks, "shape_hr", fast)
    return ShapeLatent(slat=slat, res=hr_res, runs={"shape_lr": lr_run, "shape_hr": hr_run}, upsample_coords=up)


@torch.no_grad()
def sample_material(flow: nn.Module, cond: Tensor, shape_slat: SparseTensor, params: SamplerParams,
                    shape_norm: Normalization, tex_norm: Normalization, generator: torch.Generator,
                    hooks: StageHooks = StageHooks(), *, fast: FastPathConfig | None = None) -> MaterialLatent:
    """Texture noise ``[N, in − 32]`` with the normalised shape SLat as ``concat_cond`` → denormalised tex SLat."""
    device = execution_device(flow)
    shape = shape_slat.to(device)
    channels = int(flow.in_channels) - int(shape.feats.shape[1])
    if channels <= 0:
        raise InputError(f"texture flow has {flow.in_channels} input channels, not more than the shape latent's "
                         f"{shape.feats.shape[1]}")
    concat = shape.replace(shape_norm.normalize(shape.feats))  # §5.4
    noise = shape.replace(draw_noise((shape.num_voxels, channels), generator, device))
    with weights_on_device(flow):
        run = _sample(flow, noise, cond, params, hooks, "tex", extra={"concat_cond": concat}, fast=fast)
    samples = run.samples
    assert isinstance(samples, SparseTensor)
    return MaterialLatent(slat=samples.replace(tex_norm.denormalize(samples.feats)), run=run)


@torch.no_grad()
def decode(shape_decoder: nn.Module, tex_decoder: nn.Module | None, shape_slat: SparseTensor,
           tex_slat: SparseTensor | None, res: int) -> Decoded:
    """Shape decoder at grid ``res`` → meshes + subdivisions; texture decoder guided by them → PBR voxels (§5.2)."""
    shapes = decode_shape(shape_decoder, shape_slat, res)
    return decode_texture(tex_decoder, tex_slat, shapes) if tex_decoder is not None else shapes


@torch.no_grad()
def decode_shape(shape_decoder: nn.Module, shape_slat: SparseTensor, res: int) -> Decoded:
    """The first half of :func:`decode`: meshes and the subdivisions that guide the texture decoder (no PBR)."""
    with weights_on_device(shape_decoder), cancel_on_forward(shape_decoder, where="mesh decoding"):
        dec = shape_decoder.decode(shape_slat.to(execution_device(shape_decoder)), int(res))
    return Decoded(meshes=list(dec.meshes), pbr=[], subs=list(dec.subs), res=int(res))


@torch.no_grad()
def decode_texture(tex_decoder: nn.Module, tex_slat: SparseTensor | None, shapes: Decoded) -> Decoded:
    """The second half of :func:`decode`: ``shapes`` (from :func:`decode_shape`) with its PBR voxels."""
    if tex_slat is None:
        return shapes
    with weights_on_device(tex_decoder), cancel_on_forward(tex_decoder, where="texture decoding"):
        raw = tex_decoder(tex_slat.to(execution_device(tex_decoder)), guide_subs=shapes.subs)
    return Decoded(meshes=shapes.meshes, pbr=pbr_voxels(raw, shapes.res), subs=shapes.subs, res=shapes.res)
