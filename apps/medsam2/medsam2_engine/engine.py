"""The 3D engine: a volume and prompts in, one mask per label out, sessions kept between calls.

This module knows nothing of MONAI Label; the app's task classes adapt it to the server.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .frames import SliceFrames, image_to_slice, slice_to_image
from .model_source import ModelSource
from .precision import autocast_for as _autocast_for
from .predictor import FeatureCache, KeyedCache, at_input_size
from .prompts import FramePrompt, LabelPrompts
from .propagation import (
    OBJ_ID,
    CorrectionStop,
    EarlyStop,
    Propagation,
    propagate_both_ways,
    propagate_correction,
    restart_frame,
)
from .roi import Roi, RoiSettings, choose_roi, grown, mask_extent, prompt_extent, reaches_edge, union
from .sessions import Session, SessionLimits, SessionStore, image_stamp, window_key
from .volume_io import Volume, load_image
from .windowing import choose_window, guess_modality

logger = logging.getLogger(__name__)


@dataclass
class EngineSettings:
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    correction_stop: CorrectionStop = field(default_factory=CorrectionStop)
    feature_cache_mb: float = 2048.0
    limits: SessionLimits = field(default_factory=SessionLimits)
    cpu_bf16: str = "off"  # "off" | "on" | "auto" (only with AMX/AVX-512 bf16 units): see precision.py
    roi: RoiSettings = field(default_factory=RoiSettings)


@dataclass
class LabelTrack:
    """One label's SAM 2 inference state and what the user has prompted so far."""

    state: dict
    roi: Roi | None = None  # the region of the slices this label is segmented in; None: whole slices
    grows: int = 0  # times the region has grown because a mask reached its edge
    frame_prompts: dict = field(default_factory=dict)  # slice -> FramePrompt given to SAM 2
    mask: np.ndarray | None = None
    propagation: Propagation | None = None
    early_stop: EarlyStop | None = None
    local_correction: bool = False  # the mask came from a correction stopped where it met the last one

    def memory_bytes(self) -> int:
        frames = len(self.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]) if self.state["obj_ids"] else 0
        per_frame = 3 * (self.state["images"].image_size // 4) ** 2 * 4  # low-res logits + bf16 memory
        mask_bytes = self.mask.nbytes if self.mask is not None else 0
        return frames * per_frame + mask_bytes

    def model(self, predictor):
        """The predictor at this track's input size (a region's, or the model's own)."""
        return at_input_size(predictor, self.state["images"].image_size)


@dataclass
class LabelResult:
    label: str
    mask: np.ndarray  # bool, the volume's shape, voxel order
    prompted_slices: list
    slices: dict  # k -> {"object_score", "predicted_iou", "area"}
    passes: list
    reused: bool  # prompts unchanged: the session's previous result
    roi: dict | None = None  # the region it was segmented in, and how often it grew


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


def autocast_for(device: str, cpu_bf16: str = "off"):
    """bf16 autocast on CUDA, scoped to one call; on CPU per ``cpu_bf16`` (see precision.py)."""
    return _autocast_for(device, cpu_bf16)


class VolumeSegmenter:
    def __init__(self, models: ModelSource, settings: EngineSettings | None = None):
        self.models = models
        self.settings = settings or EngineSettings()
        self.sessions = SessionStore(self.settings.limits)
        self._preloaded: tuple | None = None  # (stamp, Volume) read by volume() for the next call

    def volume(self, session_key: tuple, image) -> Volume:
        """The image as the next ``segment`` call will see it (read once, kept by the session)."""
        if isinstance(image, Volume):
            return image
        stamp = image_stamp(image)
        session = self.sessions.get(session_key)
        if session is not None and session.image_stamp == stamp:
            return session.volume
        if self._preloaded is None or self._preloaded[0] != stamp:
            self._preloaded = (stamp, load_image(image))
        return self._preloaded[1]

    # -- sessions -----------------------------------------------------------------------
    def _open_session(self, key, image, loaded, window, modality, timings) -> Session:
        started = time.perf_counter()
        if isinstance(image, Volume):
            volume = image
        elif self._preloaded is not None and self._preloaded[0] == image_stamp(image):
            volume = self._preloaded[1]
        else:
            volume = load_image(image)
        self._preloaded = None
        if not volume.is_3d:
            raise ValueError(f"expected a 3D volume, got shape {volume.array.shape} from {volume.path or 'array'}")
        timings["load"] = time.perf_counter() - started
        requested = window_key(window, modality)
        declared = modality if modality not in (None, "", "auto") else volume.declared_modality
        modality = guess_modality(volume.array, declared)
        chosen = choose_window(volume.array, modality, window)
        image_size = loaded.model.image_size
        frames = SliceFrames(volume.array, chosen, image_size)
        cache = FeatureCache(int(self.settings.feature_cache_mb * 1024 * 1024))
        session = Session(
            key=key,
            image_stamp=image_stamp(image),
            model_version=loaded.version,
            window_key=requested,
            volume=volume,
            frames=frames,
            window=chosen,
            feature_cache=cache,
            modality=modality,
        )
        return session

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
        prompts and keeps the session's encoded slices.
        """
        timings: dict = {}
        started = time.perf_counter()
        loaded = self.models.get()
        session, reason = self._session_for(session_key, image, loaded, window, modality, reset, timings)
        for label in reset_labels:
            session.tracks.pop(label, None)
        predictor = loaded.model
        encoder_before = session.feature_cache.misses
        results = {}
        with torch.inference_mode(), autocast_for(self.models.device, self.settings.cpu_bf16):
            for label, label_prompts in prompts.items():
                results[label] = self._segment_label(
                    predictor, session, label, label_prompts, early_stop or self.settings.early_stop,
                    correction_stop or self.settings.correction_stop, roi or self.settings.roi, timings,
                )
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
        )

    def _segment_label(
        self, predictor, session: Session, label: str, prompts: LabelPrompts, early_stop: EarlyStop,
        correction_stop: CorrectionStop, roi_settings: RoiSettings, timings: dict,
    ) -> LabelResult:
        wanted = {k: p for k, p in prompts.by_frame().items()}
        if not wanted:
            session.tracks.pop(label, None)
            empty = np.zeros(session.volume.array.shape, dtype=bool)
            return LabelResult(label, empty, [], {}, [], reused=False)
        extent = prompt_extent(wanted.values())
        track = session.tracks.get(label)
        if track is not None and not _fits(track, extent, roi_settings):
            track = None  # a prompt outside the region, or regions turned off
        if track is None:
            roi = choose_roi(extent, _slice_shape(session), predictor.image_size, roi_settings)
            track = self._new_track(predictor, session, label, roi, 0, timings)
        while True:
            view = track.model(predictor)
            t0 = time.perf_counter()
            changed, only_added, prompted_masks = self._apply_prompt_changes(view, track, wanted)
            timings["prompts"] = timings.get("prompts", 0.0) + time.perf_counter() - t0
            if _reaches_edge(session, track, prompted_masks, roi_settings):
                track = self._grow(predictor, session, label, track, prompted_masks, extent, roi_settings, timings)
                continue

            same_rule = track.early_stop == early_stop  # another stopping rule gives another result
            exact_wanted = not correction_stop.enabled and track.local_correction  # asks for the full pass
            if not changed and same_rule and track.mask is not None and not exact_wanted:
                return self._label_result(label, track, wanted, reused=True)
            track.local_correction = bool(changed) and only_added and same_rule and correction_stop.enabled \
                and track.propagation is not None
            if track.local_correction:
                propagation = propagate_correction(view, track.state, sorted(changed), track.propagation,
                                                   early_stop, correction_stop)
            else:
                propagation = propagate_both_ways(view, track.state, early_stop)
            timings["propagation"] = timings.get("propagation", 0.0) + propagation.seconds
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
        track.mask, track.propagation = mask, propagation
        return self._label_result(label, track, wanted, reused=False)

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

    def _apply_prompt_changes(self, predictor, track: LabelTrack, wanted: dict) -> tuple:
        """Bring the SAM 2 state to the wanted prompts: (slices changed, whether prompts were only added).

        Clients resend every point each time. Points added to a slice refine that slice's
        mask (SAM 2 feeds the previous mask back in); a slice whose earlier points are gone
        (an undo, or OHIF switching structure) starts again from its prompts alone.
        """
        old = track.frame_prompts
        changed = {k: p for k, p in wanted.items() if k not in old or old[k].key() != p.key()}
        removed = [k for k in old if k not in wanted]
        restarted = [k for k in changed if k in old and not _extends(changed[k], old[k])]
        for k in removed:
            predictor.clear_all_prompts_in_frame(track.state, k, OBJ_ID, need_output=False)
            old.pop(k)
        for k in restarted:
            restart_frame(predictor, track.state, k)
            old.pop(k)
        masks = []
        for k, frame_prompt in sorted(changed.items()):
            in_region = frame_prompt if track.roi is None else track.roi.prompt_in_region(frame_prompt)
            masks.append(self._add_prompt(predictor, track.state, k, in_region))
            old[k] = frame_prompt
        return set(changed) | set(removed), not removed and not restarted, masks

    @staticmethod
    def _add_prompt(predictor, state: dict, k: int, prompt: FramePrompt) -> np.ndarray:
        """Give SAM 2 one slice's prompt; returns that slice's new mask (bool image)."""
        if prompt.mask is not None:
            mask = torch.from_numpy(slice_to_image(prompt.mask))
            _, _, video_res_masks = predictor.add_new_mask(state, frame_idx=k, obj_id=OBJ_ID, mask=mask)
        else:
            points = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2) if prompt.points else None
            labels = np.asarray(prompt.labels, dtype=np.int32) if prompt.points else None
            _, _, video_res_masks = predictor.add_new_points_or_box(
                state, frame_idx=k, obj_id=OBJ_ID, points=points, labels=labels, box=prompt.box, clear_old_points=True
            )
        return (video_res_masks[0, 0] > 0.0).cpu().numpy()

    @staticmethod
    def _label_result(label, track: LabelTrack, wanted: dict, reused: bool) -> LabelResult:
        slices = {
            int(k): {
                "object_score": round(out.object_score, 4),
                "predicted_iou": None if out.predicted_iou is None else round(out.predicted_iou, 4),
                "area": int(out.mask.sum()),
            }
            for k, out in sorted(track.propagation.outputs.items())
        }
        passes = [vars(p) for p in track.propagation.passes]
        roi = None if track.roi is None else track.roi.to_json()
        if roi is None and track.grows:
            roi = {"rows": None, "cols": None, "input_size": None, "whole_slices": True}
        if roi is not None:
            roi["grows"] = track.grows
        return LabelResult(label, track.mask, sorted(wanted), slices, passes, reused, roi)


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


def _extends(new: FramePrompt, old: FramePrompt) -> bool:
    """``new`` keeps ``old``'s box, mask and points, in order, and only adds points."""
    n = len(old.points)
    same_base = new.box == old.box and new.key()[3] == old.key()[3]
    return same_base and new.points[:n] == old.points and new.labels[:n] == old.labels
