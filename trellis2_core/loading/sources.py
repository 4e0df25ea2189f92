"""Where pipeline folders, checkpoints and the DINOv3 folder come from (spec §4.1).

A *source* is a local folder, a folder name under a ComfyUI-style models directory (``<models_dir>/trellis2/<name>``)
or a Hugging Face repo id. Hub downloads go through ``huggingface_hub.hf_hub_download`` one named file at a time
(its cache is reused; ``HF_HUB_OFFLINE=1`` or ``offline=True`` restricts it to the cache). Environment variables are
read when a function is called, not at import.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import WeightsError
from .config import PIPELINE_JSON, PipelineConfig

__all__ = [
    "resolve_pipeline_dir", "resolve_model_files", "resolve_model_folder", "hub_download", "is_offline",
    "looks_like_repo_id", "HubMiss",
]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE = {"1", "true", "yes", "on"}


class HubMiss(Exception):
    """A file could not be had from the Hugging Face Hub (internal; turned into WeightsError by callers)."""


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` read now."""
    if offline is not None:
        return offline
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return env is not None and env.strip().lower() in _TRUE


def looks_like_repo_id(name: str) -> bool:
    """``owner/name`` shaped (what the Hub accepts as a repo id)."""
    return bool(_REPO_ID.match(name))


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a failed Hub lookup raises: OSError/ValueError, the hub's own errors (``EntryNotFoundError`` is no
    OSError in huggingface_hub 1.x/2.x) and the HTTP client's (httpx, or httpx2 in huggingface_hub 2.x)."""
    import importlib

    errors: list[type[BaseException]] = [OSError, ValueError]
    for module, names in (("huggingface_hub.errors", ("EntryNotFoundError", "HfHubHTTPError")),
                          ("httpx", ("HTTPError",)), ("httpx2", ("HTTPError",))):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(found, name) for name in names if isinstance(getattr(found, name, None), type)]
    return tuple(errors)


def hub_download(repo_id: str, filename: str, *, offline: bool | None = None) -> Path:
    """Download (or find in the HF cache) one file of ``repo_id``; raises ``HubMiss`` with the reason.

    Raises:
        BackendError: huggingface_hub is missing, too old or broken (with the install command).
    """
    from ..optional import require

    hf_hub_download = require("huggingface_hub", f"getting {repo_id}/{filename} from Hugging Face").hf_hub_download
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    try:
        path = hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=is_offline(offline))
    except _hub_errors() as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
        if type(err).__name__ == "GatedRepoError":
            reason += (f" (gated repo: accept its licence on https://huggingface.co/{repo_id} and log in with "
                       "`hf auth login`)")
        elif is_offline(offline):
            reason += " (offline: only the local Hugging Face cache was searched)"
        raise HubMiss(reason) from err
    return Path(path)


def _dedupe(paths: Iterable[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for p in paths:
        key = str(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _local_pipeline_candidates(source: str, models_dir: str | Path | None) -> list[Path]:
    cands = [Path(source).expanduser()]
    if models_dir is not None:
        md = Path(models_dir).expanduser()
        base = source.rstrip("/").split("/")[-1]
        cands += [md / "trellis2" / source, md / "trellis2" / base, md / source]
    return _dedupe(cands)


def resolve_pipeline_dir(source: str | Path, *, models_dir: str | Path | None = None,
                         offline: bool | None = None) -> Path:
    """The folder holding ``pipeline.json`` (+ ``ckpts/``) for ``source``.

    Tried in order: ``source`` as a path (folder or its ``pipeline.json``); ``<models_dir>/trellis2/<source>``,
    ``<models_dir>/trellis2/<basename>``, ``<models_dir>/<source>``; the name ``demo`` (tiny random weights,
    written to a cache folder on first use: :func:`.random_pipeline.demo_pipeline`); then ``source`` as a Hugging
    Face repo id, in which case ``pipeline.json`` and exactly the checkpoint files it names are downloaded (or taken
    from the cache).
    """
    source_str = str(source)
    looked: list[str] = []
    for cand in _local_pipeline_candidates(source_str, models_dir):
        if cand.is_file() and cand.name == PIPELINE_JSON:
            return cand.parent
        if (cand / PIPELINE_JSON).is_file():
            return cand
        looked.append(f"{cand} ({'folder without ' + PIPELINE_JSON if cand.is_dir() else 'not found'})")
    if source_str == "demo":  # tiny random weights made on first use (no download); see random_pipeline
        from .random_pipeline import demo_pipeline

        return demo_pipeline()
    if looks_like_repo_id(source_str):
        try:
            root = hub_download(source_str, PIPELINE_JSON, offline=offline).parent
        except HubMiss as miss:
            looked.append(f"Hugging Face repo {source_str} ({miss})")
        else:
            config = PipelineConfig.from_pipeline_json(root / PIPELINE_JSON)
            for key in config.models:
                resolve_model_files(root, config.models[key], offline=offline, hub_repo=source_str)
            return root
    where = f"{Path(models_dir) / 'trellis2' / '<name>'}" if models_dir is not None else "a local folder"
    raise WeightsError(
        f"cannot find the TRELLIS.2 pipeline {source_str!r}. Looked in: " + "; ".join(looked) + ". "
        f"Put the pipeline folder ({PIPELINE_JSON} + ckpts/) in {where}, or pass a Hugging Face repo id such as "
        "'microsoft/TRELLIS.2-4B' (needs network access, or its files in the Hugging Face cache when "
        "HF_HUB_OFFLINE=1)."
    )


def _pair(base: Path) -> tuple[Path, Path]:
    return base.parent / f"{base.name}.json", base.parent / f"{base.name}.safetensors"


def resolve_model_files(pipeline_dir: str | Path, ref: str, *, offline: bool | None = None,
                        hub_repo: str | None = None) -> tuple[Path, Path]:
    """``(<name>.json, <name>.safetensors)`` for the pipeline.json model reference ``ref``.

    Local first: ``<pipeline_dir>/<ref>``; for a cross-repo ``owner/repo/sub/name`` also ``<pipeline_dir>/sub/name``
    and ``<pipeline_dir>/ckpts/<name>`` (a self-contained folder works offline). Then the Hub: ``hub_repo``
    (the pipeline's own repo) for ``ref`` itself, and repo ``owner/repo`` for ``sub/name``.
    """
    root = Path(pipeline_dir)
    ref = ref.strip("/")
    parts = ref.split("/")
    cands = [root / ref]
    if len(parts) > 2:
        cands += [root.joinpath(*parts[2:]), root / "ckpts" / parts[-1]]
    looked: list[str] = []
    for base in _dedupe(cands):
        js, st = _pair(base)
        if js.is_file() and st.is_file():
            return js, st
        missing = [p.name for p in (js, st) if not p.is_file()]
        looked.append(f"{base}.{{json,safetensors}} (missing {', '.join(missing)})")
    hub_tries: list[tuple[str, str]] = []
    if hub_repo is not None:
        hub_tries.append((hub_repo, ref))
    if len(parts) > 2 and looks_like_repo_id("/".join(parts[:2])):
        hub_tries.append(("/".join(parts[:2]), "/".join(parts[2:])))
    for repo, sub in hub_tries:
        try:
            js = hub_download(repo, f"{sub}.json", offline=offline)
            st = hub_download(repo, f"{sub}.safetensors", offline=offline)
            return js, st
        except HubMiss as miss:
            looked.append(f"Hugging Face {repo}: {sub}.{{json,safetensors}} ({miss})")
    raise WeightsError(
        f"checkpoint '{ref}' not found. Looked in: " + "; ".join(looked) + ". "
        f"Put {parts[-1]}.json and {parts[-1]}.safetensors in {root / 'ckpts'}"
        + (f", or let them download from Hugging Face ({'/'.join(parts[:2])})" if len(parts) > 2 else "") + "."
    )


def resolve_model_folder(name: str, *, base_dir: str | Path | None = None, models_dir: str | Path | None = None,
                         subfolders: Sequence[str] = (), hub_files: Sequence[str] = ("config.json",),
                         hub_optional: Sequence[str] = (), offline: bool | None = None,
                         is_complete=None) -> Path:
    """A HF-format model folder for ``name`` (e.g. the DINOv3 ``image_cond_model``).

    Tried in order: ``<base_dir>/<name>`` (pipeline-relative), ``name`` as a path, ``<models_dir>/<name>``,
    ``<models_dir>/<sub>/<basename>`` for each of ``subfolders``; then the Hub repo ``name`` (``hub_files`` are
    required, ``hub_optional`` are fetched when present). ``is_complete(folder) -> bool`` decides whether a local
    folder is usable (default: it exists).
    """
    check = is_complete or (lambda p: p.is_dir())
    base = name.rstrip("/").split("/")[-1]
    cands: list[Path] = []
    if base_dir is not None:
        cands.append(Path(base_dir) / name)
    cands.append(Path(name).expanduser())
    if models_dir is not None:
        md = Path(models_dir).expanduser()
        cands.append(md / name)
        cands += [md / sub / base for sub in subfolders]
    looked: list[str] = []
    for cand in _dedupe(cands):
        if check(cand):
            return cand
        looked.append(f"{cand} ({'incomplete' if cand.exists() else 'not found'})")
    if looks_like_repo_id(name):
        try:
            folder = None
            for fname in hub_files:
                folder = hub_download(name, fname, offline=offline).parent
            for fname in hub_optional:
                try:
                    folder = hub_download(name, fname, offline=offline).parent
                except HubMiss:
                    continue
            if folder is not None and check(folder):
                return folder
            looked.append(f"Hugging Face {name} (downloaded files are incomplete)")
        except HubMiss as miss:
            looked.append(f"Hugging Face {name} ({miss})")
    raise WeightsError(
        f"cannot find model {name!r}. Looked in: " + "; ".join(looked) + ". "
        + (f"Put its folder (config.json + model.safetensors) at {Path(models_dir) / name}"
           if models_dir is not None else "Put its folder (config.json + model.safetensors) there")
        + (f", or download it from https://huggingface.co/{name}" if looks_like_repo_id(name) else "") + "."
    )
