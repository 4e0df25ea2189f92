"""One copy of every log line: drop records that a library's own handler has already printed.

``huggingface_hub`` attaches a ``StreamHandler`` to its ``huggingface_hub`` logger when it is imported and leaves
``propagate`` on, so each of its warnings (e.g. "Retrying in 1s [Retry 1/5]") is printed by that handler *and*
again by every handler of the root logger (the CLI's ``basicConfig`` one, ComfyUI's console and log handlers).
:class:`PrintedElsewhere` on the root handlers drops the second copy. It is decided per record at emit time, so it
works whatever the import order, and records of loggers without their own handler are untouched.
"""
from __future__ import annotations

import logging

__all__ = ["PrintedElsewhere", "dedupe_root_handlers"]


class PrintedElsewhere(logging.Filter):
    """Rejects a record when a logger between its own and the root has a handler of its own (it printed it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        root = logging.getLogger()
        while logger is not None and logger is not root:
            if logger.handlers:
                return False
            if not logger.propagate:
                return True  # the record never reaches the root anyway
            logger = logger.parent
        return True


def dedupe_root_handlers() -> int:
    """Add :class:`PrintedElsewhere` to every handler of the root logger that lacks it; returns how many got it.

    Idempotent; call it after the root handlers exist (the CLI after ``basicConfig``, a host application such as
    ComfyUI whenever convenient).
    """
    added = 0
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PrintedElsewhere) for f in handler.filters):
            handler.addFilter(PrintedElsewhere())
            added += 1
    return added
