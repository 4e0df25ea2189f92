"""Golden conformance: run the official-code golden cases against this implementation.

``python -m trellis2_core.conformance DIR [--only NAME ...] [--aux]``; see ``runner.py`` for the output format and
``compare.py`` for the comparison rules. Handlers per case kind live in ``cases_*.py``.
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the conformance CLI (imports the runner lazily so ``import trellis2_core.conformance`` stays light)."""
    from .runner import main as _main

    return _main(argv)
