"""Moving weights between host memory and the device: whole modules and block-by-block streams.

:class:`HostWeights` is the host home of one module's parameters and buffers (page-locked when the device is CUDA,
so copies run at full PCIe speed and asynchronously; performance.md §4.3 measured 55 GB/s pinned vs 7.3 GB/s
pageable). Copies to the device are started on a side stream (:class:`CopyStream`) and the compute stream waits
for them only when the weights are needed, so a prefetch overlaps the current work. Leaving the device is free:
the module's tensors are pointed back at their host copies and the device copies are released (the caching
allocator reuses them once the compute stream is done with them).

:class:`BlockStreamer` keeps a model's large units (DiT blocks, decoder blocks) on the host and brings each one in
just before it runs (see :mod:`trellis2_core.models.streaming`), prefetching the next one.

Only :mod:`trellis2_core.loading.residency` uses this module.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..models.streaming import STREAM_ATTR

log = logging.getLogger(__name__)

__all__ = ["HostWeights", "CopyStream", "PendingCopy", "BlockStreamer", "stream_units"]


class CopyStream:
    """A side CUDA stream for host→device copies (None of it off CUDA: copies are then plain and synchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def compute_stream(self):
        return torch.cuda.current_stream(self.device) if self.stream is not None else None


@dataclass
class PendingCopy:
    """A device copy of a module's flat weight buffer, possibly still in flight on the copy stream.

    The buffer belongs to the compute stream's memory pool. Once attached, the compute stream has waited for the
    copy, so freeing it is ordinary stream-ordered reuse. A copy dropped without being attached must be
    :meth:`discard`-ed: its memory may only be reused after the copy has landed.
    """

    flat: Tensor  # uint8 [nbytes] on the device
    event: object | None  # torch.cuda.Event recorded on the copy stream after the copy
    stream: object | None = None  # the copy stream

    def discard(self) -> None:
        """Release a copy that was never attached (a stale prefetch): the allocator reuses the memory only after
        the copy stream has passed this point, so compute never writes where a copy is still landing."""
        if self.stream is not None:
            self.flat.record_stream(self.stream)
        self.flat = None


def _slots(module: nn.Module, skip: frozenset[int]) -> list[tuple[nn.Module, str, bool]]:
    """(owner, name, is_parameter) of every parameter and buffer under ``module``, skipping the subtrees in
    ``skip`` (ids of modules that have a home of their own)."""
    out: list[tuple[nn.Module, str, bool]] = []
    stack = [module]
    seen: set[int] = set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out += [(m, n, True) for n, p in m._parameters.items() if p is not None]
        out += [(m, n, False) for n, b in m._buffers.items() if b is not None]
        stack += [c for c in reversed(list(m._modules.values())) if c is not None and id(c) not in skip]
    return out


def _get(owner: nn.Module, name: str, is_param: bool) -> Tensor:
    return owner._parameters[name] if is_param else owner._buffers[name]


def _set(owner: nn.Module, name: str, is_param: bool, value: Tensor) -> None:
    if is_param:
        owner._parameters[name].data = value
    else:
        owner._buffers[name] = value


_ALIGN = 256  # bytes; every tensor view starts aligned (any dtype, vectorised copies)


class HostWeights:
    """The host home of ``module``'s parameters and buffers (minus the subtrees in ``exclude``).

    All tensors are packed into one flat host buffer (page-locked if ``pin``), so a move to the device is one copy
    and one allocation; the module's tensors become views into it, which frees any device copies they had.
    :meth:`fetch` starts a device copy, :meth:`attach` makes the module use views of it, :meth:`detach` returns the
    module to the host views. Parameter objects keep their identity throughout (only ``.data`` changes), so
    compiled graphs and state-dict keys are unaffected.
    """

    def __init__(self, module: nn.Module, *, pin: bool, exclude: Iterable[nn.Module] = ()) -> None:
        self.module = module
        by_tensor: dict[int, int] = {}  # tied weights share one slot
        self._slots: list[tuple[nn.Module, str, bool, int]] = []
        sources: list[Tensor] = []
        for owner, name, is_param in _slots(module, frozenset(id(m) for m in exclude)):
            t = _get(owner, name, is_param).detach()
            key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if key not in by_tensor or t.data_ptr() == 0:
                by_tensor[key] = len(sources)
                sources.append(t)
            self._slots.append((owner, name, is_param, by_tensor[key]))
        self._layout: list[tuple[int, int, torch.dtype, torch.Size]] = []  # byte offset, bytes, dtype, shape
        offset = 0
        for t in sources:
            nbytes = t.numel() * t.element_size()
            self._layout.append((offset, nbytes, t.dtype, t.shape))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        self.flat = _host_buffer(offset, pin)
        self.host = self._views(self.flat)
        for view, t in zip(self.host, sources):
            view.copy_(t)
        self.attached = False
        self.detach()

    @property
    def nbytes(self) -> int:
        return int(self.flat.numel())

    def _views(self, flat: Tensor) -> list[Tensor]:
        return [flat[offset:offset + n].view(dtype).view(shape) for offset, n, dtype, shape in self._layout]

    def fetch(self, device: torch.device, copier: CopyStream) -> PendingCopy:
        """Start copying the host buffer to ``device`` (on the copy stream on CUDA)."""
        if copier.stream is None:
            return PendingCopy(self.flat.to(device, copy=True), None)
        # Allocate on the compute stream (its memory pool is the one activations use, so freed weights are reused
        # by activations and vice versa); the copy stream first waits for the compute work queued so far, since
        # the block may be memory that queued work still reads. No record_stream here: the compute stream waits
        # for the copy before any use (attach), so the buffer's life is ordered on the compute stream alone. A
        # record_stream would defer every free until the copy stream caught up, and with the host running ahead
        # of the device those deferred blocks piled up as reserved-but-unusable memory (RESULTS.md, run D:
        # 2.9 GB of tensors in 6.1 GB of segments under 'low'). Unattached copies use PendingCopy.discard.
        compute = copier.compute_stream()
        flat = torch.empty(self.flat.shape, dtype=self.flat.dtype, device=device)
        copier.stream.wait_stream(compute)
        with torch.cuda.stream(copier.stream):
            flat.copy_(self.flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record(copier.stream)
        return PendingCopy(flat, event, copier.stream)

    def attach(self, pending: PendingCopy, copier: CopyStream) -> None:
        """Point the module at views of a device copy from :meth:`fetch` (the compute stream waits for it)."""
        compute = copier.compute_stream()
        if pending.event is not None and compute is not None:
            compute.wait_event(pending.event)
        views = self._views(pending.flat)
        for owner, name, is_param, i in self._slots:
            _set(owner, name, is_param, views[i])
        self.attached = True

    def detach(self) -> None:
        """Point the module back at the host views (the device copy is released)."""
        for owner, name, is_param, i in self._slots:
            _set(owner, name, is_param, self.host[i])
        self.attached = False


def _host_buffer(nbytes: int, pin: bool) -> Tensor:
    pin = pin and torch.cuda.is_available()
    try:
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cpu", pin_memory=pin)
    except RuntimeError as err:  # pinning can fail when the OS refuses to lock that much memory
        log.warning("could not page-lock %.1f MB of weights (%s); using pageable memory (slower copies)",
                    nbytes / 1e6, err)
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cpu")


def stream_units(module: nn.Module) -> list[nn.Module]:
    """The units a model streams: the leaf elements of its ``blocks`` ModuleList (nested lists flattened), in
    execution order. Empty for models without ``blocks`` (they move whole)."""
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        return []
    out: list[nn.Module] = []
    stack: list[nn.Module] = list(reversed(list(blocks)))
    while stack:
        m = stack.pop()
        if isinstance(m, nn.ModuleList):
            stack += list(reversed(list(m)))
        else:
            out.append(m)
    return out


class BlockStreamer:
    """Streams ``units`` of one model: weights live on the host, each unit is copied in when entered and dropped
    when left; entering unit i starts the copy of unit i+1 (wrapping to the first unit, for the next forward).

    At most two units are on the device at once (the running one and the prefetched one). Entries nest: a unit
    entered twice (a block's sub-module used from two places) is copied once.
    """

    def __init__(self, units: Sequence[nn.Module], device: torch.device, copier: CopyStream, *, pin: bool) -> None:
        self.units = list(units)
        self.device = torch.device(device)
        self.copier = copier
        self.homes = [HostWeights(u, pin=pin) for u in self.units]
        self._index = {id(u): i for i, u in enumerate(self.units)}
        self._depth = [0] * len(self.units)
        self._pending: dict[int, PendingCopy] = {}
        for u in self.units:
            u.__dict__[STREAM_ATTR] = self

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in self.homes)

    def enter(self, unit: nn.Module) -> None:
        i = self._index[id(unit)]
        self._depth[i] += 1
        if self._depth[i] > 1:
            return
        pending = self._pending.pop(i, None) or self.homes[i].fetch(self.device, self.copier)
        self.homes[i].attach(pending, self.copier)
        nxt = (i + 1) % len(self.units)
        if nxt != i and not self.homes[nxt].attached and nxt not in self._pending:
            self._pending[nxt] = self.homes[nxt].fetch(self.device, self.copier)

    def exit(self, unit: nn.Module) -> None:
        i = self._index[id(unit)]
        self._depth[i] -= 1
        if self._depth[i] == 0:
            self.homes[i].detach()

    def drop_prefetched(self) -> None:
        """Free the copy made ahead for the next use (at the end of a stage)."""
        for pending in self._pending.values():
            pending.discard()
        self._pending.clear()

    def close(self) -> None:
        """Drop prefetched copies and detach the units from this streamer (their weights stay on the host)."""
        self.drop_prefetched()
        for u, home in zip(self.units, self.homes):
            if home.attached:
                home.detach()
            u.__dict__.pop(STREAM_ATTR, None)
