"""2D segmentation with sam2's image predictor: photographs, radiographs, single slices."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor

from .precision import autocast_for
from .frames import SliceFrames, image_to_slice
from .model_source import ModelSource
from .prompts import LabelPrompts
from .predictor import network_lock
from .sessions import RecentReads, SessionLimits, SessionStore, image_stamp, window_key
from .volume_io import Volume, load_image
from .windowing import choose_window, guess_modality


SESSION_KIND = "2d"


@dataclass
class ImageSession:
    """An image whose embedding is computed once; later clicks only run the decoder."""

    key: tuple
    stamp: tuple
    model_version: int
    window_key: tuple
    volume: Volume
    slice_index: int
    predictor: SAM2ImagePredictor
    window: dict
    modality: str
    last_used: float = field(default_factory=time.monotonic)

    def memory_bytes(self) -> int:
        feats = self.predictor._features or {}
        tensors = [feats.get("image_embed")] + list(feats.get("high_res_feats", []))
        return self.volume.array.nbytes + sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class ImageResult:
    mask: np.ndarray  # bool [i, j] of the segmented plane
    slice_index: int
    predicted_iou: float
    volume: Volume
    window: dict
    modality: str
    timings: dict
    random_weights: bool
    checkpoint: str
    embedding_reused: bool


class ImageSegmenter:
    """2D sessions; pass the 3D segmenter's ``sessions`` so one memory budget covers both kinds."""

    def __init__(self, models: ModelSource, limits: SessionLimits | None = None,
                 sessions: SessionStore | None = None):
        self.models = models
        self.sessions = sessions if sessions is not None else SessionStore(limits or SessionLimits())
        self._reads = RecentReads()

    def volume(self, image) -> Volume:
        """The image as ``segment`` will see it; a path is read again only when the file changed."""
        if isinstance(image, Volume):
            return image
        return self._reads.get(image, load_image)

    def segment(
        self,
        image,
        prompts: LabelPrompts,
        session_key: tuple = ("default",),
        slice_index: int | None = None,
        window=None,
        modality: str | None = None,
    ) -> ImageResult:
        """Segment one structure on a 2D image, or on slice ``slice_index`` of a volume."""
        key = (SESSION_KIND, *session_key, slice_index)  # beside 3D sessions in one store
        with self.sessions.locked(key):
            return self._segment(image, prompts, key, slice_index, window, modality)

    def _segment(self, image, prompts, key, slice_index, window, modality) -> ImageResult:
        timings: dict = {}
        started = time.perf_counter()
        loaded = self.models.get()
        session = self.sessions.get(key)
        if (
            session is None
            or session.model_version != loaded.version
            or session.stamp != image_stamp(image)
            or session.window_key != window_key(window, modality)
        ):
            session = self._open(key, image, loaded, slice_index, window, modality, timings)
            reused = False
        else:
            reused = True
        frame = prompts.by_frame().get(session.slice_index)
        if frame is None:
            raise ValueError(f"no prompt on slice {session.slice_index}")
        t0 = time.perf_counter()
        points = np.asarray(frame.points, np.float32).reshape(-1, 2) if frame.points else None
        labels = np.asarray(frame.labels, np.int32) if frame.points else None
        box = np.asarray(frame.box, np.float32) if frame.box is not None else None
        single_click = box is None and len(frame.points) == 1
        with network_lock(loaded.model), torch.inference_mode(), autocast_for(self.models.device):
            masks, ious, _ = session.predictor.predict(
                point_coords=points, point_labels=labels, box=box, multimask_output=single_click
            )
        best = int(np.argmax(ious))
        timings["decode"] = time.perf_counter() - t0
        self.sessions.put(session)
        timings["total"] = time.perf_counter() - started
        return ImageResult(
            mask=image_to_slice(masks[best] > 0),
            slice_index=session.slice_index,
            predicted_iou=float(ious[best]),
            volume=session.volume,
            window=session.window,
            modality=session.modality,
            timings={k: round(v, 4) for k, v in timings.items()},
            random_weights=loaded.random_weights,
            checkpoint=loaded.checkpoint,
            embedding_reused=reused,
        )

    def _open(self, key, image, loaded, slice_index, window, modality, timings) -> ImageSession:
        t0 = time.perf_counter()
        volume = self.volume(image)
        timings["load"] = time.perf_counter() - t0
        if volume.is_3d:
            if slice_index is None or not 0 <= slice_index < volume.num_slices:
                raise ValueError(f"slice {slice_index} is not in [0, {volume.num_slices - 1}] for this volume")
            plane = volume.array[:, :, slice_index]
        else:
            plane, slice_index = volume.array, 0
        declared = modality if modality not in (None, "", "auto") else volume.declared_modality
        resolved = "photo" if volume.is_rgb else guess_modality(plane, declared)
        chosen = choose_window(volume.array, resolved, window)
        frames = SliceFrames(plane, chosen, loaded.model.image_size, is_rgb=volume.is_rgb)
        image01 = frames.image01(0)
        if image01.ndim == 2:
            image01 = np.repeat(image01[:, :, None], 3, axis=2)
        t0 = time.perf_counter()
        predictor = SAM2ImagePredictor(loaded.model)
        # sam2 assumes 1024 px input here; MedSAM2 runs at 512, so give the real feature sizes
        size = loaded.model.image_size
        predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        with network_lock(loaded.model), torch.inference_mode(), autocast_for(self.models.device):
            predictor.set_image(image01)
        timings["encode"] = time.perf_counter() - t0
        return ImageSession(
            key=key,
            stamp=image_stamp(image),
            model_version=loaded.version,
            window_key=window_key(window, modality),
            volume=volume,
            slice_index=slice_index,
            predictor=predictor,
            window=chosen.to_json() if not volume.is_rgb else {"source": "RGB 0-255"},
            modality=resolved,
            last_used=time.monotonic(),
        )
