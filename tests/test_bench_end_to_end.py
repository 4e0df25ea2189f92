"""The end-to-end benchmark at tiny size on the CPU: cold + second processes and a warm repeat, one configuration."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_end_to_end as bench  # noqa: E402


def test_bench_end_to_end_tiny_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e2e.json"
    rc = bench.main(["--pipeline", str(tmp_path / "pipe"), "--size", "tiny", "--device", "cpu", "--types", "512",
                     "--texture-sizes", "256", "--faces", "2000", "--json", str(out), "--out-dir",
                     str(tmp_path / "glb"), "--cache-dir", str(tmp_path / "cache"), "--time-budget", "300"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["pipeline_write_s"] > 0
    procs = {p["process"]: p for p in data["processes"]}
    assert set(procs) == {"cold", "second"} and all(p["rc"] == 0 for p in procs.values())
    runs = procs["cold"]["runs"] + procs["second"]["runs"]
    assert [r["cache_state"] for r in runs] == ["cold", "warm", "second"]
    for run in runs:
        assert "error" not in run, run.get("traceback")
        stages = run["stages_s"]
        for name in ("weight_loading", "conditioning", "sparse_structure", "structure_decoder", "shape", "tex",
                     "shape_decoder", "mesh_extraction", "tex_decoder", "export:unwrap", "export:bake",
                     "export:write"):
            assert name in stages, name
        user = sum(v for k, v in stages.items() if not k.startswith(("weight", "surrogate")))
        assert run["total_s"] == pytest.approx(user, rel=0.2, abs=0.3)
        glb = Path(run["glb"])
        head = glb.read_bytes()[:12]
        assert head[:4] == b"glTF" and int.from_bytes(head[8:12], "little") == glb.stat().st_size
        assert run["decoded_faces"] > 0 and run["faces_out"] > 0
        assert run["compiled_graphs"] == 0  # the CPU runs the blocks eagerly: nothing is compiled
    # the cold process's caches live in the given folder, one sub-folder per variable
    assert procs["cold"]["cache_env"]["TRITON_CACHE_DIR"].startswith(str(tmp_path / "cache"))
    assert "| **total (image_to_glb)** |" in capsys.readouterr().out


def test_plan_parsing_rejects_bad_items() -> None:
    assert bench.parse_plan("512:high:2048,1024_cascade:low:4096") == [("512", "high", 2048),
                                                                      ("1024_cascade", "low", 4096)]
    with pytest.raises(SystemExit, match="type:preset:texture_size"):
        bench.parse_plan("512:fast:2048")


def test_surrogate_registers_no_global_module_hooks() -> None:
    """torch.compile guards the global module-hook dicts: a global hook registered per run would make the compiled
    DiT block recompile on every run of a benchmark (measured on an H200 before this was fixed)."""
    import torch
    from torch.nn.modules import module as nn_module

    import surrogate
    from trellis2_core.models.shape_decoder import FlexiDualGridVaeDecoder
    from trellis2_core.models.structure_decoder import SparseStructureDecoder
    from trellis2_core.pipeline.stages import PipelineType

    geo = surrogate.fit_geometry(PipelineType.parse("512"), surrogate.TARGETS_TINY["512"], torch.device("cpu"))
    before = (SparseStructureDecoder.forward, FlexiDualGridVaeDecoder.upsample, FlexiDualGridVaeDecoder.decode)
    with surrogate.inject(geo):
        assert not nn_module._global_forward_hooks and not nn_module._global_forward_pre_hooks
        assert SparseStructureDecoder.forward is not before[0]
    assert (SparseStructureDecoder.forward, FlexiDualGridVaeDecoder.upsample, FlexiDualGridVaeDecoder.decode) == before
