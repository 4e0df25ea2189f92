"""Mesh and PBR-voxel types, and the flexible-dual-grid mesher (spec §8)."""
from __future__ import annotations

from .mesher import flexible_dual_grid_to_mesh
from .types import Mesh, PbrVoxels, z_up_to_y_up

__all__ = ["Mesh", "PbrVoxels", "z_up_to_y_up", "flexible_dual_grid_to_mesh"]
