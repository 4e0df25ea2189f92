"""benchmarks/bench_peer.py's CPU smoke mode against a real ComfyUI checkout (``$COMFYUI_DIR``; skipped otherwise).

Runs in ComfyUI's python (``COMFYUI_PYTHON`` or a venv beside the checkout), which must also import this repo's
``trellis2_core`` (torch, safetensors, numpy). Tiny widths: ours and core's models on the same random weights must
compute the same outputs; both post-processing chains must yield an atlas; a core stage past its deadline is
recorded, not waited for.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_peer.py"


@pytest.fixture(scope="module")
def comfy() -> tuple[Path, str]:
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("set COMFYUI_DIR to a ComfyUI 0.33.0 checkout to compare with core's TRELLIS.2 code")
    from tests.comfyui.server import comfy_python

    return Path(comfy_dir), comfy_python(Path(comfy_dir))


def _run(comfy, tmp_path: Path, *extra: str) -> dict:
    comfy_dir, python = comfy
    out = tmp_path / "peer.json"
    run = subprocess.run([python, str(BENCH), "--device", "cpu", "--tiny", "--repeat", "1", "--no-export-glb",
                          "--comfy-dir", str(comfy_dir), "--json", str(out), "--md", str(tmp_path / "peer.md"),
                          *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


def test_tiny_run_agrees_with_core(comfy, tmp_path):
    res = _run(comfy, tmp_path)
    dit = {(r["stage"], r["cfg"]): r for r in res["dit"]}
    assert set(dit) == {(s, c) for s in ("structure", "shape_lr", "shape_hr", "texture")
                        for c in ("batch 2", "2 x batch 1")}
    for row in res["dit"] + res["decoders"]:
        assert row["core_ms"] > 0 and row["ours_ms"] > 0, row
        assert row["cosine"] > 0.999, row  # same weights, same inputs, float32 on both sides
    assert {r["stage"] for r in res["decoders"]} == {"shape_decoder", "tex_decoder"}
    assert all(r["same_voxels"] for r in res["decoders"])
    post = res["post"]
    assert set(post["core"]["stages"]) == {"FillHoles", "DecimateMesh", "UnwrapMesh", "BakeTextureFromVoxel"}
    assert all("ms" in v for v in post["core"]["stages"].values()), post["core"]["stages"]
    for who in ("ours", "core"):
        atlas = post[who]["atlas"]
        assert 0.2 < atlas["coverage"] <= 1.0 and atlas["faces"] <= post["target_faces"] * 1.05
        assert atlas["seam_length"] > 0 and atlas["islands"] >= 1
    md = (tmp_path / "peer.md").read_text()
    assert "| dit | shape_hr | batch 2 |" in md and "| coverage |" in md


def test_core_stage_past_its_deadline_is_recorded(comfy, tmp_path):
    res = _run(comfy, tmp_path, "--skip", "dit,decoders", "--core-timeout", "0.01")
    stages = res["post"]["core"]["stages"]
    notes = [v.get("note", "") for v in stages.values()]
    assert any(n == "did not finish in 0.01 s" for n in notes), stages
    assert "atlas" in res["post"]["ours"]
