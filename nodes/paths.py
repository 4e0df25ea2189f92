"""Output file names: a user's ``filename_prefix`` always lands inside the output folder.

``../x``, ``/abs/x``, ``C:\\x``, ``~/x`` and odd characters are not refused but neutralised: ``..`` and ``.``
components and leading separators are dropped, drive letters and characters that are unsafe in file names on any
OS are replaced. The counter follows ComfyUI's ``<name>_00001_.glb`` convention.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trellis2_core.errors import InputError

__all__ = ["sanitize_prefix", "next_output_path", "OutputPath", "DEFAULT_PREFIX", "filename_prefix_input"]

DEFAULT_PREFIX = "trellis2/mesh"
_UNSAFE = re.compile(r'[\x00-\x1f<>:"|?*\\]')  # control chars and what Windows forbids (\\ handled before)
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_MAX_PART = 120


def filename_prefix_input(default: str) -> tuple[str, dict]:
    """The ``filename_prefix`` widget of every node that writes a file (the rules above, said in its tooltip)."""
    return ("STRING", {"default": default,
                       "tooltip": "File name under ComfyUI's output folder; '/' makes subfolders. '..' and absolute "
                                  "paths are neutralised (files stay inside output/); a counter _00001_ is appended."})


@dataclass(frozen=True)
class OutputPath:
    """Where one file goes: ``folder / name``; ``relative`` is POSIX-style, relative to the output folder."""

    folder: Path
    name: str
    subfolder: str  # '' or 'a/b' (POSIX separators)

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @property
    def relative(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


def _clean_part(part: str) -> str:
    part = _UNSAFE.sub("_", part).strip().rstrip(".")
    part = part.lstrip(".")  # no hidden files, no '..'
    if part.lower().split(".")[0] in _RESERVED:
        part = "_" + part
    return part[:_MAX_PART]


def sanitize_prefix(prefix: str, default: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """``(subfolder, base name)`` of a filename prefix, both safe to join under the output folder."""
    text = str(prefix).replace("\\", "/")
    text = re.sub(r"^[A-Za-z]:", "", text)  # drive letter
    parts = [p for p in text.split("/") if p not in ("", ".", "..", "~")]
    parts = [c for c in (_clean_part(p) for p in parts) if c]
    if not parts:
        parts = [c for c in (_clean_part(p) for p in default.split("/")) if c]
    *dirs, base = parts
    return "/".join(dirs), base


def next_output_path(output_dir: str | os.PathLike, prefix: str, extension: str = "glb") -> OutputPath:
    """The next free ``<output>/<sub>/<name>_NNNNN_.<ext>``; creates the subfolder. Raises if it would escape."""
    root = Path(output_dir).resolve()
    subfolder, base = sanitize_prefix(prefix)
    folder = (root / subfolder).resolve() if subfolder else root
    if os.path.commonpath([str(root), str(folder)]) != str(root):  # e.g. a symlinked subfolder pointing away
        raise InputError(f"filename_prefix {prefix!r} resolves outside the output folder {root}; use a prefix "
                         "without symlinked folders that lead elsewhere")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(base) + r"_(\d+)_\." + re.escape(extension) + "$", re.IGNORECASE)
    used = [int(m.group(1)) for m in (pattern.match(n) for n in os.listdir(folder)) if m]
    counter = max(used, default=0) + 1
    return OutputPath(folder=folder, name=f"{base}_{counter:05d}_.{extension}", subfolder=subfolder)
