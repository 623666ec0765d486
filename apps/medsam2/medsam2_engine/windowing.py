"""Intensity windowing: raw scanner values to [0, 1], chosen per modality, as MedSAM2 prepares them.

CT is windowed in Hounsfield units with a named preset, the series' own DICOM window
(``"dicom"``) or an explicit ``[low, high]``; MR uses the 0.5-99.5 percentiles of its
non-zero voxels, other images the percentiles of all voxels. Then, as MedSAM2's scripts do
(``medsam2_infer_3D_CT.py``; its MR examples), the volume is clipped to the window and
scaled by the *clipped volume's own* minimum and maximum (the same as the window's bounds
only when the volume reaches both), and on MR the voxels that are 0 stay 0. A constant
volume becomes 0 (the reference would divide by zero). Every protocol uses this one
scaling, in the precision the reference's numpy arithmetic has on the file's own data type
(float64 for integer pixels, float32 for float32 ones), so the uint8 grey levels are the same.
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
    scale: tuple | None = None  # (min, max) of the clipped volume, which map to 0 and 1; None: (low, high)
    keep_zero: bool = False  # voxels equal to 0 stay 0 (MedSAM2's MR preparation)
    precision: str = "float64"  # the reference's arithmetic on the source pixels: float64 (integers) or float32

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Values in [0, 1], computed as the reference's numpy arithmetic does."""
        dtype = np.dtype(self.precision)
        lo, hi = (dtype.type(v) for v in (self.scale if self.scale is not None else (self.low, self.high)))
        clipped = np.clip(np.asarray(values, dtype=dtype), dtype.type(self.low), dtype.type(self.high))
        scaled = (clipped - lo) / (hi - lo) if hi > lo else np.zeros_like(clipped)
        if self.keep_zero:
            scaled[np.asarray(values) == 0] = 0.0
        return scaled

    def to_json(self) -> dict:
        out = {"low": float(self.low), "high": float(self.high), "source": self.source}
        if self.scale is not None:
            out["scaled_from"] = [float(self.scale[0]), float(self.scale[1])]
        if self.keep_zero:
            out["zero_stays_zero"] = True
        return out


def precision_of(dtype) -> str:
    """The precision numpy's arithmetic has on pixels of ``dtype``, as the reference computes on them."""
    return "float32" if np.dtype(dtype) in (np.float16, np.float32) else "float64"


def _scaled(volume: np.ndarray, low: float, high: float, source: str, keep_zero: bool = False,
            precision: str | None = None) -> Window:
    """The window with the clipped volume's own minimum and maximum as its scale (the reference's)."""
    precision = precision or precision_of(volume.dtype)
    if volume.size == 0:
        return Window(low, high, source, None, keep_zero, precision)
    vmin, vmax = float(np.min(volume)), float(np.max(volume))
    return Window(low, high, source, (min(max(vmin, low), high), min(max(vmax, low), high)), keep_zero, precision)


def dicom_window(meta: dict) -> tuple | None:
    """``(low, high)`` from a series' WindowCenter/WindowWidth (the first value when several)."""
    center, width = meta.get("dicom_window_center"), meta.get("dicom_window_width")
    if center is None or width is None or not float(width) > 0:
        return None
    return float(center) - float(width) / 2.0, float(center) + float(width) / 2.0


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


def choose_window(volume: np.ndarray, modality: str, window: WindowSpec = None, precision: str | None = None) -> Window:
    """Pick the window for ``volume`` given its modality and an optional request value.

    ``window`` may be a CT preset name, ``[low, high]`` in the volume's own units, or
    ``"percentile"`` / ``None`` for the modality default. ``precision``: of the source pixels'
    arithmetic (see :func:`precision_of`; default from ``volume``'s own dtype).
    """
    precision = precision or precision_of(volume.dtype)
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
        return _scaled(volume, low, high, "request [low, high]", precision=precision)

    if isinstance(window, str) and window not in ("", "auto", "percentile"):
        if window == "dicom":
            raise WindowError("window 'dicom': this image carries no DICOM WindowCenter/WindowWidth")
        if window not in CT_WINDOW_PRESETS:
            names = ", ".join(sorted(CT_WINDOW_PRESETS) + ["dicom"])
            raise WindowError(f"unknown window preset {window!r}; known: {names}")
        low, high = CT_WINDOW_PRESETS[window]
        return _scaled(volume, low, high, f"CT preset {window}", precision=precision)

    if modality == "CT" and window != "percentile":
        low, high = CT_WINDOW_PRESETS[DEFAULT_CT_PRESET]
        return _scaled(volume, low, high, f"CT preset {DEFAULT_CT_PRESET}", precision=precision)

    p_low, p_high = DEFAULT_PERCENTILES
    mr = modality == "MR"
    sample = volume[volume > 0] if mr else volume.ravel()
    if sample.size == 0:  # an MR of zeros only
        return Window(0.0, 1.0, f"{modality}: no non-zero voxel", (0.0, 0.0), mr, precision)
    low, high = (float(v) for v in np.percentile(sample.astype(precision), [p_low, p_high]))
    source = f"{modality} percentiles {p_low}-{p_high}" + (" of the non-zero voxels" if mr else "")
    if high <= low:  # constant: the reference would divide by zero; every voxel becomes 0
        return Window(low, low + 1.0, source + " (constant)", (low, low), mr, precision)
    return _scaled(volume, low, high, source, keep_zero=mr, precision=precision)


AS_STORED = "8-bit frames as stored (/255), as sam2 and MedSAM2's video script read a video"


def is_8bit_loop(volume) -> bool:
    """A video or cine loop of 8-bit frames: the model sees them as stored, as every video reader gives them."""
    return bool(volume.meta.get("frames")) and volume.meta.get("source_dtype") == "uint8" and not volume.is_rgb


def model_window(volume, modality: str | None = None, window: WindowSpec = None, guess_from=None) -> tuple:
    """``(Window, modality)``: how the model sees ``volume`` (a ``volume_io.Volume``).

    ``modality``: the request's; absent or "auto", the image's declared one, else guessed from
    ``guess_from`` (default the whole array: a 2D session guesses from its plane). RGB
    images are "photo". ``window``: the request's (see :func:`choose_window`).
    """
    declared = modality if modality not in (None, "", "auto") else volume.declared_modality
    resolved = "photo" if volume.is_rgb else guess_modality(volume.array if guess_from is None else guess_from,
                                                            declared)
    precision = precision_of(volume.meta.get("source_dtype", volume.array.dtype))
    if window in (None, "", "auto") and is_8bit_loop(volume):
        return Window(0.0, 255.0, AS_STORED, (0.0, 255.0), False, precision), resolved
    if window == "dicom" and dicom_window(volume.meta) is not None:
        low, high = dicom_window(volume.meta)
        return _scaled(volume.array, low, high, "the series' DICOM window", precision=precision), resolved
    return choose_window(volume.array, resolved, window, precision), resolved
