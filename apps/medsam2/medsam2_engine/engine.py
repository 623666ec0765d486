"""The 3D engine: a volume and prompts in, one mask per label out, sessions kept between calls.

This module knows nothing of MONAI Label; the app's task classes adapt it to the server.
Calls may come from several threads at once: a session's requests run one after another
(its lock), the network is held per slice step (see :func:`.predictor.network_lock`), and
nothing of a call is kept on the segmenter itself.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .frames import SliceFrames, image_to_slice
from .model_source import ModelSource
from .precision import autocast_for
from .predictor import FeatureCache, KeyedCache, at_input_size
from .prompts import LabelPrompts, PromptError
from .propagation import CorrectionStop, EarlyStop, PassPlan, Propagation, propagate_both_ways, propagate_correction
from .protocols import check_protocol, default_protocol, input_resampling, largest_component
from .roi import Roi, RoiSettings, choose_roi, grown, mask_extent, prompt_extent, reaches_edge, union
from .sessions import RecentReads, Session, SessionLimits, SessionStore, image_stamp, window_key
from .tracks import LabelTrack, apply_changes, diff_prompts, prompts_only, starts_afresh
from .volume_io import Volume, load_image
from .windowing import choose_window, guess_modality

logger = logging.getLogger(__name__)

__all__ = ["EngineSettings", "LabelResult", "LabelTrack", "VolumeResult", "VolumeSegmenter"]


@dataclass
class EngineSettings:
    protocol: str | None = None  # "medsam2" | "sam2"; None: the preset's (see protocols.py)
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    correction_stop: CorrectionStop = field(default_factory=CorrectionStop)
    feature_cache_mb: float = 2048.0
    limits: SessionLimits = field(default_factory=SessionLimits)
    cpu_bf16: str = "off"  # "off" | "on" | "auto" (only with AMX/AVX-512 bf16 units): see precision.py
    roi: RoiSettings = field(default_factory=RoiSettings)


@dataclass
class LabelResult:
    label: str
    mask: np.ndarray  # bool, the volume's shape, voxel order
    prompted_slices: list
    slices: dict  # k -> {"object_score", "predicted_iou", "area"}
    passes: list
    reused: bool  # prompts unchanged: the session's previous result
    roi: dict | None = None  # the region it was segmented in, and how often it grew
    protocol: str = ""
    restarted: str | None = None  # why the label's track started afresh (or was dropped after a failure)


@dataclass
class VolumeResult:
    volume: Volume
    labels: dict  # label -> LabelResult
    window: dict
    modality: str
    timings: dict
    session: dict
    random_weights: bool
    checkpoint: str
    warnings: list = field(default_factory=list)
    protocol: str = ""
    options: dict = field(default_factory=dict)  # the departures from the protocol this call ran with


class VolumeSegmenter:
    def __init__(self, models: ModelSource, settings: EngineSettings | None = None,
                 sessions: SessionStore | None = None):
        self.models = models
        self.settings = settings or EngineSettings()
        self.protocol = check_protocol(self.settings.protocol or default_protocol(getattr(models, "preset", None)))
        models.protocol = self.protocol  # the model status (/info) names the protocol served
        self.sessions = sessions if sessions is not None else SessionStore(self.settings.limits)
        self._reads = RecentReads()

    def volume(self, session_key: tuple, image) -> Volume:
        """The image as the next ``segment`` call will see it (read once, kept by the session)."""
        if isinstance(image, Volume):
            return image
        session = self.sessions.get(session_key)
        if session is not None and session.image_stamp == image_stamp(image):
            return session.volume
        return self._reads.get(image, load_image)

    # -- sessions -----------------------------------------------------------------------
    def _open_session(self, key, image, loaded, window, modality, timings) -> Session:
        started = time.perf_counter()
        volume = image if isinstance(image, Volume) else self._reads.get(image, load_image)
        if not volume.is_3d:
            raise ValueError(f"expected a 3D volume, got shape {volume.array.shape} from {volume.path or 'array'}")
        timings["load"] = time.perf_counter() - started
        requested = window_key(window, modality)
        declared = modality if modality not in (None, "", "auto") else volume.declared_modality
        modality = guess_modality(volume.array, declared)
        chosen = choose_window(volume.array, modality, window)
        frames = SliceFrames(volume.array, chosen, loaded.model.image_size,
                             resampling=input_resampling(self.protocol))
        cache = FeatureCache(int(self.settings.feature_cache_mb * 1024 * 1024))
        return Session(key=key, image_stamp=image_stamp(image), model_version=loaded.version, window_key=requested,
                       volume=volume, frames=frames, window=chosen, feature_cache=cache, modality=modality)

    def _session_for(self, key, image, loaded, window, modality, reset, timings) -> tuple:
        session = self.sessions.get(key)
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
        if reason is not None:
            session = self._open_session(key, image, loaded, window, modality, timings)
        return session, reason

    # -- the call -----------------------------------------------------------------------
    def segment(
        self,
        image,
        prompts: dict,
        session_key: tuple = ("default",),
        window=None,
        modality: str | None = None,
        reset: bool = False,
        reset_labels=(),
        early_stop: EarlyStop | None = None,
        correction_stop: CorrectionStop | None = None,
        roi: RoiSettings | None = None,
    ) -> VolumeResult:
        """Segment each label in ``prompts`` (label -> LabelPrompts) in ``image`` (path or Volume).

        ``reset`` starts the whole session over; ``reset_labels`` forgets only those labels'
        prompts and keeps the session's encoded slices. ``early_stop``, ``correction_stop``
        and ``roi`` (the crop region) override the settings' options for this call.
        Raises PromptError for prompts the model cannot take; any other failure inside a
        label drops that label's track and segments it again from its prompts alone.
        """
        with self.sessions.locked(tuple(session_key)):
            return self._segment(image, prompts, tuple(session_key), window, modality, reset, reset_labels,
                                 early_stop or self.settings.early_stop,
                                 correction_stop or self.settings.correction_stop, roi or self.settings.roi)

    def _segment(self, image, prompts, session_key, window, modality, reset, reset_labels, early_stop,
                 correction_stop, roi) -> VolumeResult:
        timings: dict = {}
        started = time.perf_counter()
        loaded = self.models.get()
        session, reason = self._session_for(session_key, image, loaded, window, modality, reset, timings)
        for label in reset_labels:
            session.tracks.pop(label, None)
        predictor = loaded.model
        encoder_before = session.feature_cache.misses
        results, warnings = {}, []
        with torch.inference_mode(), autocast_for(self.models.device, self.settings.cpu_bf16):
            for label, label_prompts in prompts.items():
                results[label] = self._segment_label_safely(
                    predictor, session, label, label_prompts, early_stop, correction_stop, roi, timings)
                if results[label].restarted and results[label].restarted.startswith("error"):
                    warnings.append(f"label {label}: {results[label].restarted}")
        self.sessions.put(session)
        timings["total"] = time.perf_counter() - started
        cache = session.feature_cache
        return VolumeResult(
            volume=session.volume,
            labels=results,
            window=session.window.to_json(),
            modality=session.modality,
            timings={k: round(v, 4) for k, v in timings.items()},
            session={
                "key": list(session_key),
                "started": reason,
                "labels": sorted(session.tracks),
                "slices_encoded": cache.misses - encoder_before,
                "feature_cache_slices": len(cache),
                "feature_cache_mb": round(cache.bytes / 2**20, 1),
            },
            random_weights=loaded.random_weights,
            checkpoint=loaded.checkpoint,
            warnings=warnings,
            protocol=self.protocol,
            options={"early_stop": early_stop.enabled, "correction_stop": correction_stop.enabled,
                     "crop_region": roi.enabled},
        )

    def _segment_label_safely(self, predictor, session, label, prompts, early_stop, correction_stop, roi_settings,
                              timings) -> LabelResult:
        """A failure inside the label's state drops that track; the label is segmented afresh once."""
        try:
            return self._segment_label(predictor, session, label, prompts, early_stop, correction_stop,
                                       roi_settings, timings)
        except PromptError:
            raise
        except Exception as err:  # noqa: BLE001 - a broken SAM 2 state must not break the session
            logger.exception("label %s: segmenting failed; its track is dropped and started afresh", label)
            session.tracks.pop(label, None)
            result = self._segment_label(predictor, session, label, prompts, early_stop, correction_stop,
                                         roi_settings, timings)
            result.restarted = f"error in the previous track ({type(err).__name__}: {err}); started afresh"
            return result

    def _segment_label(
        self, predictor, session: Session, label: str, prompts: LabelPrompts, early_stop: EarlyStop,
        correction_stop: CorrectionStop, roi_settings: RoiSettings, timings: dict,
    ) -> LabelResult:
        wanted = prompts.by_frame()
        if not wanted:
            session.tracks.pop(label, None)
            empty = np.zeros(session.volume.array.shape, dtype=bool)
            return LabelResult(label, empty, [], {}, [], reused=False, protocol=self.protocol)
        extent = prompt_extent(wanted.values())
        track = session.tracks.get(label)
        restarted = None
        if track is not None and starts_afresh(track, wanted):
            track, restarted = None, "no earlier prompted slice kept: a new track"
        if track is not None and not _fits(track, extent, roi_settings):
            track = None  # a prompt outside the region, or regions turned off
        if track is None:
            roi = choose_roi(extent, _slice_shape(session), predictor.image_size, roi_settings)
            track = self._new_track(predictor, session, label, roi, 0, timings)
        while True:
            view = track.sized_predictor(predictor)
            t0 = time.perf_counter()
            diff = diff_prompts(track.frame_prompts, wanted)
            same_rule = track.early_stop == early_stop  # another stopping rule gives another result
            exact_wanted = not correction_stop.enabled and track.local_correction  # asks for the full pass
            if not diff.changed and not diff.removed and same_rule and track.mask is not None and not exact_wanted:
                return self._label_result(label, track, wanted, reused=True, restarted=restarted)
            local = bool(diff.changed or diff.removed) and diff.only_added and same_rule \
                and correction_stop.enabled and track.propagation is not None
            if self.protocol == "sam2":
                prompted_masks = apply_changes(view, track, diff)
                timings["prompts"] = timings.get("prompts", 0.0) + time.perf_counter() - t0
                if _reaches_edge(session, track, prompted_masks, roi_settings):
                    track = self._grow(predictor, session, label, track, prompted_masks, extent, roi_settings,
                                       timings)
                    continue
            propagation = self._propagate(view, track, wanted, sorted(diff.changed), local, early_stop,
                                          correction_stop)
            timings["propagation"] = timings.get("propagation", 0.0) + propagation.seconds
            track.local_correction = local
            masks = [output.mask for output in propagation.outputs.values()]
            if _reaches_edge(session, track, masks, roi_settings):
                track = self._grow(predictor, session, label, track, masks, extent, roi_settings, timings)
                continue
            break
        track.early_stop = dataclasses.replace(early_stop)
        mask = np.zeros(session.volume.array.shape, dtype=bool)
        region_i, region_j = (slice(None), slice(None)) if track.roi is None else track.roi.voxel_region()
        for k, output in propagation.outputs.items():
            mask[region_i, region_j, k] = image_to_slice(output.mask)
        if self.protocol == "medsam2":
            mask = largest_component(mask)
        track.mask, track.propagation = mask, propagation
        return self._label_result(label, track, wanted, reused=False, restarted=restarted)

    def _propagate(self, view, track: LabelTrack, wanted: dict, changed: list, local: bool, early_stop: EarlyStop,
                   correction_stop: CorrectionStop) -> Propagation:
        if self.protocol == "sam2":
            if local:
                return propagate_correction(view, track.state, changed, track.propagation, early_stop,
                                            correction_stop)
            return propagate_both_ways(view, track.state, early_stop)

        # medsam2: each pass from a state that holds the prompts only (reset_state, prompts again)
        def before_pass(reverse: bool) -> None:
            prompts_only(view, track, wanted)

        if local:
            return propagate_correction(view, track.state, changed, track.propagation, early_stop,
                                        correction_stop, before_pass=before_pass, union=True,
                                        prompted=sorted(wanted))
        plan = PassPlan(min(wanted), max(wanted), before_pass, union=True)
        return propagate_both_ways(view, track.state, early_stop, plan=plan, prompted=sorted(wanted))

    def _new_track(self, predictor, session: Session, label: str, roi: Roi | None, grows: int,
                   timings: dict) -> LabelTrack:
        """A fresh SAM 2 state for the label (replacing any), over whole slices or a region of them.

        Every track encodes through the session's one feature cache, keyed by region, so the
        session's memory bound covers them all and a region seen before is not encoded again.
        """
        t0 = time.perf_counter()
        frames = session.frames if roi is None else session.frames.cropped(roi.voxel_region(), roi.input_size)
        view = at_input_size(predictor, frames.image_size)
        state = view.init_state_from_frames(frames, KeyedCache(session.feature_cache, frames))
        track = session.tracks[label] = LabelTrack(state=state, roi=roi, grows=grows)
        timings["init_state"] = timings.get("init_state", 0.0) + time.perf_counter() - t0
        return track

    def _grow(self, predictor, session: Session, label: str, track: LabelTrack, region_masks: list,
              prompts_extent: tuple, settings: RoiSettings, timings: dict) -> LabelTrack:
        """Segment the label again in a larger region (or whole slices): a mask reached the edge."""
        roi = track.roi
        reached = union(*(mask_extent(m) for m in region_masks))
        if reached is not None:
            reached = (reached[0] + roi.row0, reached[1] + roi.col0, reached[2] + roi.row0, reached[3] + roi.col0)
        bigger = None
        if track.grows < settings.max_grow:
            bigger = grown(roi, union(prompts_extent, reached), _slice_shape(session), predictor.image_size, settings)
        logger.info("label %s: a mask reached the edge of its %dx%d region; segmenting again in %s", label,
                    roi.rows, roi.cols, "whole slices" if bigger is None else f"{bigger.rows}x{bigger.cols}")
        return self._new_track(predictor, session, label, bigger, track.grows + 1, timings)

    def _label_result(self, label, track: LabelTrack, wanted: dict, reused: bool, restarted=None) -> LabelResult:
        area = track.mask.sum(axis=(0, 1))
        slices = {
            int(k): {
                "object_score": round(out.object_score, 4),
                "predicted_iou": None if out.predicted_iou is None else round(out.predicted_iou, 4),
                "area": int(area[k]),
            }
            for k, out in sorted(track.propagation.outputs.items())
        }
        passes = [vars(p) for p in track.propagation.passes]
        roi = None if track.roi is None else track.roi.to_json()
        if roi is None and track.grows:
            roi = {"rows": None, "cols": None, "input_size": None, "whole_slices": True}
        if roi is not None:
            roi["grows"] = track.grows
        return LabelResult(label, track.mask, sorted(wanted), slices, passes, reused, roi, self.protocol, restarted)


def _slice_shape(session: Session) -> tuple:
    return session.frames.video_height, session.frames.video_width


def _fits(track: LabelTrack, extent: tuple, settings: RoiSettings) -> bool:
    """Whether the label's region still holds every prompt (whole slices always do)."""
    if track.roi is None:
        return True
    return settings.enabled and track.roi.contains(extent)


def _reaches_edge(session: Session, track: LabelTrack, region_masks: list, settings: RoiSettings) -> bool:
    if track.roi is None:
        return False
    shape = _slice_shape(session)
    return any(reaches_edge(m, track.roi, shape, settings.edge_px) for m in region_masks)
