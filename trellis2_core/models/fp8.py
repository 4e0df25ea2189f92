"""fp8 GEMMs for the per-token linears of the DiT blocks (``FastPathConfig.fp8_linear``; approximate).

:func:`fp8_block_linears` switches, for the duration of a ``with`` block, the six linears that every block runs on
every token (self-attention ``to_qkv`` and ``to_out``, cross-attention ``to_q`` and ``to_out``, MLP ``mlp.0`` and
``mlp.2``) to :class:`Fp8Linear`, whose forward is ``trellis2_kernels.fp8_linear`` (row-wise float8 e4m3 operands,
``torch._scaled_mm`` on fp8-capable GPUs, an exact emulation elsewhere). Everything else keeps its precision: the
cross-attention ``to_kv`` (run once per stage), the time embedder, adaLN, input and output layers (fp32 and the
usual fp8-sensitive parts, performance.md §4.2).

The switch changes the class of the existing modules (``module.__class__``), nothing else: the parameters are the same
objects, the state-dict keys and hooks are untouched, and leaving the ``with`` block restores ``nn.Linear`` exactly.
A compiled block (``FlowDiT.run_trunk``) sees a different Linear forward and gets its own graph.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor, nn

from .._kernels import kernels  # noqa: F401  (registers trellis2_kernels)
from ..capabilities import device_traits, fp8_runs, note_fallback
from .blocks import ModulatedTransformerCrossBlock
from .streaming import execution_device

from trellis2_kernels.fp8_linear import fp8_linear  # noqa: E402

__all__ = ["Fp8Linear", "block_linears", "fp8_block_linears"]


class Fp8Linear(nn.Linear):
    """An ``nn.Linear`` computing ``≈ F.linear`` with fp8 operands; made only by :func:`fp8_block_linears`."""

    def forward(self, input: Tensor) -> Tensor:  # [..., in_features] -> [..., out_features]
        return fp8_linear(input, self.weight, self.bias)


def block_linears(block: ModulatedTransformerCrossBlock) -> tuple[nn.Linear, ...]:
    """The six linears a block applies to every token at every forward (``to_kv`` excluded: once per stage)."""
    return (block.self_attn.to_qkv, block.self_attn.to_out, block.cross_attn.to_q, block.cross_attn.to_out,
            block.mlp.mlp[0], block.mlp.mlp[2])


@contextlib.contextmanager
def fp8_block_linears(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Run the block linears of every DiT block inside ``model`` in fp8 until the ``with`` block ends.

    Yields the number of linears switched (0 when ``enabled`` is False or ``model`` has no DiT block). Linears that
    are not plain ``nn.Linear`` (already switched by an enclosing call, or replaced by someone else) are left alone,
    and only the ones switched here are switched back, also when the body raises. Nothing is switched (a logged
    warning) where fp8 GEMMs do not exist: GPUs other than NVIDIA compute capability ≥ 8.9
    (:func:`trellis2_core.capabilities.fp8_runs`), where the emulation is slower than the plain linears and, compiled,
    needs fp8 conversions Triton does not have.
    """
    switched: list[nn.Linear] = []
    if enabled:
        traits = device_traits(execution_device(model))
        if not fp8_runs(traits):
            note_fallback(True, f"fp8_linear is ignored on {traits.label()}: fp8 GEMMs need an NVIDIA GPU of compute "
                                "capability 8.9 or newer (Ada, Hopper, Blackwell); the block linears stay in their "
                                "own precision")
            enabled = False
    try:
        if enabled:
            for block in model.modules():
                if isinstance(block, ModulatedTransformerCrossBlock):
                    for linear in block_linears(block):
                        if type(linear) is nn.Linear:
                            linear.__class__ = Fp8Linear
                            switched.append(linear)
        yield len(switched)
    finally:
        for linear in switched:
            linear.__class__ = nn.Linear
