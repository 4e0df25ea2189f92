"""Compile the fast path in the background, so the first generation of a process does not wait for it.

``FastPathConfig.compile_blocks`` compiles the DiT block with ``torch.compile``. In a new process that costs
~17 s on an H200 with the compile caches on disk and ~40 s without them (``benchmarks/first_run.py``), paid
inside the first generation. :func:`start` moves that work to a background thread:

* it builds a one-block copy of each distinct flow DiT (same class, widths, dtypes and kernels as the real
  model; random weights, ~80 MB each) on the run's device;
* it runs the real sampler (``stages._sample``: CFG pairs inside the guidance interval, single calls outside)
  on dummy tokens: for the sparse flows once with a few hundred tokens and once with ``fused_min_rows`` tokens,
  so every block variant the real stages use is compiled (batch 1 and 2 × plain and fused kernels). Dynamo keeps
  the compiled graphs per code object, so the real models use them;
* meanwhile model calls on other threads run their blocks eagerly (:mod:`..models.background_compile`), with the
  same kernels (fused ops, cuDNN/FlashAttention-4), so the first generation starts at once; the compiled blocks
  take over as soon as the thread is done.

A warm-up runs once per process and (device, fast-path switches, flow configs), in a bounded registry; it does
nothing off CUDA, where blocks are not compiled, and with CUDA graphs on (a capture forbids other threads' work).
Errors in the thread are logged and leave the eager path in place; they never fail a generation.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..config import FastPathConfig
from ..models import background_compile, model_class
from ..models.blocks import FlowDiT
from ..sparse.tensor import SparseTensor
from .sampler import SamplerParams
from .stages import StageHooks, _sample

__all__ = ["FlowSpec", "Warmup", "start", "flow_specs"]

log = logging.getLogger(__name__)

_MAX_WARMUPS = 16
_registry: "OrderedDict[tuple, Warmup]" = OrderedDict()  # keyed, bounded: one warm-up per key and process
_registry_lock = threading.Lock()
_SMALL_TOKENS = 256
# 4 Euler steps, rescaled: t = 1.0, 0.92, 0.78, 0.5 → three CFG pairs (batch 2) inside the interval, one single call
_PARAMS = SamplerParams(steps=4, guidance_strength=3.0, guidance_rescale=0.0, guidance_interval=(0.6, 1.0),
                        rescale_t=3.0)


@dataclasses.dataclass(frozen=True)
class FlowSpec:
    """A flow DiT as its checkpoint json describes it: class name and constructor args (dtype policy applied)."""

    name: str
    args: Mapping[str, Any]

    def block_key(self) -> tuple:
        """What the compiled block depends on: the class and every arg but sizes outside the trunk."""
        skip = {"resolution", "in_channels", "out_channels", "num_blocks"}
        return (self.name, tuple(sorted((k, repr(v)) for k, v in self.args.items() if k not in skip)))


def flow_specs(specs: Iterable[FlowSpec]) -> list[FlowSpec]:
    """The flow DiTs among ``specs``, one per distinct block configuration (dense and sparse kept apart)."""
    out: dict[tuple, FlowSpec] = {}
    for spec in specs:
        try:
            cls = model_class(spec.name)
        except ValueError:
            continue
        if not issubclass(cls, FlowDiT):
            continue
        key = (_is_dense(cls), spec.block_key())
        # prefer a model without concat_cond (a shape flow) when several share a block configuration
        if key not in out or _concat_channels(out[key]) > _concat_channels(spec):
            out[key] = spec
    return list(out.values())


def _is_dense(cls: type) -> bool:
    from ..models.structure_flow import SparseStructureFlowModel
    return issubclass(cls, SparseStructureFlowModel)


def _concat_channels(spec: FlowSpec) -> int:
    return max(0, int(spec.args.get("in_channels", 0)) - int(spec.args.get("out_channels", 0)))


class Warmup:
    """A background compilation: :attr:`done`, :meth:`wait`, :attr:`seconds`, :attr:`error`."""

    def __init__(self, specs: list[FlowSpec], fast: FastPathConfig, device: torch.device, cond_tokens: int) -> None:
        self.specs, self.fast, self.device, self.cond_tokens = specs, fast, device, cond_tokens
        self.seconds: float | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trellis2-compile-warmup", daemon=True)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def start(self) -> "Warmup":
        # mark the compilation in flight before the thread exists, so no model call in between starts its own
        background_compile.begin()
        try:
            self._thread.start()
        except BaseException:
            with background_compile.worker():  # ends the compilation begun above
                pass
            raise
        return self

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            with background_compile.worker(), torch.no_grad():
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                for spec in self.specs:
                    self._warm(spec)
        except BaseException as err:  # never fail a generation: the eager path stays in place
            self.error = err
            log.warning("compiling the fast path in the background failed (%s: %s); the blocks run eagerly until a "
                        "model call compiles them", type(err).__name__, err)
        finally:
            self.seconds = time.perf_counter() - t0
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # the dummies' memory
            self._done.set()
            if self.error is None:
                log.info("fast path compiled in the background in %.1f s", self.seconds)

    def _warm(self, spec: FlowSpec) -> None:
        model = _one_block_model(spec, self.device)
        gen = torch.Generator().manual_seed(0)
        cond = torch.randn((1, self.cond_tokens, int(model.cond_channels)), generator=gen).to(self.device)
        hooks = StageHooks()
        if _is_dense(type(model)):
            r = int(model.resolution)
            noise = torch.randn((1, int(model.in_channels), r, r, r), generator=gen).to(self.device)
            _sample(model, noise, cond, _PARAMS, hooks, "compile warm-up", fast=self.fast)
            return
        res = int(model.resolution)
        concat = _concat_channels(spec)
        for n in (_SMALL_TOKENS, min(self.fast.fused_min_rows, res ** 3)):
            coords = _unique_coords(n, res, gen).to(self.device)
            noise = SparseTensor(torch.randn((n, int(model.in_channels) - concat), generator=gen).to(self.device),
                                 coords)
            extra = {"concat_cond": noise.replace(torch.randn((n, concat), generator=gen).to(self.device))} \
                if concat else None
            _sample(model, noise, cond, _PARAMS, hooks, "compile warm-up", extra=extra, fast=self.fast)


def _unique_coords(n: int, res: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` distinct voxels of a ``res``³ grid as ``[n, 4]`` int32 (batch 0, x, y, z), sorted."""
    flat = torch.randperm(res ** 3, generator=gen)[:n].sort().values
    xyz = torch.stack((flat // (res * res), (flat // res) % res, flat % res), dim=1)
    return torch.cat((torch.zeros((n, 1), dtype=torch.long), xyz), dim=1).int()


def _one_block_model(spec: FlowSpec, device: torch.device) -> nn.Module:
    """``spec``'s model with one block, random weights (N(0, 0.02²); norm scales 1), on ``device``, eval mode."""
    args = dict(spec.args, num_blocks=1)
    with torch.device("meta"):
        model = model_class(spec.name)(**args)
    model = model.to_empty(device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen) * 0.02
        p.data.copy_(noise + 1.0 if name.endswith(("norm.weight", "gamma")) else noise)
    for b in model.buffers():
        b.data.zero_()
    return model.requires_grad_(False).eval()


def start(specs: Iterable[FlowSpec], fast: FastPathConfig | None, device: torch.device | str, *,
          cond_tokens: int = 1029) -> Warmup | None:
    """Start compiling the blocks of ``specs``' flow DiTs in the background (once per process and key); returns the
    warm-up, or None where nothing is compiled (no fast path, not CUDA, compile off or unavailable, CUDA graphs on).
    """
    device = torch.device(device)
    if fast is None or device.type != "cuda" or not fast.compile_blocks or fast.graphs_on(device):
        return None
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    flows = [s for s in flow_specs(specs) if fast.compile_on(device, _trunk_dtype(s))]
    if not flows:
        return None
    key = (str(device), fast, tuple((_is_dense(model_class(s.name)), s.block_key()) for s in flows))
    with _registry_lock:
        if key in _registry:
            return _registry[key]
        warm = Warmup(flows, fast, device, cond_tokens)
        _registry[key] = warm
        while len(_registry) > _MAX_WARMUPS:
            _registry.popitem(last=False)
        log.info("compiling the fast path in the background (first generation of this process); its blocks run "
                 "eagerly meanwhile")
        return warm.start()


def _trunk_dtype(spec: FlowSpec) -> torch.dtype:
    name = spec.args.get("dtype") or ("float16" if spec.args.get("use_fp16") else "float32")
    return getattr(torch, str(name))
