"""Attention backends against a naive per-sequence softmax."""
from __future__ import annotations

import math

import pytest
import torch

from trellis2_core.sparse import attention, varlen_attention


def _naive_per_sequence(q, k, v, q_lens, k_lens):
    out, qs, ks = [], 0, 0
    for lq, lk in zip(q_lens, k_lens):
        qi, ki, vi = q[qs:qs + lq].double(), k[ks:ks + lk].double(), v[ks:ks + lk].double()
        w = torch.einsum("lhd,shd->hls", qi, ki) / math.sqrt(q.shape[-1])
        out.append(torch.einsum("hls,shd->lhd", w.softmax(-1), vi))
        qs, ks = qs + lq, ks + lk
    return torch.cat(out).to(q.dtype)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "naive"])
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


def test_dense_attention_matches_naive():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 2, 8, generator=g) for n in (5, 9, 9))
    out = attention(q, k, v)
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
