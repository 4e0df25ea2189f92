"""What a ComfyUI-core TRELLIS.2 weight file holds, told from its safetensors header keys (never its name).

Facts: ``/work/shared/spec/comfy-core-weights.md`` §1.2-1.3, §7 step 2. Core (0.33.0) distributes four kinds of
file for TRELLIS.2: the diffusion bundle (the four flow DiTs under ``P + structure_model.`` / ``img2shape_512.`` /
``img2shape.`` / ``shape2txt.``, P being ``model.``, ``model.diffusion_model.`` or empty), the shape VAE
(``struct_dec.`` + ``shape_dec.``), the texture VAE (``txt_dec.``) and a DINOv3 ViT file (HF key layout, possibly
with a ``naf.*`` upsampler). A bundle with only ``shape2txt`` is a texture-only bundle; a bundle whose cross
attention has ``proj_linear`` is Pixal3D's, not TRELLIS.2's.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import WeightsError
from .comfy_int8 import METADATA_KEY as QUANT_METADATA_KEY
from .comfy_int8 import QUANT_SUFFIX

__all__ = ["SafetensorsHeader", "ComfyFile", "read_header", "classify_file", "classify_header", "scan_files",
           "FLOW_ROLES", "VAE_ROLES", "DINO_ROLE", "BUNDLE_PREFIXES", "SAFETENSORS_SUFFIXES"]

#: the four flow sub-models of core's bundle, in core's names
FLOW_ROLES = ("structure_model", "img2shape_512", "img2shape", "shape2txt")
#: the decoders in core's VAE files (their prefixes are these names + '.')
VAE_ROLES = ("struct_dec", "shape_dec", "txt_dec")
DINO_ROLE = "dino"
#: prefixes core's diffusion-model loader strips (model_detection.unet_prefix_from_state_dict), longest first
BUNDLE_PREFIXES = ("model.diffusion_model.", "model.", "")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_DINO_LAYER = re.compile(r"^(?:model\.)?layer\.(\d+)\.")


@dataclass(frozen=True)
class SafetensorsHeader:
    """A safetensors header: tensor name → (dtype, shape), and the ``__metadata__`` strings."""

    tensors: Mapping[str, tuple[str, tuple[int, ...]]]
    metadata: Mapping[str, str]

    def shape(self, key: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(key)
        return None if entry is None else entry[1]


@dataclass(frozen=True)
class ComfyFile:
    """One classified file: ``roles`` maps each sub-model it holds (a FLOW_ROLES/VAE_ROLES name or ``'dino'``)
    to the key prefix of that sub-model's tensors in the file; ``kind`` says what it is in words."""

    path: Path
    kind: str  # 'diffusion bundle', 'texture-only bundle', 'shape VAE', 'texture VAE', 'DINOv3', 'Pixal3D bundle', ...
    roles: Mapping[str, str] = field(default_factory=dict)
    usable: bool = True  # False: recognised but not loadable for TRELLIS.2 (``note`` says why)
    note: str = ""
    dino_shape: tuple[int, int, int] | None = None  # DINOv3: (hidden size, layers, patch size)
    has_naf: bool = False
    quantised: bool = False  # has ComfyUI quantisation markers (``*.comfy_quant`` or header metadata)

    def __str__(self) -> str:
        return f"{self.path.name} ({self.kind}{': ' + self.note if self.note else ''})"


def read_header(path: str | Path) -> SafetensorsHeader:
    """The header of a ``.safetensors`` file, read without touching the tensor data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a safetensors header")
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                raise ValueError(f"header length {size} is not plausible")
            raw = f.read(size)
            if len(raw) != size:
                raise ValueError("truncated header")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("header is not a JSON object")
        meta = data.pop("__metadata__", None) or {}
        tensors = {k: (str(v["dtype"]), tuple(int(d) for d in v["shape"])) for k, v in data.items()}
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err}); re-download it") from err
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in dict(meta).items()})


def _bundle_prefix(keys: set[str]) -> str | None:
    """The prefix P in front of the flow sub-models (core's probe: ``<sub>.t_embedder.mlp.0.weight``)."""
    for p in BUNDLE_PREFIXES:
        if any(f"{p}{role}.t_embedder.mlp.0.weight" in keys for role in FLOW_ROLES):
            return p
    return None


def _dino_shape(header: SafetensorsHeader) -> tuple[int, int, int] | None:
    """(hidden, layers, patch) of a DINOv3 ViT in HF layout (plain MLP, o_proj bias), else None."""
    keys = set(header.tensors)
    patch = header.shape("embeddings.patch_embeddings.weight") or header.shape(
        "model.embeddings.patch_embeddings.weight")
    if patch is None or len(patch) != 4:
        return None
    layers = {int(m.group(1)) for k in keys if (m := _DINO_LAYER.match(k))}
    if not layers or not any(k.endswith("attention.o_proj.bias") for k in keys):
        return None
    if any(".mlp.gate_proj." in k for k in keys):
        return None  # ViT-H+/7B: gated MLP
    return int(patch[0]), max(layers) + 1, int(patch[2])


def classify_header(path: Path, header: SafetensorsHeader) -> ComfyFile:
    """Classify a file from its header (see the module docstring); ``kind='unknown'`` when nothing matches."""
    keys = set(header.tensors)
    prefix = _bundle_prefix(keys)
    if prefix is not None:
        roles = {r: f"{prefix}{r}." for r in FLOW_ROLES if any(k.startswith(f"{prefix}{r}.") for k in keys)}
        if any(".cross_attn.proj_linear." in k for k in keys):
            return ComfyFile(path, "Pixal3D bundle", roles, usable=False,
                             note="Pixal3D's flow models (projected image attention), not TRELLIS.2's; use "
                                  "trellis_2_bf16.safetensors from Comfy-Org/TRELLIS.2")
        if set(roles) == {"shape2txt"}:
            return ComfyFile(path, "texture-only bundle", roles,
                             note="only the texture flow (shape2txt); the structure and shape flows are missing")
        if set(roles) == set(FLOW_ROLES):
            quantised = QUANT_METADATA_KEY in header.metadata or any(k.endswith(QUANT_SUFFIX) for k in keys)
            return ComfyFile(path, "diffusion bundle", roles, quantised=quantised,
                             note="int8-quantised" if quantised else "")
        lacking = [r for r in FLOW_ROLES if r not in roles]
        return ComfyFile(path, "partial diffusion bundle", roles, note=f"lacks {', '.join(lacking)}")
    roles = {r: f"{r}." for r in VAE_ROLES if any(k.startswith(f"{r}.") for k in keys)}
    if roles:
        if set(roles) == {"struct_dec", "shape_dec"}:
            return ComfyFile(path, "shape VAE", roles)
        if set(roles) == {"txt_dec"}:
            return ComfyFile(path, "texture VAE", roles)
        return ComfyFile(path, "VAE bundle", roles, note=f"holds {', '.join(sorted(roles))}")
    dino = _dino_shape(header)
    if dino is not None:
        naf = any(k.startswith("naf.") for k in keys)
        return ComfyFile(path, "DINOv3", {DINO_ROLE: ""}, dino_shape=dino, has_naf=naf,
                         note=f"hidden {dino[0]}, {dino[1]} layers, patch {dino[2]}" + (", with NAF" if naf else ""))
    return ComfyFile(path, "unknown", {}, usable=False, note="not a TRELLIS.2 file of ComfyUI core")


def classify_file(path: str | Path) -> ComfyFile:
    """Read ``path``'s header and classify it; raises ``WeightsError`` if it is not a readable safetensors file."""
    path = Path(path)
    return classify_header(path, read_header(path))


def scan_files(paths: Iterable[str | Path], *, recursive: bool = True) -> tuple[list[ComfyFile], list[str]]:
    """Classify every safetensors file in ``paths`` (files, or folders searched recursively).

    Returns (the classified files, sorted by path; notes on files that could not be read). Missing folders are
    skipped silently: ComfyUI lists folders that need not exist.
    """
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            found[p] = None
        elif p.is_dir():
            walker = os.walk(p, followlinks=True) if recursive else [(str(p), [], os.listdir(p))]
            for folder, dirs, files in walker:
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.lower().endswith(SAFETENSORS_SUFFIXES) and not name.startswith("."):
                        found[Path(folder) / name] = None
    out: list[ComfyFile] = []
    problems: list[str] = []
    for path in sorted(found):
        try:
            out.append(classify_file(path))
        except WeightsError as err:
            problems.append(str(err))
    return out, problems
