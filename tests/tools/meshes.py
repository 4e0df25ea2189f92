"""Small UV-mapped test meshes for the texturing tests (nodes, workflows, real ComfyUI)."""
from __future__ import annotations

import numpy as np
import trimesh


def uv_mesh() -> trimesh.Trimesh:
    """An ellipsoid away from the origin (checks the frame) with planar UVs, float32 as a GLB stores them."""
    m = trimesh.creation.icosphere(subdivisions=2)
    v = (m.vertices * [1.0, 2.0, 0.5] + [3.0, 10.0, -2.0]).astype(np.float32)
    uv = np.stack(((v[:, 0] - v[:, 0].min()) / np.ptp(v[:, 0]), (v[:, 1] - v[:, 1].min()) / np.ptp(v[:, 1])), 1)
    return trimesh.Trimesh(v, m.faces, process=False, visual=trimesh.visual.TextureVisuals(uv=uv.astype(np.float32)))
