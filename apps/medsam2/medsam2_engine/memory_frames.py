"""Support images with their masks as SAM 2 conditioning frames, ahead of the images to segment.

One-prompt segmentation puts labelled images (the support) and unlabelled images (the
query or target) into one in-memory frame sequence: the support frames carry masks and
become conditioning frames, so every other frame attends to their memory. Frames come
from different images, so each is encoded through its own image's cache: the same slice
placed in two sequences, or already encoded for a session on its image, is encoded once.

A query frame's own prediction from the support memory alone (no neighbouring query
frames) is :func:`predict_from_memory`; it stores nothing in the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .frames import to_model_input
from .feature_cache import FeatureCache
from .propagation import OBJ_ID


@dataclass
class FrameSource:
    """One frame of a memory sequence: where its image comes from and which cache keeps its encoding."""

    name: tuple  # the frame's name in the sequence, e.g. ("support", "study-3", k) or ("target", k)
    image01: Callable[[], np.ndarray]  # the image in [0, 1], [rows, cols] or [rows, cols, 3]
    cache: FeatureCache  # the cache of the image the frame comes from (study_memory.py)
    cache_key: tuple | None = None  # its key there (``SliceFrames.key``); None: ``name``
    model_input: Callable[[], torch.Tensor] | None = None  # as its image's sessions see it; None: image01 resized


class MemoryFrames:
    """Frames from several images as one sequence; all outputs come back at one video size.

    Each frame is resized to the model's square input on its own, so support images need
    not share the target's size; ``video_height``/``video_width`` only set the resolution
    of the masks sam2 returns (the target's slice size). Each frame is encoded through its
    own image's cache (:attr:`caches`), so a slice a session on that image already encoded
    is not encoded again.
    """

    in_memory_frames = True  # recognised by VolumePredictor.init_state_from_frames

    def __init__(self, sources: list, image_size: int, video_height: int, video_width: int):
        if not sources:
            raise ValueError("a memory frame sequence needs at least one frame")
        self.sources = list(sources)
        self.image_size = int(image_size)
        self.video_height = int(video_height)
        self.video_width = int(video_width)
        self._by_name = {source.name: source for source in self.sources}
        self.caches = _SourceCaches(self._by_name)

    def __len__(self) -> int:
        return len(self.sources)

    def key(self, index: int) -> tuple:
        return self.sources[index].name

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        source = self.sources[index]
        if source.model_input is not None:
            return source.model_input()
        return to_model_input(source.image01(), self.image_size)


class _SourceCaches:
    """The caches of a memory sequence's frames, looked up by frame name (what sam2's passes use)."""

    def __init__(self, by_name: dict):
        self._by_name = by_name

    def get(self, name: tuple):
        source = self._by_name[name]
        return source.cache.get(source.cache_key if source.cache_key is not None else name)

    def put(self, name: tuple, backbone_out: dict) -> None:
        source = self._by_name[name]
        source.cache.put(source.cache_key if source.cache_key is not None else name, backbone_out)


def encode(predictor, frames: MemoryFrames, index: int) -> dict:
    """The image encoder's output for one frame, through the cache sam2's passes also use."""
    name = frames.key(index)
    backbone_out = frames.caches.get(name)
    if backbone_out is None:
        device = next(predictor.parameters()).device
        backbone_out = predictor.forward_image(frames[index].unsqueeze(0).to(device))
        frames.caches.put(name, backbone_out)
    return backbone_out


def embedding(predictor, frames: MemoryFrames, index: int) -> torch.Tensor:
    """A global descriptor of a frame: its coarsest encoder features averaged over space."""
    top = encode(predictor, frames, index)["backbone_fpn"][-1]
    return top.float().mean(dim=(0, 2, 3)).cpu()


def add_support_mask(predictor, state: dict, frame_idx: int, mask_image: np.ndarray) -> None:
    """Make ``frame_idx`` a conditioning frame holding ``mask_image`` ([rows, cols] bool)."""
    if not np.asarray(mask_image).any():
        raise ValueError(f"support frame {frame_idx} has an empty mask")
    predictor.add_new_mask(state, frame_idx=frame_idx, obj_id=OBJ_ID, mask=np.asarray(mask_image, dtype=bool))


def frame_confidence(object_score: float, predicted_iou: float | None) -> float:
    """P(object present) x predicted IoU, in [0, 1]: one number to rank frames and report."""
    present = 1.0 / (1.0 + np.exp(-np.clip(object_score, -50.0, 50.0)))
    iou = 1.0 if predicted_iou is None else float(np.clip(predicted_iou, 0.0, 1.0))
    return float(present * iou)


@dataclass
class MemoryPrediction:
    logits: torch.Tensor  # low-resolution mask logits (1, 1, h, w)
    object_score: float  # sam2's object-present logit
    predicted_iou: float | None

    @property
    def confidence(self) -> float:
        return frame_confidence(self.object_score, self.predicted_iou)

    def mask(self, rows: int, cols: int) -> np.ndarray:
        """The mask at ``rows x cols`` (bool image), upsampled from the decoder's logits."""
        logits = F.interpolate(self.logits.float(), size=(rows, cols), mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0.0).cpu().numpy()


def predict_from_memory(predictor, state: dict, frame_idx: int) -> MemoryPrediction:
    """Segment a non-conditioning frame from the conditioning frames' memory only.

    Call after the support masks are in and ``propagate_in_video_preflight`` has encoded
    their memory. Nothing is stored, so probing one frame does not influence another.
    """
    obj_output = state["output_dict_per_obj"][0]
    if frame_idx in obj_output["cond_frame_outputs"]:
        raise ValueError(f"frame {frame_idx} is a support frame, not a query")
    out, _ = predictor._run_single_frame_inference(
        inference_state=state,
        output_dict={"cond_frame_outputs": obj_output["cond_frame_outputs"], "non_cond_frame_outputs": {}},
        frame_idx=frame_idx,
        batch_size=1,
        is_init_cond_frame=False,
        point_inputs=None,
        mask_inputs=None,
        reverse=False,
        run_mem_encoder=False,
    )
    iou = out.get("predicted_iou")
    return MemoryPrediction(
        logits=out["pred_masks"],
        object_score=float(out["object_score_logits"].flatten()[0]),
        predicted_iou=None if iou is None else float(iou.flatten()[0]),
    )
