"""What a batch works on: the input images, the GLB name each one gets, and each one's seed.

* Inputs are the image files directly inside a folder (not its subfolders), by extension, hidden files skipped,
  sorted by name; or an explicit list of files. A file with an image extension that turns out not to be an image
  is still an input: it fails alone and its error goes to the manifest.
* Output names derive from the input names: the stem with every character that is not a letter, digit, ``.``,
  ``_`` or ``-`` replaced by ``_`` (no hidden files, no reserved Windows names, at most 120 characters) plus
  ``.glb``. Names that collide (``a.png`` and ``a.jpg``; ``a b.png`` and ``a_b.png``; ``A.png`` and ``a.png`` on a
  case-insensitive disk) all get their extension appended (``a_png.glb``), then ``_2``, ``_3``... in input order.
  The mapping depends only on the set of input names, so a re-run over the same folder gets the same names.
* Seeds: every image gets the base seed (as ``python -m trellis2_core IMAGE`` would), or with ``seed_per_image``
  its own, derived from the base seed and its name (stable when files are added or removed).
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "BatchInput", "find_images", "output_names", "image_seed", "plan_inputs"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_UNSAFE = re.compile(r"[^\w.-]+")  # \w is Unicode-aware: letters of any script stay
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_MAX_STEM = 120
_SEED_LIMIT = 2 ** 63  # derived seeds stay well inside the accepted 0 .. 2**64-1


@dataclass(frozen=True)
class BatchInput:
    """One image of a batch: ``key`` names it in the manifest (its path relative to the input folder, POSIX)."""

    key: str
    path: Path
    output: str  # file name of its GLB inside the output folder
    seed: int


def find_images(folder: str | os.PathLike, label: str = "INPUT_DIR") -> list[Path]:
    """The image files directly in ``folder`` (by extension, hidden files skipped), sorted by name.

    Raises:
        InputError: the folder does not exist, is a file, cannot be read, or holds no image.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise InputError(f"{label} {str(root)!r} does not exist; pass the folder that holds the images")
    if not root.is_dir():
        raise InputError(f"{label} {str(root)!r} is a file, not a folder; for one image run "
                         f"'python -m trellis2_core {root} -o OUT.glb'")
    try:
        names = sorted(os.listdir(root))
    except OSError as err:
        raise InputError(f"cannot list {label} {str(root)!r}: {err.strerror or err}; check its permissions") from err
    found = [root / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS
             and (root / n).is_file()]
    if not found:
        raise InputError(f"{label} {str(root)!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)}; subfolders "
                         "are not searched)")
    return found


def _clean_stem(stem: str) -> str:
    text = unicodedata.normalize("NFC", stem)
    text = _UNSAFE.sub("_", text).strip("._-")
    if text.lower().split(".")[0] in _RESERVED:
        text = "_" + text
    return text[:_MAX_STEM] or "image"


def output_names(paths: Sequence[Path]) -> list[str]:
    """The GLB file name of each path (rules in the module docstring); same order, all distinct."""
    stems = [_clean_stem(p.stem) for p in paths]
    groups: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        groups.setdefault(stem.lower(), []).append(i)
    for members in groups.values():
        if len(members) > 1:
            for i in members:
                ext = _clean_stem(paths[i].suffix.lstrip("."))
                stems[i] = f"{stems[i]}_{ext}"[:_MAX_STEM + 8]
    taken: set[str] = set()
    out = []
    for stem in stems:
        name, k = stem, 1
        while name.lower() in taken:
            k += 1
            name = f"{stem}_{k}"
        taken.add(name.lower())
        out.append(f"{name}.glb")
    return out


def image_seed(base: int, key: str, per_image: bool) -> int:
    """``base``, or with ``per_image`` a seed in 0 .. 2**63-1 derived from ``base`` and the image's ``key``."""
    if not per_image:
        return int(base)
    digest = hashlib.sha256(f"{int(base)}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % _SEED_LIMIT


def plan_inputs(images: str | os.PathLike | Sequence[str | os.PathLike], seed: int, seed_per_image: bool,
                label: str = "INPUT_DIR") -> tuple[Path | None, list[BatchInput]]:
    """``(input folder or None, inputs)`` for a folder or an explicit list of image files."""
    if isinstance(images, (str, os.PathLike)):
        root: Path | None = Path(images).expanduser()
        paths = find_images(root, label)
        keys = [p.name for p in paths]
    else:
        root = None
        paths = [Path(p).expanduser() for p in images]
        if not paths:
            raise InputError(f"{label}: the list of images is empty")
        keys = [str(p) for p in paths]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise InputError(f"{label}: {dup[0]!r} is listed twice; list each image once")
    names = output_names(paths)
    return root, [BatchInput(key=k, path=p, output=n, seed=image_seed(seed, k, seed_per_image))
                  for k, p, n in zip(keys, paths, names)]
