"""VRAM presets: which model weights live on the device, when (performance.md §4.3). The only code that decides
where a model's weights are; the mechanics live in :mod:`.offload`.

* ``high``: every model stays on the device (fastest; ~15 GB of weights for the 4B pipeline at 1024).
* ``medium``: a model's weights are on the device only while a stage uses it; the model expected next is copied
  in from page-locked host memory on a side stream meanwhile, so the copy is hidden behind the current stage.
  The order is learned from the previous uses (``(previous, current) → next``, else ``current → next``), so it
  works the same for :class:`~trellis2_core.pipeline.Pipeline` runs and for ComfyUI nodes called one by one.
* ``low``: weights stay in host memory; while a stage runs, a model's small parts (embedders, heads) are on the
  device and its blocks are streamed one by one, the next block's copy overlapping the current one's compute.
* ``auto``: chosen from the device's free memory (:func:`resolve_preset`).

Models opt in by wrapping their use in :func:`trellis2_core.models.streaming.weights_on_device` (the stage
functions do this for whole models, the DiTs and decoders for their blocks). Outside such a scope a managed
model's weights are on the host; ``models.streaming.execution_device`` tells where it will run.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import InputError
from ..models.streaming import DEVICE_ATTR, STREAM_ATTR
from .offload import BlockStreamer, CopyStream, HostWeights, PendingCopy, stream_units

log = logging.getLogger(__name__)

__all__ = ["VRAM_PRESETS", "resolve_preset", "Residency"]

VRAM_PRESETS = ("auto", "high", "medium", "low")
_GIB = 1 << 30
#: ``auto`` thresholds on free device memory: all models of a 1536 run need ~22 GB (benchmarks/RESULTS.md)
AUTO_HIGH_FREE = 26 * _GIB
AUTO_MEDIUM_FREE = 10 * _GIB
_MAX_LEARNED = 256  # bound of the learned (previous, current) → next table


def resolve_preset(preset: str, device: torch.device | str, free_bytes: int | None = None) -> str:
    """``preset`` itself, or for ``auto``: ``high`` off CUDA (weights are in host memory anyway) or with ≥ 26 GiB
    free, ``medium`` with ≥ 10 GiB, else ``low``. ``free_bytes`` overrides the measured free memory (ComfyUI
    passes what it could free)."""
    if preset not in VRAM_PRESETS:
        raise InputError(f"vram_preset must be one of {', '.join(VRAM_PRESETS)}, got {preset!r}")
    device = torch.device(device)
    if preset != "auto":
        return preset
    if device.type != "cuda":
        return "high"
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else int(free_bytes)
    return "high" if free >= AUTO_HIGH_FREE else "medium" if free >= AUTO_MEDIUM_FREE else "low"


class _Managed:
    """One model under ``medium`` (whole-model copies) or ``low`` (small parts + streamed blocks)."""

    def __init__(self, owner: "Residency", key: str, module: nn.Module) -> None:
        self.owner, self.key, self.module = owner, key, module
        units = stream_units(module) if owner.preset == "low" else []
        self.streamer = BlockStreamer(units, owner.device, owner.copier, pin=owner.pin) if units else None
        self.home = HostWeights(module, pin=owner.pin, exclude=units)
        self.pending: PendingCopy | None = None
        self.depth = 0

    @property
    def nbytes(self) -> int:
        return self.home.nbytes + (self.streamer.nbytes if self.streamer is not None else 0)

    def prefetch(self) -> None:
        if not self.home.attached and self.pending is None:
            self.pending = self.home.fetch(self.owner.device, self.owner.copier)

    def enter(self, module: nn.Module) -> None:
        self.depth += 1
        if self.depth > 1:
            return
        pending, self.pending = self.pending, None
        self.home.attach(pending or self.home.fetch(self.owner.device, self.owner.copier), self.owner.copier)
        self.owner._entered(self.key)  # after our own copy: the next model's copy queues behind it

    def exit(self, module: nn.Module) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.home.detach()
            if self.streamer is not None:
                self.streamer.drop_prefetched()
            if self.owner.device.type == "cuda":
                # hand the stage's cached blocks back: the next model's activations come in other sizes, and the
                # point of these presets is the device's peak footprint (a few per run; costs a sync each)
                torch.cuda.empty_cache()

    def drop_pending(self) -> None:
        if self.pending is not None:
            self.pending.discard()
            self.pending = None

    def release(self) -> None:
        self.drop_pending()
        if self.streamer is not None:
            self.streamer.close()
        self.home.detach()
        self.module.__dict__.pop(STREAM_ATTR, None)
        self.module.__dict__.pop(DEVICE_ATTR, None)


class Residency:
    """Places the models of one pipeline on ``device`` according to a VRAM preset (see the module docstring).

    :meth:`add` takes a model (on any device) under management; the stage functions' ``weights_on_device(model)``
    scopes do the rest. Owned by the model store; holds no global state.
    """

    def __init__(self, device: torch.device | str, preset: str = "high", *, pin: bool = True,
                 free_bytes: int | None = None) -> None:
        self.device = torch.device(device)
        self.preset = resolve_preset(preset, self.device, free_bytes)
        self.pin = bool(pin) and self.device.type == "cuda"
        self.copier = CopyStream(self.device)
        self._managed: dict[str, _Managed] = {}
        self._next: dict[tuple[str | None, str], str] = {}
        self._prev: str | None = None
        self._last: str | None = None

    @property
    def offloads(self) -> bool:
        """Whether models leave the device between uses (``medium``/``low``)."""
        return self.preset in ("medium", "low")

    def add(self, key: str, module: nn.Module) -> nn.Module:
        """Manage ``module`` under ``key``; returns it (under ``high`` moved to the device)."""
        self.remove(key)
        if not self.offloads:
            return module.to(self.device)
        managed = _Managed(self, key, module)
        module.__dict__[STREAM_ATTR] = managed
        module.__dict__[DEVICE_ATTR] = self.device
        self._managed[key] = managed
        log.debug("VRAM %s: %s (%.2f GB) kept in host memory", self.preset, key, managed.nbytes / 1e9)
        return module

    def remove(self, key: str) -> None:
        """Stop managing ``key`` (its weights stay in host memory)."""
        managed = self._managed.pop(key, None)
        if managed is not None:
            managed.release()

    def clear(self) -> None:
        for key in list(self._managed):
            self.remove(key)

    @property
    def host_bytes(self) -> int:
        """Bytes of managed weights kept in host memory."""
        return sum(m.nbytes for m in self._managed.values())

    def _entered(self, key: str) -> None:
        """Learn the order of use and, under ``medium``, prefetch the model expected next (only one at a time)."""
        if self._last is not None and self._last != key:
            if len(self._next) >= _MAX_LEARNED:
                self._next.clear()
            self._next[(self._prev, self._last)] = key
            self._next[(None, self._last)] = key  # first-order fallback for a new predecessor
        if self._last != key:
            self._prev, self._last = self._last, key
        if self.preset != "medium":
            return
        expected = self._next.get((self._prev, self._last)) or self._next.get((None, self._last))
        for other_key, other in self._managed.items():
            if other_key != expected:
                other.drop_pending()  # a stale guess: free it
        if expected is not None and expected in self._managed and expected != key:
            self._managed[expected].prefetch()
