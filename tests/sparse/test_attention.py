"""Attention backends against a naive per-sequence softmax."""
from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch

from trellis2_core.errors import BackendError
from trellis2_core.sparse import attention, varlen_attention

attention_module = importlib.import_module("trellis2_core.sparse.attention")  # the package re-exports the function


def _naive_per_sequence(q, k, v, q_lens, k_lens):
    out, qs, ks = [], 0, 0
    for lq, lk in zip(q_lens, k_lens):
        qi, ki, vi = q[qs:qs + lq].double(), k[ks:ks + lk].double(), v[ks:ks + lk].double()
        w = torch.einsum("lhd,shd->hls", qi, ki) / math.sqrt(q.shape[-1])
        out.append(torch.einsum("hls,shd->lhd", w.softmax(-1), vi))
        qs, ks = qs + lq, ks + lk
    return torch.cat(out).to(q.dtype)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "fa4", "naive"])
@pytest.mark.parametrize("q_lens, k_lens", [([7], [7]), ([5, 13, 1], [5, 13, 1]), ([4, 0, 9], [6, 3, 2]),
                                             ([3, 3], [11, 11])])
def test_varlen_matches_naive_softmax(backend, q_lens, k_lens):
    g = torch.Generator().manual_seed(0)
    h, d = 3, 16
    q = torch.randn(sum(q_lens), h, d, generator=g)
    k = torch.randn(sum(k_lens), h, d, generator=g)
    v = torch.randn(sum(k_lens), h, d, generator=g)
    out = varlen_attention(q, k, v, q_lens, k_lens, backend=backend)
    torch.testing.assert_close(out, _naive_per_sequence(q, k, v, q_lens, k_lens), atol=2e-6, rtol=1e-5)


def test_sequences_never_attend_across_batch_elements():
    q = torch.randn(4, 1, 8)
    k = torch.randn(4, 1, 8)
    v = torch.zeros(4, 1, 8)
    v[2:] = 1.0  # second sequence's values
    out = varlen_attention(q, k, v, [2, 2], [2, 2])
    assert torch.all(out[:2] == 0) and torch.allclose(out[2:], torch.ones(2, 1, 8))


@pytest.mark.parametrize("backend", ["auto", "fa4"])
def test_dense_attention_matches_naive(backend):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 2, 8, generator=g) for n in (5, 9, 9))
    out = attention(q, k, v, backend=backend)
    ref = torch.stack([_naive_per_sequence(q[b], k[b], v[b], [5], [9]) for b in range(2)])
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def test_bad_attention_input():
    q = torch.randn(3, 2, 8)
    with pytest.raises(ValueError, match="sum to"):
        varlen_attention(q, q, q, [2], [2])
    with pytest.raises(ValueError, match="unknown attention backend"):
        varlen_attention(q, q, q, [3], [3], backend="fast")
    with pytest.raises(ValueError, match=r"q \[B,L,H,D\]"):
        attention(q, q, q)


def test_flash_attn_namespace_alone_is_not_flash_attention_2(monkeypatch):
    """FlashAttention-4 installs only ``flash_attn.cute``: a bare ``flash_attn`` must not select the FA2 varlen path."""
    import types
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    attention_module.flash_attn_available.cache_clear()
    try:
        assert not attention_module.flash_attn_available()
        q = torch.randn(9, 2, 8)
        out = varlen_attention(q, q, q, [4, 5], [4, 5])  # ragged: 'auto' would pick FA2 if it were "available"
        torch.testing.assert_close(out, _naive_per_sequence(q, q, q, [4, 5], [4, 5]), atol=2e-6, rtol=1e-5)
    finally:
        attention_module.flash_attn_available.cache_clear()


def test_fa4_missing_package_says_what_to_do(monkeypatch):
    monkeypatch.setattr(attention_module, "_fa4_runs_on", lambda q: True)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)  # makes the import fail
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(BackendError, match=r"flash-attn-4.*attention_kernel='cudnn'"):
        attention(q, q, q, backend="fa4")


fa4_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and attention_module.fa4_available()),
                             reason="needs CUDA and the optional flash-attn-4 package")


@pytest.mark.gpu
@fa4_gpu
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("b, lq, lk, h, d", [(2, 1000, 1000, 12, 128), (1, 777, 1029, 16, 64)])
def test_fa4_matches_naive_on_gpu(compiled, b, lq, lk, h, d):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = ((torch.randn(b, n, h, d, device="cuda", generator=g) / 2).bfloat16() for n in (lq, lk, lk))
    fn = torch.compile(lambda *t: attention(*t, backend="fa4"), fullgraph=True) if compiled else (
        lambda *t: attention(*t, backend="fa4"))
    out = fn(q, k, v)
    ref = attention(q, k, v, backend="naive")
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
