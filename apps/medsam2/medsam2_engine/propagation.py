"""Carrying one label's mask through the volume, both ways.

Two protocols (see :mod:`.protocols`). ``medsam2``: forward from the first prompted slice
from a state holding only the prompts, then ``reset_state``, the same prompts again and
backward from the last prompted slice; slices both passes reach take the union. ``sam2``:
forward and backward from the first prompted slice in one state. Every prompted slice is a
conditioning frame, so slices between prompts see all of them.

*Exact stop* (on by default, ``medsam2`` protocol only): a pass ends at the first slice
beyond the prompted ones where nothing is connected to them any more; it changes no voxel
of the result but in one named case (see :mod:`.exact_stop`). The ``sam2`` protocol keeps
every component and never stops so.

Options, off by default (they change what the model computes): *early stop* ends a pass
beyond the last prompted slice once SAM 2's object score says the structure is gone for
``patience`` slices in a row.

*Correction stop*: a correction (prompts added on some slices, none removed) re-propagates
outward from the corrected slices only, and each direction stops once its new masks agree
with the previous result for ``patience`` slices in a row; the slices beyond keep their
masks. Those kept masks were computed with the memory of the previous pass, so they can
differ from a full re-propagation; without the option, both passes re-run.
"""

from __future__ import annotations

import contextvars
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .exact_stop import DetachmentWatch
from .predictor import network_lock

logger = logging.getLogger(__name__)

OBJ_ID = 1  # one SAM 2 object per inference state; each label has its own state

# called as ``listener(direction, frame_idx, output, step)`` for every slice a pass reaches (the
# union so far where the passes unite); set by :func:`listening`, None: nobody listens
_SLICE_LISTENER: contextvars.ContextVar = contextvars.ContextVar("slice_listener", default=None)


class Cancelled(Exception):
    """The caller stopped a propagation (its listener raised this); nothing of it is kept."""


@contextmanager
def listening(listener: Callable | None):
    """Report each slice the passes reach to ``listener`` while the block runs (this thread only).

    The listener may raise :class:`Cancelled` to end the propagation at that slice.
    """
    token = _SLICE_LISTENER.set(listener)
    try:
        yield
    finally:
        _SLICE_LISTENER.reset(token)


@dataclass
class EarlyStop:
    enabled: bool = False
    patience: int = 3  # consecutive empty slices beyond the last prompt
    score_threshold: float = 0.0  # object score logit at or below which the object is absent
    exact_stop: bool = True  # medsam2 protocol: end a pass where the structure is cut off (exact_stop.py)


@dataclass
class CorrectionStop:
    enabled: bool = False
    iou: float = 0.95  # new and previous mask agree at or above this IoU (two empty masks agree)
    patience: int = 3  # consecutive agreeing slices beyond the corrected ones


@dataclass
class SliceOutput:
    mask: np.ndarray  # bool image [rows, cols]
    object_score: float
    predicted_iou: float | None


@dataclass
class PassReport:
    direction: str
    start: int
    last: int | None = None
    slices: int = 0
    stopped_early: bool = False  # the object score said the structure is gone (early stop)
    converged: bool = False  # a correction's pass met the previous result and stopped
    ended_detached: bool = False  # the exact stop: nothing on the last slice reached the prompted ones

    @property
    def ended(self) -> bool:
        """The pass stopped short of the volume's end with the structure gone (either stop)."""
        return self.stopped_early or self.ended_detached


@dataclass
class Propagation:
    outputs: dict = field(default_factory=dict)  # slice -> SliceOutput
    passes: list = field(default_factory=list)
    seconds: float = 0.0


def report_prompted(frame_idx: int, image_mask: np.ndarray) -> None:
    """A prompted slice's mask as soon as SAM 2 gives it (one decoder call on an encoded slice),
    before the pass encodes its memory: the listener's first slice comes sooner. The pass then
    reports the same slice again, with the same mask."""
    listener = _SLICE_LISTENER.get()
    if listener is not None:
        listener("forward", frame_idx, SliceOutput(np.asarray(image_mask, dtype=bool), float("nan"), None), 1)


def _frame_output(state: dict, frame_idx: int) -> dict | None:
    obj_out = state["output_dict_per_obj"][0]
    return obj_out["cond_frame_outputs"].get(frame_idx) or obj_out["non_cond_frame_outputs"].get(frame_idx)


def _slice_output(state: dict, frame_idx: int, video_res_masks: torch.Tensor) -> SliceOutput:
    out = _frame_output(state, frame_idx) or {}
    score = out.get("object_score_logits")
    iou = out.get("predicted_iou")
    return SliceOutput(
        mask=(video_res_masks[0, 0] > 0.0).cpu().numpy(),
        object_score=float(score.flatten()[0]) if score is not None else float("nan"),
        predicted_iou=float(iou.flatten()[0]) if iou is not None else None,
    )


def forget_propagated_slices(state: dict) -> None:
    """Drop earlier propagation results so the new pass depends on the prompts only.

    Prompted slices live in ``cond_frame_outputs`` and are kept.
    """
    for obj_out in state["output_dict_per_obj"].values():
        obj_out["non_cond_frame_outputs"].clear()


def restart_frame(predictor, state: dict, frame_idx: int) -> None:
    """Remove a slice's prompts and its earlier mask, so new prompts start from nothing.

    sam2 keeps a cleared slice's last mask and would feed it back with the next clicks.
    """
    predictor.clear_all_prompts_in_frame(state, frame_idx, OBJ_ID, need_output=False)
    for obj_out in state["output_dict_per_obj"].values():
        obj_out["non_cond_frame_outputs"].pop(frame_idx, None)


def _prompted_frames(state: dict) -> list:
    cond_frames = sorted(state["output_dict_per_obj"][0]["cond_frame_outputs"]) if state["obj_ids"] else []
    cond_frames = sorted(set(cond_frames) | set(state["temp_output_dict_per_obj"][0]["cond_frame_outputs"]))
    if not cond_frames:
        raise ValueError("no prompted slice to propagate from")
    return cond_frames


def _agrees(new: np.ndarray, old: np.ndarray, threshold: float) -> bool:
    union = np.logical_or(new, old).sum()
    return union == 0 or np.logical_and(new, old).sum() / union >= threshold


def _union(old: SliceOutput | None, new: SliceOutput) -> SliceOutput:
    """Both passes' result on a slice: the reference ORs the masks of its two passes."""
    if old is None:
        return new
    ious = [v for v in (old.predicted_iou, new.predicted_iou) if v is not None]
    return SliceOutput(np.logical_or(old.mask, new.mask), max(old.object_score, new.object_score),
                       max(ious) if ious else None)


@dataclass
class PassPlan:
    """How the two passes run: where each starts, and what happens to the state before each."""

    forward_from: int
    backward_from: int
    before_pass: Callable | None = None  # called with reverse=False/True before each pass
    union: bool = False  # slices reached by both passes: union (medsam2) or the later pass (sam2)
    exact_stop: bool = False  # only with the largest-component step (medsam2)


def propagate_both_ways(predictor, state: dict, early_stop: EarlyStop, log_every: int = 50,
                        plan: PassPlan | None = None, prompted: list | None = None) -> Propagation:
    """Run the forward and backward passes; returns every slice reached, with its scores.

    Without a ``plan``: sam2's usage, both passes from the first prompted slice in one state.
    ``prompted``: the prompted slices, where the plan gives the prompts before each pass.
    """
    cond_frames = sorted(prompted) if prompted else _prompted_frames(state)
    if plan is None:
        forget_propagated_slices(state)
        plan = PassPlan(cond_frames[0], cond_frames[0])
    return _run_passes(predictor, state, early_stop, plan, cond_frames, log_every)


def propagate_correction(predictor, state: dict, corrected: list, previous: Propagation, early_stop: EarlyStop,
                         stop: CorrectionStop, log_every: int = 50, before_pass: Callable | None = None,
                         union: bool = False, prompted: list | None = None,
                         exact_stop: bool = False) -> Propagation:
    """Re-propagate outward from the ``corrected`` slices until the masks meet ``previous``.

    The returned outputs are the previous ones with every slice this pass reached replaced.
    """
    cond_frames = sorted(prompted) if prompted else _prompted_frames(state)
    plan = PassPlan(min(corrected), max(corrected), before_pass, union, exact_stop)
    fresh = _run_passes(predictor, state, early_stop, plan, cond_frames, log_every, previous.outputs, stop)
    kept = dict(previous.outputs)
    for report in fresh.passes:  # where the structure now ends early, the old masks beyond go
        if report.ended:
            backward = report.direction == "backward"
            kept = {k: v for k, v in kept.items() if not (k < report.last if backward else k > report.last)}
    fresh.outputs = {**kept, **fresh.outputs}
    return fresh


def _stepped(predictor, stream):
    """The pass's slices one by one, the network held for one slice step at a time.

    Another session's request interleaves slice by slice instead of waiting for a whole
    propagation (see :func:`.predictor.network_lock`).
    """
    lock = network_lock(predictor)
    while True:
        with lock:
            try:
                item = next(stream)
            except StopIteration:
                return
        yield item


@contextmanager
def slice_steps(predictor, state: dict, start: int, reverse: bool = False):
    """One pass of SAM 2's propagation as ``(frame index, SliceOutput)`` pairs, one slice step
    at a time; leaving the block ends the pass (however far it got)."""
    stream = predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse)
    try:
        yield ((frame_idx, _slice_output(state, frame_idx, masks))
               for frame_idx, _, masks in _stepped(predictor, stream))
    finally:
        stream.close()


class AbsenceRun:
    """Early stop's count: consecutive slices where the structure is gone."""

    def __init__(self, early_stop: EarlyStop):
        self.early_stop = early_stop
        self.count = 0

    def stops_after(self, output: SliceOutput) -> bool:
        """Count ``output``; whether the pass should stop here."""
        absent = output.object_score <= self.early_stop.score_threshold or not output.mask.any()
        self.count = self.count + 1 if absent else 0
        return self.early_stop.enabled and self.count >= self.early_stop.patience


def _run_passes(predictor, state: dict, early_stop: EarlyStop, plan: PassPlan, cond_frames: list,
                log_every: int, previous: dict | None = None, stop: CorrectionStop | None = None) -> Propagation:
    first, last = cond_frames[0], cond_frames[-1]
    num_frames = state["num_frames"]
    result = Propagation()
    started = time.perf_counter()
    listener = _SLICE_LISTENER.get()
    for reverse, last_prompt in ((False, last), (True, first)):
        if plan.before_pass is not None:
            plan.before_pass(reverse)
        start = plan.backward_from if reverse else plan.forward_from
        # a correction's pass may meet the previous result only beyond every corrected slice
        converge_after = plan.forward_from if reverse else plan.backward_from
        report = PassReport("backward" if reverse else "forward", start)
        absence, agree_run = AbsenceRun(early_stop), 0
        watch = DetachmentWatch() if plan.exact_stop else None
        with slice_steps(predictor, state, start, reverse) as steps:
            for frame_idx, output in steps:
                merged = _union(result.outputs.get(frame_idx), output) if plan.union else output
                result.outputs[frame_idx] = merged
                report.last, report.slices = frame_idx, report.slices + 1
                if listener is not None:
                    listener(report.direction, frame_idx, merged, report.slices)
                if report.slices % log_every == 0:
                    logger.info("%s pass: %d slices, now at %d of %d", report.direction, report.slices, frame_idx,
                                num_frames)
                beyond_prompts = frame_idx < last_prompt if reverse else frame_idx > last_prompt
                if early_stop.enabled and beyond_prompts and absence.stops_after(output):
                    report.stopped_early = True
                    break
                if watch is not None and beyond_prompts and watch.detached_after(merged.mask):
                    report.ended_detached = True
                    break
                beyond_correction = frame_idx < converge_after if reverse else frame_idx > converge_after
                if stop is not None and stop.enabled and beyond_correction:
                    old = previous.get(frame_idx)
                    agree_run = agree_run + 1 if old is not None and _agrees(merged.mask, old.mask, stop.iou) else 0
                    if agree_run >= stop.patience:
                        report.converged = True
                        break
        result.passes.append(report)
    result.seconds = time.perf_counter() - started
    return result

