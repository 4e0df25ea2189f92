"""Cooperative cancellation: an ambient cancel poll per run, checkpoints in long loops, hooks on model forwards.

One mechanism serves every stage:

* :func:`cancel_scope` makes a poll (``progress.cancelled``, ``StageHooks.should_cancel``, ComfyUI's interrupt flag)
  active for the code inside the ``with`` block. Scopes nest; the inner code is cancelled when any active poll
  says so. The poll is called at most every ``interval`` seconds (a cheap clock check otherwise) and, once it has
  answered true, the answer sticks.
* :func:`checkpoint` raises :class:`~trellis2_core.errors.CancelledError` when an active poll says so. Long loops
  (UV charts and packing, bake chunks, closest-point batches, the GLB write) call it; with no active scope it costs
  one context-variable read.
* :func:`cancel_on_forward` registers forward pre-hooks that call :func:`checkpoint` on a model's root and on the
  outermost members of its ``ModuleList``/``ModuleDict``/``Sequential`` containers (the transformer / decoder
  blocks), so a model forward that takes seconds stops at the next block without any change to model code. It
  never descends into a block, so blocks compiled with ``torch.compile`` see no hook inside their graph, and it
  stays silent while a CUDA graph is being captured (graph replays run no Python at all; the sampler still polls
  between its steps).

Checkpoints only ever run in the thread (and context) that opened the scope; worker threads (e.g. texture encoding)
do not poll.
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .errors import CancelledError, InputError

__all__ = ["Poll", "cancel_scope", "checkpoint", "cancel_requested", "cancel_on_forward", "hook_points",
           "DEFAULT_INTERVAL"]

Poll = Callable[[], bool]
DEFAULT_INTERVAL = 0.01  # seconds between two calls of one poll


class _Poller:
    """``poll`` called at most every ``interval`` seconds; latched once it answered true."""

    __slots__ = ("poll", "interval", "_last", "_hit")

    def __init__(self, poll: Poll, interval: float) -> None:
        self.poll, self.interval = poll, float(interval)
        self._last = -float("inf")
        self._hit = False

    def __call__(self, force: bool = False) -> bool:
        if self._hit:
            return True
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return False
        self._last = now
        self._hit = bool(self.poll())
        return self._hit


_ACTIVE: contextvars.ContextVar[tuple[_Poller, ...]] = contextvars.ContextVar("trellis2_cancel_polls", default=())


@contextlib.contextmanager
def cancel_scope(poll: Poll | None, *, interval: float | None = None) -> Iterator[None]:
    """Make ``poll`` an active cancellation poll inside the block (``None``: no change; outer polls stay active).

    ``interval``: least seconds between two calls of ``poll`` (default :data:`DEFAULT_INTERVAL`)."""
    if poll is None:
        yield
        return
    if not callable(poll):
        raise InputError(f"a cancel poll must be a function returning True/False, got {type(poll).__name__}")
    token = _ACTIVE.set(_ACTIVE.get() + (_Poller(poll, DEFAULT_INTERVAL if interval is None else interval),))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def cancel_requested() -> bool:
    """Whether any active poll says the run is cancelled (polls are rate-limited, see :func:`cancel_scope`)."""
    return any(p() for p in _ACTIVE.get())


def checkpoint(where: str, *, force: bool = False) -> None:
    """Raise :class:`CancelledError` ("cancelled during <where>") if any active poll says so.

    ``force`` asks every poll now, regardless of its rate limit (stage boundaries use it, so a poll that turns
    true on a stage's progress report is seen before the next stage starts)."""
    polls = _ACTIVE.get()
    if polls and any(p(force) for p in polls):
        raise CancelledError(f"cancelled during {where}")


def _modules_of(obj: Any) -> list[nn.Module]:
    """The ``nn.Module`` of ``obj``: itself, or the modules among its attributes (e.g. a matting wrapper's model)."""
    if obj is None:
        return []
    if isinstance(obj, nn.Module):
        return [obj]
    return [v for v in getattr(obj, "__dict__", {}).values() if isinstance(v, nn.Module)]


def hook_points(root: nn.Module) -> list[nn.Module]:
    """``root`` and the outermost members of its module containers (the repeated blocks), without duplicates.

    Members of nested ``ModuleList``/``ModuleDict`` containers (which have no forward of their own) count as
    blocks; a block itself is never entered."""
    points: list[nn.Module] = [root]
    seen = {id(root)}

    def add_members(container: nn.Module) -> None:
        for block in container.children():
            if isinstance(block, (nn.ModuleList, nn.ModuleDict)):
                add_members(block)  # a list of lists: its members are the blocks
            elif id(block) not in seen:  # a block is never entered: no hook inside compiled graphs
                seen.add(id(block))
                points.append(block)

    stack = [root]
    while stack:
        module = stack.pop()
        for child in module.children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
                add_members(child)
            elif id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return points


@contextlib.contextmanager
def cancel_on_forward(*models: Any, where: str = "a model forward", poll: Poll | None = None) -> Iterator[None]:
    """Inside the block, every forward of the models' roots and blocks first calls :func:`checkpoint`.

    ``models`` are modules or objects holding modules (``None`` is skipped); ``poll`` (optional) is made active for
    the block as by :func:`cancel_scope`. The hooks are removed on exit, also when the block raises.
    """
    cuda = torch.cuda.is_available()

    def hook(_module: nn.Module, _args: tuple) -> None:
        if cuda and torch.cuda.is_current_stream_capturing():
            return  # never raise inside a CUDA-graph capture (replays run no Python; the sampler polls per step)
        checkpoint(where)

    handles = []
    try:
        with cancel_scope(poll):
            for obj in models:
                for module in _modules_of(obj):
                    handles.extend(m.register_forward_pre_hook(hook) for m in hook_points(module))
            yield
    finally:
        for handle in handles:
            handle.remove()
