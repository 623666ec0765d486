"""Synthetic studies for tests, benchmarks and the sample data: ellipsoids in a CT-like body.

Phantoms prove plumbing and timing only; no accuracy figure comes from them.
"""

from __future__ import annotations

import numpy as np


def grid(shape) -> list:
    """Voxel coordinates ``[i, j, k]`` (float32), one array per axis."""
    return np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")


def ellipsoid(centre, radii, shape) -> np.ndarray:
    """A bool mask of the voxels inside the axis-aligned ellipsoid."""
    return sum(((c - c0) / r) ** 2 for c, c0, r in zip(grid(shape), centre, radii)) <= 1.0


def ct_body(seed: int, shape, body_hu: float = 40.0, noise_hu: float = 5.0) -> np.ndarray:
    """Air around soft tissue (a 2-voxel margin in-plane), in HU, with seeded noise."""
    rng = np.random.default_rng(seed)
    array = np.full(shape, -1000.0, np.float32)
    array[2:-2, 2:-2, :] = body_hu
    return array + rng.normal(0, noise_hu, shape).astype(np.float32)
