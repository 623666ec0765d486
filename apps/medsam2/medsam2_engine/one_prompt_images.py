"""One-prompt segmentation in 2D: one prompted image, the same structure in many others.

The support image comes first in an in-memory frame sequence, with its mask (given, or
made from points/a box) as the conditioning frame; every query image follows and is
segmented from that memory alone, so each query's mask depends on the support and on
nothing else (not on the other queries or their order). Query images may differ in
size from the support and from each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .memory_frames import FrameSource, MemoryFrames, add_support_mask, predict_from_memory
from .feature_cache import FeatureCache
from .prompts import FramePrompt
from .propagation import OBJ_ID


@dataclass
class QueryResult:
    mask: np.ndarray  # bool image [rows, cols], the query's own size
    object_score: float
    predicted_iou: float | None
    confidence: float  # P(present) x predicted IoU, see memory_frames.frame_confidence
    found: bool  # object score above ``score_threshold`` and a non-empty mask


def _image_size(image01: np.ndarray, what: str) -> tuple:
    image01 = np.asarray(image01)
    if image01.ndim not in (2, 3) or (image01.ndim == 3 and image01.shape[2] != 3):
        raise ValueError(f"{what}: expected an image [rows, cols] or [rows, cols, 3], got shape {list(image01.shape)}")
    return image01.shape[0], image01.shape[1]


def segment_queries(predictor, cache: FeatureCache, support_image01: np.ndarray, queries: list,
                    support_mask: np.ndarray | None = None, prompt: FramePrompt | None = None,
                    score_threshold: float = 0.0, timings: dict | None = None):
    """(support mask used, [QueryResult per query]); images in [0, 1], masks as images [rows, cols].

    ``cache``: where the images' encodings are kept for the call (study_memory.StudyMemory.call_cache).

    Give the support either ``support_mask`` or a ``prompt`` (points ``(x, y)`` and/or a
    box in the support image's pixels); an empty support mask is refused.
    """
    timings = timings if timings is not None else {}
    if (support_mask is None) == (prompt is None):
        raise ValueError("give the support image either a mask or a prompt (points or box), not both or neither")
    if not queries:
        raise ValueError("no query images to segment")
    rows, cols = _image_size(support_image01, "support image")
    sizes = [_image_size(q, f"query {n}") for n, q in enumerate(queries)]
    sources = [FrameSource(("support",), lambda: support_image01, cache)]
    sources += [FrameSource(("query", n), lambda q=q: q, cache) for n, q in enumerate(queries)]
    frames = MemoryFrames(sources, predictor.image_size, rows, cols)
    t0 = time.perf_counter()
    state = predictor.init_state_from_frames(frames, frames.caches)
    if support_mask is not None:
        support_mask = np.asarray(support_mask, dtype=bool)
        if support_mask.shape != (rows, cols):
            raise ValueError(f"support mask shape {list(support_mask.shape)} != support image {[rows, cols]}")
        if not support_mask.any():
            raise ValueError("the support mask is empty: nothing to look for in the query images")
        add_support_mask(predictor, state, 0, support_mask)
    else:
        points = np.asarray(prompt.points, np.float32).reshape(-1, 2) if prompt.points else None
        labels = np.asarray(prompt.labels, np.int32) if prompt.points else None
        _, _, masks = predictor.add_new_points_or_box(state, frame_idx=0, obj_id=OBJ_ID, points=points,
                                                      labels=labels, box=prompt.box)
        support_mask = (masks[0, 0] > 0.0).cpu().numpy()
        if not support_mask.any():
            raise ValueError("the support prompt gave an empty mask on the support image: prompt it again")
    predictor.propagate_in_video_preflight(state)
    timings["support"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = []
    for n, (q_rows, q_cols) in enumerate(sizes):
        pred = predict_from_memory(predictor, state, n + 1)
        mask = pred.mask(q_rows, q_cols)
        found = pred.object_score > score_threshold and bool(mask.any())
        results.append(QueryResult(mask if found else np.zeros_like(mask), pred.object_score, pred.predicted_iou,
                                   pred.confidence, found))
    timings["queries"] = time.perf_counter() - t0
    return support_mask, results
