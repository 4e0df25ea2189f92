"""Start a real ComfyUI (from ``$COMFYUI_DIR``) on a throw-away base directory holding this pack and test models.

Nothing inside ``$COMFYUI_DIR`` is changed: ``--base-directory`` points ComfyUI's ``custom_nodes/``, ``models/``,
``input/``, ``output/`` and ``user/`` at a temporary folder where the pack is symlinked, the tiny golden pipeline
sits in ``models/trellis2/TRELLIS.2-4B`` (the name the shipped workflows use), a tiny stand-in matting model in
``models/rembg/BiRefNet``, a tiny random SDXL-format checkpoint in ``models/checkpoints/``, an asset image as
``input/example.png`` and a small UV-mapped GLB as ``input/3d/mesh.glb`` (the texturing workflow's mesh). ComfyUI
runs with its own Python (``$COMFYUI_PYTHON``, else a venv next to or inside ``$COMFYUI_DIR``); only the process
started here is stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

__all__ = ["ComfyServer", "comfy_python", "tiny_sdxl"]

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CACHE = Path(os.environ.get("TRELLIS2_TEST_CACHE") or Path.home() / ".cache" / "trellis2-comfy-tests")
SDXL_NAME = "sd_xl_base_1.0.safetensors"


def comfy_python(comfy_dir: Path) -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for cand in (comfy_dir / "venv", comfy_dir / ".venv", comfy_dir.parent / "venv"):
        if (cand / "bin" / "python").is_file():
            return str(cand / "bin" / "python")
    return sys.executable


def tiny_sdxl(comfy_dir: Path, python: str) -> Path:
    """The cached tiny SDXL checkpoint (made once with ComfyUI's classes; ~1 min, ~2 GB)."""
    path = CACHE / "tiny_sdxl.safetensors"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([python, str(Path(__file__).with_name("make_tiny_sdxl.py")), str(comfy_dir), str(path)],
                       check=True, timeout=1800)
    return path


def tiny_pipeline() -> Path:
    """The tiny golden pipeline; its texturing copy (same checkpoints + the shape encoder and
    texturing_pipeline.json, like the TRELLIS.2-4B folder) when present, so the texturing workflow runs too."""
    texturing = SHARED / "golden" / "texturing" / "tiny-pipeline"
    return texturing if (texturing / "texturing_pipeline.json").is_file() else SHARED / "golden" / "tiny-pipeline"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server process on ``base`` (see module docstring); ``.url``, ``.get``, ``.post``, ``.queue``."""

    def __init__(self, comfy_dir: Path, base: Path, pack_name: str = "trellis2-comfy") -> None:
        from tests.tools.meshes import uv_mesh
        from tests.workflows.make_workflows import MESH
        from tests.workflows.tiny_matting import make_tiny_matting

        self.comfy_dir, self.base, self.pack_name = comfy_dir, base, pack_name
        self.python = comfy_python(comfy_dir)
        for sub in ("custom_nodes", "models/trellis2", "models/checkpoints", "input", "output", "user"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "custom_nodes" / pack_name).symlink_to(ROOT, target_is_directory=True)
        (base / "models" / "trellis2" / "TRELLIS.2-4B").symlink_to(tiny_pipeline(), target_is_directory=True)
        make_tiny_matting(base / "models" / "rembg" / "BiRefNet")
        (base / "models" / "checkpoints" / SDXL_NAME).symlink_to(tiny_sdxl(comfy_dir, self.python))
        shutil.copy(SHARED / "assets" / "images" / "T.png", base / "input" / "example.png")
        (base / "input" / MESH).parent.mkdir(parents=True, exist_ok=True)
        uv_mesh().export(base / "input" / MESH)  # the texturing workflow's mesh (a UV-mapped GLB)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base)],
            cwd=comfy_dir, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise TimeoutError(f"ComfyUI not ready after {timeout}s:\n{self.log()[-3000:]}")
        if f"Cannot import {self.base / 'custom_nodes' / self.pack_name}" in self.log():
            raise RuntimeError(f"the pack failed to import:\n{self.log()[-5000:]}")
        self.post("/settings/Comfy.TutorialCompleted", True)  # no first-run template dialog in screenshots

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _request(self, path: str, data: Any = None, raw: bool = False) -> Any:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            payload = r.read()
            return (r.status, r.headers.get("Content-Type", ""), payload) if raw else (
                json.loads(payload) if payload else None)

    def get(self, path: str, raw: bool = False) -> Any:
        return self._request(path, raw=raw)

    def post(self, path: str, data: Any) -> Any:
        return self._request(path, data)

    def queue(self, prompt: dict, workflow: dict | None = None) -> str:
        """POST /prompt; returns the prompt id (raises with ComfyUI's node errors on a 400)."""
        body = {"prompt": prompt, "client_id": "trellis2-test-" + uuid.uuid4().hex[:8]}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        try:
            return self.post("/prompt", body)["prompt_id"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"/prompt refused the workflow: {err.read().decode()[:3000]}") from err

    def wait(self, prompt_id: str, timeout: float = 3600) -> dict:
        """The /history entry once the prompt finished (success or error)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and \
                    entry["status"].get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
