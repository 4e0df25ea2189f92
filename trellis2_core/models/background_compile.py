"""Whether the compiled DiT blocks are being prepared in the background in this process.

``torch.compile`` keeps its compiled graphs per Python code object, shared by every model and thread of the process.
While :mod:`trellis2_core.pipeline.warmup` compiles them in a background thread (a new process's first
generation), a model call on another thread that used the compiled block would start a second, competing
compilation of the same graphs in the foreground. :func:`running` tells :meth:`FlowDiT.run_trunk` to run the block
eagerly (same kernels, same numbers up to rounding) until the background work is done; the compiled graphs are
then ready and later calls use them.

The state is a counter of the warm-ups in flight, under a lock: one integer, not a cache.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

__all__ = ["running", "eager_here", "begin", "worker"]

_lock = threading.Lock()
_in_flight = 0
_thread = threading.local()  # .worker: this thread is a background compiler


def running() -> bool:
    """Whether a background compilation of the DiT blocks is in flight in this process."""
    return _in_flight > 0


def eager_here() -> bool:
    """Whether a model call on this thread should skip the compiled block now: another thread is compiling it."""
    return _in_flight > 0 and not getattr(_thread, "worker", False)


def begin() -> None:
    """Count one background compilation as in flight (called before its thread starts, so that no model call in
    between starts a compilation of its own); the thread ends it by leaving :func:`worker`."""
    global _in_flight
    with _lock:
        _in_flight += 1


@contextlib.contextmanager
def worker() -> Iterator[None]:
    """The body of a background compilation begun with :func:`begin`: model calls of this thread use (and so
    compile) the compiled block, those of other threads run eagerly; leaving it ends the compilation."""
    global _in_flight
    _thread.worker = True
    try:
        yield
    finally:
        _thread.worker = False
        with _lock:
            _in_flight -= 1
