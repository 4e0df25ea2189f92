"""A TRELLIS.2 pipeline over ComfyUI-core weight files: the in-code ``pipeline.json`` and a strict model loader.

Core's files carry no ``pipeline.json`` and no per-model json (spec comfy-core-weights.md §3), so the description
comes from :mod:`.official`: the sampler blocks, both latent normalisations and ``default_pipeline_type``, and each
model's official class and constructor arguments (``official.FULL`` by default; ``specs`` replaces them, e.g. with
``official.TINY`` in tests). Every model is read from the tensors under its prefix in its file, the prefix
stripped: the remaining names are the official ones (§2.1-2.3). int8 layers are dequantised at load
(:mod:`.comfy_int8`); ``rope_phases`` is dropped; everything else must match exactly.

Pipeline type '512' is refused: it needs ``tex_slat_flow_model_512``, which core's files do not contain. Running
the 1024 texture flow instead (what core does) would give a texture that matches neither the official '512' type
nor core's graph (core feeds that flow the 1024-px tokens, our '512' type computes only the 512-px ones), and this
library promises the official result. Use '1024' or a cascade type, or the official weights for '512'.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import WeightsError
from ..models import model_class
from . import official
from .comfy_detect import DINO_ROLE, ComfyFile, read_header
from .comfy_files import NAME_PREFIX, ComfyFileSet
from .comfy_int8 import QUANT_SUFFIX, SCALE_SUFFIX, QuantSpec, dequantize_int8, parse_quant, quant_specs_from_metadata
from .config import PipelineConfig
from .loader import _with_dtype
from .safetensors_io import check_strict, read_strict

__all__ = ["ComfyPipeline", "ComfyModelEntry", "KEY_ROLES", "UNSUPPORTED_KEYS", "SIZES", "comfy_pipeline",
           "list_comfy_sources", "is_comfy_source"]

log = logging.getLogger(__name__)

#: pipeline model key → the sub-model (role) of core's files that holds it (§1.2, §7.3)
KEY_ROLES: dict[str, str] = {
    "sparse_structure_flow_model": "structure_model",
    "shape_slat_flow_model_512": "img2shape_512",
    "shape_slat_flow_model_1024": "img2shape",
    "tex_slat_flow_model_1024": "shape2txt",
    "sparse_structure_decoder": "struct_dec",
    "shape_slat_decoder": "shape_dec",
    "tex_slat_decoder": "txt_dec",
}
#: official models that core does not distribute → why they are refused
UNSUPPORTED_KEYS: dict[str, str] = {
    "tex_slat_flow_model_512": (
        "pipeline type '512' needs tex_slat_flow_model_512 (the official 512 texture flow, "
        "slat_flow_imgshape2tex_dit_1_3B_512_bf16), which ComfyUI core's TRELLIS.2 files do not contain; use "
        "pipeline type '1024', '1024_cascade' or '1536_cascade' with these files, or the official "
        "microsoft/TRELLIS.2-4B weights for '512'"),
}
_DROPPED = {"rope_phases": None}  # derived RoPE buffer of the dense flow model; we recompute it (§2.1)
#: the architectures core's files can hold: model specs + DINOv3 config, told apart by the bundle's width.
#: 'full' is core's TRELLIS.2-4B; 'tiny' is the test width (files written from the tiny golden pipeline).
SIZES: dict[str, tuple[Mapping[str, tuple[str, Mapping[str, Any]]], Mapping[str, Any]]] = {
    "full": (official.FULL, official.DINOV3_FULL),
    "tiny": (official.TINY, official.DINOV3_TINY),
}
_WIDTH_PROBE = "structure_model.t_embedder.mlp.0.weight"  # [model_channels, 256]; core probes this module too


@dataclass(frozen=True)
class ComfyModelEntry:
    """Where one pipeline model lives in core's files and how to build it."""

    key: str
    file: Path
    prefix: str  # key prefix of its tensors in ``file`` (stripped on load)
    base_prefix: str  # the bundle's P ('model.', 'model.diffusion_model.' or ''); '' for the VAEs
    class_name: str
    args: Mapping[str, Any]


def _entries(files: ComfyFileSet, specs: Mapping[str, tuple[str, Mapping[str, Any]]]) -> dict[str, ComfyModelEntry]:
    out = {}
    for key, role in KEY_ROLES.items():
        holder = files.bundle if role in files.bundle.roles else (
            files.shape_vae if role in files.shape_vae.roles else files.texture_vae)
        prefix = holder.roles[role]
        if key not in specs:
            raise ValueError(f"specs has no entry for {key!r}")
        cls_name, args = specs[key]
        out[key] = ComfyModelEntry(key, holder.path, prefix, prefix[: -len(role) - 1], cls_name, dict(args))
    return out


def _read_quantisation(entry: ComfyModelEntry) -> tuple[dict[str, QuantSpec], dict[str, Tensor]]:
    """The quantised layers under ``entry.prefix`` (names with the prefix stripped) and their weight scales."""
    from safetensors import SafetensorError, safe_open

    where = f"{entry.file} ({entry.prefix!r})"
    specs: dict[str, QuantSpec] = {}
    scales: dict[str, Tensor] = {}
    try:
        with safe_open(str(entry.file), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            raw: dict[str, Any] = {}
            for name, settings in quant_specs_from_metadata(f.metadata(), where=where).items():
                for full in (name, entry.base_prefix + name):  # core accepts names with or without P
                    if full.startswith(entry.prefix) and f"{full}.weight" in keys:
                        raw[full[len(entry.prefix):]] = settings
                        break
            for key in keys:
                if key.startswith(entry.prefix) and key.endswith(QUANT_SUFFIX):
                    raw[key[len(entry.prefix): -len(QUANT_SUFFIX)]] = f.get_tensor(key).numpy().tobytes()
            for layer, settings in raw.items():
                specs[layer] = parse_quant(layer, settings, where=where)
                scale_key = f"{entry.prefix}{layer}{SCALE_SUFFIX}"
                if scale_key not in keys:
                    raise WeightsError(f"{where}: quantised layer {layer} has no {layer}{SCALE_SUFFIX}; "
                                       "re-download the file")
                scales[layer] = f.get_tensor(scale_key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"{entry.file}: unreadable, truncated or corrupt safetensors file ({err}); "
                           "re-download it") from err
    return specs, scales


def _finish(model: nn.Module, state: dict[str, Tensor], where: str) -> nn.Module:
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise WeightsError(f"{where}: tensors left uninitialised after loading ({', '.join(left[:8])})")
    model.requires_grad_(False)
    model.eval()
    return model


class ComfyPipeline:
    """The description and loader of a pipeline made of ComfyUI-core files.

    ``config`` stands in for ``pipeline.json``; :meth:`load_model` has ``ModelStore``'s loader signature:
    ``ModelStore(cp.config, loader=cp.load_model, ...)``. :meth:`load_image_cond_model` loads the DINOv3 file.
    """

    def __init__(self, files: ComfyFileSet, *, specs: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
                 dino_config: Mapping[str, Any] | None = None) -> None:
        self.files = files
        self.specs = dict(specs if specs is not None else official.FULL)
        self.dino_config = dict(dino_config if dino_config is not None else official.DINOV3_FULL)
        self.entries = _entries(files, self.specs)
        data = official.pipeline_json(image_cond_model=str(files.dino.path))
        data["args"]["models"] = {k: f"{e.file}::{e.prefix}" for k, e in self.entries.items()}
        self.config = PipelineConfig.from_dict(data, root=files.bundle.path.parent,
                                               source=files.bundle.path.parent / f"<{files.name}>")
        log.warning("%s: ComfyUI core's TRELLIS.2 files are bf16 re-encodings of the official weights (the official "
                    "VAEs are fp16)%s, so results are close to, not bit-identical with, the official files",
                    files.name, "; its flow models are int8-quantised (about 1% error per weight)"
                    if files.bundle.quantised else "")

    @property
    def name(self) -> str:
        return self.files.name

    def check_pipeline_type(self, pipeline_type: Any) -> None:
        """Raise ``WeightsError`` before any work if ``pipeline_type`` (a name or ``PipelineType``) needs a model
        these files lack: only '512' does (see the module docstring)."""
        name = str(getattr(pipeline_type, "name", pipeline_type))
        if name == "512":
            raise WeightsError(f"{self.name}: {UNSUPPORTED_KEYS['tex_slat_flow_model_512']}")

    def _meta_model(self, entry: ComfyModelEntry, dtype_override: torch.dtype | str | None) -> nn.Module:
        args = _with_dtype(dict(entry.args), dtype_override, entry.file)
        try:
            with torch.device("meta"):
                return model_class(entry.class_name)(**args)
        except (TypeError, ValueError) as err:
            raise WeightsError(f"{entry.file} ({entry.key}): cannot build {entry.class_name} ({err})") from err

    def _entry(self, key: str) -> ComfyModelEntry:
        if key in UNSUPPORTED_KEYS:
            raise WeightsError(f"{self.name}: {UNSUPPORTED_KEYS[key]}")
        entry = self.entries.get(key)
        if entry is None:
            raise WeightsError(f"{self.name}: no model {key!r}; available: {', '.join(sorted(self.entries))}")
        return entry

    def check_model(self, key: str, *, dtype_override: torch.dtype | str | None = None) -> None:
        """Check model ``key`` from its file's header alone (no tensor is read): every key under its prefix
        matches the model built on meta (quantisation scales and markers aside; int8 dtypes are checked at load)."""
        entry = self._entry(key)
        model = self._meta_model(entry, dtype_override)
        header = read_header(entry.file)
        fixes: dict[str, str | None] = dict(_DROPPED)
        quantised = False
        for name in header.tensors:
            if name.startswith(entry.prefix) and name.endswith((SCALE_SUFFIX, QUANT_SUFFIX)):
                fixes[name[len(entry.prefix):]] = None
                quantised = True
        check_strict(entry.file, model.state_dict(), fixes=fixes, prefix=entry.prefix, check_dtypes=not quantised)

    def model_nbytes(self, key: str) -> int:
        """Bytes of model ``key``'s tensors in its file (from the header; 0 for a model these files lack)."""
        entry = self.entries.get(key)
        if entry is None:
            return 0
        sizes = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "F16": 2, "BF16": 2, "I32": 4,
                 "F32": 4, "I64": 8, "F64": 8}
        total = 0
        for name, (dtype, shape) in read_header(entry.file).tensors.items():
            if name.startswith(entry.prefix):
                count = 1
                for d in shape:
                    count *= d
                total += count * sizes.get(dtype, 4)
        return total

    def check_image_cond_model(self) -> None:
        """The DINOv3 file is there (its header was classified when the files were found)."""
        if not self.files.dino.path.is_file():
            raise WeightsError(f"{self.files.dino.path}: file not found; put the DINOv3 file back into "
                               "models/clip_vision")

    def load_model(self, config: Any, key: str, *, device: str | torch.device = "cpu",
                   dtype_override: torch.dtype | str | None = None, offline: bool | None = None) -> nn.Module:
        """Build model ``key`` on meta and strictly load it from its file's tensors under its prefix.

        Same contract as :func:`~trellis2_core.loading.load_model` (eval mode, no grad, dtypes of the model's
        policy or ``dtype_override``). ``config`` and ``offline`` are accepted for ``ModelStore`` and not used:
        this object carries its own description, and the files are local.
        """
        entry = self._entry(key)
        where = f"{entry.file} (tensors under {entry.prefix!r}, {key})"
        model = self._meta_model(entry, dtype_override)
        quant, scales = _read_quantisation(entry)
        fixes: dict[str, str | None] = dict(_DROPPED)
        for layer in quant:
            fixes[f"{layer}{SCALE_SUFFIX}"] = None
            fixes[f"{layer}{QUANT_SUFFIX}"] = None

        def dequantize(name: str, tensor: Tensor) -> Tensor:
            layer = name[: -len(".weight")] if name.endswith(".weight") else None
            spec = quant.get(layer) if layer is not None else None
            if spec is None:
                return tensor
            return dequantize_int8(tensor.to(device), scales[layer], spec, layer=layer, where=where)

        state = read_strict(entry.file, model.state_dict(), fixes=fixes, device=device, prefix=entry.prefix,
                            transform=dequantize if quant else None)
        if quant:
            log.info("%s: dequantised %d int8 layers", where, len(quant))
        return _finish(model, state, where)

    __call__ = load_model

    def load_image_cond_model(self, *, device: str | torch.device = "cpu") -> nn.Module:
        """The DINOv3 conditioner from the ``clip_vision`` file (float32, eval), ``naf.*`` dropped (§5, §7.8)."""
        from ..models.dinov3 import DinoV3FeatureExtractor

        path = self.files.dino.path
        return DinoV3FeatureExtractor.from_files(
            [path], self.dino_config, device=device, where=f"{path} ({DINO_ROLE})",
            drop_prefixes=("naf.", "rope_embeddings.inv_freq"))

    def model_store(self, **kwargs: Any) -> Any:
        """A ``ModelStore`` over this pipeline (keyword arguments as ``ModelStore``'s, except ``loader``)."""
        from .loader import ModelStore

        return ModelStore(self.config, loader=self.load_model, **kwargs)


def _size_of(bundle: ComfyFile) -> str | None:
    """Which of :data:`SIZES` a diffusion bundle is, from its structure flow's width (None: none of them)."""
    shape = read_header(bundle.path).shape(bundle.roles["structure_model"] + _WIDTH_PROBE.split(".", 1)[1])
    for size, (specs, _) in SIZES.items():
        if shape is not None and shape[0] == specs["sparse_structure_flow_model"][1]["model_channels"]:
            return size
    return None


def _known_size(bundle: ComfyFile) -> str:
    size = _size_of(bundle)
    if size is None:
        raise WeightsError(f"{bundle.path}: the diffusion bundle's width matches no known TRELLIS.2 size "
                           "(expected core's TRELLIS.2-4B files); re-download trellis_2_bf16.safetensors from "
                           "Comfy-Org/TRELLIS.2")
    return size


def is_comfy_source(source: Any) -> bool:
    """Whether a pipeline source names ComfyUI-core files (``comfy:<bundle>``)."""
    return isinstance(source, str) and source.startswith(NAME_PREFIX)


def list_comfy_sources(models_dir: str | Path | None = None, *,
                       folders: Mapping[str, Sequence[str | Path]] | None = None) -> list[str]:
    """The ``comfy:<bundle>`` names of every complete set of core files in ``models_dir`` (or ``folders``), for
    each size of :data:`SIZES`, sorted."""
    from .comfy_files import list_comfy_pipelines

    names: set[str] = set()
    for size, (_, dino) in SIZES.items():
        for files in list_comfy_pipelines(models_dir, folders=folders, dino_config=dino):
            if _size_of(files.bundle) == size:
                names.add(files.name)
    return sorted(names)


def comfy_pipeline(source: Any = None, *, name: str | None = None, folders: Mapping[str, Any] | None = None,
                   specs: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
                   dino_config: Mapping[str, Any] | None = None) -> ComfyPipeline:
    """A :class:`ComfyPipeline` from a ``ComfyFileSet``, a ComfyUI models folder or a list of files/folders.

    ``name`` picks a bundle when several are found. The architecture (``specs`` + ``dino_config``) is the one of
    :data:`SIZES` the bundle's width matches unless given (tests pass ``official.TINY``/``official.DINOV3_TINY``).
    """
    from .comfy_files import find_comfy_pipeline

    if isinstance(source, ComfyFileSet):
        if specs is None or dino_config is None:
            size_specs, size_dino = SIZES[_known_size(source.bundle)]
            specs, dino_config = specs or size_specs, dino_config or size_dino
        return ComfyPipeline(source, specs=specs, dino_config=dino_config)
    if specs is not None or dino_config is not None:
        files = find_comfy_pipeline(source, name=name, folders=folders, dino_config=dino_config)
        return comfy_pipeline(files, specs=specs, dino_config=dino_config)
    first: WeightsError | None = None
    for size, (size_specs, size_dino) in SIZES.items():
        try:
            files = find_comfy_pipeline(source, name=name, folders=folders, dino_config=size_dino)
        except WeightsError as err:
            first = first or err
            continue
        if _size_of(files.bundle) == size:
            return ComfyPipeline(files, specs=size_specs, dino_config=size_dino)
        _known_size(files.bundle)  # a bundle of no known width: say so
    assert first is not None
    raise first
