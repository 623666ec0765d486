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


def bright_ellipsoid(shape=(40, 28, 12), seed: int = 0, ct: bool = True) -> np.ndarray:
    """A non-square, non-cubic study [i, j, k]: a bright ellipsoid in a body, HU-like if ``ct``."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = ((i - shape[0] * 0.45) / (shape[0] * 0.2)) ** 2 + ((j - shape[1] * 0.5) / (shape[1] * 0.25)) ** 2 + (
        (k - shape[2] * 0.5) / (shape[2] * 0.3)
    ) ** 2 <= 1
    base = -1000.0 if ct else 0.0
    array = np.full(shape, base, np.float32)
    array[2:-2, 2:-2, :] = 40.0 if ct else 200.0
    array[blob] = 200.0 if ct else 700.0
    return array + rng.normal(0, 5, shape).astype(np.float32)


def spindle_lesion(slices: int, size: int, fraction: float, seed: int = 0) -> tuple:
    """(volume [i, j, k] in HU, lesion mask): an elliptic body and a lesion whose disc grows and
    shrinks over ``fraction`` of the slices (the speed benchmark's and the phantom checkpoint's)."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    body = ((i - size / 2) / (0.42 * size)) ** 2 + ((j - size / 2) / (0.32 * size)) ** 2 <= 1
    vol = np.full((size, size, slices), -1000.0, np.float32)
    vol[body] = 40.0
    span = max(3, int(round(fraction * slices)))
    k0 = (slices - span) // 2
    ref = np.zeros(vol.shape, bool)
    for k in range(k0, k0 + span):
        r = 0.12 * size * np.sin(np.pi * (k - k0 + 0.5) / span)
        ref[:, :, k] = (i - 0.45 * size) ** 2 + (j - 0.55 * size) ** 2 <= r * r
    vol[ref] = 160.0
    vol += rng.normal(0, 15, vol.shape).astype(np.float32)
    return vol, ref
