"""One-prompt segmentation in 3D: a labelled study in SAM 2's memory segments another study.

For each target study:

1. The supports (labelled studies) most like the target are chosen
   (:mod:`.support_selection`); from each, several slices spanning the structure.
2. One in-memory frame sequence holds those support slices, each with its mask as a
   conditioning frame, followed by the target's slices (:mod:`.memory_frames`).
3. Every target slice (or every n-th, then the neighbours of the best) is segmented from
   the support memory alone; the one the model is most sure of is the starting slice.
   If the model sees the structure nowhere, the result is empty and says so.
4. From the starting slice the mask is carried through the target both ways, each way as
   its own sequence (supports first, then the target's slices in that direction's order),
   so the supports precede every target slice in both passes, as sam2's memory expects.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .precision import autocast_for
from .frames import SliceFrames, image_to_slice, slice_to_image
from .memory_frames import (
    FrameSource,
    MemoryFrames,
    add_support_mask,
    embedding,
    frame_confidence,
    predict_from_memory,
)
from .model_source import ModelSource
from .one_prompt_images import QueryResult, segment_queries
from .propagation import AbsenceRun, Cancelled, EarlyStop, PassReport, slice_steps
from .protocols import default_protocol, input_resampling
from .results import RunInfo, slice_score
from .study_memory import EncodedImage, StudyMemory
from .support_selection import SupportChoice, choose_supports, spanning_slices
from .volume_io import Volume
from .windowing import Window, model_window

logger = logging.getLogger(__name__)


class OnePromptError(ValueError):
    """The supports cannot be used (empty, wrong shape, none left): the request is refused."""


@dataclass
class Support:
    """A labelled study: ``mask`` (bool, the volume's shape) marks the structure to find."""

    name: str
    volume: Volume
    mask: np.ndarray
    slices: list = field(default_factory=list)  # filled in: the slices used as memory
    modality: str = ""  # filled in: as guessed from the image


@dataclass
class OnePromptSettings:
    slices_per_support: int = 3
    max_supports: int = 2
    max_probes: int = 24  # target slices scored from the support memory to find the start
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    feature_cache_mb: float = 2048.0  # without the app's StudyMemory: the bound of this segmenter's own caches
    cpu_bf16: str = "off"  # as the engine's (see precision.py)


@dataclass
class OnePromptResult:
    mask: np.ndarray  # bool, the target's shape
    found: bool
    confidence: float  # mean per-slice confidence over the slices in the mask; 0 if empty
    start_slice: int | None
    probes: dict  # target slice -> confidence from the support memory alone
    slices: dict  # target slice -> SliceScore (with confidence)
    supports: list  # SupportChoice per candidate: name, similarity, used, reason, slices
    passes: list  # PassReport per direction
    window: Window
    modality: str
    run: RunInfo | None = None
    warnings: list = field(default_factory=list)


@dataclass
class OnePromptImagesResult:
    support_mask: np.ndarray  # the support's mask as used (given, or made from the prompt)
    queries: list  # QueryResult per query image, in order
    run: RunInfo


@dataclass
class OnePromptImageResult:
    """A 2D target segmented from one 2D support."""

    query: QueryResult  # its mask is the target image's [i, j]
    window: Window  # the target's
    modality: str
    supports: list  # SupportChoice per candidate
    run: RunInfo


class OnePromptSegmenter:
    """``memory``: the app's one StudyMemory, so one-prompt's encoded
    slices are the sessions' (a target a clinician opened is not encoded again) and count in their
    memory budget; without it, a store of its own."""

    def __init__(self, models: ModelSource, settings: OnePromptSettings | None = None,
                 memory: StudyMemory | None = None, protocol: str | None = None):
        self.models = models
        self.settings = settings or OnePromptSettings()
        self.memory = memory if memory is not None else StudyMemory(feature_cache_mb=self.settings.feature_cache_mb,
                                                                    cpu_bf16=self.settings.cpu_bf16)
        # slices as the interactive engine makes them (its protocol's resampling): one-prompt shares them
        self.resampling = input_resampling(protocol or default_protocol(getattr(models, "preset", None)))
        self._lock = threading.Lock()  # one whole-study search at a time: it must not crowd out clicks

    def segment_volume(self, target, supports: list, window=None, modality=None,
                       settings: OnePromptSettings | None = None,
                       cancelled: threading.Event | None = None, volume: Volume | None = None) -> OnePromptResult:
        """``target``: the study's file (its encoded slices shared with sessions on it) or a Volume.
        ``cancelled``: once set, the search stops at its next slice (raises ``Cancelled``);
        ``volume``: the file as the caller has already read it (else read here)."""
        settings = settings or self.settings
        volume = volume if volume is not None else self.memory.read(target)
        if not volume.is_3d:
            raise OnePromptError(f"target must be a 3D volume, got shape {list(volume.array.shape)}")
        usable, rejected = _check_supports(supports, settings.slices_per_support)
        started = time.perf_counter()
        timings: dict = {}
        loaded = self.models.get()
        with self._lock, torch.inference_mode(), autocast_for(self.models.device, settings.cpu_bf16):
            target_image = self.memory.encoded(target, loaded, window, modality, owner=("one-prompt",), volume=volume,
                                               resampling=self.resampling)
            run = _Run(loaded, self.memory, target_image, window, settings, timings, cancelled, self.resampling)
            try:
                choices = run.choose(usable, rejected)
                result = run.segment([s for s in usable if s.name in {c.name for c in choices if c.used}])
            finally:
                run.release_supports()
        timings["total"] = time.perf_counter() - started
        result.supports = choices
        result.run = RunInfo.of(loaded, "one-prompt", timings)
        return result

    def segment_image(self, target: Volume, supports: list, window=None, modality=None) -> OnePromptImageResult:
        """A 2D target from the first 2D support (by the given order), each windowed for the model."""
        flat = [s for s in supports if not s.volume.is_3d]
        if not flat:
            raise OnePromptError("the target is a 2D image but no support study is 2D")
        support = flat[0]
        size = self.models.get().model.image_size
        images = []
        for volume in (support.volume, target):
            chosen, _ = model_window(volume, modality, window)
            images.append((SliceFrames(volume.array, chosen, size, is_rgb=volume.is_rgb).image01(0), chosen))
        result = self.segment_images(images[0][0], [images[1][0]], support_mask=slice_to_image(support.mask))
        query = result.queries[0]
        query.mask = image_to_slice(query.mask)
        choices = [SupportChoice(s.name, None, s is support, "first 2D support" if s is support
                                 else "one support per 2D image") for s in supports]
        return OnePromptImageResult(query, images[1][1], "photo" if target.is_rgb else "image", choices, result.run)

    def segment_images(self, support_image01, queries: list, support_mask=None, prompt=None) -> OnePromptImagesResult:
        """2D: the support image with a mask or prompt; each query image's mask and confidence.

        Images are ``[rows, cols]`` (or ``[rows, cols, 3]``) in [0, 1]; masks are images too.
        """
        timings: dict = {}
        started = time.perf_counter()
        loaded = self.models.get()
        call = np.zeros(0)  # the call's encodings count in the budget while it runs, then go
        cache = self.memory.call_cache(loaded, call)
        try:
            with self._lock, torch.inference_mode(), autocast_for(self.models.device, self.settings.cpu_bf16):
                support_mask, results = segment_queries(
                    loaded.model, cache, support_image01, queries, support_mask, prompt,
                    self.settings.early_stop.score_threshold, timings,
                )
        finally:
            self.memory.release(cache)
        timings["total"] = time.perf_counter() - started
        return OnePromptImagesResult(support_mask, results, RunInfo.of(loaded, "one-prompt", timings))


def _check_supports(supports: list, per_support: int) -> tuple:
    """(usable supports with their slices, name -> why not usable); refuses if none is usable."""
    if not supports:
        raise OnePromptError("no support study: one-prompt segmentation needs at least one labelled study")
    usable, rejected = [], {}
    for support in supports:
        if not support.volume.is_3d:
            rejected[support.name] = f"not a 3D volume (shape {list(support.volume.array.shape)})"
        elif tuple(support.mask.shape) != tuple(support.volume.array.shape):
            rejected[support.name] = f"label shape {list(support.mask.shape)} != image {list(support.volume.array.shape)}"
        elif not support.mask.any():
            rejected[support.name] = "its label is empty"
        else:
            support.slices = spanning_slices(support.mask, per_support)
            usable.append(support)
    if not usable:
        reasons = "; ".join(f"{name}: {why}" for name, why in rejected.items())
        raise OnePromptError(f"no usable support study ({reasons})")
    return usable, rejected


class _Run:
    """One target study's one-prompt segmentation (state shared by its steps)."""

    def __init__(self, loaded, memory: StudyMemory, target: EncodedImage, window, settings: OnePromptSettings,
                 timings: dict, cancelled: threading.Event | None = None, resampling: str = "medsam2"):
        self.loaded = loaded
        self.cancelled = cancelled
        self.predictor = loaded.model
        self.memory = memory
        self.resampling = resampling
        self.settings = settings
        self.timings = timings
        self.window_spec = window
        self.window, self.modality = target.window, target.modality
        self.target = target.frames
        self.shape = target.volume.array.shape
        self.sources = {("target", k): self._source(("target", k), target, k) for k in range(len(self.target))}
        self.support_masks: dict = {}  # name -> mask image [rows, cols]
        self.support_caches: list = []

    def release_supports(self) -> None:
        for cache in self.support_caches:
            self.memory.release(cache)

    @staticmethod
    def _source(name: tuple, image: EncodedImage, k: int) -> FrameSource:
        frames = image.frames
        return FrameSource(name, lambda: frames.image01(k), image.cache, frames.key(k), lambda: frames[k])

    def _frames(self, names: list) -> MemoryFrames:
        rows, cols = self.target.video_height, self.target.video_width
        return MemoryFrames([self.sources[n] for n in names], self.predictor.image_size, rows, cols)

    def _add_support(self, support: Support) -> list:
        # the run's own cache (supports are read for this request): freed when it ends
        image = self.memory.encoded(support.volume, self.loaded, self.window_spec, None,
                                    owner=("one-prompt", id(self)), private=True, resampling=self.resampling)
        self.support_caches.append(image.cache)
        names = []
        for k in support.slices:
            name = ("support", support.name, k)
            self.sources[name] = self._source(name, image, k)
            self.support_masks[name] = slice_to_image(support.mask[:, :, k])
            names.append(name)
        support.modality = image.modality
        return names

    # -- 1. which supports ------------------------------------------------------------
    def choose(self, supports: list, rejected: dict) -> list:
        t0 = time.perf_counter()
        keys = {s.name: self._add_support(s) for s in supports}
        not_usable = [SupportChoice(name, None, False, why) for name, why in rejected.items()]
        if len(supports) == 1:  # nothing to choose between: skip the descriptors
            only = supports[0]
            return [SupportChoice(only.name, None, True, "the only usable support", only.slices)] + not_usable
        sampled = np.unique(np.linspace(0, len(self.target) - 1, min(8, len(self.target))).round().astype(int))
        catalog = self._frames([*(("target", int(k)) for k in sampled), *(k for ks in keys.values() for k in ks)])
        descriptors = [embedding(self.predictor, catalog, i) for i in range(len(catalog))]
        target_desc = torch.stack(descriptors[: len(sampled)])
        offset, candidates = len(sampled), {}
        for name, ks in keys.items():
            candidates[name] = torch.stack(descriptors[offset: offset + len(ks)])
            offset += len(ks)
        excluded = {}
        if any(s.modality == self.modality for s in supports):
            excluded = {s.name: f"modality {s.modality}, target is {self.modality}"
                        for s in supports if s.modality != self.modality}
        choices = choose_supports(candidates, target_desc, self.settings.max_supports, excluded=excluded)
        for choice in choices:
            choice.slices = next(s.slices for s in supports if s.name == choice.name)
        self.timings["choose_supports"] = time.perf_counter() - t0
        return choices + not_usable

    def _state(self, support_keys: list, target_slices: list) -> tuple:
        frames = self._frames([*support_keys, *(("target", k) for k in target_slices)])
        state = self.predictor.init_state_from_frames(frames, frames.caches)
        for index, key in enumerate(support_keys):
            add_support_mask(self.predictor, state, index, self.support_masks[key])
        self.predictor.propagate_in_video_preflight(state)  # encodes the support memory
        return state, len(support_keys)

    # -- 2-4. find the start, propagate both ways -------------------------------------
    def segment(self, supports: list) -> OnePromptResult:
        support_keys = [("support", s.name, k) for s in supports for k in s.slices]
        num = len(self.target)
        t0 = time.perf_counter()
        state, first = self._state(support_keys, list(range(num)))
        probes = self._probe(state, first, num)
        self.timings["find_start"] = time.perf_counter() - t0
        start = max(probes, key=lambda k: (probes[k].confidence, -k))
        best = probes[start]
        result = OnePromptResult(
            mask=np.zeros(self.shape, dtype=bool), found=False, confidence=0.0, start_slice=None,
            probes={k: round(p.confidence, 4) for k, p in sorted(probes.items())}, slices={}, supports=[],
            passes=[], window=self.window, modality=self.modality,
        )
        rows, cols = self.target.video_height, self.target.video_width
        if best.object_score <= self.settings.early_stop.score_threshold or not best.mask(rows, cols).any():
            result.warnings.append("the support's structure was not found on any target slice; the mask is empty")
            return result
        result.found, result.start_slice = True, start

        t0 = time.perf_counter()
        outputs = {}
        self._pass(state, first + start, lambda idx: idx - first, "forward", start, outputs, result.passes)
        if start > 0:
            order = list(range(start, -1, -1))
            back_state, first = self._state(support_keys, order)
            self._pass(back_state, first, lambda idx: order[idx - first], "backward", start, outputs, result.passes)
        self.timings["propagation"] = time.perf_counter() - t0

        confidences = []
        for k, out in sorted(outputs.items()):
            result.mask[:, :, k] = image_to_slice(out.mask)
            conf = frame_confidence(out.object_score, out.predicted_iou)
            area = int(out.mask.sum())
            if area:
                confidences.append(conf)
            result.slices[k] = slice_score(out, area, conf)
        result.confidence = round(float(np.mean(confidences)), 4) if confidences else 0.0
        result.found = bool(result.mask.any())
        return result

    def _check_cancelled(self) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise Cancelled("one-prompt search stopped by its caller")

    def _predict(self, state: dict, index: int):
        self._check_cancelled()
        return predict_from_memory(self.predictor, state, index)

    def _probe(self, state: dict, first: int, num: int) -> dict:
        stride = max(1, math.ceil(num / self.settings.max_probes))
        probes = {k: self._predict(state, first + k) for k in range(0, num, stride)}
        if stride > 1:
            best = max(probes, key=lambda k: probes[k].confidence)
            for k in range(max(0, best - stride + 1), min(num, best + stride)):
                if k not in probes:
                    probes[k] = self._predict(state, first + k)
        return probes

    def _pass(self, state, start_idx: int, to_slice, direction: str, start: int, outputs: dict, passes: list):
        report = PassReport(direction, start)
        absence = AbsenceRun(self.settings.early_stop)
        with slice_steps(self.predictor, state, start_idx) as steps:
            for frame_idx, out in steps:
                self._check_cancelled()
                k = to_slice(frame_idx)
                outputs[k] = out
                report.last, report.slices = k, report.slices + 1
                if absence.stops_after(out):
                    report.stopped_early = True
                    break
        passes.append(report)
