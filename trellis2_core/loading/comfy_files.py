"""Finding the ComfyUI-core files that together form a TRELLIS.2 pipeline (spec comfy-core-weights.md §1, §6, §7.1).

A pipeline needs four files: a diffusion bundle (the four flow DiTs), the shape VAE (structure + shape decoders),
the texture VAE and a DINOv3 ViT-L/16 file. They are looked for in ComfyUI's model folders (``diffusion_models`` /
``unet``, ``vae``, ``clip_vision``, sub-folders included) or in an explicit list of files, and recognised by their
header keys only (:mod:`.comfy_detect`), so any file name works. Each complete diffusion bundle anchors one pipeline,
named ``comfy:<bundle path relative to its folder, without suffix>``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import WeightsError
from . import official
from .comfy_detect import DINO_ROLE, FLOW_ROLES, ComfyFile, classify_file, scan_files

__all__ = ["ComfyFileSet", "FOLDER_KINDS", "NAME_PREFIX", "comfy_folders", "find_file_sets", "list_comfy_pipelines",
           "find_comfy_pipeline", "dino_matches"]

log = logging.getLogger(__name__)

NAME_PREFIX = "comfy:"
#: ComfyUI's folder kinds (folder_paths) → the sub-folders of ``models/`` searched for them
FOLDER_KINDS: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("diffusion_models", "unet"),
    "vae": ("vae",),
    "clip_vision": ("clip_vision",),
}
# what to download when a piece is missing: (what, folder kind, file, repository)
_WANTED = {
    "bundle": ("diffusion bundle (the four TRELLIS.2 flow models)", "diffusion_models",
               "trellis_2_bf16.safetensors (or trellis_2_int8_convrot.safetensors)", "Comfy-Org/TRELLIS.2"),
    "shape_vae": ("shape VAE", "vae", "trellis_2_shape_vae_bf16.safetensors", "Comfy-Org/TRELLIS.2"),
    "texture_vae": ("texture VAE", "vae", "trellis_2_texture_vae_bf16.safetensors", "Comfy-Org/TRELLIS.2"),
    "dino": ("DINOv3 ViT-L/16 image encoder", "clip_vision", "dino_v3_vit_l.safetensors", "Comfy-Org/TRELLIS.2"),
}


@dataclass(frozen=True)
class ComfyFileSet:
    """The four files of one pipeline made of ComfyUI-core files; ``name`` is ``comfy:<bundle>``."""

    name: str
    bundle: ComfyFile
    shape_vae: ComfyFile
    texture_vae: ComfyFile
    dino: ComfyFile

    @property
    def files(self) -> dict[str, Path]:
        """Role → path: 'diffusion_models', 'shape_vae', 'texture_vae', 'clip_vision'."""
        return {"diffusion_models": self.bundle.path, "shape_vae": self.shape_vae.path,
                "texture_vae": self.texture_vae.path, "clip_vision": self.dino.path}


def comfy_folders(models_dir: str | Path) -> dict[str, list[Path]]:
    """ComfyUI's default search folders under ``models_dir`` for the kinds TRELLIS.2 files live in."""
    root = Path(models_dir)
    return {kind: [root / sub for sub in subs] for kind, subs in FOLDER_KINDS.items()}


def dino_matches(file: ComfyFile, dino_config: Mapping[str, Any]) -> bool:
    """Whether a DINOv3 file has the hidden size, depth and patch size of ``dino_config``."""
    want = (int(dino_config["hidden_size"]), int(dino_config["num_hidden_layers"]), int(dino_config["patch_size"]))
    return file.dino_shape == want


def _bundle_name(path: Path, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return NAME_PREFIX + rel.with_suffix("").as_posix()
    return NAME_PREFIX + path.stem


def _missing(piece: str, searched: Mapping[str, Sequence[Path]] | None, extra: str = "") -> str:
    what, kind, filename, repo = _WANTED[piece]
    where = ", ".join(str(p) for p in (searched or {}).get(kind, [])) or f"the given files (ComfyUI folder '{kind}')"
    return f"no {what} found in {where}{extra}: download {filename} from {repo} into models/{kind}"


def _pick(candidates: list[ComfyFile], what: str) -> ComfyFile:
    if len(candidates) > 1:
        log.info("%d %s files found (%s); using %s", len(candidates), what,
                 ", ".join(str(c.path) for c in candidates), candidates[0].path)
    return candidates[0]


def find_file_sets(files: Sequence[ComfyFile], *, searched: Mapping[str, Sequence[Path]] | None = None,
                   dino_config: Mapping[str, Any] | None = None) -> tuple[list[ComfyFileSet], list[str]]:
    """Group classified files into pipelines: one per complete diffusion bundle, sharing the VAEs and DINOv3.

    Returns (the complete sets, sorted by name; sentences saying what is missing or unusable). ``searched`` maps
    folder kinds to the folders looked in (for the messages); ``dino_config`` (default ViT-L/16) decides which
    DINOv3 files fit. When several files fit a VAE or DINOv3 role the first by path is used (DINOv3 files without
    the Pixal3D-only NAF upsampler first).
    """
    dino_config = dino_config or official.DINOV3_FULL
    notes: list[str] = []
    bundles = [f for f in files if f.kind == "diffusion bundle"]
    for f in files:
        if not f.usable and f.kind != "unknown":
            notes.append(f"{f.path}: {f.kind} is not usable for TRELLIS.2 ({f.note})")
        elif f.kind in ("texture-only bundle", "partial diffusion bundle"):
            notes.append(f"{f.path}: {f.kind} ({f.note}); a TRELLIS.2 pipeline needs all of {', '.join(FLOW_ROLES)}")
    shape_vaes = [f for f in files if {"struct_dec", "shape_dec"} <= set(f.roles)]
    texture_vaes = [f for f in files if "txt_dec" in f.roles]
    dinos_any = [f for f in files if DINO_ROLE in f.roles]
    dinos = sorted((f for f in dinos_any if dino_matches(f, dino_config)), key=lambda f: (f.has_naf, str(f.path)))
    if not bundles:
        notes.append(_missing("bundle", searched))
    if not shape_vaes:
        notes.append(_missing("shape_vae", searched))
    if not texture_vaes:
        notes.append(_missing("texture_vae", searched))
    if not dinos:
        others = [f"{f.path.name} ({f.note})" for f in dinos_any]
        notes.append(_missing("dino", searched, f" (other DINOv3 sizes found: {', '.join(others)})" if others else ""))
    if not (bundles and shape_vaes and texture_vaes and dinos):
        return [], notes
    shape_vae = _pick(shape_vaes, "shape VAE")
    texture_vae = _pick(texture_vaes, "texture VAE")
    dino = _pick(dinos, "DINOv3")
    roots = list((searched or {}).get("diffusion_models", []))
    sets = [ComfyFileSet(_bundle_name(b.path, roots), b, shape_vae, texture_vae, dino) for b in bundles]
    seen: dict[str, int] = {}
    for i, s in enumerate(sets):  # two roots holding the same relative name: keep both, tell them apart
        if s.name in seen:
            sets[i] = ComfyFileSet(f"{s.name} ({s.bundle.path.parent})", s.bundle, shape_vae, texture_vae, dino)
        seen[s.name] = i
    return sorted(sets, key=lambda s: s.name), notes


def _scan(source: str | Path | Sequence[str | Path] | None,
          folders: Mapping[str, Sequence[str | Path]] | None) -> tuple[list[ComfyFile], dict[str, list[Path]]]:
    if folders is not None:
        searched = {kind: [Path(p) for p in paths] for kind, paths in folders.items()}
        paths = [p for ps in searched.values() for p in ps]
    elif isinstance(source, (str, Path)) and Path(source).is_file():
        return [classify_file(source)], {}
    elif isinstance(source, (str, Path)):  # a models folder; folders that do not exist are simply empty
        searched = comfy_folders(source)
        paths = [p for ps in searched.values() for p in ps]
    elif source is not None:
        searched, paths = {}, [Path(p) for p in source]
    else:
        raise ValueError("give a ComfyUI models folder, a list of files, or folders={kind: [paths]}")
    files, problems = scan_files(paths)
    for problem in problems:
        log.warning("skipped: %s", problem)
    return files, searched


def list_comfy_pipelines(models_dir: str | Path | None = None, *,
                         folders: Mapping[str, Sequence[str | Path]] | None = None,
                         dino_config: Mapping[str, Any] | None = None) -> list[ComfyFileSet]:
    """The pipelines that ComfyUI-core TRELLIS.2 files in a models folder form (possibly none), sorted by name.

    Either ``models_dir`` (ComfyUI's ``models/``: its ``diffusion_models``, ``unet``, ``vae`` and ``clip_vision``
    sub-folders are searched) or ``folders`` (kind → folders, e.g. from ComfyUI's
    ``folder_paths.get_folder_paths(kind)`` for 'diffusion_models', 'vae', 'clip_vision').
    """
    files, searched = _scan(models_dir, folders)
    sets, notes = find_file_sets(files, searched=searched, dino_config=dino_config)
    for note in notes if sets else ():
        log.debug("%s", note)
    return sets


def find_comfy_pipeline(source: str | Path | Sequence[str | Path] | None = None, *, name: str | None = None,
                        folders: Mapping[str, Sequence[str | Path]] | None = None,
                        dino_config: Mapping[str, Any] | None = None) -> ComfyFileSet:
    """The file set of one pipeline, or a ``WeightsError`` saying exactly what is missing.

    ``source`` is a ComfyUI models folder or a list of files/folders (or use ``folders`` as in
    :func:`list_comfy_pipelines`). ``name`` (``comfy:<bundle>``, or the bundle's file name/stem) chooses among
    several diffusion bundles; without it there must be exactly one.
    """
    files, searched = _scan(source, folders)
    sets, notes = find_file_sets(files, searched=searched, dino_config=dino_config)
    if not sets:
        raise WeightsError("ComfyUI-core TRELLIS.2 files incomplete: " + "; ".join(notes))
    if name is not None:
        wanted = name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else name
        hits = [s for s in sets if s.name == NAME_PREFIX + wanted or s.bundle.path.name == wanted
                or s.bundle.path.stem == wanted or str(s.bundle.path) == wanted]
        if len(hits) != 1:
            raise WeightsError(f"no{' single' if hits else ''} ComfyUI-core TRELLIS.2 pipeline named {name!r}; "
                               f"found: {', '.join(s.name for s in sets)}")
        return hits[0]
    if len(sets) > 1:
        raise WeightsError(f"several diffusion bundles found ({', '.join(s.name for s in sets)}); choose one by name")
    return sets[0]
