"""The hook through which a model lets its weights be streamed block by block (the ``low`` VRAM preset).

Models wrap every use of a large sub-module (a DiT block, a decoder block) in :func:`weights_on_device`. For an
ordinary module this does nothing. When :mod:`trellis2_core.loading.residency` streams a model, it attaches a
streamer to each such unit; the streamer copies the unit's weights to the device on entry (prefetching the next
unit on a side stream) and returns them to host memory on exit. Models never move weights themselves.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Protocol

import torch
from torch import nn

__all__ = ["WeightStream", "weights_on_device", "execution_device", "is_offloaded", "trim_cached_memory",
           "STREAM_ATTR", "DEVICE_ATTR"]

STREAM_ATTR = "_trellis2_weight_stream"
DEVICE_ATTR = "_trellis2_execution_device"


class WeightStream(Protocol):
    """What residency attaches to a streamed unit."""

    def enter(self, unit: nn.Module) -> None: ...

    def exit(self, unit: nn.Module) -> None: ...


@contextlib.contextmanager
def weights_on_device(unit: nn.Module) -> Iterator[None]:
    """Keep ``unit``'s weights on its execution device for the body (a no-op unless the unit is streamed)."""
    stream: WeightStream | None = unit.__dict__.get(STREAM_ATTR)
    if stream is None:
        yield
        return
    stream.enter(unit)
    try:
        yield
    finally:
        stream.exit(unit)


def is_offloaded(model: nn.Module) -> bool:
    """Whether a VRAM preset keeps ``model``'s weights off the device between uses (``medium``/``low``)."""
    return STREAM_ATTR in model.__dict__


def trim_cached_memory(model: nn.Module) -> None:
    """Where a model's activations change size (a decoder's next level), hand the CUDA allocator's cached blocks
    back if a VRAM preset offloads the model: blocks cached at one level's sizes rarely fit the next level's, and
    under ``medium``/``low`` the device's peak footprint is the point (costs one device sync)."""
    if is_offloaded(model) and execution_device(model).type == "cuda":
        torch.cuda.empty_cache()


def execution_device(model: nn.Module) -> torch.device:
    """The device ``model`` runs on: the one residency assigned it if managed (its weights may be on the host
    between uses), else the device of its first tensor."""
    dev = model.__dict__.get(DEVICE_ATTR)
    if dev is not None:
        return dev
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
