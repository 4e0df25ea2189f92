"""Imports of the packages a feature needs, turned into one BackendError when they are missing, too old or broken.

The error names the package, the version installed (or 'not installed'), the versions this pack needs (the bounds
of requirements.txt) and the pip command that fixes it, e.g.::

    DINOv3 conditioning needs transformers >=4.56,<6, but transformers 4.40.0 is installed: run
    pip install 'transformers>=4.56,<6' (inside ComfyUI: with ComfyUI's Python, then restart ComfyUI)
"""
from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from types import ModuleType

from .dependencies import installed_version, version_tuple
from .errors import BackendError

__all__ = ["Requirement", "REQUIREMENTS", "require", "check_installed"]

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # distributions already warned about (one warning per process)


@dataclass(frozen=True)
class Requirement:
    """An importable package with the version bounds of requirements.txt."""

    dist: str  # distribution name (pip)
    module: str  # import name
    minimum: tuple[int, ...]
    below: tuple[int, ...] | None = None  # first version not supported (exclusive upper bound)

    @property
    def spec(self) -> str:
        """The pip specifier, e.g. ``transformers>=4.56,<6``."""
        text = f"{self.dist}>={'.'.join(map(str, self.minimum))}"
        return text + (f",<{'.'.join(map(str, self.below))}" if self.below else "")

    def fix(self) -> str:
        """The install command, with the ComfyUI caveat."""
        return (f"run {sys.executable} -m pip install '{self.spec}' (inside ComfyUI: with ComfyUI's Python, then "
                "restart ComfyUI)")


#: the optional-at-import packages of requirements.txt (and requirements-ray.txt), by import name
REQUIREMENTS: dict[str, Requirement] = {
    "transformers": Requirement("transformers", "transformers", (4, 56), (6,)),
    "huggingface_hub": Requirement("huggingface_hub", "huggingface_hub", (0, 24)),
    "trimesh": Requirement("trimesh", "trimesh", (4, 5), (6,)),
    "fast_simplification": Requirement("fast-simplification", "fast_simplification", (0, 1, 7)),
    "safetensors": Requirement("safetensors", "safetensors", (0, 4, 3)),
    # optional: requirements-ray.txt, for `python -m trellis2_core batch --workers ray`
    "ray": Requirement("ray", "ray", (2, 40), (3,)),
}


def _version_problem(req: Requirement, version: str | None) -> str | None:
    """Why ``version`` cannot serve (too old), or None; a newer-than-tested version only logs a warning."""
    if version is None:
        return None  # no metadata (vendored or built from source): trust the import
    found = version_tuple(version)
    if found and found < req.minimum:
        return f"{req.dist} {version} is installed, which is too old"
    if req.below is not None and found and found >= req.below and req.dist not in _WARNED:
        _WARNED.add(req.dist)
        log.warning("%s %s is newer than the versions this pack is tested with (%s); if something fails, install "
                    "'%s'", req.dist, version, req.spec, req.spec)
    return None


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a key of :data:`REQUIREMENTS`) for ``purpose``; BackendError when it cannot serve.

    Raises:
        BackendError: not installed, older than supported, or failing to import (a broken install:
            the original error is chained and quoted).
    """
    req = REQUIREMENTS[module]
    version = installed_version(req.dist)
    problem = _version_problem(req, version)
    if problem is not None:
        raise BackendError(f"{purpose} needs {req.spec}, but {problem}: {req.fix()}")
    try:
        return importlib.import_module(req.module)
    except ImportError as err:
        state = "is not installed" if version is None else f"{version} is installed but fails to import ({err})"
        raise BackendError(f"{purpose} needs {req.spec}, but {req.dist} {state}: {req.fix()}") from err
    except Exception as err:  # a broken install raises anything at import; the message quotes it
        raise BackendError(f"{purpose} needs {req.spec}; {req.dist} {version or '(unknown version)'} is installed "
                           f"but importing it fails with {type(err).__name__}: {err}. Reinstall it: "
                           f"{req.fix()}") from err


def check_installed(modules: tuple[str, ...], purpose: str) -> None:
    """:func:`require` each of ``modules`` (before long work starts, so a missing package fails first)."""
    for module in modules:
        require(module, purpose)
