"""Background handling before conditioning (spec §2 steps 1–3), pluggable: keep | mask | model | none.

* ``keep``: the image's own alpha is the matte (RGBA, LA, PA, or P with a transparent palette entry).
* ``mask``: a caller mask is the matte (see :func:`~trellis2_core.preprocess.image.preprocess_image`).
* ``model``: a matting model predicts the matte (§2 step 3), on the image already downscaled to 1024 px.
* ``none``: no preprocessing at all (the official ``preprocess_image=False``): the image is used as it is.
* ``auto`` (official rule, §2 step 1): a mask if one is given, else the alpha of an RGBA image that has some
  alpha < 255, else the matting model. LA, PA and P images are *not* taken as matted (as official).

The matting model has the BiRefNet call interface: ``model(x [1, 3, 1024, 1024])`` → side outputs whose last
one holds the logits ``[1, 1, h, w]``. It is loaded from a Hugging Face format folder with remote code
(``config.json`` with an ``auto_map`` entry for ``AutoModelForImageSegmentation``, the ``*.py`` files, and
``model.safetensors``), locally or from the Hub. The default is ``ZhengPeng7/BiRefNet`` (MIT licence, ungated);
the official ``briaai/RMBG-2.0`` (gated, CC BY-NC 4.0) has the same interface and works when the user has it.
Loading runs that folder's Python code (``trust_remote_code``), exactly as the official pipeline does. Any callable
``RGB PIL image -> mask`` can be plugged in instead (e.g. a ``rembg`` session).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import BackendError, InputError, WeightsError
from .image import (
    ALPHA_THRESHOLD, DEFAULT_MAX_SIZE, MIN_FOREGROUND_SIDE, MaskLike, attach_mask, check_image_size,
    crop_to_foreground, downscale, has_usable_alpha, premultiply, preprocess_image,
)

__all__ = [
    "BACKGROUND_MODES", "DEFAULT_MATTING_MODEL", "OFFICIAL_MATTING_MODEL", "MATTING_RESOLUTION", "Matting",
    "BiRefNetMatting", "load_matting_model", "normalize_mode", "resolve_background", "needs_matting",
    "remove_background", "prepare_image",
]

log = logging.getLogger(__name__)

BACKGROUND_MODES = ("auto", "keep", "mask", "model", "none")
DEFAULT_MATTING_MODEL = "ZhengPeng7/BiRefNet"  # MIT, ungated
OFFICIAL_MATTING_MODEL = "briaai/RMBG-2.0"  # pipeline.json's choice: gated, non-commercial licence
MATTING_RESOLUTION = 1024  # §2 step 3: the model input is always 1024×1024
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_AUTO_KEY = "AutoModelForImageSegmentation"
_HUB_PATTERNS = ["*.json", "*.py", "*.safetensors"]

Matting = Callable[[Image.Image], MaskLike]  # RGB image -> mask of the same size (L image, or array 0..255/0..1)


# ---------------------------------------------------------------------------------------------- image modes
def _grey_scale(arr: np.ndarray) -> float:
    """Factor from a 32-bit int / float grey image to 0..255: by its range (0..1, 0..255, 0..65535 or its max)."""
    top = float(arr.max()) if arr.size else 0.0
    if top <= 1.0:
        return 255.0  # float image on the unit range
    if top <= 255.0:
        return 1.0
    if top <= 65535.0:
        return 1.0 / 257.0  # 16-bit samples stored as 32-bit (mode I)
    return 255.0 / top


def normalize_mode(image: Image.Image) -> Image.Image:
    """The image in one of the modes L, LA, RGB, RGBA (palette, 16-bit, float, CMYK … converted properly).

    P/PA images keep their transparency (P with a transparent entry → RGBA, else RGB); 16-bit and float grey
    images are scaled to 8 bits (``I;16``: /257; ``I``/``F``: by their range: 0..1, 0..255, 0..65535 or 0..max).
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if transparent else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode == "La":
        return image.convert("LA")
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode.startswith("I;16"):
        arr = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise InputError(f"image (mode {mode!r}) contains NaN or infinite pixel values; save it again as an "
                             "8-bit PNG or JPEG")
        return Image.fromarray(np.clip(np.rint(arr * _grey_scale(arr)), 0, 255).astype(np.uint8), "L")
    try:
        return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    except (ValueError, OSError) as err:
        raise InputError(f"image mode {mode!r} cannot be converted to RGB ({err})") from err


def _alpha_image(image: Image.Image) -> Image.Image:
    """``image`` as RGBA using its own transparency (``background='keep'``)."""
    img = normalize_mode(image)
    if img.mode == "RGBA":
        return img
    if img.mode == "LA":
        return img.convert("RGBA")
    raise InputError(
        f"background='keep' needs an image with an alpha channel, but this one has mode {image.mode!r} "
        "(no transparency); use background='auto' or 'model' to remove the background, or pass a mask"
    )


# ---------------------------------------------------------------------------------------------- mode choice
def resolve_background(image: Image.Image, background: str = "auto", mask: MaskLike | None = None) -> str:
    """The effective mode ('keep', 'mask', 'model' or 'none') for ``image`` (§2 step 1 for 'auto')."""
    if not isinstance(background, str) or background not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {', '.join(BACKGROUND_MODES)}, got {background!r}")
    check_image_size(image)
    if mask is not None:
        if background not in ("auto", "mask"):
            raise InputError(f"a mask was given together with background={background!r}; a mask replaces "
                             "background removal: use background='auto' or 'mask' (or drop the mask)")
        return "mask"
    if background == "mask":
        raise InputError("background='mask' needs a mask (a PIL image or array, 255/1.0 = foreground)")
    if background == "auto":
        return "keep" if has_usable_alpha(image) else "model"
    return background


def needs_matting(image: Image.Image, background: str = "auto", mask: MaskLike | None = None) -> bool:
    """Whether :func:`prepare_image` will call the matting model (to load it only when needed)."""
    return resolve_background(image, background, mask) == "model"


# ---------------------------------------------------------------------------------------------- matting model
class BiRefNetMatting:
    """§2 step 3 with a BiRefNet-interface model: RGB image → soft foreground mask (mode L, same size).

    Steps (official): PIL bilinear resize to 1024² → ``[0, 1]`` → ImageNet normalisation → ``model(x)[-1]``
    (logits) → sigmoid → ``×255`` truncated to uint8 → PIL bicubic resize back to the input size. No threshold.
    Runs where the model's weights are, under ``torch.no_grad`` (not inference mode: BiRefNet keeps state).
    """

    def __init__(self, model: nn.Module, *, resolution: int = MATTING_RESOLUTION, name: str = "") -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"BiRefNetMatting needs a torch.nn.Module, got {type(model).__name__}; pass a loaded "
                             "BiRefNet-style network, or a folder/Hugging Face id to load_matting_model()")
        self.model = model
        self.resolution = int(resolution)
        self.name = name or type(model).__name__

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def model_input(self, rgb: Image.Image) -> Tensor:
        """``[1, 3, R, R]`` float32 normalised input (torchvision Resize on a PIL image = PIL bilinear)."""
        r = self.resolution
        arr = np.asarray(rgb.convert("RGB").resize((r, r), Image.BILINEAR), dtype=np.uint8)  # [R, R, 3]
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div(255)  # [3, R, R]
        mean = torch.tensor(_IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(_IMAGENET_STD, dtype=torch.float32)[:, None, None]
        return ((x - mean) / std).unsqueeze(0)

    def __call__(self, image: Image.Image) -> Image.Image:
        """The soft matte of ``image`` as a mode-L image of the same size."""
        x = self.model_input(image).to(device=self.device, dtype=self._dtype())
        with torch.no_grad():
            out = self.model(x)
        logits = out[-1] if isinstance(out, (list, tuple)) else out
        if not isinstance(logits, Tensor) or logits.dim() < 2:
            raise BackendError(f"matting model {self.name}: expected logits [1, 1, h, w] as its last output, got "
                               f"{type(logits).__name__}{list(logits.shape) if isinstance(logits, Tensor) else ''}")
        plane = logits.sigmoid().cpu()[0].squeeze()  # [h, w]
        if plane.dim() != 2:
            raise BackendError(f"matting model {self.name}: logits {list(logits.shape)} are not one [h, w] plane")
        if not bool(torch.isfinite(plane).all()):
            raise InputError(f"matting model {self.name} produced NaN values; check its weights and dtype")
        u8 = plane.mul(255).to(torch.uint8).numpy()  # ToPILImage: x255 then truncation
        return Image.fromarray(u8, "L").resize(image.size, Image.BICUBIC)


def _hub_snapshot(repo_id: str, offline: bool | None) -> Path:
    from ..loading.sources import is_offline

    from ..optional import require

    hub = require("huggingface_hub", f"downloading the matting model {repo_id!r}")
    snapshot_download = hub.snapshot_download
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # older huggingface_hub: the class lives in utils
        from huggingface_hub.utils import EntryNotFoundError
    try:
        path = snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=is_offline(offline))
    except (OSError, ValueError, EntryNotFoundError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if type(err).__name__ == "GatedRepoError":
            reason += f" (gated: accept its licence on https://huggingface.co/{repo_id} and run `hf auth login`)"
        raise WeightsError(
            f"cannot get the matting model {repo_id!r} from Hugging Face ({reason}). Download its folder "
            "(config.json, *.py, model.safetensors) and pass its path, e.g. --rembg-model /path/to/BiRefNet, or "
            "put it in <models-dir>/rembg/; or skip background removal with an RGBA image or a mask"
        ) from err
    return Path(path)


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _resolve_folder(source: str | Path, models_dir: str | Path | None, offline: bool | None) -> Path:
    from ..loading.sources import looks_like_repo_id

    name = str(source)
    cands = [Path(name).expanduser()]
    if models_dir is not None:
        md, base = Path(models_dir).expanduser(), name.rstrip("/").split("/")[-1]
        cands += [md / name, md / "rembg" / base, md / "trellis2" / base, md / base]
    for cand in cands:
        if _is_model_folder(cand):
            return cand
    if looks_like_repo_id(name) and not Path(name).expanduser().exists():
        return _hub_snapshot(name, offline)
    raise WeightsError(
        f"matting model {name!r} not found (looked in: {', '.join(str(c) for c in cands)}). Pass a folder with "
        "config.json, the model's *.py files and model.safetensors, or a Hugging Face id such as "
        f"{DEFAULT_MATTING_MODEL!r}"
    )


def _model_class(folder: Path) -> tuple[type, object]:
    """``(model class, config)`` from the folder's remote code (``auto_map``)."""
    try:
        meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WeightsError(f"{folder / 'config.json'}: unreadable ({err}); re-download the matting model") from err
    ref = (meta.get("auto_map") or {}).get(_AUTO_KEY) if isinstance(meta, dict) else None
    if not isinstance(ref, str):
        raise WeightsError(f"{folder / 'config.json'}: no auto_map entry for {_AUTO_KEY}; only BiRefNet-style "
                           "remote-code models (e.g. ZhengPeng7/BiRefNet, briaai/RMBG-2.0) are supported")
    from ..optional import require

    transformers = require("transformers", "background removal (the matting model)")
    try:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
    except ImportError as err:
        raise BackendError(f"background removal needs transformers' remote-code loader, which transformers "
                           f"{transformers.__version__} lacks: pip install 'transformers>=4.56,<6'") from err
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=True,
                                                         local_files_only=True)
        cls = get_class_from_dynamic_module(ref, str(folder), local_files_only=True)
    except ImportError as err:  # the model code needs packages that are not installed (e.g. timm, kornia)
        raise BackendError(f"matting model {folder.name}: its code needs a package that is missing ({err}); "
                           "install it with pip, or use another matting model / pass a mask") from err
    except Exception as err:  # noqa: BLE001 - the folder's own code can raise anything while it is imported
        raise WeightsError(f"{folder}: cannot load the model code named by config.json ({type(err).__name__}: "
                           f"{err}); re-download the matting model folder") from err
    return cls, config


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise WeightsError(f"{index}: malformed safetensors index ({err})") from err
        return [folder / n for n in names]
    raise WeightsError(f"{folder}: no model.safetensors (pickled .bin/.pth weights are not loaded for safety; "
                       "convert them to safetensors)")


def _load_weights(model: nn.Module, folder: Path) -> None:
    """Load the safetensors weights; every parameter must be present, nothing unexpected, shapes equal."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..loading.safetensors_io import dtype_mismatch

    state: dict[str, Tensor] = {}
    for path in _weight_files(folder):
        try:
            state.update(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path}: unreadable or truncated safetensors file ({err}); re-download it") from err
    expected = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    missing = sorted(params - set(state))  # buffers missing from the file keep the values built in __init__
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}" for k in sorted(set(state) & set(expected))
              if tuple(state[k].shape) != tuple(expected[k].shape)]
    dtypes = [bad for k in sorted(set(state) & set(expected))
              if (bad := dtype_mismatch(k, state[k].dtype, expected[k].dtype)) is not None]
    if missing or unexpected or shapes or dtypes:
        parts = [f"{len(missing)} missing ({', '.join(missing[:5])})" if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:5])})" if unexpected else "",
                 f"shape mismatch ({'; '.join(shapes[:5])})" if shapes else "",
                 f"{len(dtypes)} with a dtype the model cannot take ({'; '.join(dtypes[:5])})" if dtypes else ""]
        raise WeightsError(f"{folder}: weights do not match the model code: "
                           + ", ".join(p for p in parts if p) + "; re-download the model folder")
    model.load_state_dict(state, strict=False)


def load_matting_model(source: str | Path | None = None, *, device: str | torch.device = "cpu",
                       models_dir: str | Path | None = None, offline: bool | None = None) -> BiRefNetMatting:
    """Load a BiRefNet-interface matting model (default :data:`DEFAULT_MATTING_MODEL`) onto ``device``.

    ``source`` is a folder, a name under ``models_dir`` (``<models_dir>/rembg/<name>`` …) or a Hugging Face id.
    The model is built on the CPU in float32 (not on the meta device: the BiRefNet code computes Python numbers
    from tensors in ``__init__``), loaded from safetensors and moved to ``device``.
    """
    name = str(source) if source is not None else DEFAULT_MATTING_MODEL
    folder = _resolve_folder(name, models_dir, offline)
    cls, config = _model_class(folder)
    try:
        with torch.device("cpu"):
            model = cls(config)
    except Exception as err:  # noqa: BLE001 - remote code: a config with wrong types can raise anything
        raise WeightsError(f"{folder}: cannot build the matting model from its config ({type(err).__name__}: "
                           f"{err}); re-download the matting model folder") from err
    if not isinstance(model, nn.Module):
        raise WeightsError(f"{folder}: {cls.__name__} is not a torch module")
    _load_weights(model, folder)
    model.requires_grad_(False)
    model.eval()
    model.to(device=torch.device(device), dtype=torch.float32)
    log.info("matting model %s loaded from %s on %s", name, folder, device)
    return BiRefNetMatting(model, name=name)


# ---------------------------------------------------------------------------------------------- preprocessing
def remove_background(image: Image.Image, matting: Matting) -> Image.Image:
    """§2 step 3: ``image`` → RGB → ``matting`` → the mask as alpha → RGBA image of the same size."""
    rgb = image.convert("RGB")
    mask = matting(rgb)
    if mask is None:
        raise InputError("the matting callable returned no mask")
    return attach_mask(rgb, mask)


def _check_matte(rgba: Image.Image, where: str) -> None:
    """Clear error when no pixel is foreground (alpha > 204) instead of a failed crop."""
    alpha = np.asarray(rgba.getchannel("A"))
    if not (alpha > ALPHA_THRESHOLD).any():
        raise InputError(
            f"empty foreground: {where} found no object (no pixel with alpha above 80 %, max "
            f"{int(alpha.max()) if alpha.size else 0}/255). Use an image with a clearly visible object, pass a "
            "mask (--mask), or an RGBA image whose transparency marks the background"
        )


def prepare_image(image: Image.Image, *, background: str = "auto", mask: MaskLike | None = None,
                  matting: Matting | None = None, max_size: int = DEFAULT_MAX_SIZE) -> Image.Image:
    """The conditioning image (§2): RGB, object cropped square-ish and premultiplied on black.

    With ``background='none'`` the image is returned as it is (only exotic modes converted, see
    :func:`normalize_mode`): the conditioner resizes it and converts it to RGB itself (§3).

    Args:
        image: any PIL image (any size: it is downscaled to ``max_size`` before matting, §2 step 2).
        background: 'auto', 'keep', 'mask', 'model' or 'none' (module docstring).
        mask: foreground mask (PIL L/1 image or 2-D array; 255 / 1.0 / True = object).
        matting: the matting model (e.g. :func:`load_matting_model`), needed when the mode resolves to 'model'.
        max_size: longest side before matting/cropping (official 1024).

    Raises:
        InputError: bad mode combination, no matting model when one is needed, or empty foreground.
    """
    check_image_size(image)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < MIN_FOREGROUND_SIDE:
        raise InputError(f"max_size must be a whole number of pixels >= {MIN_FOREGROUND_SIDE} (official 1024), "
                         f"got {max_size!r}")
    scale = min(1.0, max_size / max(image.size))
    if int(image.width * scale) < 1 or int(image.height * scale) < 1:
        raise InputError(f"image {image.width}x{image.height} is too elongated to downscale to {max_size} px; "
                         "crop it closer to the object first")
    mode = resolve_background(image, background, mask)
    if mode == "none":  # official preprocess_image=False: the conditioner resizes, then converts to RGB
        if min(image.size) < MIN_FOREGROUND_SIDE:
            raise InputError(f"image too small: {image.width}x{image.height} pixels with background='none' (at "
                             f"least {MIN_FOREGROUND_SIDE}x{MIN_FOREGROUND_SIDE} is needed); pass a larger picture "
                             "of the object")
        return normalize_mode(image)
    if mode == "mask":
        return preprocess_image(normalize_mode(image), mask, max_size=max_size)
    if mode == "keep":
        rgba = downscale(_alpha_image(image), max_size)
        _check_matte(rgba, "the image's alpha channel")
        return premultiply(crop_to_foreground(rgba))
    if matting is None:
        raise InputError(
            f"the image (mode {image.mode!r}) has no transparency marking the background, so background removal "
            "is needed: pass a matting model (load_matting_model()), a mask, or an RGBA image"
        )
    small = downscale(normalize_mode(image), max_size)  # official order: downscale, then matting
    rgba = remove_background(small, matting)
    _check_matte(rgba, "background removal")
    return premultiply(crop_to_foreground(rgba))
