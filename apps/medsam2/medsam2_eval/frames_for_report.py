"""Grey-level display of a case's slice for figures, with the engine's own window."""

from __future__ import annotations

import numpy as np

from medsam2_engine.frames import slice_to_image
from medsam2_engine.windowing import model_window


def display_plane(case, k: int) -> np.ndarray:
    """Slice ``k`` as an image in [0, 1], rows ``j`` and columns ``i`` (as contours are drawn)."""
    volume = case.volume
    if volume.is_rgb:
        return slice_to_image(np.clip(volume.array / 255.0, 0, 1))
    plane = volume.array if not volume.is_3d else volume.array[:, :, k]
    window, _ = model_window(volume, None, getattr(case, "window", None))
    return slice_to_image(window.apply(plane))
