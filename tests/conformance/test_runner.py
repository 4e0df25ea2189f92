"""The golden runner (``python -m trellis2_core.conformance``) and the comparison rules of ``compare.py``."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trellis2_core.conformance import runner as runner_mod
from trellis2_core.conformance.compare import compare_case
from trellis2_core.conformance.runner import Runner, main

LAST_LINE = re.compile(r"^(\d+) passed, (\d+) failed$")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _tol(**names):
    return {"tolerance": {k: (v if v == "exact" else {"atol": v, "rtol": 1e-4}) for k, v in names.items()}}


# ----------------------------------------------------------------------------------------------- compare.py
def test_float_pass_and_fail():
    g = {"output.x": torch.tensor([1.0, 2.0, -3.0])}
    meta = _tol(**{"output.x": 1e-3})
    assert compare_case(g, {"output.x": g["output.x"] + 5e-4}, meta).verdict == "PASS"
    res = compare_case(g, {"output.x": g["output.x"] + torch.tensor([0, 0, 2e-3])}, meta)
    assert res.verdict == "FAIL" and "1 out of tolerance" in res.summary()
    nan = compare_case(g, {"output.x": torch.tensor([1.0, float("nan"), -3.0])}, meta)
    assert nan.verdict == "FAIL"


def test_exact_and_missing():
    g = {"output.i": torch.tensor([1, 2, 3], dtype=torch.int32), "output.j": torch.tensor([4])}
    meta = _tol(**{"output.i": "exact", "output.j": "exact"})
    assert compare_case(g, {"output.i": torch.tensor([1, 2, 3]), "output.j": torch.tensor([4])}, meta).verdict == "PASS"
    res = compare_case(g, {"output.i": torch.tensor([1, 2, 4])}, meta)
    assert res.verdict == "FAIL"
    assert "output.j: missing in candidate" in res.summary() and "1 of 3 values differ" in res.summary()
    # a bool candidate against a uint8 golden is fine
    gb = {"output.b": torch.tensor([1, 0], dtype=torch.uint8)}
    assert compare_case(gb, {"output.b": torch.tensor([True, False])}, _tol(**{"output.b": "exact"})).verdict == "PASS"


def _sparse_case(n: int = 1000, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.unique(torch.randint(0, 40, (n * 2, 4), generator=gen, dtype=torch.int32), dim=0)[:n]
    coords[:, 0] = 0
    coords = torch.unique(coords, dim=0)
    feats = torch.randn(coords.shape[0], 8, generator=gen)
    gold = {"output.s.coords": coords, "output.s.feats": feats}
    return gold, _tol(**{"output.s.coords": "exact", "output.s.feats": 1e-4})


def test_sparse_rows_matched_by_coords():
    gold, meta = _sparse_case()
    perm = torch.randperm(gold["output.s.coords"].shape[0], generator=torch.Generator().manual_seed(1))
    cand = {"output.s.coords": gold["output.s.coords"][perm], "output.s.feats": gold["output.s.feats"][perm]}
    res = compare_case(gold, cand, meta)
    verdicts = {c.name: c.verdict for c in res.checks}
    assert verdicts == {"output.s.coords": "NEAR", "output.s.feats": "PASS"}  # row order must match officially
    assert "same rows, different order" in res.summary()


def test_near_needs_999_per_mille_of_rows():
    gold, meta = _sparse_case(n=3000)
    n = gold["output.s.coords"].shape[0]
    assert n >= 1000
    drop_one = {k: v[1:] for k, v in gold.items()}
    assert compare_case(gold, drop_one, meta).verdict == "NEAR"
    k = int(np.ceil(n * 0.001)) + 1
    drop_many = {k2: v[k:] for k2, v in gold.items()}
    assert compare_case(gold, drop_many, meta).verdict == "FAIL"
    bad_feats = dict(drop_one)
    bad_feats["output.s.feats"] = bad_feats["output.s.feats"] + 1
    assert compare_case(gold, bad_feats, meta).verdict == "FAIL"


def _mesh_case():
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.int32)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [0, 4, 1]], dtype=torch.int32)
    gold = {"output.mesh.faces": faces, "coords": coords}
    meta = {**_tol(**{"output.mesh.faces": "exact"}), "row_keys": {"output.mesh.faces": "coords"}}
    return gold, meta


def test_faces_compared_as_triangle_sets_keeping_winding():
    gold, meta = _mesh_case()
    faces = gold["output.mesh.faces"]
    rotated = torch.stack([faces[:, 1], faces[:, 2], faces[:, 0]], dim=1)[[2, 0, 1]]
    assert compare_case(gold, {"output.mesh.faces": rotated}, meta).verdict == "PASS"
    # renumbered vertices: the candidate's own row tensor (an input name here) maps indices to coordinates
    perm = torch.tensor([4, 3, 2, 1, 0])
    inv = torch.argsort(perm)
    cand = {"output.mesh.faces": inv[faces.long()].to(torch.int32), "coords": gold["coords"][perm]}
    assert compare_case(gold, cand, meta).verdict == "PASS"
    flipped = faces[:, [0, 2, 1]]
    res = compare_case(gold, {"output.mesh.faces": flipped}, meta)
    assert res.verdict == "FAIL" and "triangle overlap 0.000000" in res.summary()
    out_of_range = faces.clone()
    out_of_range[0, 0] = 9
    assert compare_case(gold, {"output.mesh.faces": out_of_range}, meta).verdict == "FAIL"


def test_aux_only_with_flag():
    gold = {"output.x": torch.zeros(2), "aux.y": torch.zeros(2)}
    meta = _tol(**{"output.x": 1e-4, "aux.y": 1e-4})
    cand = {"output.x": torch.zeros(2), "aux.y": torch.ones(2)}
    assert compare_case(gold, cand, meta).verdict == "PASS"
    assert compare_case(gold, cand, meta, aux=True).verdict == "FAIL"
    assert compare_case(gold, {"output.x": torch.zeros(2)}, meta, aux=True).verdict == "PASS"  # aux optional


# ----------------------------------------------------------------------------------------------- runner
def _fake_golden(tmp_path: Path, golden_dir: Path) -> Path:
    d = tmp_path / "golden"
    d.mkdir()
    for name in ("preprocess_0.json", "preprocess_0.safetensors", "preprocess_input_0.png"):
        shutil.copyfile(golden_dir / name, d / name)
    meta = json.loads((golden_dir / "preprocess_0.json").read_text())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(golden_dir / "preprocess_0.safetensors"))
    tensors["output.rgb"] = tensors["output.rgb"].clone()
    tensors["output.rgb"][0, 0, 0] ^= 1  # a golden the (correct) implementation cannot match
    save_file(tensors, str(d / "preprocess_bad.safetensors"))
    (d / "preprocess_bad.json").write_text(json.dumps(meta))
    index = {"cases": {"preprocess_0": "preprocess", "preprocess_bad": "preprocess", "preprocess_0_x": "mystery"}}
    (d / "index.json").write_text(json.dumps(index))
    return d


def test_runner_lines_and_exit_code(tmp_path, golden_dir, capsys):
    d = _fake_golden(tmp_path, golden_dir)
    rc = main([str(d)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert lines[0].startswith("PASS preprocess_0 (preprocess) ")
    assert lines[1].startswith("FAIL preprocess_bad (preprocess) ") and "output.rgb" in lines[1]
    assert lines[2].startswith("FAIL preprocess_0_x (mystery) ") and "no handler for kind 'mystery'" in lines[2]
    assert lines[-2].startswith("NEAR: 0")
    assert lines[-1] == "1 passed, 2 failed"
    assert main([str(d), "--only", "preprocess_0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 passed, 0 failed"
    assert main([str(d), "--only", "nope"]) == 2


def test_missing_handler_module_is_a_fail_not_a_crash(tmp_path, golden_dir, monkeypatch, capsys):
    d = _fake_golden(tmp_path, golden_dir)
    monkeypatch.setitem(runner_mod.HANDLERS, "preprocess", ("cases_not_written_yet", "run_preprocess"))
    results = Runner(d).run(["preprocess_0"])
    assert results[0].verdict == "FAIL" and "cases_not_written_yet not available" in results[0].detail
    monkeypatch.setitem(runner_mod.HANDLERS, "preprocess", ("cases_inputs", "run_nothing"))
    assert "no handler function run_nothing" in Runner(d).run(["preprocess_0"])[0].detail


def test_real_golden_cases_in_process(golden_dir, capsys):
    only = ["preprocess_0", "preprocess_1", "preprocess_2"]
    rc = main([str(golden_dir), "--aux", "--only", *only])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"{len(only)} passed, 0 failed", "\n".join(lines)
    assert rc == 0


def test_whole_golden_directory_passes(golden_dir):
    """The conformance gate: every shared golden case PASSes, aux tensors included (about 40 s on 2 cores)."""
    pytest.importorskip("transformers", reason="the dinov3 case needs transformers (add it to requirements.txt)")
    proc = subprocess.run([sys.executable, "-m", "trellis2_core.conformance", str(golden_dir), "--aux"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    m = LAST_LINE.match(lines[-1])
    assert m, f"last line not 'N passed, M failed': {lines[-1]!r}"
    index = json.loads((golden_dir / "index.json").read_text())["cases"]
    assert int(m.group(1)) + int(m.group(2)) == len(index)
    assert proc.returncode == (0 if m.group(2) == "0" else 1)
    assert m.group(2) == "0", proc.stdout
