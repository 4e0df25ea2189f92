"""Flow-matching Euler sampler with classifier-free guidance, guidance interval and CFG rescale (spec §7, §1.4).

Rectified flow, t = 1 is pure noise: ``x_t = (1 − t)·x0 + (σmin + (1 − σmin)·t)·ε``; the model
predicts ``v = (1 − σmin)·ε − x0`` and is called as ``model(x, t_model, cond, **extra)`` with
``t_model = float32(1000·t)`` ``[B]``. Works on dense tensors and on SparseTensors (arithmetic on the
features; voxels never change).
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch
from torch import Tensor

from ..config import FastPathConfig
from ..errors import CancelledError, InputError
from ..sparse.tensor import SparseTensor

__all__ = ["SamplerParams", "SamplerResult", "ModelCall", "timestep_pairs", "sample_flow_euler", "SAMPLER_NAMES"]

Latent = Union[Tensor, SparseTensor]
ModelFn = Callable[..., Latent]

#: official sampler classes (pipeline.json ``*_sampler.name``); all three are this one sampler with fixed knobs
SAMPLER_NAMES = ("FlowEulerSampler", "FlowEulerCfgSampler", "FlowEulerGuidanceIntervalSampler")
_PARAM_NAMES = ("steps", "guidance_strength", "guidance_rescale", "guidance_interval", "rescale_t", "sigma_min")


@dataclass(frozen=True)
class SamplerParams:
    """Settings of one sampling stage (§1.4 lists the pipeline.json defaults)."""

    steps: int  # Euler steps (= model evaluations without CFG), >= 1
    guidance_strength: float  # CFG weight w; 1 = conditional only, 0 = negative only
    guidance_rescale: float  # 0 disables; blends the std-rescaled x0 with weight r (§7)
    guidance_interval: tuple[float, float]  # CFG only for lo <= t <= hi (warped t in [0, 1]), inclusive
    rescale_t: float  # time warp r·t / (1 + (r − 1)·t); 1 = uniform grid
    sigma_min: float = 1e-5  # flow's noise floor (sampler ``args``)

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral) or self.steps < 1:
            raise InputError(f"sampler steps must be an integer >= 1, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))
        for name in ("guidance_strength", "guidance_rescale", "rescale_t", "sigma_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InputError(f"sampler {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.guidance_rescale < 0:
            raise InputError(f"guidance_rescale must be >= 0 (0 disables), got {self.guidance_rescale}")
        if self.rescale_t <= 0:
            raise InputError(f"rescale_t must be > 0 (1 = uniform steps), got {self.rescale_t}")
        if not 0 <= self.sigma_min < 1:
            raise InputError(f"sigma_min must be in [0, 1), got {self.sigma_min}")
        interval = self.guidance_interval
        try:
            lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise InputError(f"guidance_interval must be two numbers [lo, hi], got {interval!r}") from None
        if not (0.0 <= lo <= hi <= 1.0):
            raise InputError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
        object.__setattr__(self, "guidance_interval", (lo, hi))

    @classmethod
    def from_pipeline(cls, block: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> "SamplerParams":
        """Build from a pipeline.json sampler block ``{name, args, params}`` with user ``overrides`` on top.

        Like the official ``{**pipeline_params, **user_params}`` merge; ``sigma_min`` comes from ``args`` unless
        overridden. ``FlowEulerSampler`` has no guidance; ``FlowEulerCfgSampler`` guides at every step.
        """
        name = block.get("name", "FlowEulerGuidanceIntervalSampler")
        if name not in SAMPLER_NAMES:
            raise InputError(f"unsupported sampler {name!r}; supported: {', '.join(SAMPLER_NAMES)}")
        merged: dict[str, Any] = {"guidance_strength": 1.0, "guidance_rescale": 0.0,
                                  "guidance_interval": (0.0, 1.0), "rescale_t": 1.0}
        args = dict(block.get("args", {}))
        if "sigma_min" in args:
            merged["sigma_min"] = args.pop("sigma_min")
        if args:
            raise InputError(f"sampler {name}: unknown args {sorted(args)}")
        merged.update(block.get("params", {}))
        merged.update(overrides or {})
        unknown = sorted(set(merged) - set(_PARAM_NAMES))
        if unknown:
            raise InputError(f"unknown sampler parameters {unknown}; valid: {', '.join(_PARAM_NAMES)}")
        if "steps" not in merged:
            raise InputError(f"sampler {name}: 'steps' is missing from the pipeline block and the overrides")
        if name == "FlowEulerSampler":
            merged["guidance_strength"] = 1.0
        elif name == "FlowEulerCfgSampler":
            merged["guidance_interval"] = (0.0, 1.0)
        return cls(**merged)


@dataclass(frozen=True)
class ModelCall:
    """One model evaluation: the time passed to the model and which conditioning it saw."""

    t_model: float  # float32(1000·t)
    branch: int  # 1 = cond, 0 = neg_cond


@dataclass
class SamplerResult:
    """Final sample (t = 0), the last step's x0 prediction, the (t, t_prev) grid and, if recorded, the calls."""

    samples: Latent
    pred_x0_last: Latent
    steps: list[tuple[float, float]]
    calls: list[ModelCall] | None = field(default=None)


def timestep_pairs(steps: int, rescale_t: float) -> list[tuple[float, float]]:
    """Euler steps ``(t_i, t_{i+1})`` in float64: ``linspace(1, 0, steps+1)`` warped by ``r·t / (1 + (r−1)·t)``."""
    t = np.linspace(1, 0, steps + 1)  # float64, exactly as the official grid (§7)
    t = rescale_t * t / (1 + (rescale_t - 1) * t)
    seq = t.tolist()
    return [(seq[i], seq[i + 1]) for i in range(steps)]


def _feats(x: Latent) -> Tensor:
    return x.feats if isinstance(x, SparseTensor) else x


def _like(x: Latent, feats: Tensor) -> Latent:
    return x.replace(feats) if isinstance(x, SparseTensor) else feats


def _batch_size(x: Latent) -> int:
    return x.batch_size if isinstance(x, SparseTensor) else int(x.shape[0])


def _sample_std(x: Latent) -> Tensor:
    """Per-sample std, broadcastable against ``_feats(x)`` (§7, §13.10).

    Dense: unbiased ``torch.std`` over all non-batch dims → ``[B, 1, …]``. Sparse: population std
    ``sqrt(E[f²] − E[f]²)`` over every feature of the sample's voxels → ``[N, 1]`` (or ``[1, 1]`` for B = 1).
    """
    if not isinstance(x, SparseTensor):
        return x.std(dim=list(range(1, x.dim())), keepdim=True)
    f = x.feats.reshape(x.num_voxels, -1)
    per_row = torch.stack([f.mean(dim=1), (f * f).mean(dim=1)], dim=1)  # [N, 2]
    lens = torch.tensor(x.seqlens, device=f.device, dtype=f.dtype).clamp_min(1)[:, None]
    sums = torch.zeros(x.batch_size, 2, device=f.device, dtype=f.dtype).index_add_(0, x.batch_index(), per_row)
    mean, mean_sq = (sums / lens).unbind(dim=1)
    std = (mean_sq - mean * mean).sqrt()[:, None]  # [B, 1]
    return std if x.batch_size == 1 else x.broadcast_batch(std)


class _Graphed:
    """Replays ``model(x, t, cond, **extra)`` from CUDA graphs, one per call signature (``FastPathConfig.cuda_graphs``).

    The first call of a signature runs eagerly on a side stream (compiling and filling every derived cache), then
    the same call is captured on static copies of ``x``, ``t`` and the tensor extras; later calls copy their inputs
    in and replay. Within one sampling stage the voxels, the conditioning objects and the shapes never change.
    """

    def __init__(self, model: ModelFn) -> None:
        self.model = model
        self.entries: dict[Any, Any] = {}

    def __call__(self, key: Any, x: Latent, t_model: Tensor, cond: Any, extra: dict[str, Any]) -> Tensor:
        entry = self.entries.get(key)
        if entry is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = _feats(self.model(x, t_model, cond, **extra))
            torch.cuda.current_stream().wait_stream(side)
            self.entries[key] = self._capture(x, t_model, cond, extra)
            return out
        if entry is False:
            return _feats(self.model(x, t_model, cond, **extra))
        graph, statics, out = entry
        for dst, src in zip(statics, [_feats(x), t_model] + [_feats(v) for v in extra.values() if _is_tensor(v)]):
            dst.copy_(src)
        graph.replay()
        return out.clone()

    def _capture(self, x: Latent, t_model: Tensor, cond: Any, extra: dict[str, Any]) -> Any:
        sx, st = _like(x, _feats(x).clone()), t_model.clone()
        sextra = {k: _like(v, _feats(v).clone()) if _is_tensor(v) else v for k, v in extra.items()}
        statics = [_feats(sx), st] + [_feats(v) for v in sextra.values() if _is_tensor(v)]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = _feats(self.model(sx, st, cond, **sextra))
        except RuntimeError as err:  # an op that cannot be captured: stay eager for this signature
            warnings.warn(f"CUDA graph capture failed, running eagerly: {err}", RuntimeWarning, stacklevel=3)
            return False
        return graph, statics, out


def _is_tensor(v: Any) -> bool:
    return isinstance(v, (Tensor, SparseTensor))


class _Guided:
    """Evaluates the (guided) velocity at one time, optionally recording each model call."""

    def __init__(self, model: ModelFn, cond: Any, neg_cond: Any, params: SamplerParams, extra: Mapping[str, Any],
                 calls: list[ModelCall] | None, fast: FastPathConfig | None = None) -> None:
        self.model, self.cond, self.neg_cond, self.params = model, cond, neg_cond, params
        self.extra, self.calls = dict(extra), calls
        if fast is not None:
            self.extra["fast"] = fast
        self.batch_cfg = fast is not None and fast.batch_cfg
        self.fast = fast
        self.graphs = _Graphed(model) if fast is not None and fast.cuda_graphs else None
        self._pair_cond: Any = None
        self._templates: dict[int, tuple[Tensor, SparseTensor]] = {}  # id(coords) -> (coords, paired voxels)

    def _call(self, x: Latent, t: float, cond: Any, branch: int) -> Tensor:
        b = _batch_size(x)
        t_model = torch.tensor([1000 * t] * b, device=_feats(x).device, dtype=torch.float32)
        if isinstance(cond, Tensor) and cond.shape[0] == 1 and b > 1:
            cond = cond.expand(b, *cond.shape[1:])
        if self.calls is not None:
            self.calls.append(ModelCall(float(t_model[0]), branch))
        return self._run(("single", branch), x, t_model, cond, self.extra)

    def _run(self, key: Any, x: Latent, t_model: Tensor, cond: Any, extra: dict[str, Any]) -> Tensor:
        if self.graphs is not None and self.fast is not None and self.fast.graphs_on(_feats(x).device):
            return self.graphs(key, x, t_model, cond, extra)
        return _feats(self.model(x, t_model, cond, **extra))

    def _pair(self, x: Any) -> Any:
        """``x`` twice along the batch (a SparseTensor gets batch ids ``B..2B-1`` for the copy; cached voxels)."""
        if isinstance(x, Tensor):
            return torch.cat([x, x])
        if not isinstance(x, SparseTensor):
            return x
        entry = self._templates.get(id(x.coords))
        if entry is None or entry[0] is not x.coords:
            shifted = x.coords.clone()
            shifted[:, 0] += x.batch_size
            entry = (x.coords, SparseTensor(torch.cat([x.feats, x.feats]), torch.cat([x.coords, shifted]),
                                            validate=False))
            self._templates[id(x.coords)] = entry
        return entry[1].replace(torch.cat([x.feats, x.feats]))

    def _paired_cond(self, b: int) -> Any:
        """cond and neg_cond as one batch of ``2b`` (None when they cannot be batched)."""
        if self._pair_cond is None:
            cond, neg = self.cond, self.neg_cond
            if isinstance(cond, Tensor) and isinstance(neg, Tensor):
                self._pair_cond = torch.cat([cond.expand(b, *cond.shape[1:]), neg.expand(b, *neg.shape[1:])])
            elif hasattr(cond, "pair") and type(cond) is type(neg) and cond.shape[0] == b:
                self._pair_cond = cond.pair(neg) or False
            else:
                self._pair_cond = False
        return self._pair_cond

    def _call_pair(self, x: Latent, t: float) -> tuple[Tensor, Tensor] | None:
        """Conditional and unconditional velocities from one batched model call (``FastPathConfig.batch_cfg``)."""
        b = _batch_size(x)
        cond = self._paired_cond(b)
        if cond is False:
            return None
        t_model = torch.tensor([1000 * t] * (2 * b), device=_feats(x).device, dtype=torch.float32)
        extra = {k: self._pair(v) for k, v in self.extra.items()}
        if self.calls is not None:
            self.calls += [ModelCall(float(t_model[0]), 1), ModelCall(float(t_model[0]), 0)]
        v = self._run(("pair",), self._pair(x), t_model, cond, extra)
        n = v.shape[0] // 2
        return v[:n], v[n:]

    def x0_from_v(self, x: Latent, t: float, v: Tensor) -> Tensor:
        s = self.params.sigma_min
        return (1 - s) * _feats(x) - (s + (1 - s) * t) * v

    def v_from_x0(self, x: Latent, t: float, x0: Tensor) -> Tensor:
        s = self.params.sigma_min
        return ((1 - s) * _feats(x) - x0) / (s + (1 - s) * t)

    def velocity(self, x: Latent, t: float) -> Tensor:
        p = self.params
        lo, hi = p.guidance_interval
        w = p.guidance_strength if lo <= t <= hi else 1.0  # §7: inclusive, on the warped t
        if w == 1:
            return self._call(x, t, self.cond, 1)
        if self.neg_cond is None:
            raise InputError(f"guidance_strength {w} needs a negative condition (neg_cond), got None")
        if w == 0:
            return self._call(x, t, self.neg_cond, 0)
        pair = self._call_pair(x, t) if self.batch_cfg else None
        if pair is not None:
            v_pos, v_neg = pair
        else:
            v_pos = self._call(x, t, self.cond, 1)
            v_neg = self._call(x, t, self.neg_cond, 0)
        v = w * v_pos + (1 - w) * v_neg
        if p.guidance_rescale > 0:
            x0_pos, x0_cfg = self.x0_from_v(x, t, v_pos), self.x0_from_v(x, t, v)
            std_pos, std_cfg = _sample_std(_like(x, x0_pos)), _sample_std(_like(x, x0_cfg))
            x0_resc = x0_cfg * (std_pos / std_cfg)
            x0 = p.guidance_rescale * x0_resc + (1 - p.guidance_rescale) * x0_cfg
            v = self.v_from_x0(x, t, x0)
        return v


def sample_flow_euler(model: ModelFn, noise: Latent, cond: Any, neg_cond: Any, params: SamplerParams, *,
                      extra: Mapping[str, Any] | None = None,
                      on_step: Callable[[int, int, Latent, Latent], None] | None = None,
                      should_cancel: Callable[[], bool] | None = None, record_calls: bool = False,
                      stage: str = "sampler", fast: FastPathConfig | None = None) -> SamplerResult:
    """Integrate the flow from ``noise`` (t = 1) to a sample (t = 0) with ``params.steps`` Euler steps (§7).

    Args:
        model: ``model(x, t_model [B] float32, cond, **extra)`` → velocity (same type/shape as ``x``).
        noise: dense ``[B, ...]`` tensor or SparseTensor (its voxels are kept).
        cond, neg_cond: conditioning (``neg_cond`` is needed only when guidance is active, usually
            ``zeros_like(cond)``); a batch-1 tensor is broadcast to the latent's batch.
        extra: further model kwargs (e.g. ``concat_cond`` for the texture flow).
        on_step: called after step ``i`` (0-based) of ``n`` with the new ``x`` and that step's x0 prediction.
        should_cancel: polled before every step; ``True`` raises :class:`CancelledError`.
        record_calls: keep ``(t_model, branch)`` of every model evaluation in ``result.calls``.
        stage: name used in error messages.
        fast: fast-path switches (``config.py``); passed to the model as ``fast=`` and, with ``batch_cfg``, runs
            the two CFG branches as one batch. None: the plain path (the model is called without ``fast``).
    Raises:
        InputError: the model returned NaN/Inf (checked once per step).
        CancelledError: ``should_cancel()`` returned true.
    """
    calls: list[ModelCall] | None = [] if record_calls else None
    guided = _Guided(model, cond, neg_cond, params, extra or {}, calls, fast)
    pairs = timestep_pairs(params.steps, params.rescale_t)
    n = len(pairs)
    x, pred_x0 = noise, None
    for i, (t, t_prev) in enumerate(pairs):
        if should_cancel is not None and should_cancel():
            raise CancelledError(f"{stage}: cancelled before step {i + 1}/{n}")
        v = guided.velocity(x, t)
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"{stage}: the model produced NaN/Inf at step {i + 1}/{n} (t={t:.4f}); check the "
                             "conditioning and latent inputs, and prefer bfloat16/float32 over float16 weights")
        pred_x0 = _like(x, guided.x0_from_v(x, t, v))
        x = _like(x, _feats(x) - (t - t_prev) * v)
        if on_step is not None:
            on_step(i, n, x, pred_x0)
    assert pred_x0 is not None  # steps >= 1 is validated by SamplerParams
    return SamplerResult(samples=x, pred_x0_last=pred_x0, steps=pairs, calls=calls)
