"""Golden comparison rules (shared/tools/check_golden.py documents them; this is our own implementation).

* float tensors: ``|cand − gold| ≤ atol + rtol·|gold|`` elementwise, tolerances from the case json ``tolerance``
  (a non-``exact`` string means atol = rtol = 1e-4); non-finite candidate values always fail;
* ``exact`` tensors (ints, coords, faces, flags): bit-exact;
* per-voxel tensors are matched row by row through their coordinates: ``X.feats`` pairs with ``X.coords``, other
  pairs are listed in the json ``row_keys`` (the row tensor may be an input, e.g. ``coords`` of a mesher case);
* faces are compared as multisets of triangles written with their vertices' row coordinates, each triangle
  rotated to its smallest rotation (cyclic order, i.e. winding, is kept);
* NEAR: a voxel set or face set differs but ≥ 99.9 % of rows agree and the floats agree on the common rows.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["TensorCheck", "CaseComparison", "compare_case", "to_numpy", "DEFAULT_TOL", "NEAR_OVERLAP"]

DEFAULT_TOL = {"atol": 1e-4, "rtol": 1e-4}
NEAR_OVERLAP = 0.999
PASS, NEAR, FAIL = "PASS", "NEAR", "FAIL"
_RANK = {PASS: 0, NEAR: 1, FAIL: 2}


@dataclass(frozen=True)
class TensorCheck:
    """Verdict on one golden tensor; ``ratio`` = worst |err| / allowed error (float checks only)."""

    name: str
    verdict: str
    detail: str
    ratio: float | None = None


@dataclass(frozen=True)
class CaseComparison:
    """All tensor checks of one case and the case verdict (the worst of them)."""

    verdict: str
    checks: tuple[TensorCheck, ...]

    def summary(self) -> str:
        """One-line reason: failing/near checks, else the tensor closest to its tolerance."""
        bad = [c for c in self.checks if c.verdict == FAIL] or [c for c in self.checks if c.verdict == NEAR]
        if bad:
            shown = "; ".join(f"{c.name}: {c.detail}" for c in bad[:3])
            return shown + (f"; ... ({len(bad) - 3} more)" if len(bad) > 3 else "")
        rated = [c for c in self.checks if c.ratio is not None]
        if rated:
            worst = max(rated, key=lambda c: c.ratio)
            return f"worst {worst.name}: {worst.detail}"
        return f"{len(self.checks)} exact tensors" if self.checks else "no output tensors"


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor / array as numpy (bool → uint8, bf16/fp16 → float32)."""
    if hasattr(x, "detach"):
        import torch

        t = x.detach().cpu()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        elif t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    arr = np.asarray(x)
    return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind in "fc"


def _rows(coords: np.ndarray) -> list[tuple[int, ...]]:
    c = np.ascontiguousarray(coords.astype(np.int64)).reshape(coords.shape[0], -1)
    return list(map(tuple, c.tolist()))


def _index(rows: list[tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    return {r: i for i, r in enumerate(rows)}


def _float_check(g: np.ndarray, c: np.ndarray, tol: Mapping[str, float]) -> tuple[int, float, float]:
    """(number out of tolerance, max |err|, max |err| / allowed)."""
    g64, c64 = g.astype(np.float64), c.astype(np.float64)
    if g64.size == 0:
        return 0, 0.0, 0.0
    err = np.abs(c64 - g64)
    lim = tol["atol"] + tol["rtol"] * np.abs(g64)
    finite = np.isfinite(c64)
    bad = int((err[finite] > lim[finite]).sum()) + int((~finite).sum())
    err_f = np.where(finite, err, np.inf)
    return bad, float(err_f.max()), float((err_f / np.maximum(lim, 1e-300)).max())


def _triangles(faces: np.ndarray, coords: np.ndarray) -> list[tuple]:
    """Faces as triangles of row coordinates, each rotated to its smallest rotation (winding kept)."""
    rows = _rows(coords)
    f = faces.astype(np.int64).reshape(-1, 3)
    if f.size and (f.min() < 0 or f.max() >= len(rows)):
        raise IndexError(f"face index out of range [0, {len(rows)})")
    out = []
    for a, b, c in f.tolist():
        ra, rb, rc = rows[a], rows[b], rows[c]
        out.append(min((ra, rb, rc), (rb, rc, ra), (rc, ra, rb)))
    return out


def _check_exact(name: str, g: np.ndarray, c: np.ndarray, gc: np.ndarray | None, cc: np.ndarray | None,
                 near: float) -> TensorCheck:
    same = g.shape == c.shape and (
        np.array_equal(g.astype(np.int64), c.astype(np.int64)) if not (_is_float(g) or _is_float(c))
        else np.array_equal(g, c))
    if same:
        return TensorCheck(name, PASS, f"exact {list(g.shape)}")
    if name.endswith("faces") and gc is not None and cc is not None and c.ndim == 2 and c.shape[-1] == 3:
        try:
            gt, ct = _triangles(g, gc), _triangles(c, cc)
        except IndexError as err:
            return TensorCheck(name, FAIL, f"candidate faces invalid: {err}")
        if Counter(gt) == Counter(ct):
            return TensorCheck(name, PASS, f"same {len(gt)} triangles, different order/numbering")
        gs, cs = set(gt), set(ct)
        ov = len(gs & cs) / max(len(gs), len(cs), 1)
        verdict = NEAR if ov >= near else FAIL
        return TensorCheck(name, verdict, f"triangle overlap {ov:.6f} (golden {len(gt)}, candidate {len(ct)}, "
                                          f"missing {len(gs - cs)}, extra {len(cs - gs)})")
    if name.endswith("coords") and g.ndim == 2 and c.ndim == 2 and g.shape[1] == c.shape[1]:
        gr, cr = _rows(g), _rows(c)
        gs, cs = set(gr), set(cr)
        common = len(gs & cs)
        ov = common / max(len(gr), len(cr), 1)
        order = " (same rows, different order)" if gs == cs and len(gr) == len(cr) else ""
        verdict = NEAR if ov >= near else FAIL
        return TensorCheck(name, verdict, f"row overlap {ov:.6f} (golden {len(gr)}, candidate {len(cr)}, missing "
                                          f"{len(gs - cs)}, extra {len(cs - gs)}){order}")
    if g.shape != c.shape:
        return TensorCheck(name, FAIL, f"shape {list(c.shape)} {c.dtype} != golden {list(g.shape)} {g.dtype}")
    diff = int((g.astype(np.float64) != c.astype(np.float64)).sum())
    return TensorCheck(name, FAIL, f"{diff} of {g.size} values differ (exact required)")


def _check_float(name: str, g: np.ndarray, c: np.ndarray, tol: Mapping[str, float], gc: np.ndarray | None,
                 cc: np.ndarray | None, near: float) -> TensorCheck:
    tol_s = f"atol {tol['atol']:.3g}, rtol {tol['rtol']:.3g}"
    same_rows = gc is None or (cc is not None and gc.shape == cc.shape and np.array_equal(gc, cc))
    if g.shape == c.shape and same_rows:
        bad, mx, ratio = _float_check(g, c, tol)
        return TensorCheck(name, FAIL if bad else PASS,
                           f"max|err| {mx:.3g} ({tol_s}), {bad} out of tolerance", ratio)
    if gc is None or cc is None:
        return TensorCheck(name, FAIL, f"shape {list(c.shape)} != golden {list(g.shape)}")
    if cc.shape[0] != c.shape[0]:
        return TensorCheck(name, FAIL, f"{c.shape[0]} rows but its row tensor has {cc.shape[0]}")
    gi, ci = _index(_rows(gc)), _index(_rows(cc))
    common = [r for r in gi if r in ci]
    if not common:
        return TensorCheck(name, FAIL, "no rows in common with the golden")
    ov = len(common) / max(len(gi), len(ci), 1)
    gsel = g[np.array([gi[r] for r in common])]
    csel = c[np.array([ci[r] for r in common])]
    if gsel.shape != csel.shape:
        return TensorCheck(name, FAIL, f"row width {list(csel.shape[1:])} != golden {list(gsel.shape[1:])}")
    bad, mx, ratio = _float_check(gsel, csel, tol)
    verdict = FAIL if bad else (PASS if ov == 1.0 else (NEAR if ov >= near else FAIL))
    return TensorCheck(name, verdict, f"on {len(common)} common rows (overlap {ov:.6f}) max|err| {mx:.3g} "
                                      f"({tol_s}), {bad} out of tolerance", ratio)


def compare_case(golden: Mapping[str, Any], candidate: Mapping[str, Any], meta: Mapping[str, Any], *,
                 aux: bool = False, near_overlap: float = NEAR_OVERLAP) -> CaseComparison:
    """Compare ``candidate`` with every ``output.*`` tensor of ``golden`` (and ``aux.*`` the candidate has if
    ``aux``). ``golden`` holds the case's tensors, inputs included (row keys may name inputs)."""
    gold = {k: to_numpy(v) for k, v in golden.items()}
    cand = {k: to_numpy(v) for k, v in candidate.items()}
    tols = dict(meta.get("tolerance", {}))
    row_keys = dict(meta.get("row_keys", {}))
    names = sorted(k for k in gold if k.startswith("output.") or (aux and k.startswith("aux.") and k in cand))
    for k in names:
        if k.endswith(".feats") and k[: -len("feats")] + "coords" in gold:
            row_keys.setdefault(k, k[: -len("feats")] + "coords")
    checks = []
    for k in names:
        if k not in cand:
            checks.append(TensorCheck(k, FAIL, "missing in candidate"))
            continue
        rk = row_keys.get(k)
        gc = gold.get(rk) if rk else None
        cc = cand.get(rk, gc) if rk else None
        tol = tols.get(k, "exact")
        g, c = gold[k], cand[k]
        if tol == "exact":
            checks.append(_check_exact(k, g, c, gc, cc, near_overlap))
        else:
            if not isinstance(tol, Mapping):
                tol = DEFAULT_TOL
            checks.append(_check_float(k, g, c, tol, gc, cc, near_overlap))
    verdict = max((c.verdict for c in checks), key=_RANK.__getitem__, default=PASS)
    return CaseComparison(verdict, tuple(checks))
