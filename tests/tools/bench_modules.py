"""Load a ``benchmarks/<name>.py`` script as the module ``name`` for the tests of that script."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str, *, on_path: bool = False) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` executed as module ``name`` (registered in ``sys.modules`` while the block runs);
    ``on_path`` also puts ``benchmarks/`` on ``sys.path`` meanwhile (for processes it spawns that import it by
    name)."""
    if on_path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        if on_path:
            sys.path.remove(str(BENCHMARKS))
