"""VRAM presets: medium/low keep weights in host memory between uses, stream blocks under low, learn the order of
use to prefetch, and compute exactly what 'high' computes (CPU: the "device" copies are separate CPU tensors)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from trellis2_core.config import FastPathConfig
from trellis2_core.loading import ModelStore
from trellis2_core.loading.offload import BlockStreamer, CopyStream, HostWeights, stream_units
from trellis2_core.loading.residency import Residency, resolve_preset
from trellis2_core.models.streaming import STREAM_ATTR, execution_device, weights_on_device
from trellis2_core.pipeline.pipeline import Pipeline
from trellis2_core.pipeline.stages import Conditioning

_GIB = 1 << 30


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]), nn.Linear(4, 4)])
        self.register_buffer("scale", torch.full((4,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x) * self.scale
        for unit in stream_units(self):
            with weights_on_device(unit):
                x = unit(x)
        return x


def _ptrs(module: nn.Module) -> set[int]:
    return {t.data_ptr() for t in list(module.parameters()) + list(module.buffers())}


def test_resolve_preset():
    assert resolve_preset("auto", "cpu") == "high"
    assert resolve_preset("auto", "cuda", free_bytes=40 * _GIB) == "high"
    assert resolve_preset("auto", "cuda", free_bytes=12 * _GIB) == "medium"
    assert resolve_preset("auto", "cuda", free_bytes=6 * _GIB) == "low"
    assert resolve_preset("low", "cuda", free_bytes=80 * _GIB) == "low"
    with pytest.raises(ValueError, match="vram_preset must be one of"):
        resolve_preset("tiny", "cpu")


def test_host_weights_swap_keeps_parameter_identity_and_values():
    net = _Net()
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    home = HostWeights(net, pin=False)
    host = _ptrs(net)
    copier = CopyStream(torch.device("cpu"))
    home.attach(home.fetch(torch.device("cpu"), copier), copier)
    assert home.attached and _ptrs(net).isdisjoint(host)  # now on separate ("device") copies
    assert all(p is q for p, q in zip(net.parameters(), params))
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    home.detach()
    assert _ptrs(net) == host and not home.attached


def test_stream_units_flatten_nested_blocks_in_order():
    net = _Net()
    assert stream_units(net) == [net.blocks[0][0], net.blocks[0][1], net.blocks[1]]
    assert stream_units(nn.Linear(2, 2)) == []


def test_block_streamer_has_at_most_two_units_on_device_and_matches():
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(3, 4)
    want = net(x)
    units = stream_units(net)
    streamer = BlockStreamer(units, torch.device("cpu"), CopyStream(torch.device("cpu")), pin=False)
    seen = []
    for u in units:
        u.register_forward_pre_hook(lambda m, _a: seen.append(
            sum(h.attached for h in streamer.homes) + len(streamer._pending)))
    got = net(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert max(seen) <= 2 and not any(h.attached for h in streamer.homes)
    streamer.close()
    assert all(STREAM_ATTR not in u.__dict__ for u in units)


@pytest.mark.parametrize("preset", ["medium", "low"])
def test_residency_scopes_bring_weights_in_and_out(preset):
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(3, 4)
    want = net(x)
    res = Residency("cpu", preset)
    assert res.offloads and res.add("net", net) is net
    host = _ptrs(net)
    assert execution_device(net) == torch.device("cpu")
    with weights_on_device(net):
        got = net(x)
        inside, inside_head, inside_blocks = _ptrs(net), _ptrs(net.head), _ptrs(net.blocks)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if preset == "medium":  # the whole model was copied in
        assert inside.isdisjoint(host)
    else:  # only the small parts; blocks are back on the host after running
        assert inside_head.isdisjoint(host) and inside_blocks <= host
    assert _ptrs(net) == host  # out of the scope: all on the host again
    n = len(list(net.parameters())) + len(list(net.buffers()))
    assert res.host_bytes == 256 * n  # one flat buffer, each tensor 256-byte aligned
    res.remove("net")
    assert STREAM_ATTR not in net.__dict__


def test_medium_learns_the_order_and_prefetches_the_next_model(monkeypatch):
    fetched: list[int] = []
    real = HostWeights.fetch

    def spy(self, device, copier):
        fetched.append(id(self.module))
        return real(self, device, copier)

    monkeypatch.setattr(HostWeights, "fetch", spy)
    nets = {k: _Net() for k in "abc"}
    res = Residency("cpu", "medium")
    for k, n in nets.items():
        res.add(k, n)
    x = torch.randn(2, 4)

    def run() -> None:
        for k in "abc":
            with weights_on_device(nets[k]):
                nets[k](x)

    run()
    assert fetched == [id(nets[k]) for k in "abc"]  # nothing known yet: each fetched on entry
    fetched.clear()
    with weights_on_device(nets["a"]):
        assert res._managed["b"].pending is not None  # 'b' followed 'a' last time: already on its way
        assert fetched == [id(nets["a"]), id(nets["b"])]
    with weights_on_device(nets["b"]):
        assert res._managed["b"].pending is None and res._managed["c"].pending is not None
    assert fetched == [id(nets[k]) for k in "abc"]  # each model copied once per run, ahead of its use
    with weights_on_device(nets["a"]):  # an unexpected order: the stale guess 'c' is dropped
        assert res._managed["c"].pending is None


def _golden_512(golden_dir):
    meta = json.loads((golden_dir / "pipeline_512.json").read_text())
    gold = load_file(str(golden_dir / "pipeline_512.safetensors"))
    return meta, gold, golden_dir / meta["params"]["pipeline_dir"]


@pytest.mark.parametrize("preset", ["medium", "low"])
def test_pipeline_under_offloading_presets_matches_high(golden_dir, preset):
    meta, gold, pdir = _golden_512(golden_dir)
    cond = Conditioning(gold["cond_512"], gold["cond_1024"])
    kw = dict(seed=meta["params"]["seed"], pipeline_type=meta["params"]["pipeline_type"],
              fast=FastPathConfig(cache_cross_kv=True, skip_uncond_cross_attn=True))
    high = Pipeline(pdir, ModelStore(pdir, vram_preset="high")).run_from_conditioning(cond, **kw)
    store = ModelStore(pdir, vram_preset=preset)
    res = Pipeline(pdir, store).run_from_conditioning(cond, **kw)
    assert store.vram_preset == preset and store.residency.host_bytes > 0
    # The weights are bit-identical, but the host copies live at other addresses than the originals, and oneDNN/MKL
    # pick their vectorised code path (and so the summation order) by buffer alignment: on a clean machine one
    # forward differed by ~1e-6 with nothing but the memory layout changed. So "same result" means float32
    # rounding: 1e-5 is ~10x that and ~1e-6 of the latents' magnitude; a wrong or stale weight moves them by O(1).
    torch.testing.assert_close(res.shape.slat.feats, high.shape.slat.feats, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.material.slat.feats, high.material.slat.feats, rtol=1e-5, atol=1e-5)
    assert torch.equal(res.decoded.meshes[0].faces, high.decoded.meshes[0].faces)
    for key in store.loaded:  # between runs nothing managed holds device copies
        managed = store.residency._managed[key]
        assert not managed.home.attached and managed.pending is None
