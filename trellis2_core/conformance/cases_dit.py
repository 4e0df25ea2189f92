"""Conformance handlers for the flow DiTs and the sampler (golden kinds ``dit_dense``, ``dit_sparse``, ``sampler``).

Each handler takes a :class:`~trellis2_core.conformance.case.Case` and returns the candidate tensors under the
golden names. Sparse tensors ``X`` arrive as ``X.coords``/``X.feats``; outputs keep the input's row order.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..pipeline.sampler import SamplerParams, SamplerResult, sample_flow_euler
from ..sparse.tensor import SparseTensor
from .case import Case

__all__ = ["run_dit_dense", "run_dit_sparse", "run_sampler"]


def _sparse_input(case: Case, name: str) -> SparseTensor | None:
    feats, coords = case.inputs.get(f"{name}.feats"), case.inputs.get(f"{name}.coords")
    if feats is None and coords is None:
        return None
    if feats is None or coords is None:
        raise InputError(f"case {case.name}: sparse input {name!r} needs both {name}.feats and {name}.coords")
    return SparseTensor(feats, coords.to(torch.int32))


def _input(case: Case, name: str) -> Tensor:
    try:
        return case.inputs[name]
    except KeyError:
        raise InputError(f"case {case.name}: missing input tensor {name!r}") from None


def run_dit_dense(case: Case) -> dict[str, Tensor]:
    """Dense flow DiT forward: ``model(x, t, cond)`` → ``output.v``."""
    model = case.model(case.params["model"])
    with torch.no_grad():
        v = model(_input(case, "x"), _input(case, "t"), _input(case, "cond"))
    return {"output.v": v}


def run_dit_sparse(case: Case) -> dict[str, Tensor]:
    """Sparse flow DiT forward: ``model(x, t, cond[, concat_cond])`` → ``output.v.feats`` (rows as ``x``)."""
    model = case.model(case.params["model"])
    x = _sparse_input(case, "x")
    if x is None:
        raise InputError(f"case {case.name}: missing sparse input 'x' (x.feats / x.coords)")
    extra = {}
    concat = _sparse_input(case, "concat_cond")
    if concat is not None:
        extra["concat_cond"] = concat
    with torch.no_grad():
        v = model(x, _input(case, "t"), _input(case, "cond"), **extra)
    return {"output.v.feats": v.feats}


def run_sampler(case: Case) -> dict[str, Tensor]:
    """Full sampler run from fixed noise; records every model evaluation (``output.t_model``/``output.branch``)."""
    model = case.model(case.params["model"])
    params = SamplerParams.from_pipeline(case.params["sampler"])
    sparse_noise = _sparse_input(case, "noise")
    noise = sparse_noise if sparse_noise is not None else _input(case, "noise")
    cond = _input(case, "cond")
    extra = {}
    concat = _sparse_input(case, "concat_cond")
    if concat is not None:
        extra["concat_cond"] = concat
    with torch.no_grad():
        res = sample_flow_euler(model, noise, cond, torch.zeros_like(cond), params, extra=extra,
                                record_calls=True, stage=case.name)
    return _sampler_outputs(res, sparse=sparse_noise is not None)


def _sampler_outputs(res: SamplerResult, *, sparse: bool) -> dict[str, Tensor]:
    assert res.calls is not None
    out = {
        "output.t_model": torch.tensor([c.t_model for c in res.calls], dtype=torch.float32),
        "output.branch": torch.tensor([c.branch for c in res.calls], dtype=torch.int32),
        "output.steps": torch.tensor(res.steps, dtype=torch.float64).reshape(-1, 2),
    }
    if sparse:
        out["output.samples.feats"] = res.samples.feats
        out["output.pred_x0_last.feats"] = res.pred_x0_last.feats
    else:
        out["output.samples"] = res.samples
        out["output.pred_x0_last"] = res.pred_x0_last
    return out
