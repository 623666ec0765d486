"""The 3D engine: a volume and prompts in, one mask per label out, sessions kept between calls.

A request: ``with segmenter.open(key, image, window, modality) as session:`` reads the image
(or continues the session that has it) and holds the session's lock; the caller checks its
prompts against ``session.volume``; ``segmenter.segment(session, prompts, options)`` runs
each label's :class:`.tracks.LabelTrack` and returns a :class:`VolumeResult` (dataclasses
only; the app's tasks build the JSON). ``run`` does both for callers that have the prompts
already (batch scoring, validation, evaluation).

This module knows nothing of MONAI Label. Calls may come from several threads at once: a
session's requests run one after another (its lock), the network is held per slice step
(see :func:`.predictor.network_lock`), and nothing of a call is kept on the segmenter itself.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .crop_region import CropRegion, CropRegionSettings, choose_region, prompt_extent
from .model_source import ModelSource
from .precision import autocast_for
from .predictor import runtimes_used
from .prompts import LabelPrompts, PromptError
from .exact_stop import ExactStopReport, exact_stop_report, misses_prompted_range
from .propagation import Cancelled, CorrectionStop, EarlyStop, listening
from .protocols import check_protocol, default_protocol, label_protocol, one_state
from .results import RunInfo, slice_score
from .protocols import input_resampling
from .sessions import Session, SessionLimits, image_stamp, window_key
from .study_memory import StudyMemory
from .tracks import LabelTrack, apply_changes, diff_prompts, starts_afresh
from .volume_io import Volume
from .windowing import Window

logger = logging.getLogger(__name__)

__all__ = ["CropRegionReport", "EngineSettings", "LabelResult", "LabelTrack", "SegmentOptions", "SegmentedLabel",
           "SessionReport", "SlicePreview", "VolumeResult", "VolumeSegmenter"]


@dataclass
class SegmentOptions:
    """The protocol's departures one call runs with (each off by default, see propagation.py)."""

    early_stop: EarlyStop = field(default_factory=EarlyStop)
    correction_stop: CorrectionStop = field(default_factory=CorrectionStop)
    crop_region: CropRegionSettings = field(default_factory=CropRegionSettings)


@dataclass
class EngineSettings:
    protocol: str | None = None  # "medsam2" | "sam2"; None: the preset's (see protocols.py)
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    correction_stop: CorrectionStop = field(default_factory=CorrectionStop)
    feature_cache_mb: float = 2048.0
    limits: SessionLimits = field(default_factory=SessionLimits)
    cpu_bf16: str = "off"  # "off" | "on" | "auto" (only with AMX/AVX-512 bf16 units): see precision.py
    crop_region: CropRegionSettings = field(default_factory=CropRegionSettings)
    share_features: bool = True  # sessions on one image share its encoded slices (feature_cache.py)

    def options(self, **overrides) -> SegmentOptions:
        """The settings' options, with any of ``early_stop``, ``correction_stop``, ``crop_region`` replaced."""
        return dataclasses.replace(SegmentOptions(self.early_stop, self.correction_stop, self.crop_region),
                                   **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class CropRegionReport:
    """Where a label was segmented: a region of the slices, or whole slices after it grew."""

    region: CropRegion | None  # None: whole slices
    grows: int


@dataclass(frozen=True)
class SessionReport:
    key: tuple
    started: str | None  # why this request began a new session; None: it continued one
    labels: list
    slices_encoded: int  # by this request
    feature_cache_slices: int
    feature_cache_mb: float


@dataclass
class LabelResult:
    label: str
    mask: np.ndarray  # bool, the volume's shape, voxel order
    prompted_slices: list
    slices: dict  # k -> results.SliceScore
    passes: list  # propagation.PassReport per pass
    reused: bool  # prompts unchanged: the session's previous result
    crop_region: CropRegionReport | None = None  # None: whole slices from the start
    restarted: str | None = None  # why the label's track started afresh (or was dropped after a failure)
    exact_stop: ExactStopReport | None = None  # where the exact stop ended the passes; None: at the ends
    protocol: str | None = None  # the protocol this label ran (medsam2's point protocol for clicks alone)
    locked_out: int = 0  # voxels SAM 2 gave this label that locked structures keep (not in mask)


@dataclass
class VolumeResult:
    volume: Volume
    labels: dict  # label -> LabelResult
    window: Window
    modality: str
    run: RunInfo
    session: SessionReport
    options: SegmentOptions  # the departures from the protocol this call ran with
    warnings: list = field(default_factory=list)


@dataclass(frozen=True)
class SlicePreview:
    """One slice's mask as a pass reaches it: a preview, before the protocol's last step."""

    label: str
    direction: str  # "forward" | "backward"
    k: int
    step: int  # slices this pass has reached, this one included
    expected: int | None  # slices the label's previous pass of this direction reached (None: first run)
    rows: slice  # where ``mask`` lies on the slice (voxel i and j ranges)
    cols: slice
    mask: np.ndarray  # bool [i, j] over ``rows`` x ``cols``


@dataclass(frozen=True)
class SegmentedLabel:
    """A label's last mask in a session, with the volume it is on."""

    volume: Volume
    mask: np.ndarray


class VolumeSegmenter:
    """3D segmentation as a service over the model source and the study memory (``memory``: the app's one
    owner of images, encoded slices and sessions; without it, one of its own)."""

    def __init__(self, models: ModelSource, settings: EngineSettings | None = None,
                 memory: StudyMemory | None = None):
        self.models = models
        self.settings = settings or EngineSettings()
        self.protocol = check_protocol(self.settings.protocol or default_protocol(getattr(models, "preset", None)))
        self.memory = memory if memory is not None else StudyMemory.from_settings(self.settings)
        self.resampling = input_resampling(self.protocol)  # how slices become model inputs
        # called with (session, prompted slices) after a session's first request; the app wires
        # encode-ahead's follow_request here (main.py), None: nothing follows
        self.after_first_request = None
        self._in_flight = 0  # segment calls running: encode-ahead waits for none (see wait_idle)
        self._idle = threading.Condition()

    # -- sessions -----------------------------------------------------------------------
    @contextmanager
    def open(self, key: tuple, image, window=None, modality: str | None = None,
             reset: bool = False) -> Iterator[Session]:
        """The session of ``key`` on ``image`` (path or Volume), begun anew when it is new, reset,
        or its image, weights or window changed; its lock is held until the block ends."""
        key = tuple(key)
        with self.memory.locked(key):
            loaded = self.models.get()
            session = self.memory.get(key)
            reason = None
            if session is None:
                reason = "new"
            elif reset:
                reason = "reset by request"
            elif session.model_version != loaded.version:
                reason = "model weights changed"
            elif session.image_stamp != image_stamp(image):
                reason = "image changed"
            elif session.window_key != window_key(window, modality):
                reason = "window changed"
            if reason is None:
                yield session
                return
            started = time.perf_counter()
            volume = self.memory.read(image)
            with self.memory.reserve(self._session_estimate(volume, loaded)):  # room within the memory limit
                session = self._begin(key, image, loaded, window, modality, reason, volume,
                                      time.perf_counter() - started)
                yield session

    def _session_estimate(self, volume, loaded) -> int:
        """Bytes a new session on ``volume`` will hold: its encoded slices (the FPN levels at 32, 64 and
        256 channels on 1/4, 1/8 and 1/16 of the input: 16 bytes a pixel) up to the cache's cap, its slices
        as the network's input (3 float channels: 12 bytes a pixel), and the volume twice (as read, windowed)."""
        shape = volume.array.shape
        slices = int(shape[-1]) if len(shape) == 3 else 1
        size = int(loaded.model.image_size)
        features = min(slices * 16 * size * size, int(self.settings.feature_cache_mb * 2**20))
        return features + slices * 12 * size * size + 2 * 4 * int(np.prod(shape))

    def _begin(self, key, image, loaded, window, modality, reason: str, volume, load_seconds: float) -> Session:
        if not volume.is_3d:
            raise PromptError(f"image {key[-1]} is 2D (shape {list(volume.array.shape)}); use the 2D model for it")
        encoded = self.memory.encoded(image, loaded, window, modality, owner=key, volume=volume,
                                     resampling=self.resampling)
        return Session(key=key, image_stamp=image_stamp(image), model=loaded, window_key=window_key(window, modality),
                       volume=volume, frames=encoded.frames, window=encoded.window, feature_cache=encoded.cache,
                       modality=encoded.modality, started=reason, load_seconds=load_seconds, image=image)

    def prepare_features(self, image, window=None, modality: str | None = None):
        """(model, frames, feature key, cache) of ``image`` as a request with this window would see it,
        without a session: encode-ahead fills the image's cache before anyone has clicked."""
        loaded = self.models.get()
        volume = self.memory.read(image)
        if not volume.is_3d:
            raise PromptError(f"image is 2D (shape {list(volume.array.shape)}): nothing to encode ahead")
        encoded = self.memory.encoded(image, loaded, window, modality, owner=("encode-ahead",), volume=volume,
                                     resampling=self.resampling)
        return loaded, encoded.frames, encoded.cache.key, encoded.cache.shared

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no segment call is running (background work yields to clinicians' requests)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def segmented(self, key: tuple, label: str) -> SegmentedLabel | None:
        """The session's last mask of ``label`` (None if it has none, or it is empty)."""
        session = self.memory.get(tuple(key))
        track = session.tracks.get(label) if session is not None else None
        if track is None or track.mask is None or not track.mask.any():
            return None
        return SegmentedLabel(session.volume, track.mask.copy())

    # -- the call -----------------------------------------------------------------------
    def run(self, image, prompts: dict, session_key: tuple = ("default",), window=None, modality: str | None = None,
            reset: bool = False, reset_labels=(), options: SegmentOptions | None = None) -> VolumeResult:
        """``open`` then ``segment``, for callers whose prompts need no check against the image."""
        with self.open(session_key, image, window, modality, reset) as session:
            return self.segment(session, prompts, options, reset_labels)

    def segment(self, session: Session, prompts: dict, options: SegmentOptions | None = None,
                reset_labels=(), on_slice=None) -> VolumeResult:
        """Segment each label in ``prompts`` (label -> LabelPrompts) in an ``open`` session.

        ``reset_labels`` forgets only those labels' prompts and keeps the session's encoded
        slices. ``options`` default to the settings'. Raises PromptError for prompts the
        model cannot take; any other failure inside a label drops that label's track and
        segments it again from its prompts alone.

        ``on_slice(SlicePreview)``: each slice as a pass reaches it, before the protocol's
        last step; it may raise :class:`.propagation.Cancelled`, which ends the call and drops
        the label's track (its next request starts from its prompts; encoded slices stay).
        """
        options = options or self.settings.options()
        with self._idle:
            self._in_flight += 1
        try:
            result = self._segment(session, prompts, options, reset_labels, on_slice)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
        if self.after_first_request is not None and session.requests == 1 and not options.crop_region.enabled:
            # e.g. the slices this first request did not reach encoded for the next, nearest its prompts first
            self.after_first_request(session, [k for r in result.labels.values() for k in r.prompted_slices])
        return result

    def _segment(self, session: Session, prompts: dict, options: SegmentOptions, reset_labels,
                 on_slice=None) -> VolumeResult:
        timings: dict = {"load": session.load_seconds} if session.requests == 0 else {}
        started = time.perf_counter()
        for label in reset_labels:
            session.tracks.pop(label, None)
        encoder_before = session.feature_cache.misses
        results, warnings = {}, []
        with torch.inference_mode(), autocast_for(self.models.device, self.settings.cpu_bf16), \
                runtimes_used() as runtimes:
            for label, label_prompts in prompts.items():
                results[label] = self._segment_label_safely(session, label, label_prompts, options, timings,
                                                            on_slice)
                if results[label].restarted and results[label].restarted.startswith("error"):
                    warnings.append(f"label {label}: {results[label].restarted}")
        began = session.started if session.requests == 0 else None
        session.requests += 1
        self.memory.put(session)
        timings["total"] = time.perf_counter() - started + timings.get("load", 0.0)
        cache = session.feature_cache
        report = SessionReport(key=list(session.key), started=began, labels=sorted(session.tracks),
                               slices_encoded=cache.misses - encoder_before, feature_cache_slices=len(cache),
                               feature_cache_mb=round(cache.bytes / 2**20, 1))
        return VolumeResult(volume=session.volume, labels=results, window=session.window, modality=session.modality,
                            run=RunInfo.of(session.model, self.protocol, timings, runtimes), session=report, options=options,
                            warnings=warnings)

    def _segment_label_safely(self, session, label, prompts, options: SegmentOptions, timings,
                              on_slice=None) -> LabelResult:
        """A failure inside the label's state drops that track; the label is segmented afresh once."""
        try:
            return self._segment_label(session, label, prompts, options, timings, on_slice)
        except PromptError:
            raise
        except Cancelled:
            session.tracks.pop(label, None)  # stopped mid-pass: its state is neither old nor new
            raise
        except Exception as err:  # noqa: BLE001 - a broken SAM 2 state must not break the session
            logger.exception("label %s: segmenting failed; its track is dropped and started afresh", label)
            session.tracks.pop(label, None)
            result = self._segment_label(session, label, prompts, options, timings, on_slice)
            result.restarted = f"error in the previous track ({type(err).__name__}: {err}); started afresh"
            return result

    def _segment_label(self, session: Session, label: str, prompts: LabelPrompts, options: SegmentOptions,
                       timings: dict, on_slice=None) -> LabelResult:
        predictor = session.model.model
        early_stop, correction_stop, crop = options.early_stop, options.correction_stop, options.crop_region
        wanted = prompts.by_frame()
        if not wanted:
            session.tracks.pop(label, None)
            empty = np.zeros(session.volume.array.shape, dtype=bool)
            return LabelResult(label, empty, [], {}, [], reused=False)
        extent = prompt_extent(wanted.values())
        slice_shape = (session.frames.video_height, session.frames.video_width)
        track = session.tracks.get(label)
        restarted = None
        if track is not None and starts_afresh(track, wanted):
            track, restarted = None, "no earlier prompted slice kept: a new track"
        if track is not None and not track.fits(extent, crop):
            track = None  # a prompt outside the region, or regions turned off
        if track is None:
            region = choose_region(extent, slice_shape, predictor.image_size, crop)
            track = self._start_track(predictor, session, label, region, 0, timings)
        while True:
            view = track.sized_predictor(predictor)
            t0 = time.perf_counter()
            diff = diff_prompts(track.frame_prompts, wanted)
            same_rule = track.early_stop == early_stop  # another stopping rule gives another result
            exact_wanted = not correction_stop.enabled and track.local_correction  # asks for the full pass
            if not diff.changed and not diff.removed and same_rule and track.mask is not None and not exact_wanted:
                return self._label_result(label, track, wanted, reused=True, restarted=restarted,
                                          exclude=prompts.exclude)
            protocol = label_protocol(self.protocol, wanted.values())
            local = bool(diff.changed or diff.removed) and diff.only_added and same_rule \
                and correction_stop.enabled and track.propagation is not None and protocol != "medsam2_point"
            if one_state(protocol):
                prompted_masks = apply_changes(view, track, diff)
                timings["prompts"] = timings.get("prompts", 0.0) + time.perf_counter() - t0
                if track.reaches_edge(prompted_masks, slice_shape, crop):
                    track = self._grow(predictor, session, label, track, prompted_masks, extent, crop, timings)
                    continue
            with listening(self._slice_listener(label, track, on_slice)):
                propagation = track.propagate(view, protocol, wanted, sorted(diff.changed), local, early_stop,
                                              correction_stop)
            if self._exact_stop_missed(protocol, track, propagation, wanted, session.volume.array.shape):
                logger.info("label %s: the exact stop's result has no voxel on the prompted slices; running the "
                            "full passes", label)
                timings["propagation"] = timings.get("propagation", 0.0) + propagation.seconds
                full = dataclasses.replace(early_stop, exact_stop=False)
                with listening(self._slice_listener(label, track, on_slice)):
                    propagation = track.propagate(view, protocol, wanted, sorted(diff.changed), local, full,
                                                  correction_stop)
            timings["propagation"] = timings.get("propagation", 0.0) + propagation.seconds
            track.local_correction = local
            masks = [output.mask for output in propagation.outputs.values()]
            if track.reaches_edge(masks, slice_shape, crop):
                track = self._grow(predictor, session, label, track, masks, extent, crop, timings)
                continue
            break
        track.early_stop = dataclasses.replace(early_stop)
        track.paste(propagation, session.volume.array.shape, protocol)
        track.protocol = protocol
        return self._label_result(label, track, wanted, reused=False, restarted=restarted, exclude=prompts.exclude)

    @staticmethod
    def _slice_listener(label: str, track: LabelTrack, on_slice):
        """The propagation's per-slice report as a :class:`SlicePreview` of the label on the volume's grid."""
        if on_slice is None:
            return None
        previous = track.propagation
        expected = {p.direction: p.slices for p in previous.passes} if previous is not None else {}

        def report(direction: str, k: int, output, step: int) -> None:
            rows, cols, mask = track.slice_in_volume(output.mask)
            on_slice(SlicePreview(label, direction, int(k), step, expected.get(direction), rows, cols, mask))

        return report

    @staticmethod
    def _exact_stop_missed(protocol: str, track: LabelTrack, propagation, wanted: dict, shape: tuple) -> bool:
        """Whether a pass stopped detached and the kept component misses the prompted slices (exact_stop.py)."""
        if protocol != "medsam2" or not any(p.ended_detached for p in propagation.passes):
            return False
        return misses_prompted_range(track.kept_component(propagation, shape), sorted(wanted))

    @staticmethod
    def _start_track(predictor, session: Session, label: str, region: CropRegion | None, grows: int,
                     timings: dict) -> LabelTrack:
        """A fresh SAM 2 state for the label (replacing any), over whole slices or a crop region."""
        t0 = time.perf_counter()
        track = session.tracks[label] = LabelTrack.start(predictor, session.frames, session.feature_cache,
                                                         region, grows)
        timings["init_state"] = timings.get("init_state", 0.0) + time.perf_counter() - t0
        return track

    def _grow(self, predictor, session: Session, label: str, track: LabelTrack, region_masks: list,
              prompts_extent: tuple, settings: CropRegionSettings, timings: dict) -> LabelTrack:
        """Segment the label again in a larger region (or whole slices): a mask reached the edge."""
        slice_shape = (session.frames.video_height, session.frames.video_width)
        bigger = track.grown_region(region_masks, prompts_extent, slice_shape, predictor.image_size, settings)
        logger.info("label %s: a mask reached the edge of its %dx%d region; segmenting again in %s", label,
                    track.region.rows, track.region.cols,
                    "whole slices" if bigger is None else f"{bigger.rows}x{bigger.cols}")
        return self._start_track(predictor, session, label, bigger, track.grows + 1, timings)

    @staticmethod
    def _label_result(label, track: LabelTrack, wanted: dict, reused: bool, restarted=None,
                      exclude: np.ndarray | None = None) -> LabelResult:
        mask, locked_out = track.mask, 0
        if exclude is not None:  # locked structures keep their voxels; the track keeps SAM 2's own mask
            locked_out = int((mask & exclude).sum())
            mask = mask & ~exclude
        area = mask.sum(axis=(0, 1))
        slices = {int(k): slice_score(out, area[k]) for k, out in sorted(track.propagation.outputs.items())}
        passes = [dataclasses.replace(p) for p in track.propagation.passes]
        crop = None
        if track.region is not None or track.grows:
            crop = CropRegionReport(track.region, track.grows)
        stopped = exact_stop_report(track.propagation, track.mask.shape[2], int(track.mask.sum()))
        return LabelResult(label, mask, sorted(wanted), slices, passes, reused, crop, restarted, stopped,
                           track.protocol, locked_out)

