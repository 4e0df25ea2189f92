"""Sampling and the staged image-to-3D pipeline (spec §1, §7)."""
