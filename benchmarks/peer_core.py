"""Import ComfyUI core's native TRELLIS.2 modules (0.33.0) into this process, for ``bench_peer.py``.

Core's code is never part of this repository: it is read from a ComfyUI folder (``.peer/ComfyUI`` made by
``peer_bundle.py``, or a full checkout via ``--comfy-dir`` / ``$COMFYUI_DIR``). Core's ``comfy.cli_args`` parses
``sys.argv`` only when asked to; on CPU it is asked with ``--cpu`` alone (so core's device is the CPU), on CUDA it
keeps its defaults. ``comfy_extras/nodes_mesh_postprocess.py`` (core's mesh post-processing node module) imports
the ComfyUI server and node API at module level; the bench only calls the module-level helpers its nodes call, so
those three imports are replaced by inert placeholders before it is loaded (its node classes are defined but never
used).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / ".peer" / "ComfyUI"


@dataclasses.dataclass
class Core:
    root: Path
    model: types.ModuleType  # comfy.ldm.trellis2.model
    vae: types.ModuleType  # comfy.ldm.trellis2.vae
    ops: types.ModuleType  # comfy.ops
    post: types.ModuleType | None  # comfy_extras.nodes_mesh_postprocess (helpers)
    qem: types.ModuleType | None  # comfy_extras.mesh3d.postprocess.qem_decimate


def comfy_dir(explicit: str | None) -> Path:
    """The ComfyUI folder to import core from: ``explicit``, else ``$COMFYUI_DIR``, else ``.peer/ComfyUI``."""
    path = Path(explicit or os.environ.get("COMFYUI_DIR") or DEFAULT_DIR)
    if not (path / "comfy" / "ldm" / "trellis2" / "model.py").is_file():
        raise SystemExit(f"no ComfyUI 0.33.0 source at {path}: run `python benchmarks/peer_bundle.py` or pass "
                         f"--comfy-dir PATH (a ComfyUI checkout)")
    return path


class _Namespace:
    """``IO.X`` / ``Types.X``: a fresh empty class for every name (node base classes, annotations)."""

    def __getattr__(self, name: str) -> type:
        return type(name, (), {})


def _placeholders() -> None:
    """Inert stand-ins for the server / node-API imports of core's post-processing node module."""
    if "server" not in sys.modules:
        server = types.ModuleType("server")
        server.PromptServer = type("PromptServer", (), {"instance": None})
        sys.modules["server"] = server
    if "comfy_api.latest" not in sys.modules:
        pkg = sys.modules.get("comfy_api") or types.ModuleType("comfy_api")
        pkg.__path__ = []
        latest = types.ModuleType("comfy_api.latest")
        latest.ComfyExtension = type("ComfyExtension", (), {})
        latest.IO = _Namespace()
        latest.Types = _Namespace()
        sys.modules["comfy_api"] = pkg
        sys.modules["comfy_api.latest"] = latest
    if "comfy_extras.nodes_save_3d" not in sys.modules:
        save3d = types.ModuleType("comfy_extras.nodes_save_3d")

        def _unused(*_a, **_k):
            raise RuntimeError("core's mesh batch helpers are not used by bench_peer")

        save3d.get_mesh_batch_item = save3d.pack_variable_mesh_batch = _unused
        sys.modules["comfy_extras.nodes_save_3d"] = save3d


def load_core(root: Path, device: str, post: bool = True) -> Core:
    """Import core's TRELLIS.2 model/VAE modules (and, with ``post``, its mesh post-processing helpers)."""
    root = root.resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    argv = sys.argv
    try:
        if device == "cpu":
            sys.argv = [argv[0], "--cpu"]
            import comfy.options

            comfy.options.enable_args_parsing()
        else:
            sys.argv = [argv[0]]
        model = importlib.import_module("comfy.ldm.trellis2.model")
        vae = importlib.import_module("comfy.ldm.trellis2.vae")
        ops = importlib.import_module("comfy.ops")
        post_mod = qem = None
        if post:
            _placeholders()
            post_mod = importlib.import_module("comfy_extras.nodes_mesh_postprocess")
            qem = importlib.import_module("comfy_extras.mesh3d.postprocess.qem_decimate")
    finally:
        sys.argv = argv
    return Core(root, model, vae, ops, post_mod, qem)
