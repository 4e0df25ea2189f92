"""Batched float32 column-pivoted Householder QR solve of small square systems (the official QEF solver's maths).

The official converter solves each voxel's 3×3 (and each face constraint's 2×2) system with Eigen's
``colPivHouseholderQr().solve`` in float32. Reproducing its rounding needs the same algorithm in the same
precision, not merely an accurate solver: the systems are often ill-conditioned (flat surface patches), and the
dual vertex then depends on the rounding path. Algorithm (LAPACK xGEQPF style): pick the remaining column with
the largest (down-dated) norm, reflect it onto ``β e₁`` with ``H = I − τ v vᵀ`` (``v₀ = 1``), apply ``H`` to the
remaining columns, down-date their norms (recomputing them when cancellation makes the estimate unreliable);
solve by applying the reflectors to the right-hand side, back substitution on ``R`` over the pivots that were
not negligible, and undoing the column permutation. Every operation is a separately rounded float32 op.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["colpiv_qr_solve"]

_EPS = float(torch.finfo(torch.float32).eps)
_TINY = float(torch.finfo(torch.float32).tiny)


def _sum_sq(x: list[Tensor], zero: Tensor) -> Tensor:
    """Sequential ``x0² + x1² + …`` (``zero`` for an empty list)."""
    if not x:
        return zero
    acc = x[0] * x[0]
    for t in x[1:]:
        acc = acc + t * t
    return acc


def _col_sq(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """Squared norm of a whole (fixed-size) column of a 3×3 matrix: ``x² + (y² + z²)``."""
    return x * x + (y * y + z * z)


def colpiv_qr_solve(a: Tensor, b: Tensor) -> Tensor:
    """Solve ``a x = b`` for ``a [B, n, n]``, ``b [B, n]`` (float32) as Eigen's float32 column-pivoted QR does."""
    bsz, n, _ = a.shape
    a = a.to(torch.float32)
    qr = [[a[:, i, j] for j in range(n)] for i in range(n)]  # qr[row][col], each [B]
    zero = torch.zeros(bsz, dtype=torch.float32, device=a.device)
    nd = [torch.sqrt(_col_sq(qr[0][j], qr[1][j], qr[2][j]) if n == 3 else _sum_sq([qr[i][j] for i in range(n)], zero))
          for j in range(n)]  # direct norms
    nu = list(nd)  # updated norms
    thr_helper = (torch.stack(nu, 1).amax(dim=1) * _EPS) ** 2 / n
    nonzero = torch.full((bsz,), n, dtype=torch.int64, device=a.device)
    perm = [torch.full((bsz,), j, dtype=torch.int64, device=a.device) for j in range(n)]
    taus: list[Tensor] = []
    sqrt_eps = float(torch.sqrt(torch.tensor(_EPS, dtype=torch.float32)))
    for k in range(n):
        tail_norms = torch.stack(nu[k:], 1)
        big = tail_norms.argmax(dim=1) + k  # first maximum
        big_sq = tail_norms.amax(dim=1) ** 2
        nonzero = torch.where((nonzero == n) & (big_sq < thr_helper * (n - k)), k, nonzero)
        for j in range(k + 1, n):  # swap column k with column `big` where big == j
            sw = big == j
            for i in range(n):
                qr[i][k], qr[i][j] = torch.where(sw, qr[i][j], qr[i][k]), torch.where(sw, qr[i][k], qr[i][j])
            nu[k], nu[j] = torch.where(sw, nu[j], nu[k]), torch.where(sw, nu[k], nu[j])
            nd[k], nd[j] = torch.where(sw, nd[j], nd[k]), torch.where(sw, nd[k], nd[j])
            perm[k], perm[j] = torch.where(sw, perm[j], perm[k]), torch.where(sw, perm[k], perm[j])
        # Householder reflector of column k below the diagonal
        c0 = qr[k][k]
        tail = [qr[i][k] for i in range(k + 1, n)]
        tsq = _sum_sq(tail, zero)
        trivial = tsq <= _TINY
        beta = torch.sqrt(c0 * c0 + tsq)
        beta = torch.where(c0 >= 0, -beta, beta)
        denom = c0 - beta
        ess = [torch.where(trivial, zero, t / denom) for t in tail]
        tau = torch.where(trivial, zero, (beta - c0) / beta)
        beta = torch.where(trivial, c0, beta)
        qr[k][k] = beta
        for i, e in zip(range(k + 1, n), ess):
            qr[i][k] = e
        taus.append(tau)
        active = tau != 0
        for j in range(k + 1, n):  # apply H to the remaining columns
            tmp = None
            for i, e in zip(range(k + 1, n), ess):
                tmp = e * qr[i][j] if tmp is None else tmp + e * qr[i][j]
            tmp = qr[k][j] if tmp is None else tmp + qr[k][j]
            qr[k][j] = torch.where(active, qr[k][j] - tau * tmp, qr[k][j])
            for i, e in zip(range(k + 1, n), ess):
                qr[i][j] = torch.where(active, qr[i][j] - tmp * (tau * e), qr[i][j])
        for j in range(k + 1, n):  # down-date the remaining column norms
            live = nu[j] != 0
            safe_nu = torch.where(live, nu[j], torch.ones_like(nu[j]))
            temp = qr[k][j].abs() / safe_nu
            temp = ((1 + temp) * (1 - temp)).clamp_min(0)
            temp2 = temp * (safe_nu / nd[j]) ** 2
            redo = live & (temp2 <= sqrt_eps)
            fresh = torch.sqrt(_sum_sq([qr[i][j] for i in range(k + 1, n)], zero))
            nd[j] = torch.where(redo, fresh, nd[j])
            nu[j] = torch.where(redo, fresh, torch.where(live, nu[j] * torch.sqrt(temp), nu[j]))
    # apply the reflectors (only the first `nonzero` of them) to b
    c = [b[:, i].to(torch.float32) for i in range(n)]
    for k in range(n):
        use = (taus[k] != 0) & (k < nonzero)
        if k == n - 1:
            c[k] = torch.where(k < nonzero, c[k] * (1 - taus[k]), c[k])
            continue
        tmp = None
        for i in range(k + 1, n):
            tmp = qr[i][k] * c[i] if tmp is None else tmp + qr[i][k] * c[i]
        tmp = tmp + c[k]
        c[k] = torch.where(use, c[k] - taus[k] * tmp, c[k])
        for i in range(k + 1, n):
            c[i] = torch.where(use, c[i] - tmp * (taus[k] * qr[i][k]), c[i])
    # back substitution on the leading nonzero × nonzero block of R
    for i in range(n - 1, -1, -1):
        inside = i < nonzero
        solve = inside & (c[i] != 0)
        c[i] = torch.where(solve, c[i] / qr[i][i], c[i])
        for s in range(i):
            c[s] = torch.where(inside, c[s] - c[i] * qr[s][i], c[s])
    x = torch.zeros(bsz, n, dtype=torch.float32, device=a.device)
    for i in range(n):
        val = torch.where(i < nonzero, c[i], zero)
        x.scatter_(1, perm[i][:, None], val[:, None])
    return x
