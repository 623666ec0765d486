"""Training samples as SAM 2 sees them at inference: clips of consecutive slices.

Each sample is a window of ``clip_length`` consecutive slices that starts on a slice
containing at least one structure, read forward or backward (inference propagates both
ways). Every label present on the first frame becomes one SAM 2 object; frames where it
has ended stay in the clip so the object score learns when to stop. A 2D image is a
one-frame clip. Samples come out as sam2's own ``BatchedVideoDatapoint``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from training.utils.data_utils import Frame, Object, VideoDatapoint, collate_fn

from ..frames import SliceFrames, slice_to_image
from .cases import Case


@dataclass(frozen=True)
class ClipRef:
    case_index: int
    start: int  # first slice in the volume's order
    reverse: bool


class ClipSampler:
    """Enumerates clip windows over the cases and turns one into a batch for SAM2Train."""

    def __init__(self, cases: list, image_size: int, clip_length: int = 8, stride: int | None = None,
                 max_objects: int = 3, seed: int = 0, sample_seed: int | None = None):
        if clip_length < 1:
            raise ValueError(f"clip_length must be at least 1, got {clip_length}")
        self.cases = cases
        self.image_size = int(image_size)
        self.clip_length = int(clip_length)
        self.stride = max(1, stride or self.clip_length // 2)
        self.max_objects = max(1, int(max_objects))
        # the clip order is the same in every training process (each takes its share of it);
        # which objects a crowded clip keeps may differ per process
        self.order_rng = random.Random(seed)
        self.rng = random.Random(seed if sample_seed is None else sample_seed)
        self._frames: dict = {}
        self._masks: dict = {}
        self.refs = self._enumerate()
        if not self.refs:
            raise ValueError("no training clip: no study has a labelled slice")

    def _enumerate(self) -> list:
        refs = []
        for n, case in enumerate(self.cases):
            if not case.volume.is_3d:
                refs.append(ClipRef(n, 0, False))
                continue
            labelled = np.flatnonzero(case.labels.reshape(-1, case.labels.shape[2]).any(axis=0))
            depth = case.labels.shape[2]
            length = min(self.clip_length, depth)
            lo, hi = int(labelled.min()), int(labelled.max())
            # forward clips start inside the structure and may run past its end; backward likewise
            for start in range(lo, hi + 1, self.stride):
                refs.append(ClipRef(n, min(start, depth - length), False))
            for end in range(hi, lo - 1, -self.stride):
                refs.append(ClipRef(n, max(end - length + 1, 0), True))
        return sorted(set(refs), key=lambda r: (r.case_index, r.start, r.reverse))

    def epoch(self) -> list:
        refs = list(self.refs)
        self.order_rng.shuffle(refs)
        return refs

    # -- tensors ----------------------------------------------------------------------
    def _case_frames(self, index: int) -> torch.Tensor:
        if index not in self._frames:
            case: Case = self.cases[index]
            frames = SliceFrames(case.volume.array, case.window, self.image_size, is_rgb=case.volume.is_rgb)
            self._frames[index] = frames.stack().to(torch.float16)  # half the memory; cast back per clip
        return self._frames[index]

    def _case_masks(self, index: int) -> torch.Tensor:
        """Structures per slice as images at the model's size, ``(K, S, S)`` int32 (nearest).

        Bit ``c`` of a pixel is structure ``case.values[c]``, so overlapping structures (saved
        as structures, not only as a label map) each keep every voxel.
        """
        if index not in self._masks:
            case = self.cases[index]
            if len(case.values) > 24:  # bits resized exactly through float32
                raise ValueError(f"{case.name}: {len(case.values)} structures; training takes at most 24 per study")
            labels = np.zeros(case.labels.shape, dtype=np.int32)
            for bit, value in enumerate(case.values):
                labels |= case.mask_of(value).astype(np.int32) << bit
            labels = labels[:, :, None] if labels.ndim == 2 else labels
            images = np.stack([slice_to_image(labels[:, :, k]) for k in range(labels.shape[2])])
            tensor = torch.from_numpy(images.astype(np.float32))[:, None]
            resized = F.interpolate(tensor, size=(self.image_size, self.image_size), mode="nearest")[:, 0]
            self._masks[index] = resized.to(torch.int32)
        return self._masks[index]

    def batch(self, ref: ClipRef):
        """The clip as a ``BatchedVideoDatapoint`` (or None when no object survives resizing)."""
        frames = self._case_frames(ref.case_index)
        masks = self._case_masks(ref.case_index)
        length = min(self.clip_length, frames.shape[0])
        order = list(range(ref.start, ref.start + length))
        if ref.reverse:
            order.reverse()
        first = masks[order[0]]
        values = self.cases[ref.case_index].values
        present = [v for bit, v in enumerate(values) if bool(((first >> bit) & 1).any())]
        if not present:
            return None
        if len(present) > self.max_objects:
            present = self.rng.sample(present, self.max_objects)
        height, width = self.cases[ref.case_index].labels.shape[1], self.cases[ref.case_index].labels.shape[0]
        video = VideoDatapoint(
            frames=[
                Frame(
                    data=frames[k].float(),
                    objects=[Object(object_id=v, frame_index=k, segment=((masks[k] >> values.index(v)) & 1).bool())
                             for v in present],
                )
                for k in order
            ],
            video_id=ref.case_index,
            size=(height, width),
        )
        return collate_fn([video], dict_key="medsam2")
