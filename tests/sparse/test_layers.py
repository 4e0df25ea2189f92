"""Row-chunked evaluation of the fp32 norms (``trellis2_core.sparse.layers``): same bits, bounded temporaries."""
from __future__ import annotations

import pytest
import torch

from trellis2_core.sparse import layers
from trellis2_core.sparse.layers import LayerNorm32, rowwise_in_chunks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("affine", [True, False])
def test_chunked_layernorm32_is_bit_identical(monkeypatch, dtype, affine):
    g = torch.Generator().manual_seed(0)
    norm = LayerNorm32(24, eps=1e-6, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(24, generator=g))
            norm.bias.copy_(torch.randn(24, generator=g))
    x = (3 * torch.randn(1000, 24, generator=g) + 1).to(dtype)
    whole = norm(x)
    monkeypatch.setattr(layers, "NORM_CHUNK_ELEMENTS", 24 * 7)  # 143 chunks of 7 rows, the last one shorter
    chunked = norm(x)
    assert chunked.dtype == dtype and chunked.shape == x.shape
    assert torch.equal(chunked, whole)


def test_rowwise_in_chunks_changes_width_and_dtype(monkeypatch):
    monkeypatch.setattr(layers, "NORM_CHUNK_ELEMENTS", 16)
    x = torch.randn(50, 8, dtype=torch.float16)
    out = rowwise_in_chunks(lambda r: r.float().sum(-1, keepdim=True).expand(-1, 3) * 2, x, torch.float32, 3)
    assert out.shape == (50, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, (x.float().sum(-1, keepdim=True) * 2).expand(-1, 3), rtol=0, atol=0)


def test_small_and_batched_inputs_are_not_chunked(monkeypatch):
    calls = []

    def fn(rows):
        calls.append(rows.shape)
        return rows.float()
    monkeypatch.setattr(layers, "NORM_CHUNK_ELEMENTS", 16)
    rowwise_in_chunks(fn, torch.randn(2, 8), torch.float32, 8)  # fits one chunk
    rowwise_in_chunks(fn, torch.randn(2, 30, 8), torch.float32, 8)  # [B, L, C]: left whole
    assert calls == [(2, 8), (2, 30, 8)]
