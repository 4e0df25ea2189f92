"""One golden conformance case: its metadata, its input tensors and the models it needs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["Case", "load_case"]


@dataclass
class Case:
    """A case of a golden directory.

    ``inputs`` holds the tensors whose names carry no ``output.``/``aux.`` prefix; ``expected`` holds the rest.
    ``model(key)`` returns the pipeline model ``key`` (a key of ``pipeline.json``'s ``models``) loaded from the
    case set's pipeline folder, in eval mode, float32, on the CPU.
    """

    name: str
    kind: str
    directory: Path
    meta: dict[str, Any]
    inputs: dict[str, Tensor]
    expected: dict[str, Tensor]
    model: Callable[[str], torch.nn.Module] = field(repr=False)

    @property
    def params(self) -> dict[str, Any]:
        return self.meta.get("params", {})

    def pipeline_dir(self) -> Path:
        return self.directory / self.params.get("pipeline_dir", "tiny-pipeline")


def load_case(directory: Path, name: str, kind: str, model: Callable[[str], torch.nn.Module]) -> Case:
    """Read ``<name>.json`` and ``<name>.safetensors`` from ``directory``."""
    from safetensors.torch import load_file

    meta = json.loads((directory / f"{name}.json").read_text())
    tensors = load_file(str(directory / f"{name}.safetensors"))
    inputs = {k: v for k, v in tensors.items() if not k.startswith(("output.", "aux."))}
    expected = {k: v for k, v in tensors.items() if k.startswith(("output.", "aux."))}
    return Case(name=name, kind=kind, directory=directory, meta=meta, inputs=inputs, expected=expected, model=model)
