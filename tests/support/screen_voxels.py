"""What the clinician sees, read from screenshots: which voxel is drawn under the pointer.

Checks built on this never use the page's own conversions for the expected answer. A study
whose voxels hold one of eight grey levels at random is shown with a fixed window; the grey
level on the screenshot under a pointer position says which level the voxel drawn there
has, and the voxel the page sends for that position must have it. A page that maps a click
one voxel off fails on about 7 of 8 positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LEVELS = 8
STEP = 100.0  # voxel value of level n: n * STEP
WINDOW = [0.0, (LEVELS - 1) * STEP]


def level_volume(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, LEVELS, size=shape) * STEP).astype(np.float32)


def level_of_value(value: float) -> int:
    return int(round(float(value) / STEP))


def rotation(degrees: float, axis=(1.0, 0.4, 0.2)) -> np.ndarray:
    """A rotation by ``degrees`` about ``axis`` (Rodrigues), as an oblique series is tilted."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    theta = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k


def oblique_affine(degrees: float, spacing=(0.9, 0.8, 3.0), flip=(1, 1, 1)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(degrees) @ np.diag(np.multiply(spacing, flip))
    affine[:3, 3] = [12.0, -30.0, 41.0]
    return affine


def screen(png: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def uniform_grey(rgb: np.ndarray, x: float, y: float, radius: int = 2):
    """The grey level at (x, y) if the pixels around it are one untinted grey, else None."""
    xi, yi = int(round(x)), int(round(y))
    patch = rgb[yi - radius: yi + radius + 1, xi - radius: xi + radius + 1]
    if patch.shape[:2] != (2 * radius + 1, 2 * radius + 1):
        return None
    if np.ptp(patch) > 3:  # a voxel edge, a mark, or a tinted (overlay) pixel
        return None
    return float(patch[..., 0].mean())


def level_of_grey(grey: float) -> int:
    return int(round(grey / 255.0 * (LEVELS - 1)))


def grid(page, n: int = 9, seed: int = 0) -> list:
    """n x n page positions over the image area (the marks canvas), each jittered within its cell
    so that they do not all fall at the same place within a voxel (on its edge, say)."""
    box = page.locator("#marks").bounding_box()
    rng = np.random.default_rng(seed)
    cell_w, cell_h = 0.8 * box["width"] / n, 0.8 * box["height"] / n
    return [(float(box["x"] + 0.1 * box["width"] + (c + rng.uniform(0.1, 0.9)) * cell_w),
             float(box["y"] + 0.1 * box["height"] + (r + rng.uniform(0.1, 0.9)) * cell_h))
            for r in range(n) for c in range(n)]


def voxel_the_page_sends(page, x: float, y: float):
    """The voxel the page turns a click at page position (x, y) into (null off the image)."""
    return page.evaluate("""([x, y]) => {
        const rect = document.getElementById('marks').getBoundingClientRect();
        return window.medsam2Viewer.view.voxelAt(x - rect.left, y - rect.top);
    }""", [x, y])


def fixed_window(page) -> None:
    page.evaluate("w => { window.medsam2Viewer.view.setWindow(w); }", WINDOW)


def settle(page) -> None:
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
