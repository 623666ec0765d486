"""2D segmentation with sam2's image predictor: photographs, radiographs, single slices.

The same shape as the 3D engine: ``with segmenter.open(key, image) as session:`` then
``segmenter.segment(session, prompts, slice_index)``.
"""

from __future__ import annotations

import copy
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor

from .precision import autocast_for
from .frames import SliceFrames, image_to_slice
from .model_source import ModelSource
from .prompts import LabelPrompts
from .predictor import network_lock
from .results import RunInfo
from .sessions import SessionLimits, image_stamp, window_key
from .study_memory import StudyMemory
from .volume_io import Volume, load_image
from .windowing import Window, model_window

if TYPE_CHECKING:
    from .model_source import LoadedModel


SESSION_KIND = "2d"


@dataclass
class ImageSession:
    """A 2D image, or one plane of a volume, whose embedding is computed once; later clicks only
    run the decoder. Made by :meth:`ImageSegmenter.open`, which holds its lock."""

    key: tuple
    stamp: tuple
    model: LoadedModel
    window_key: tuple
    volume: Volume
    started: str = "new"
    load_seconds: float = 0.0
    requests: int = 0
    slice_index: int | None = None  # the plane encoded (0 for a 2D image); None: none yet
    predictor: SAM2ImagePredictor | None = None
    window: Window | None = None  # None: an RGB image, taken as it is (0-255)
    modality: str = ""
    last_used: float = field(default_factory=time.monotonic)

    @property
    def model_version(self) -> int:
        return self.model.version

    feature_cache: None = None  # its one embedding lives in its predictor, shared with no session

    def memory_bytes(self) -> int:
        return self.private_bytes() + sum(self.shared_bytes().values())

    def private_bytes(self) -> int:
        """Its embedding (the plane encoded)."""
        feats = (self.predictor._features if self.predictor is not None else None) or {}
        tensors = [feats.get("image_embed")] + list(feats.get("high_res_feats", []))
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def shared_bytes(self) -> dict:
        """The image's array, by identity (a volume read once may be held by its 3D sessions too)."""
        return {id(self.volume.array): self.volume.array.nbytes}


@dataclass
class ImageResult:
    mask: np.ndarray  # bool [i, j] of the segmented plane
    slice_index: int
    predicted_iou: float
    volume: Volume
    window: Window | None  # None: an RGB image, taken as it is (0-255)
    modality: str
    run: RunInfo
    embedding_reused: bool


class ImageSegmenter:
    """2D segmentation as a service; pass the app's ``memory`` so one budget covers every kind of session."""

    def __init__(self, models: ModelSource, limits: SessionLimits | None = None,
                 memory: StudyMemory | None = None, cpu_bf16: str = "off"):
        self.models = models
        self.memory = memory if memory is not None else StudyMemory(limits or SessionLimits())
        self.cpu_bf16 = cpu_bf16  # as the 3D engine's (see precision.py)
        self._template: SAM2ImagePredictor | None = None  # see _predictor_for
        self._template_lock = threading.Lock()

    @contextmanager
    def open(self, key: tuple, image, window=None, modality: str | None = None) -> Iterator[ImageSession]:
        """The session of ``key`` on ``image`` (path or Volume); its lock is held until the block ends."""
        key = (SESSION_KIND, *key)  # beside 3D sessions in one store
        with self.memory.locked(key):
            loaded = self.models.get()
            session = self.memory.get(key)
            if (
                session is None
                or session.model_version != loaded.version
                or session.stamp != image_stamp(image)
                or session.window_key != window_key(window, modality)
            ):
                t0 = time.perf_counter()
                volume = image if isinstance(image, Volume) else load_image(image)
                session = ImageSession(key=key, stamp=image_stamp(image), model=loaded,
                                       window_key=window_key(window, modality), volume=volume,
                                       load_seconds=time.perf_counter() - t0)
            yield session

    def run(self, image, prompts: LabelPrompts, session_key: tuple = ("default",), slice_index: int | None = None,
            window=None, modality: str | None = None) -> ImageResult:
        """``open`` then ``segment``, for callers whose prompts need no check against the image."""
        with self.open(session_key, image, window, modality) as session:
            return self.segment(session, prompts, slice_index)

    def segment(self, session: ImageSession, prompts: LabelPrompts, slice_index: int | None = None) -> ImageResult:
        """Segment one structure on a 2D image, or on slice ``slice_index`` of a volume."""
        timings: dict = {"load": session.load_seconds} if session.requests == 0 else {}
        started = time.perf_counter()
        volume = session.volume
        if volume.is_3d:
            if slice_index is None or not 0 <= slice_index < volume.num_slices:
                raise ValueError(f"slice {slice_index} is not in [0, {volume.num_slices - 1}] for this volume")
        else:
            slice_index = 0
        reused = session.slice_index == slice_index
        if not reused:
            self._encode(session, slice_index, timings)
        frame = prompts.by_frame().get(session.slice_index)
        if frame is None:
            raise ValueError(f"no prompt on slice {session.slice_index}")
        t0 = time.perf_counter()
        points = np.asarray(frame.points, np.float32).reshape(-1, 2) if frame.points else None
        labels = np.asarray(frame.labels, np.int32) if frame.points else None
        box = np.asarray(frame.box, np.float32) if frame.box is not None else None
        single_click = box is None and len(frame.points) == 1
        with network_lock(session.model.model), torch.inference_mode(), autocast_for(self.models.device,
                                                                                     self.cpu_bf16):
            masks, ious, _ = session.predictor.predict(
                point_coords=points, point_labels=labels, box=box, multimask_output=single_click
            )
        best = int(np.argmax(ious))
        timings["decode"] = time.perf_counter() - t0
        session.requests += 1
        self.memory.put(session)
        timings["total"] = time.perf_counter() - started + timings.get("load", 0.0)
        return ImageResult(
            mask=image_to_slice(masks[best] > 0),
            slice_index=session.slice_index,
            predicted_iou=float(ious[best]),
            volume=volume,
            window=session.window,
            modality=session.modality,
            run=RunInfo.of(session.model, "sam2 image predictor", timings),
            embedding_reused=reused,
        )

    def _predictor_for(self, model) -> SAM2ImagePredictor:
        """A fresh predictor over ``model``: a copy of one built once per model.

        Building one runs ``torch.jit.script`` (its transforms), which fails when two threads
        do it at once ("Can't redefine method: forward"); a shallow copy shares the scripted
        transforms and the network and owns its image state.
        """
        with self._template_lock:
            template = self._template
            if template is None or template.model is not model:
                template = SAM2ImagePredictor(model)
                # sam2 assumes 1024 px input here; MedSAM2 runs at 512, so give the real feature sizes
                size = model.image_size
                template._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
                self._template = template
        predictor = copy.copy(template)
        predictor.reset_predictor()
        return predictor

    def _encode(self, session: ImageSession, slice_index: int, timings: dict) -> None:
        """The plane's embedding, windowed for the model (a later click on it only decodes)."""
        volume, loaded = session.volume, session.model
        plane = volume.array[:, :, slice_index] if volume.is_3d else volume.array
        window, modality = session.window_key
        chosen, resolved = model_window(volume, modality, window, guess_from=plane)
        frames = SliceFrames(plane, chosen, loaded.model.image_size, is_rgb=volume.is_rgb)
        image01 = frames.image01(0).astype(np.float32)  # windowed exactly (float64 for integer pixels)
        if image01.ndim == 2:
            image01 = np.repeat(image01[:, :, None], 3, axis=2)
        t0 = time.perf_counter()
        predictor = self._predictor_for(loaded.model)
        with network_lock(loaded.model), torch.inference_mode(), autocast_for(self.models.device, self.cpu_bf16):
            predictor.set_image(image01)
        timings["encode"] = time.perf_counter() - t0
        session.slice_index, session.predictor = slice_index, predictor
        session.window = None if volume.is_rgb else chosen
        session.modality = resolved
