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


def test_whole_path_counts_every_official_sampler_step_for_both_sides():
    """No ComfyUI needed: the composed image → GLB total from a synthetic result."""
    import sys

    sys.path.insert(0, str(REPO))
    from benchmarks.bench_peer import dit_passes, markdown, whole_path

    assert dit_passes() == {"structure": (10, 2), "shape_lr": (9, 3), "shape_hr": (9, 3), "texture": (0, 12)}
    dit = []
    for stage, (b2, b1) in {"structure": (10.0, 12.0), "shape_lr": (20.0, 24.0), "shape_hr": (100.0, 120.0),
                            "texture": (100.0, 120.0)}.items():
        dit.append({"part": "dit", "stage": stage, "cfg": "batch 2", "tokens": 1, "ours_ms": b2, "core_ms": 2 * b2})
        dit.append({"part": "dit", "stage": stage, "cfg": "2 x batch 1", "tokens": 1, "ours_ms": b1,
                    "core_ms": 2 * b1})
    dec = [{"part": "decoder", "stage": s, "tokens": 1, "ours_ms": 5.0, "core_ms": 10.0}
           for s in ("shape_decoder", "tex_decoder")]
    post = {"input_faces": 9, "target_faces": 3, "texture_size": 256,
            "ours": {"stages": {"a": {"ms": 40.0}, "export_glb": {"ms": 1e6}}},
            "core": {"stages": {"b": {"ms": 80.0}, "c": {"ms": 20.0}}}}
    result = {"meta": {"device": "cpu", "gpu": None, "tiny": True, "ours_mode": "fast", "compile": False,
                       "core_dtype": "float32"}, "dit": dit, "decoders": dec, "post": post}
    whole = whole_path(result)
    ours = (10 * 10 + 2 * 6) + (9 * 20 + 3 * 12) + (9 * 100 + 3 * 60) + 12 * 60 + 5 + 5 + 40
    assert whole["ours_ms"] == pytest.approx(ours)
    assert whole["core_ms"] == pytest.approx(2 * (ours - 40) + 100)
    assert whole["parts"]["texture"] == {"guided_steps": 0, "unguided_steps": 12, "ours_ms": 720.0,
                                         "core_ms": 1440.0}
    result["whole"] = whole
    assert "**total**" in markdown(result)
    dit[0]["core_ms"] = None  # a core call that did not finish: no total
    assert whole_path(result)["core_ms"] is None
