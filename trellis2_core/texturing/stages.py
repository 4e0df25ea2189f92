"""Texturing as separate steps (what the ComfyUI nodes call): encode the user's mesh, then — after the material
latent was sampled on its shape latent (:func:`~trellis2_core.pipeline.stages.sample_material`) — decode and bake
onto the same mesh. :func:`texturing_pipeline_for` sets up the texturing models next to a loaded image-to-3D
pipeline, sharing the checkpoints both configs name (texture flows, texture decoder) so they load once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..loading import ModelStore, PipelineConfig
from ..loading.official import TEXTURING_PIPELINE_JSON
from ..loading.texturing import resolve_texturing_config, texturing_config_from_file
from ..models.shape_encoder import ShapeEncoding
from ..pipeline.stages import MaterialLatent
from .bake_mesh import BakeReport, bake_onto_mesh, check_unwrap
from .dual_grid import FlexibleDualGrid
from .frame import PreparedMesh, preprocess_mesh
from .mesh_io import InputMesh, load_input_mesh
from .pipeline import TexturingPipeline, check_resolution, flow_resolution

__all__ = ["EncodedMesh", "encode_input_mesh", "decode_onto_mesh", "texturing_pipeline_for"]


@dataclass(frozen=True)
class EncodedMesh:
    """A user mesh as the texture flow sees it: the input, its normalised copy, its flexible dual grid and the
    shape latent (the encoder's voxels; ``encoding.latent`` is the unnormalised shape SLat)."""

    source: InputMesh
    prepared: PreparedMesh
    grid: FlexibleDualGrid
    encoding: ShapeEncoding
    resolution: int  # texturing grid (official 512, 1024, 1536)

    @property
    def flow_resolution(self) -> int:
        """Which texture flow / DINOv3 size this grid uses (512 up to 512, else 1024)."""
        return flow_resolution(self.resolution)


def encode_input_mesh(pipe: TexturingPipeline, mesh: Any, resolution: int) -> EncodedMesh:
    """Load and check ``mesh`` (anything :func:`~.mesh_io.load_input_mesh` takes), normalise it and encode it into
    a shape latent at ``resolution`` (§11 steps 2 and 4)."""
    resolution = check_resolution(resolution)
    src = load_input_mesh(mesh)
    prepared = preprocess_mesh(torch.from_numpy(np.asarray(src.vertices)), torch.from_numpy(src.faces))
    grid, encoding = pipe.encode(prepared, resolution)
    return EncodedMesh(source=src, prepared=prepared, grid=grid, encoding=encoding, resolution=resolution)


def decode_onto_mesh(pipe: TexturingPipeline, encoded: EncodedMesh, material: MaterialLatent, output: str | Path, *,
                     texture_size: int = 2048, unwrap: str = "auto", texture_format: str = "png",
                     double_sided: bool = True) -> BakeReport:
    """Decode ``material`` (sampled on ``encoded``'s shape latent) into PBR voxels and bake them onto the input
    mesh, written to ``output`` with the input's vertices, faces and UVs (see :func:`~.bake_mesh.bake_onto_mesh`)."""
    check_unwrap(unwrap)
    shape_coords, tex_coords = encoded.encoding.latent.coords, material.slat.coords
    if shape_coords.shape != tex_coords.shape or not bool(torch.equal(shape_coords.cpu(), tex_coords.cpu())):
        raise InputError("the material latent was not sampled on this mesh's shape latent; connect the Sample "
                         "Material whose shape comes from the Encode Mesh of this mesh")
    pbr = pipe.decode(encoded.encoding, material, encoded.resolution)
    if not bool(torch.isfinite(pbr.attrs).all()):
        raise InputError("the decoded PBR voxels contain NaN/Inf values; use precision float32 or bfloat16")
    return bake_onto_mesh(encoded.source, encoded.prepared, pbr, output, texture_size=texture_size, unwrap=unwrap,
                          texture_format=texture_format, double_sided=double_sided)


class _SharedModels:
    """Model getter of a texturing pipeline beside an image-to-3D one: a key that both configs map to the same
    checkpoint reference is taken from the image pipeline's getter (one copy in memory, one residency policy);
    the others (the shape encoder) from the texturing pipeline's own store."""

    def __init__(self, image_models: Callable[[str], nn.Module], image_config: PipelineConfig,
                 own: ModelStore) -> None:
        self._image_models, self._image_config, self._own = image_models, image_config, own
        self.device, self.offline = own.device, own.offline

    def shared(self, key: str) -> bool:
        return key in self._own.config.models and \
            self._image_config.models.get(key) == self._own.config.models[key]

    def __call__(self, key: str) -> nn.Module:
        return self._image_models(key) if self.shared(key) else self._own(key)


def texturing_pipeline_for(image_pipeline: Any, *, source: str | None = None,
                           models_dir: str | Path | None = None) -> TexturingPipeline:
    """A :class:`TexturingPipeline` for the folder of a loaded image-to-3D ``Pipeline``.

    Its ``texturing_pipeline.json`` is read from the pipeline folder, else resolved from ``source`` (e.g. the Hugging
    Face id the pipeline came from; downloads only the files it names). Models load lazily on the image pipeline's
    device, dtype and VRAM preset; checkpoints both configs name are shared.
    """
    config = image_pipeline.config
    store = image_pipeline.models
    kwargs: dict[str, Any] = {}
    if isinstance(store, ModelStore):
        kwargs = {"device": store.device, "dtype_override": store.dtype_override, "offline": store.offline,
                  "vram_preset": store.vram_preset}
    if (Path(config.root) / TEXTURING_PIPELINE_JSON).is_file():
        tex_config = texturing_config_from_file(config.root)
    else:
        tex_config = resolve_texturing_config(source or config.root, models_dir=models_dir,
                                              offline=kwargs.get("offline"))
    own = ModelStore(tex_config, **kwargs)
    return TexturingPipeline(tex_config, _SharedModels(store, config, own), models_dir=models_dir)
