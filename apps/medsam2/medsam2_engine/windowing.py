"""Intensity windowing: raw scanner values to [0, 1], chosen per modality.

CT is windowed in Hounsfield units with a named preset or an explicit ``[low, high]``;
MR and everything else use robust percentiles of the whole volume, so that one bright
vessel or a zero-filled border does not wash out the tissue contrast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

# (low, high) in HU. Width/level pairs as used in radiology reading rooms.
CT_WINDOW_PRESETS = {
    "soft_tissue": (-160.0, 240.0),  # W400 L40
    "abdomen": (-150.0, 250.0),  # W400 L50
    "mediastinum": (-125.0, 225.0),  # W350 L50
    "liver": (-45.0, 105.0),  # W150 L30
    "lung": (-1350.0, 150.0),  # W1500 L-600
    "bone": (-450.0, 1050.0),  # W1500 L300
    "brain": (0.0, 80.0),  # W80 L40
}
DEFAULT_CT_PRESET = "soft_tissue"
DEFAULT_PERCENTILES = (0.5, 99.5)
MODALITIES = ("auto", "CT", "MR", "other")

WindowSpec = Union[None, str, Sequence[float]]


class WindowError(ValueError):
    """A window or modality in a request could not be understood."""


@dataclass(frozen=True)
class Window:
    low: float
    high: float
    source: str  # e.g. "CT preset soft_tissue", "MR percentiles 0.5-99.5"

    def apply(self, values: np.ndarray) -> np.ndarray:
        scaled = (values.astype(np.float32) - self.low) / max(self.high - self.low, 1e-6)
        return np.clip(scaled, 0.0, 1.0)

    def to_json(self) -> dict:
        return {"low": float(self.low), "high": float(self.high), "source": self.source}


def guess_modality(volume: np.ndarray, declared: str | None = None) -> str:
    """Return "CT", "MR" or "other".

    A DICOM Modality tag wins. Otherwise CT is recognised by its Hounsfield range: air
    near -1000 and dense tissue above a few hundred; MR and photographs are non-negative.
    """
    if declared:
        declared = declared.upper()
        if declared == "CT":
            return "CT"
        if declared in ("MR", "MRI"):
            return "MR"
    lo, hi = float(np.min(volume)), float(np.max(volume))
    if lo <= -500.0 and hi >= 200.0:
        return "CT"
    if declared:
        return "other"
    return "MR" if volume.ndim == 3 else "other"


def choose_window(volume: np.ndarray, modality: str, window: WindowSpec = None) -> Window:
    """Pick the window for ``volume`` given its modality and an optional request value.

    ``window`` may be a CT preset name, ``[low, high]`` in the volume's own units, or
    ``"percentile"`` / ``None`` for the modality default.
    """
    if isinstance(window, str) and "," in window:  # "low,high" typed into a text field
        window = [v.strip() for v in window.strip("[] ").split(",")]
    if window is not None and not isinstance(window, str):
        values = list(window) if isinstance(window, (list, tuple)) else [window]
        if len(values) != 2:
            raise WindowError(f"window must be a preset name or [low, high]; got {window!r}")
        try:
            low, high = float(values[0]), float(values[1])
        except (TypeError, ValueError) as err:
            raise WindowError(f"window [low, high] must be numbers; got {window!r}") from err
        if not np.isfinite([low, high]).all() or high <= low:
            raise WindowError(f"window [low, high] needs finite low < high; got {window!r}")
        return Window(low, high, "request [low, high]")

    if isinstance(window, str) and window not in ("", "auto", "percentile"):
        if window not in CT_WINDOW_PRESETS:
            names = ", ".join(sorted(CT_WINDOW_PRESETS))
            raise WindowError(f"unknown window preset {window!r}; known: {names}")
        low, high = CT_WINDOW_PRESETS[window]
        return Window(low, high, f"CT preset {window}")

    if modality == "CT" and window != "percentile":
        low, high = CT_WINDOW_PRESETS[DEFAULT_CT_PRESET]
        return Window(low, high, f"CT preset {DEFAULT_CT_PRESET}")

    p_low, p_high = DEFAULT_PERCENTILES
    sample = volume if volume.size <= 4_000_000 else volume.ravel()[:: volume.size // 4_000_000 + 1]
    low, high = np.percentile(sample, [p_low, p_high])
    if high <= low:  # constant image: any non-empty window will do
        high = low + 1.0
    return Window(float(low), float(high), f"{modality} percentiles {p_low}-{p_high}")


def model_window(volume, modality: str | None = None, window: WindowSpec = None, guess_from=None) -> tuple:
    """``(Window, modality)``: how the model sees ``volume`` (a ``volume_io.Volume``).

    ``modality``: the request's; absent or "auto", the image's declared one, else guessed from
    ``guess_from`` (default the whole array: a 2D session guesses from its plane). RGB
    images are "photo". ``window``: the request's (see :func:`choose_window`).
    """
    declared = modality if modality not in (None, "", "auto") else volume.declared_modality
    resolved = "photo" if volume.is_rgb else guess_modality(volume.array if guess_from is None else guess_from,
                                                            declared)
    return choose_window(volume.array, resolved, window), resolved
