"""Mesh texturing with TRELLIS.2 (spec §11): normalisation, mesh → flexible dual grid, the texturing pipeline, and
:func:`texture_mesh`, which bakes the result onto the input mesh itself (its UVs, topology and frame kept)."""
