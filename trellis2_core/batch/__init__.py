"""Batches: many images → many GLBs with the models loaded once (``python -m trellis2_core batch``).

:func:`run_batch` is the entry point; :mod:`.inputs` (which images, their GLB names and seeds), :mod:`.manifest`
(``manifest.json`` / ``manifest.csv``, resuming), :mod:`.worker` (one pipeline, many images) and :mod:`.ray_pool`
(``workers='ray'``: one Ray actor per GPU) hold the parts. Importing this package loads no model and no Ray.
"""
from __future__ import annotations

from .run import BatchProgress, BatchResult, run_batch

__all__ = ["run_batch", "BatchResult", "BatchProgress"]
