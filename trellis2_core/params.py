"""Checks of user-facing run parameters, shared by the CLI, the library and the nodes (torch-free, no model needed).

Every check takes a ``label``: how the caller's user spells the parameter (``--max-tokens`` on the command line,
``max_num_tokens`` in Python, ``Sample Shape's 'max_num_tokens'`` in ComfyUI), so one check gives each entry point
an :class:`~trellis2_core.errors.InputError` naming the flag or widget the user has to change. Checks return the
value normalised (``int``/``float``/``tuple``) and never touch torch, so they run before anything heavy.

Ranges (each error message says them):

* seed: an integer in ``0 .. 2**64 - 1`` (what a CPU ``torch.Generator`` accepts).
* steps: ``1 .. MAX_STEPS``; guidance strength ``0 .. MAX_GUIDANCE`` (1 disables guidance); guidance rescale and the
  guidance interval in ``[0, 1]``; ``rescale_t`` in ``(0, MAX_RESCALE_T]``; ``sigma_min`` in ``[0, 1)``.
* pipeline types (spec §1.2): '512', '1024' and cascades 'N_cascade' with ``N = 1024 + k·128`` up to
  :data:`MAX_CASCADE_RESOLUTION` (2048). The cascade's high-resolution DiT was trained on the 64³ grid of 1024;
  '1536_cascade' (96³) is the official maximum, 2048 (128³) already doubles the grid and is as far as the ComfyUI
  port of the original goes in practice; beyond it the token count and the decoded mesh outgrow any GPU.
* ``max_num_tokens``: ``1 .. MAX_NUM_TOKENS``; GLB face target ``0 .. MAX_FACES`` (0 disables decimation).
"""
from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import InputError

__all__ = [
    "MAX_SEED", "MAX_STEPS", "MAX_GUIDANCE", "MAX_RESCALE_T", "MAX_NUM_TOKENS", "MAX_FACES", "MIN_CASCADE_RESOLUTION",
    "MAX_CASCADE_RESOLUTION", "CASCADE_STEP", "PIPELINE_TYPES", "ALPHA_MODES", "TEXTURE_FORMATS", "SAMPLER_STAGES",
    "SAMPLER_KEYS", "DTYPE_NAMES",
    "check_int", "check_float", "check_bool", "check_choice", "check_seed", "check_steps", "check_guidance",
    "check_max_num_tokens", "check_faces", "parse_pipeline_type", "check_pipeline_type", "check_sampler_values",
    "check_sampler_overrides", "check_dtype_name", "check_folder", "check_device_name", "check_run_options",
]

MAX_SEED = 2 ** 64 - 1
MAX_STEPS = 500  # 12 is official; beyond a few dozen Euler steps nothing changes but the time
MAX_GUIDANCE = 50.0  # official 7.5; far above ~15 the guided prediction leaves the data range
MAX_RESCALE_T = 50.0  # official 3 and 5
MAX_NUM_TOKENS = 1_000_000  # official 49152; the 2048 cascade has ~3e5 surface voxels at most
MAX_FACES = 2 ** 24  # 16.7 M faces: more than any decoded mesh keeps worth exporting (0 = no decimation)
MIN_CASCADE_RESOLUTION = 1024
MAX_CASCADE_RESOLUTION = 2048
CASCADE_STEP = 128
#: the pipeline types offered in menus (others: N_cascade, N = 1024 + k·128 ≤ 2048)
PIPELINE_TYPES = ("512", "1024", "1024_cascade", "1536_cascade")
ALPHA_MODES = ("OPAQUE", "MASK", "BLEND")  # glTF alphaMode values (§9.6; official OPAQUE)
TEXTURE_FORMATS = ("png", "webp")  # GLB texture encodings
SAMPLER_STAGES = ("sparse_structure", "shape_slat", "tex_slat")
SAMPLER_KEYS = ("steps", "guidance_strength", "guidance_rescale", "guidance_interval", "rescale_t", "sigma_min")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
_TYPE = re.compile(r"^(\d+)(_cascade)?$")


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, label: str, lo: int, hi: int, hint: str = "") -> int:
    """``value`` as an ``int`` in ``lo..hi``; InputError naming ``label`` otherwise (floats are refused)."""
    if not _is_int(value):
        raise InputError(f"{label} must be a whole number in {lo}..{hi}, got {_got(value)}"
                         f"{'; ' + hint if hint else ''}")
    value = int(value)
    if not lo <= value <= hi:
        raise InputError(f"{label} must be in {lo}..{hi}, got {value}{'; ' + hint if hint else ''}")
    return value


def check_float(value: Any, label: str, lo: float, hi: float, hint: str = "", *, lo_open: bool = False,
                hi_open: bool = False) -> float:
    """``value`` as a finite ``float`` in ``[lo, hi]`` (``lo_open``/``hi_open``: open ends); InputError otherwise."""
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    tail = f"; {hint}" if hint else ""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InputError(f"{label} must be a number in {span}, got {_got(value)}{tail}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{label} must be a finite number in {span}, got {value}{tail}")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        raise InputError(f"{label} must be in {span}, got {value:g}{tail}")
    return value


def check_bool(value: Any, label: str) -> bool:
    """``value`` if it is ``True``/``False`` (numpy bools too); InputError otherwise."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise InputError(f"{label} must be True or False, got {_got(value)}")


def check_choice(value: Any, label: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; InputError listing them otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{label} must be one of {', '.join(choices)}; got {_got(value)}")
    return value


def check_seed(value: Any, label: str = "seed") -> int:
    """A seed: a whole number in ``0 .. 2**64 - 1``."""
    return check_int(value, label, 0, MAX_SEED, "seeds are whole numbers from 0 to 2**64 - 1 (official 42)")


def check_steps(value: Any, label: str = "steps") -> int:
    """Sampler steps: ``1 .. MAX_STEPS``."""
    return check_int(value, label, 1, MAX_STEPS, "sampler steps (official 12)")


def check_guidance(value: Any, label: str = "guidance") -> float:
    """Classifier-free guidance strength: ``0 .. MAX_GUIDANCE``."""
    return check_float(value, label, 0.0, MAX_GUIDANCE, "guidance strength (official 7.5; 1 disables guidance)")


def check_max_num_tokens(value: Any, label: str = "max_num_tokens") -> int:
    """The cascade's token cap: ``1 .. MAX_NUM_TOKENS``."""
    return check_int(value, label, 1, MAX_NUM_TOKENS,
                     "token cap of the 1536/2048 cascades (official 49152; lower it when out of memory)")


def check_faces(value: Any, label: str = "target_faces") -> int:
    """GLB face target: ``0 .. MAX_FACES`` (0 disables decimation)."""
    return check_int(value, label, 0, MAX_FACES, "target face count of the GLB (0 disables decimation; demo 500000)")


def parse_pipeline_type(name: Any, label: str = "pipeline_type") -> tuple[int, bool]:
    """``(resolution, cascade)`` of a pipeline type name; InputError naming ``label`` when it is not one (§1.2)."""
    valid = (f"use '512', '1024', '1024_cascade' or '1536_cascade' (or N_cascade with N = 1024 + k·128 up to "
             f"{MAX_CASCADE_RESOLUTION})")
    m = _TYPE.match(name) if isinstance(name, str) else None
    if m is None:
        raise InputError(f"{label}: unknown pipeline type {_got(name)}; {valid}")
    res, cascade = int(m.group(1)), m.group(2) is not None
    if cascade:
        if res < MIN_CASCADE_RESOLUTION or (res - MIN_CASCADE_RESOLUTION) % CASCADE_STEP:
            raise InputError(f"{label}: cascade pipeline type {name!r} is not N_cascade with N = 1024 + k·128 "
                             f"(1024, 1152, ..., 1536, ..., {MAX_CASCADE_RESOLUTION}); {valid}")
        if res > MAX_CASCADE_RESOLUTION:
            raise InputError(
                f"{label}: pipeline type {name!r} is beyond what the model supports: the largest cascade is "
                f"'{MAX_CASCADE_RESOLUTION}_cascade' (the high-resolution model was trained at 1024; 1536 is the "
                f"official maximum); {valid}")
        return res, True
    if res not in (512, 1024):
        raise InputError(f"{label}: pipeline type {name!r} does not exist: without '_cascade' only '512' and "
                         f"'1024' exist; {valid}")
    return res, False


def check_pipeline_type(name: Any, label: str = "pipeline_type") -> str:
    """``name`` if it is a valid pipeline type (see :func:`parse_pipeline_type`)."""
    parse_pipeline_type(name, label)
    return str(name)


def check_sampler_values(values: Any, label: str) -> dict[str, Any]:
    """One stage's sampler overrides (keys of :data:`SAMPLER_KEYS`), each value checked; ``label`` names the stage
    (e.g. ``samplers['shape_slat']``) and ``label['key']`` each value."""
    return _sampler_values(values, label, {})


def _sampler_values(values: Any, label: str, labels: Mapping[str, str]) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise InputError(f"{label} must be a dict of sampler parameters ({', '.join(SAMPLER_KEYS)}), got "
                         f"{type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in SAMPLER_KEYS)
    if unknown:
        raise InputError(f"{label}: unknown sampler parameter(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(SAMPLER_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = labels.get(key, f"{label}[{key!r}]")
        if key == "steps":
            out[key] = check_steps(value, name)
        elif key == "guidance_strength":
            out[key] = check_guidance(value, name)
        elif key == "guidance_rescale":
            out[key] = check_float(value, name, 0.0, 1.0, "0 disables the rescale (official 0.5-0.7)")
        elif key == "rescale_t":
            out[key] = check_float(value, name, 0.0, MAX_RESCALE_T, "time warp of the steps (1 = uniform, "
                                   "official 3-5)", lo_open=True)
        elif key == "sigma_min":
            out[key] = check_float(value, name, 0.0, 1.0, "the flow's noise floor (official 1e-5)", hi_open=True)
        else:
            out[key] = _interval(value, name)
    return out


def _interval(value: Any, label: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InputError(f"{label} must be two numbers (start, end) with 0 <= start <= end <= 1, got {_got(value)}")
    lo = check_float(value[0], f"{label} start", 0.0, 1.0)
    hi = check_float(value[1], f"{label} end", 0.0, 1.0)
    if lo > hi:
        raise InputError(f"{label}: start {lo:g} must not exceed end {hi:g} (guidance applies for noise levels "
                         "t in [start, end]; official [0.6, 1.0])")
    return lo, hi


def check_sampler_overrides(stages: Any, label: str = "samplers",
                            labels: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """Per-stage overrides ``{stage: {key: value}}`` with stages from :data:`SAMPLER_STAGES`; ``labels`` may name
    single values (``labels['shape_slat']['steps'] = '--shape-steps'``)."""
    if stages is None:
        return {}
    if not isinstance(stages, Mapping):
        raise InputError(f"{label} must be a dict {{stage: {{parameter: value}}}} with stages "
                         f"{', '.join(SAMPLER_STAGES)}, got {type(stages).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for stage, values in stages.items():
        if stage not in SAMPLER_STAGES:
            raise InputError(f"{label}: unknown sampler stage {_got(stage)}; use {', '.join(SAMPLER_STAGES)}")
        out[stage] = _sampler_values(values, f"{label}[{stage!r}]", (labels or {}).get(stage, {}))
    return out


def check_dtype_name(value: Any, label: str = "dtype") -> str | None:
    """``None``/'auto' (the checkpoints' own precision) or one of :data:`DTYPE_NAMES` (torch dtypes accepted)."""
    if value is None or value == "auto":
        return None
    name = str(value).replace("torch.", "") if type(value).__name__ == "dtype" else value
    if not isinstance(name, str) or name not in DTYPE_NAMES:
        raise InputError(f"{label} must be None (the checkpoints' own precision), "
                         f"{', '.join(DTYPE_NAMES)}; got {_got(value)}")
    return name


def check_folder(path: Any, label: str) -> Path | None:
    """``None`` or an existing directory; InputError naming ``label`` otherwise."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InputError(f"{label} must be a folder path, got {_got(path)}")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise InputError(f"{label}: folder {str(folder)!r} does not exist; pass the folder that holds trellis2/, "
                         "dinov3/ and rembg/ (e.g. ComfyUI/models), or leave it out")
    if not folder.is_dir():
        raise InputError(f"{label}: {str(folder)!r} is a file, not a folder; pass the models folder itself")
    return folder


_DEVICE = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")


def check_device_name(device: Any, label: str = "device") -> str:
    """'auto', 'cpu', 'cuda', 'cuda:N', 'mps' (syntax only; whether it exists is checked where torch is loaded)."""
    text = "auto" if device is None else str(device)
    if type(device).__name__ != "device" and not isinstance(device, str) and device is not None:
        raise InputError(f"{label} must be a device name such as 'cpu', 'cuda', 'cuda:1', 'mps' or 'auto', "
                         f"got {_got(device)}")
    if text != "auto" and not _DEVICE.match(text.strip()):
        raise InputError(f"{label}: unknown device {text!r}; use 'cpu', 'cuda', 'cuda:N' (N = GPU index), 'mps' or "
                         "'auto'")
    return text.strip()


def check_run_options(*, seed: Any, steps: Any, guidance: Any, samplers: Any, max_num_tokens: Any,
                      pipeline_type: Any, names: Mapping[str, str] | None = None,
                      stage_names: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """The sampling options of one generation, checked together (library, CLI and the one-node workflow).

    ``names`` maps 'seed', 'steps', 'guidance', 'samplers', 'max_num_tokens', 'pipeline_type' to the caller's
    labels; ``stage_names`` labels single per-stage values. Returns the normalised values (None stays None).
    """
    n = dict(names or {})
    out: dict[str, Any] = {
        "seed": check_seed(seed, n.get("seed", "seed")),
        "steps": None if steps is None else check_steps(steps, n.get("steps", "steps")),
        "guidance": None if guidance is None else check_guidance(guidance, n.get("guidance", "guidance")),
        "max_num_tokens": check_max_num_tokens(max_num_tokens, n.get("max_num_tokens", "max_num_tokens")),
        "pipeline_type": None if pipeline_type is None else check_pipeline_type(
            pipeline_type, n.get("pipeline_type", "pipeline_type")),
    }
    if type(samplers).__name__ == "SamplerOverrides":  # the pipeline's dataclass: check its three blocks
        samplers = {stage: getattr(samplers, stage) for stage in SAMPLER_STAGES}
    out["samplers"] = check_sampler_overrides(samplers, n.get("samplers", "samplers"), stage_names)
    return out
