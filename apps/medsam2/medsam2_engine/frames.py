"""Slices of a volume as SAM 2 video frames, made in memory on demand.

SAM 2's video predictor reads ``state["images"][t]`` as a ``(3, S, S)`` float tensor,
normalised with ImageNet statistics. ``SliceFrames`` provides exactly that without JPEG
folders: each slice is windowed, laid out as an image, resized to the model's
``image_size`` and normalised only when the predictor asks for it; in float, or (the
``medsam2`` protocol) through uint8 and PIL's bicubic resize, as MedSAM2's script does.

Layout: the array is ``[i, j, k]``; slice ``k`` becomes an image whose rows are ``j`` and
columns ``i`` (the usual radiological view of an ITK image), so a voxel ``(i, j)`` is the
SAM 2 point ``(x=i, y=j)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .windowing import Window

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def slice_to_image(plane: np.ndarray) -> np.ndarray:
    """``[i, j]`` or ``[i, j, c]`` plane to an image ``[rows=j, cols=i(, c)]``."""
    return np.swapaxes(plane, 0, 1)


def image_to_slice(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`slice_to_image` for a 2D mask ``[rows, cols]``."""
    return np.swapaxes(image, 0, 1)


RESAMPLING = ("float", "medsam2")


def _as_medsam2_prepares(image01: np.ndarray, image_size: int) -> torch.Tensor:
    """MedSAM2's 3D script: the windowed slice as uint8 (truncated), RGB, PIL's bicubic resize, /255."""
    as_uint8 = np.uint8(np.clip(image01, 0.0, 1.0) * 255.0)
    image = Image.fromarray(as_uint8).convert("RGB")
    resized = image.resize((image_size, image_size), Image.Resampling.BICUBIC)  # PIL's default, named
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)


def to_model_input(image01: np.ndarray, image_size: int, resampling: str = "float") -> torch.Tensor:
    """An ``[H, W]`` or ``[H, W, 3]`` image in [0, 1] to a normalised ``(3, S, S)`` tensor.

    ``resampling``: ``float`` resizes the float image (antialiased bilinear); ``medsam2``
    quantises to uint8 and resizes with PIL's bicubic, as MedSAM2's published script does.
    """
    if resampling == "medsam2":
        tensor = _as_medsam2_prepares(image01, image_size)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))
        tensor = tensor.unsqueeze(0).expand(3, -1, -1) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        tensor = F.interpolate(
            tensor.unsqueeze(0), size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


class SliceFrames:
    """A lazily computed sequence of SAM 2 frames, one per slice along the last axis."""

    in_memory_frames = True  # recognised by VolumePredictor.init_state_from_frames

    def __init__(self, array: np.ndarray, window: Window, image_size: int, is_rgb: bool = False,
                 region: tuple = (slice(None), slice(None)), resampling: str = "float"):
        if array.ndim == 2 or (is_rgb and array.ndim == 3):
            array = array[:, :, None] if not is_rgb else array[:, :, None, :]
        self._array = array
        self._window = window
        self._is_rgb = is_rgb
        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
        self.resampling = resampling
        self._region = region  # (i, j) index slices: the part of each slice these frames show
        self._region_key = tuple((s.start, s.stop) for s in region)  # slices are not hashable before 3.12
        self.image_size = int(image_size)
        # original image size of each frame, as SAM 2 names it (rows, cols)
        self.video_height = len(range(*region[1].indices(array.shape[1])))
        self.video_width = len(range(*region[0].indices(array.shape[0])))

    def cropped(self, region: tuple, image_size: int) -> "SliceFrames":
        """The same slices cut to ``region`` ((i, j) index slices), resized to ``image_size``."""
        return SliceFrames(self._array, self._window, image_size, self._is_rgb, region, self.resampling)

    def __len__(self) -> int:
        return self._array.shape[2]

    def key(self, index: int) -> tuple:
        """The frame's identity in a feature cache shared by whole slices and regions."""
        return self._region_key, int(index)

    def image01(self, index: int) -> np.ndarray:
        """The windowed slice as an image in [0, 1] (rows=j, cols=i)."""
        plane = self._array[self._region[0], self._region[1], index]
        if self._is_rgb:
            return slice_to_image(np.clip(plane / 255.0, 0.0, 1.0).astype(np.float32))
        return slice_to_image(self._window.apply(plane))

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        return to_model_input(self.image01(int(index) % len(self)), self.image_size, self.resampling)

    def stack(self) -> torch.Tensor:
        """All frames as one ``(T, 3, S, S)`` tensor (for tests and sam2's own predictor)."""
        return torch.stack([self[t] for t in range(len(self))])
