"""Pipeline folders with random weights in the official layout, and the ``demo`` pipeline built from one.

:func:`write_random_pipeline` writes ``pipeline.json`` + ``ckpts/<name>.{json,safetensors}`` for all eight models
and a DINOv3 folder (``config.json`` + ``model.safetensors``) inside the pipeline folder, at the official sizes
(``size='full'``, ~16 GB, for benchmarks) or at the tiny golden widths (``'tiny'``, ~12 MB). Weights are drawn
from a seeded generator, so a folder is the same bytes every time for the same seed, size and PyTorch version.

:func:`demo_pipeline` is what ``--pipeline demo`` (CLI, library, Load node) resolves to: the tiny pipeline, made
once into a cache folder. Its weights are random: the pipeline runs for real (every model, sampler, decoder and the
export), but the shape and textures it makes are noise. It exists to check an installation without downloading
16 GB of weights.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from . import official

__all__ = ["write_random_pipeline", "is_random_pipeline", "demo_pipeline", "demo_cache_dir", "DEMO_NAME", "DEMO_SEED"]

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
DEMO_SEED = 0
_DEMO_VERSION = 2  # bump when the demo's content changes, so old caches are not reused
_DINO_FOLDER = "dinov3"
_MARKER = "random_pipeline.json"
# The structure decoder's occupancy logit bias of the demo: with plain random weights about half of the 64³ grid
# would be occupied (hundreds of thousands of tokens, minutes on a CPU); this keeps a few hundred voxels.
_DEMO_OCCUPANCY_BIAS = -1.75


@torch.no_grad()
def _randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Random weights in place: matrices N(0, 1/fan_in), norm scales 1 + N(0, 0.2²), other vectors N(0, 0.05²).

    The spread of the norm scales and biases keeps spatial contrast through the decoders (with unit scales and tiny
    biases a random structure decoder outputs an almost constant occupancy field).
    """
    norm_scales = {id(m.weight) for m in model.modules()
                   if "Norm" in type(m).__name__ and isinstance(getattr(m, "weight", None), nn.Parameter)}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if id(p) in norm_scales or name.endswith("gamma"):
            p.copy_(1.0 + 0.2 * noise)
        elif p.dim() >= 2:
            p.copy_(noise / math.sqrt(p[0].numel()))
        else:
            p.copy_(0.05 * noise)


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_model(folder: Path, key: str, cls_name: str, args: dict[str, Any], seed: int,
                 occupancy_bias: float | None) -> None:
    from ..models import model_class

    ref = official.ENCODER_REF if key == official.ENCODER_KEY else official.MODEL_REFS[key]
    base = folder / ref
    base.parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = model_class(cls_name)(**args)
    model = model.to_empty(device="cpu").requires_grad_(False)
    index = len(official.MODEL_REFS) if key == official.ENCODER_KEY else sorted(official.MODEL_REFS).index(key)
    gen = torch.Generator().manual_seed(seed * 1000 + index)
    _randomise(model, gen)
    if key == "sparse_structure_decoder" and occupancy_bias is not None:
        model.out_layer[-1].bias.fill_(occupancy_bias)
    tensors = _state_dict(model)
    base.with_suffix(".json").write_text(json.dumps({"name": cls_name, "args": args}, indent=4), encoding="utf-8")
    _save(tensors, base.parent / f"{base.name}.safetensors")
    del model, tensors


def _write_dinov3(folder: Path, config: dict[str, Any], seed: int) -> None:
    from ..models.dinov3 import _transformers

    tf = _transformers()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in config.items() if k not in ("torch_dtype", "architectures")}
    with torch.device("meta"):
        vit = tf.DINOv3ViTModel(tf.DINOv3ViTConfig.from_dict(cfg))
    vit = vit.to_empty(device="cpu").requires_grad_(False)
    _randomise(vit, torch.Generator().manual_seed(seed * 1000 + 999))
    persistent = set(vit.state_dict())
    tensors = {k: v for k, v in _state_dict(vit).items() if k in persistent}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    _save(tensors, folder / "model.safetensors")


def write_random_pipeline(folder: str | os.PathLike, *, size: str = "tiny", seed: int = 0,
                          occupancy_bias: float | None = None) -> Path:
    """Write a complete pipeline folder with random weights in the official layout; returns the folder.

    It holds both official configs: ``pipeline.json`` (image to 3D) and ``texturing_pipeline.json`` (mesh texturing,
    which adds the shape encoder ``ckpts/shape_enc_next_dc_f16c32_fp16``).

    Args:
        size: 'tiny' (the golden test widths, float32) or 'full' (the official 4B sizes and dtypes).
        seed: weights are a function of (seed, size); the same arguments give the same files.
        occupancy_bias: if given, the structure decoder's output bias (lower = fewer occupied voxels).
    """
    specs = official.model_specs(size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs[official.ENCODER_KEY] = official.encoder_spec(size)
    for key, (cls_name, args) in specs.items():
        _write_model(folder, key, cls_name, args, seed, occupancy_bias)
    _write_dinov3(folder / _DINO_FOLDER, official.DINOV3_TINY if size == "tiny" else official.DINOV3_FULL, seed)
    data = official.pipeline_json(image_cond_model=_DINO_FOLDER)
    (folder / "pipeline.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    tex = official.texturing_pipeline_json(image_cond_model=_DINO_FOLDER)
    (folder / official.TEXTURING_PIPELINE_JSON).write_text(json.dumps(tex, indent=2), encoding="utf-8")
    marker = {"random_weights": True, "size": size, "seed": seed, "occupancy_bias": occupancy_bias,
              "torch": torch.__version__, "demo_version": _DEMO_VERSION,
              "note": "random weights: the pipeline runs for real, but its shapes and textures are noise"}
    (folder / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    return folder


def demo_cache_dir() -> Path:
    """Where the demo pipeline is kept: ``$TRELLIS2_CACHE``, else ``$XDG_CACHE_HOME/trellis2-comfy``, else
    ``~/.cache/trellis2-comfy`` (read when called)."""
    if os.environ.get("TRELLIS2_CACHE"):
        return Path(os.environ["TRELLIS2_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trellis2-comfy"


def _is_complete(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("demo_version") == _DEMO_VERSION and (folder / "pipeline.json").is_file()


def demo_pipeline(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the ``demo`` pipeline (tiny, random weights), written on first use (~12 MB, a few seconds).

    The folder is made under a temporary name and renamed when complete, so an interrupted first run or two
    processes at once never leave a half-written pipeline behind.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else demo_cache_dir()
    folder = root / f"demo-pipeline-v{_DEMO_VERSION}"
    log.warning("pipeline 'demo': tiny RANDOM weights, for checking an installation; the shape and textures it "
                "makes are noise (real weights: --pipeline microsoft/TRELLIS.2-4B)")
    if _is_complete(folder):
        return folder
    log.info("writing the demo pipeline to %s", folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root))
    except OSError as err:
        raise WeightsError(f"cannot write the demo pipeline under {root} ({err}); set TRELLIS2_CACHE to a writable "
                           "folder") from err
    try:
        write_random_pipeline(tmp, size="tiny", seed=DEMO_SEED, occupancy_bias=_DEMO_OCCUPANCY_BIAS)
        if folder.exists() and not _is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)  # an old version's or a broken folder
        try:
            tmp.rename(folder)
        except OSError:
            if not _is_complete(folder):  # not another process that finished first
                raise
    except OSError as err:
        raise WeightsError(f"cannot write the demo pipeline to {folder} ({err}); free some disk space or set "
                           "TRELLIS2_CACHE to a writable folder") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def is_random_pipeline(folder: str | os.PathLike, *, size: str, seed: int) -> bool:
    """Whether ``folder`` holds a complete random pipeline written with this ``size`` and ``seed``."""
    try:
        marker = json.loads((Path(folder) / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (marker.get("size"), marker.get("seed"), marker.get("demo_version")) == (size, seed, _DEMO_VERSION) and (
        Path(folder) / "pipeline.json").is_file()


def main(argv: list[str] | None = None) -> int:
    """``python -m trellis2_core.loading.random_pipeline FOLDER --size full|tiny [--seed N]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m trellis2_core.loading.random_pipeline",
                                 description="Write a pipeline folder with RANDOM weights in the official layout "
                                             "(benchmarks, installation checks; its outputs are noise).")
    ap.add_argument("folder", help="folder to write (reused as it is when already complete for --size/--seed)")
    ap.add_argument("--size", choices=("full", "tiny"), default="tiny", help="'full' ~16 GB (official sizes), "
                    "'tiny' ~12 MB (test widths)")
    ap.add_argument("--seed", type=int, default=0, help="weights seed (same seed, size and torch: same bytes)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if is_random_pipeline(args.folder, size=args.size, seed=args.seed):
        print(f"{args.folder}: complete ({args.size}, seed {args.seed}), reused")
        return 0
    write_random_pipeline(args.folder, size=args.size, seed=args.seed)
    print(f"{args.folder}: written ({args.size}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
