"""The batch manifest: one entry per input image, written as ``manifest.json`` and ``manifest.csv``.

Each entry records the input, its GLB (file name inside the output folder), the seed, the status (``ok``,
``failed``, ``cancelled``, ``pending``), a one-line error, timings in seconds, the mesh's size, the GLB's byte count
and SHA-256, which worker made it and after how many attempts. Both files are rewritten atomically (temporary file
+ rename) after every image, so an interrupted or killed batch leaves a consistent manifest: every ``ok`` entry has
its complete GLB, and nothing else claims to be done.

A later run over the same output folder skips an image when its entry is ``ok``, the input file is unchanged
(SHA-256), the seed and the output-relevant settings (``settings_key``) are the same, and the GLB is still there
and complete (glTF header, length and byte count as recorded).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import struct
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from ..postprocess.output_file import write_atomically

__all__ = ["MANIFEST_JSON", "MANIFEST_CSV", "STATUSES", "Entry", "Manifest", "file_sha256", "glb_complete",
           "one_line"]

log = logging.getLogger(__name__)

MANIFEST_JSON = "manifest.json"
MANIFEST_CSV = "manifest.csv"
STATUSES = ("ok", "failed", "cancelled", "pending")
_VERSION = 1
_MAX_ERROR = 600  # characters of an error message kept in the manifest
_TIMINGS = ("load", "background", "generate", "export", "total")


@dataclass
class Entry:
    """One input image's record."""

    input: str  # the input's key: its name inside the input folder, or the path as given
    output: str  # GLB file name inside the output folder
    seed: int
    status: str = "pending"
    error: str = ""
    worker: str = ""  # 'local', or the Ray worker that made it ('ray:<n>')
    attempts: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # load, background, generate, export, total
    faces: int = 0
    vertices: int = 0
    bytes: int = 0
    sha256: str = ""  # of the GLB
    input_sha256: str = ""
    settings_key: str = ""
    finished: str = ""  # ISO time when the status was set

    def done(self, status: str, error: str = "") -> None:
        """Set the final status of this attempt (and its time)."""
        self.status, self.error = status, one_line(error)
        self.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Entry":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def one_line(text: str) -> str:
    """``text`` as one line of at most ``_MAX_ERROR`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _MAX_ERROR else flat[:_MAX_ERROR - 1] + "…"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file ('' when it cannot be read)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def glb_complete(path: str | os.PathLike, size: int | None = None) -> bool:
    """Whether ``path`` is a whole binary glTF file: magic, version 2, header length = file size (= ``size``)."""
    try:
        actual = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    if len(head) < 12:
        return False
    magic, version, length = struct.unpack("<4sII", head)
    return magic == b"glTF" and version == 2 and length == actual and (size is None or size == actual)


class Manifest:
    """The entries of one output folder, with the run's settings; :meth:`save` writes JSON and CSV."""

    def __init__(self, folder: Path, settings: dict[str, Any], settings_key: str,
                 input_dir: Path | None = None) -> None:
        self.folder, self.settings, self.settings_key, self.input_dir = folder, settings, settings_key, input_dir
        self.entries: dict[str, Entry] = {}  # by input key, in input order

    # ------------------------------------------------------------------------------------------ reading
    @staticmethod
    def previous(folder: Path) -> dict[str, Entry]:
        """The entries of an earlier run's ``manifest.json`` in ``folder`` ({} when there is none or it is
        unreadable: then every image runs again, which is safe)."""
        path = folder / MANIFEST_JSON
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            items = data["items"]
            return {str(e["input"]): Entry.from_dict(e) for e in items}
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s is unreadable (%s); every image runs again", path, err)
            return {}

    def finished_before(self, old: Entry | None, seed: int, output: str, input_sha: str) -> bool:
        """Whether ``old`` is a finished result of this very request whose GLB is still complete."""
        return (old is not None and old.status == "ok" and old.seed == seed and old.output == output
                and old.settings_key == self.settings_key and bool(input_sha) and old.input_sha256 == input_sha
                and glb_complete(self.folder / output, old.bytes))

    # ------------------------------------------------------------------------------------------ writing
    def add(self, entry: Entry) -> None:
        self.entries[entry.input] = entry

    def keep_history(self, old: Iterable[Entry]) -> None:
        """Keep earlier entries of inputs this run does not have, unless their GLB name is now someone else's."""
        claimed = {e.output for e in self.entries.values()}
        for entry in old:
            if entry.input not in self.entries and entry.output not in claimed:
                self.entries[entry.input] = entry

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for entry in self.entries.values():
            out[entry.status] = out.get(entry.status, 0) + 1
        return out

    def to_json(self) -> str:
        data = {"version": _VERSION, "input_dir": str(self.input_dir) if self.input_dir else None,
                "output_dir": str(self.folder), "settings": self.settings, "settings_key": self.settings_key,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "counts": self.counts(),
                "items": [asdict(e) for e in self.entries.values()]}
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["input", "output", "seed", "status", "error", "worker", "attempts",
                         *(f"{t}_s" for t in _TIMINGS), "faces", "vertices", "bytes", "sha256", "finished"])
        for e in self.entries.values():
            writer.writerow([e.input, e.output if e.status == "ok" else "", e.seed, e.status, e.error, e.worker,
                             e.attempts, *(f"{e.seconds[t]:.3f}" if t in e.seconds else "" for t in _TIMINGS),
                             e.faces, e.vertices, e.bytes, e.sha256, e.finished])
        return buf.getvalue()

    def save(self) -> None:
        """Rewrite ``manifest.json`` then ``manifest.csv``, each atomically.

        Raises:
            InputError: the output folder cannot be written (disk full, permissions).
        """
        for name, text in ((MANIFEST_JSON, self.to_json()), (MANIFEST_CSV, self.to_csv())):
            try:
                write_atomically(self.folder / name, text.encode("utf-8"))
            except InputError as err:
                raise InputError(f"cannot write the batch manifest: {err}") from err
