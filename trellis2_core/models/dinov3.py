"""DINOv3 image conditioner through ``transformers`` (spec §3).

``DinoV3FeatureExtractor.features(images, S)`` returns ``[B, 1 + 4 + (S/16)², C]`` float32 tokens: PIL LANCZOS
resize to ``S×S`` → RGB → ``/255`` → ImageNet normalisation → patch/CLS/register embeddings → every ViT layer with
the patch RoPE → **non-affine** ``layer_norm`` (eps 1e-5). The model's own affine final ``norm`` is not used.

Weights are read by us (not ``from_pretrained``) so that loading is strict and independent of the installed
``transformers`` major version: checkpoints in the 4.x layout (``layer.N.*``) and the 5.x layout
(``model.layer.N.*``) both load into either version's module tree. Finding the folder (pipeline-relative name,
ComfyUI models folder, Hugging Face id) is done by ``trellis2_core.loading.load_image_cond_model``.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..errors import BackendError, InputError, WeightsError

__all__ = ["DinoV3FeatureExtractor", "IMAGENET_MEAN", "IMAGENET_STD", "KNOWN_CONFIGS", "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "facebook/dinov3-vitl16-pretrain-lvd1689m"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FINAL_LN_EPS = 1e-5  # §3 / §13.6: F.layer_norm default eps, not the config's

# §3: the ViT-L/16 used by TRELLIS.2, for weight folders that ship without config.json
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    DEFAULT_MODEL_NAME: {
        "model_type": "dinov3_vit", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "intermediate_size": 4096, "hidden_act": "gelu", "num_register_tokens": 4, "patch_size": 16,
        "num_channels": 3, "image_size": 224, "rope_theta": 100.0, "layer_norm_eps": 1e-5, "layerscale_value": 1.0,
        "query_bias": True, "key_bias": False, "value_bias": True, "proj_bias": True, "mlp_bias": True,
        "use_gated_mlp": False, "pos_embed_shift": None, "pos_embed_jitter": None, "pos_embed_rescale": 2.0,
        "attention_dropout": 0.0, "drop_path_rate": 0.0,
    },
}


def _transformers() -> Any:
    """The ``transformers`` module, or BackendError naming its version and the install command."""
    from ..optional import REQUIREMENTS, require

    transformers = require("transformers", "DINOv3 conditioning")
    if not hasattr(transformers, "DINOv3ViTModel"):
        req = REQUIREMENTS["transformers"]
        raise BackendError(
            f"DINOv3 conditioning needs {req.spec}, but transformers {getattr(transformers, '__version__', '?')} "
            f"has no DINOv3ViTModel: {req.fix()}"
        )
    return transformers


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of a HF model folder (single file or sharded with an index)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise WeightsError(f"{index}: malformed safetensors index ({err}); re-download it") from err
        return [folder / name for name in sorted(set(weight_map.values()))]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    raise WeightsError(
        f"{folder}: no DINOv3 weights found (expected model.safetensors or model.safetensors.index.json); "
        f"download them from https://huggingface.co/{DEFAULT_MODEL_NAME}"
    )


def _read_state_dict(files: Sequence[Path], drop_prefixes: Sequence[str] = ()) -> dict[str, Tensor]:
    """Every tensor of ``files`` except those whose key starts with one of ``drop_prefixes``."""
    from safetensors import SafetensorError, safe_open

    sd: dict[str, Tensor] = {}
    for path in files:
        if not path.is_file():
            raise WeightsError(f"{path}: file not found; re-download the DINOv3 weights")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if not key.startswith(tuple(drop_prefixes)):
                        sd[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise WeightsError(f"{path}: unreadable or truncated safetensors file ({err}); re-download it") from err
    return sd


def _remap_keys(sd: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Map 4.x (``layer.N``) / 5.x (``model.layer.N``) checkpoint keys onto the installed module tree."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in model_keys:
            out[key] = value
        elif f"model.{key}" in model_keys:
            out[f"model.{key}"] = value
        elif key.startswith("model.") and key[len("model."):] in model_keys:
            out[key[len("model."):]] = value
        else:
            out[key] = value  # reported as unexpected below
    return out


def _check_strict(where: str, sd: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: expected {list(expected[k].shape)}, found {list(sd[k].shape)}"
              for k in sorted(set(sd) & set(expected)) if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:10])}"
                         f"{' ...' if len(unexpected) > 10 else ''})")
        if shapes:
            parts.append(f"{len(shapes)} mis-shaped ({'; '.join(shapes[:10])})")
        raise WeightsError(f"{where}: DINOv3 weights do not match the config: {'; '.join(parts)}; re-download them")


class DinoV3FeatureExtractor(nn.Module):
    """Image → DINOv3 token features, exactly the official ``DinoV3FeatureExtractor`` (§3).

    Holds a ``transformers`` ``DINOv3ViTModel`` (``self.vit``) in float32 and eval mode.
    """

    def __init__(self, vit: nn.Module, *, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.vit = vit
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        layers = self.layers
        if len(layers) > 0:
            params = inspect.signature(layers[0].forward).parameters
            if "position_embeddings" not in params:
                tf = _transformers()
                raise BackendError(
                    f"transformers {tf.__version__}: DINOv3 layers take no 'position_embeddings' argument "
                    "(unsupported version); install transformers>=4.56"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_folder(cls, folder: str | Path, *, config: dict[str, Any] | None = None,
                    device: str | torch.device = "cpu", mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> "DinoV3FeatureExtractor":
        """Load a HF-format folder (``config.json`` + ``model.safetensors``); ``config`` replaces a missing json."""
        folder = Path(folder)
        cfg_path = folder / "config.json"
        if cfg_path.is_file():
            try:
                config = json.loads(cfg_path.read_text())
            except ValueError as err:
                raise WeightsError(f"{cfg_path}: malformed JSON ({err}); re-download it") from err
        elif config is None:
            raise WeightsError(
                f"{folder}: no config.json beside the DINOv3 weights; download it from "
                f"https://huggingface.co/{DEFAULT_MODEL_NAME} (or pass the known config)"
            )
        return cls.from_files(_weight_files(folder), config, device=device, where=str(folder), mean=mean, std=std)

    @classmethod
    def from_files(cls, files: Sequence[str | Path], config: dict[str, Any], *,
                   device: str | torch.device = "cpu", where: str | None = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   drop_prefixes: Sequence[str] = ()) -> "DinoV3FeatureExtractor":
        """Build the ViT from a config dict on the meta device, then strictly load the safetensors ``files``.

        Keys starting with one of ``drop_prefixes`` are skipped (e.g. ComfyUI's bundled ``naf.`` upsampler).
        """
        tf = _transformers()
        files = [Path(p) for p in files]
        where = where or ", ".join(str(p) for p in files)
        cfg_dict = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype", "architectures")}
        try:
            vit_config = tf.DINOv3ViTConfig.from_dict(cfg_dict)
        except (TypeError, ValueError) as err:
            raise WeightsError(f"{where}: invalid DINOv3 config ({err})") from err
        with torch.device("meta"):
            vit = tf.DINOv3ViTModel(vit_config)
        expected = vit.state_dict()
        sd = _remap_keys(_read_state_dict(files, drop_prefixes), set(expected))
        _check_strict(where, sd, expected)
        from ..loading.safetensors_io import check_dtypes, dtype_mismatch  # loading imports models: not at the top

        check_dtypes(where, [line for k in sorted(sd) if (line := dtype_mismatch(k, sd[k].dtype, expected[k].dtype))],
                     f"re-download the DINOv3 weights (https://huggingface.co/{DEFAULT_MODEL_NAME})")
        sd = {k: v.to(device=device, dtype=torch.float32) if v.is_floating_point() else v.to(device)
              for k, v in sd.items()}  # §13.33: always fp32, whatever the file or transformers default
        vit.load_state_dict(sd, strict=True, assign=True)
        # non-persistent buffers (RoPE inverse frequencies) are not in the file: rebuild that module for real
        with torch.device(device):
            vit.rope_embeddings = type(vit.rope_embeddings)(vit_config)
        left = [n for n, t in list(vit.named_parameters()) + list(vit.named_buffers()) if t.is_meta]
        if left:
            raise BackendError(f"DINOv3 module tensors left uninitialised after loading: {', '.join(left)}")
        vit.requires_grad_(False)
        vit.eval()
        model = cls(vit, mean=mean, std=std)
        model.eval()
        return model

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> nn.ModuleList:
        """The transformer layers: ``vit.layer`` (transformers 4.x) or ``vit.model.layer`` (5.x) (§13.33)."""
        layer = getattr(self.vit, "layer", None)
        if isinstance(layer, nn.ModuleList):
            return layer
        inner = getattr(self.vit, "model", None)
        layer = getattr(inner, "layer", None)
        if isinstance(layer, nn.ModuleList):
            return layer
        raise BackendError("cannot find the DINOv3 layers (neither .layer nor .model.layer) in this transformers")

    @property
    def patch_size(self) -> int:
        return int(self.vit.config.patch_size)

    # ------------------------------------------------------------------ inference
    def image_to_tensor(self, images: Sequence[Image.Image], resolution: int) -> Tensor:
        """§3: LANCZOS resize to ``S×S`` → RGB → /255 → ImageNet normalise → ``[B, 3, S, S]`` float32."""
        if resolution <= 0 or resolution % self.patch_size != 0:
            raise InputError(f"resolution must be a positive multiple of {self.patch_size}, got {resolution}")
        arrays = []
        for img in images:
            if not isinstance(img, Image.Image):
                raise InputError(f"images must be PIL images, got {type(img).__name__}")
            img = img.resize((resolution, resolution), Image.LANCZOS).convert("RGB")
            arrays.append(torch.from_numpy(np.asarray(img).astype(np.float32) / 255).permute(2, 0, 1))
        weight = self.vit.embeddings.patch_embeddings.weight
        x = torch.stack(arrays).to(weight.device)  # [B, 3, S, S]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return ((x - mean) / std).to(weight.dtype)

    @torch.no_grad()
    def forward(self, pixel_values: Tensor) -> Tensor:
        """``[B, 3, S, S]`` normalised pixels → ``[B, 1 + R + (S/p)², C]`` tokens after the non-affine LN."""
        if self.vit.training:
            raise InputError("DinoV3FeatureExtractor must run in eval mode (train mode augments RoPE); call .eval()")
        x = pixel_values.to(self.vit.embeddings.patch_embeddings.weight.dtype)
        h = self.vit.embeddings(x, bool_masked_pos=None)  # [B, 1+R+P, C]: CLS, registers, patches
        pos = self.vit.rope_embeddings(x)  # (cos, sin) for the patch tokens only
        for layer in self.layers:
            out = layer(h, position_embeddings=pos)
            h = out[0] if isinstance(out, tuple) else out
        return F.layer_norm(h, h.shape[-1:], eps=FINAL_LN_EPS)

    def features(self, images: Image.Image | Sequence[Image.Image], resolution: int) -> Tensor:
        """PIL image(s) → ``[B, 1 + 4 + (S/16)², C]`` float32 conditioning tokens at ``S = resolution``."""
        if isinstance(images, Image.Image):
            images = [images]
        if len(images) == 0:
            raise InputError("features() needs at least one image")
        return self.forward(self.image_to_tensor(images, resolution)).float()
