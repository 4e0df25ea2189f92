"""Cascade LR→HR coordinate hand-over (spec §1.3): golden case and the quantisation rules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trellis2_core.conformance.case import load_case
from trellis2_core.conformance.cases_decoders import run_cascade
from trellis2_core.loading import load_model
from trellis2_core.pipeline.cascade import cascade_hr_coords, hr_coords_from_lr, quantize_coords
from trellis2_core.sparse import SparseTensor

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden"


@pytest.fixture(scope="module")
def cascade_case():
    if not (GOLDEN / "index.json").is_file():
        pytest.skip(f"golden cases not found at {GOLDEN}")
    return load_case(GOLDEN, "cascade_upsample", "cascade",
                     model=lambda key: load_model(GOLDEN / "tiny-pipeline", key))


def test_golden_cascade_upsample_and_every_subcase(cascade_case):
    got = run_cascade(cascade_case)
    names = [k for k in cascade_case.expected if k.startswith("output.")]
    assert len(names) == 1 + 2 * len(cascade_case.params["cases"])
    for name in names:
        gold = cascade_case.expected[name]
        assert name in got, name
        assert got[name].shape == gold.shape, (name, got[name].shape, gold.shape)
        assert torch.equal(got[name].to(torch.int64), gold.to(torch.int64)), name


def test_cascade_hr_coords_runs_upsample_then_quantisation(cascade_case):
    up = cascade_case.expected["output.upsample_coords"]
    model = cascade_case.model("shape_slat_decoder")
    lr = SparseTensor(cascade_case.inputs["lr_samples.feats"], cascade_case.inputs["lr_samples.coords"])
    norm = json.loads((cascade_case.pipeline_dir() / "pipeline.json").read_text())["args"]["shape_slat_normalization"]
    slat = lr.replace(lr.feats * torch.tensor(norm["std"])[None] + torch.tensor(norm["mean"])[None])
    coords, hr_res = cascade_hr_coords(model, slat, resolution=1024)
    assert hr_res == 1024
    assert torch.equal(coords, quantize_coords(up, 512, 1024))


def test_quantisation_truncates_keeps_batch_and_sorts_unique_rows():
    coords = torch.tensor([[1, 511, 0, 7], [0, 8, 8, 8], [0, 15, 9, 8], [0, 0, 0, 0]], dtype=torch.int32)
    q = quantize_coords(coords, 512, 1024)  # grid 64: q = int((c + 0.5) / 8)
    assert q.dtype == torch.int32
    assert q.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [1, 63, 0, 0]]
    q96 = quantize_coords(torch.tensor([[0, 5, 10, 511]], dtype=torch.int32), 512, 1536)  # grid 96
    assert q96.tolist() == [[0, int(5.5 / 512 * 96), int(10.5 / 512 * 96), 95]]


def test_resolution_loop_steps_down_by_128_and_stops_at_1024():
    g = torch.Generator().manual_seed(0)
    coords = torch.cat([torch.zeros(4000, 1, dtype=torch.int32),
                        torch.randint(0, 96, (4000, 3), generator=g, dtype=torch.int32)], dim=1)
    ladder = (1536, 1408, 1280, 1152, 1024)
    counts = {r: quantize_coords(coords, 512, r).shape[0] for r in ladder}
    assert counts[1536] > counts[1024]  # the coarser grids merge more voxels
    for cap in sorted(set(counts.values())) + [1, 10**9]:
        expected = next(r for r in ladder if counts[r] < cap or r == 1024)
        got, res = hr_coords_from_lr(coords, 512, 1536, max_num_tokens=cap)
        assert res == expected, cap
        assert torch.equal(got, quantize_coords(coords, 512, res))
    assert hr_coords_from_lr(coords, 512, 1024, max_num_tokens=1)[1] == 1024
    with pytest.raises(ValueError):
        hr_coords_from_lr(coords, 512, 1000, max_num_tokens=10)
