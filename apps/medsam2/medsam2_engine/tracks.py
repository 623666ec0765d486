"""One label's SAM 2 state between requests, and the steps that change it: prompts, propagation,
growing its crop region, pasting its masks into the volume."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .crop_region import CropRegion, CropRegionSettings, grown, mask_extent, reaches_edge, union
from .frames import image_to_slice
from .predictor import at_input_size, network_lock
from .prompts import FramePrompt, mask_digest
from .propagation import (OBJ_ID, CorrectionStop, EarlyStop, PassPlan, Propagation, propagate_both_ways,
                          propagate_correction, report_prompted, restart_frame)
from .protocols import largest_component, one_state


@dataclass
class LabelTrack:
    """One label's SAM 2 inference state, what the user has prompted so far, and its last mask.

    The track's own steps: :meth:`start` a state over whole slices or a crop region,
    :func:`apply_changes` (sam2) or :func:`prompts_only` (medsam2) to bring it to the
    request's prompts, :meth:`propagate`, :meth:`grown_region` when a mask reached the
    region's edge, and :meth:`paste` the slices' masks into the volume.
    """

    state: dict
    region: CropRegion | None = None  # the crop region of the slices it is segmented in; None: whole slices
    grows: int = 0  # times the region has grown because a mask reached its edge
    frame_prompts: dict = field(default_factory=dict)  # slice -> FramePrompt given to SAM 2
    mask: np.ndarray | None = None
    propagation: Propagation | None = None
    early_stop: EarlyStop | None = None
    local_correction: bool = False  # the mask came from a correction stopped where it met the last one
    protocol: str | None = None  # the protocol its mask was made with (protocols.label_protocol)

    @classmethod
    def start(cls, predictor, frames, feature_cache, region: CropRegion | None, grows: int = 0) -> "LabelTrack":
        """A fresh SAM 2 state over the session's slices, or over a crop region of them.

        Every track encodes through the session's one feature cache, keyed by region, so the
        session's memory bound covers them all and a region seen before is not encoded again.
        """
        frames = frames if region is None else frames.cropped(region.voxel_region(), region.input_size)
        view = at_input_size(predictor, frames.image_size)
        state = view.init_state_from_frames(frames, feature_cache)
        return cls(state=state, region=region, grows=grows)

    def memory_bytes(self) -> int:
        # read while another thread may reset this state: no step assumes an entry is still there
        outputs = self.state["output_dict_per_obj"].get(0)
        frames = len(outputs["non_cond_frame_outputs"]) if outputs else 0
        per_frame = 3 * (self.state["images"].image_size // 4) ** 2 * 4  # low-res logits + bf16 memory
        mask_bytes = self.mask.nbytes if self.mask is not None else 0
        return frames * per_frame + mask_bytes

    def sized_predictor(self, predictor):
        """The predictor at this track's input size (a crop region's, or the model's own)."""
        return at_input_size(predictor, self.state["images"].image_size)

    def in_view(self, prompt: FramePrompt) -> FramePrompt:
        return prompt if self.region is None else self.region.prompt_in_region(prompt)

    def fits(self, extent: tuple, settings: CropRegionSettings) -> bool:
        """Whether the track's region still holds every prompt (whole slices always do)."""
        if self.region is None:
            return True
        return settings.enabled and self.region.contains(extent)

    def reaches_edge(self, region_masks: list, slice_shape: tuple, settings: CropRegionSettings) -> bool:
        if self.region is None:
            return False
        return any(reaches_edge(m, self.region, slice_shape, settings.edge_px) for m in region_masks)

    def grown_region(self, region_masks: list, prompts_extent: tuple, slice_shape: tuple, image_size: int,
                     settings: CropRegionSettings) -> CropRegion | None:
        """A larger region holding the prompts and what the masks reached; None: whole slices."""
        region = self.region
        reached = union(*(mask_extent(m) for m in region_masks))
        if reached is not None:
            reached = (reached[0] + region.row0, reached[1] + region.col0, reached[2] + region.row0,
                       reached[3] + region.col0)
        if self.grows >= settings.max_grow:
            return None
        return grown(region, union(prompts_extent, reached), slice_shape, image_size, settings)

    def propagate(self, view, protocol: str, wanted: dict, changed: list, local: bool, early_stop: EarlyStop,
                  correction_stop: CorrectionStop) -> Propagation:
        """Carry the prompts through the slices (a correction only as far as it changes them)."""
        if one_state(protocol):
            if local:
                return propagate_correction(view, self.state, changed, self.propagation, early_stop,
                                            correction_stop)
            return propagate_both_ways(view, self.state, early_stop)

        if protocol == "medsam2_point":  # each pass from a fresh state given the prompted slices' masks
            masks = masks_from_prompts(view, self, wanted)
            plan = PassPlan(min(wanted), max(wanted), lambda reverse: masks_only(view, self, masks), union=True)
            return propagate_both_ways(view, self.state, early_stop, plan=plan, prompted=sorted(wanted))

        # medsam2: each pass from a state that holds the prompts only (reset_state, prompts again)
        def before_pass(reverse: bool) -> None:
            prompts_only(view, self, wanted, report=not reverse)

        exact_stop = early_stop.exact_stop  # exact with the largest-component step (exact_stop.py)
        if local:
            return propagate_correction(view, self.state, changed, self.propagation, early_stop,
                                        correction_stop, before_pass=before_pass, union=True,
                                        prompted=sorted(wanted), exact_stop=exact_stop)
        plan = PassPlan(min(wanted), max(wanted), before_pass, union=True, exact_stop=exact_stop)
        return propagate_both_ways(view, self.state, early_stop, plan=plan, prompted=sorted(wanted))

    def paste(self, propagation: Propagation, volume_shape: tuple, protocol: str) -> None:
        """The slices' masks, placed in the volume (their region of it), become the track's mask."""
        if protocol == "medsam2":
            mask = self.kept_component(propagation, volume_shape)
        else:
            mask = np.zeros(volume_shape, dtype=bool)
            region_i, region_j = self._voxel_region()
            for k, output in propagation.outputs.items():
                mask[region_i, region_j, k] = image_to_slice(output.mask)
        self.mask, self.propagation = mask, propagation

    def kept_component(self, propagation: Propagation, volume_shape: tuple) -> np.ndarray:
        """The largest 3D component of the slices' masks (labelled over the slices reached only)."""
        mask = np.zeros(volume_shape, dtype=bool)
        if not propagation.outputs:
            return mask
        low, high = min(propagation.outputs), max(propagation.outputs)
        slab = np.zeros(volume_shape[:2] + (high - low + 1,), dtype=bool)
        region_i, region_j = self._voxel_region()
        for k, output in propagation.outputs.items():
            slab[region_i, region_j, k - low] = image_to_slice(output.mask)
        mask[:, :, low:high + 1] = largest_component(slab)
        return mask

    def slice_in_volume(self, image_mask: np.ndarray) -> tuple:
        """(rows, cols, mask): a slice's mask as the network gave it, placed on the volume's slice."""
        region_i, region_j = self._voxel_region()
        mask = image_to_slice(image_mask)
        rows = region_i if region_i.start is not None else slice(0, mask.shape[0])
        cols = region_j if region_j.start is not None else slice(0, mask.shape[1])
        return rows, cols, mask

    def _voxel_region(self) -> tuple:
        return (slice(None), slice(None)) if self.region is None else self.region.voxel_region()


@dataclass
class PromptDiff:
    changed: dict  # slice -> FramePrompt, new or different
    removed: list  # slices whose prompts are gone
    restarted: list  # slices whose prompts changed other than by added points
    kept: list  # slices whose earlier prompts stay (unchanged or extended)

    @property
    def only_added(self) -> bool:
        return not self.removed and not self.restarted


def diff_prompts(old: dict, wanted: dict) -> PromptDiff:
    changed = {k: p for k, p in wanted.items() if k not in old or old[k].key() != p.key()}
    removed = [k for k in old if k not in wanted]
    restarted = [k for k in changed if k in old and not extends(changed[k], old[k])]
    kept = [k for k in wanted if k in old and k not in restarted]
    return PromptDiff(changed, removed, restarted, kept)


def starts_afresh(track: LabelTrack, wanted: dict) -> bool:
    """A request that keeps or extends none of the label's earlier prompted slices starts a new track.

    (OHIF's "Clear Points" then a click elsewhere; a structure switch that replaces every
    point.) sam2 cannot add a prompt to a state whose conditioning slices are all gone.
    """
    return bool(track.frame_prompts) and not diff_prompts(track.frame_prompts, wanted).kept


def extends(new: FramePrompt, old: FramePrompt) -> bool:
    """``new`` keeps ``old``'s box, mask and points, in order, and only adds points."""
    n = len(old.points)
    return (new.box == old.box and mask_digest(new.mask) == mask_digest(old.mask) and new.points[:n] == old.points
            and new.labels[:n] == old.labels)


def add_prompt(predictor, state: dict, k: int, prompt: FramePrompt) -> np.ndarray:
    """Give SAM 2 one slice's prompt; returns that slice's mask. A mask goes first
    (``add_new_mask``); a box and points then refine it in one call (SAM 2 feeds the mask's
    output back in as the previous mask)."""
    with network_lock(predictor):
        if prompt.mask is not None:
            _, _, video_res_masks = predictor.add_new_mask(state, frame_idx=k, obj_id=OBJ_ID, mask=prompt.mask)
            if not prompt.points and prompt.box is None:
                return (video_res_masks[0, 0] > 0.0).cpu().numpy()
        points = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2) if prompt.points else None
        labels = np.asarray(prompt.labels, dtype=np.int32) if prompt.points else None
        _, _, video_res_masks = predictor.add_new_points_or_box(
            state, frame_idx=k, obj_id=OBJ_ID, points=points, labels=labels, box=prompt.box,
            clear_old_points=True,
        )
    return (video_res_masks[0, 0] > 0.0).cpu().numpy()


def prompts_only(predictor, track: LabelTrack, wanted: dict, report: bool = False) -> None:
    """MedSAM2's ``reset_state`` then the prompts again: a state without any pass's memories.
    ``report``: each prompted slice's mask goes to the propagation's listener at once."""
    with network_lock(predictor):
        predictor.reset_state(track.state)
    for k, prompt in sorted(wanted.items()):
        mask = add_prompt(predictor, track.state, k, track.in_view(prompt))
        if report:
            report_prompted(k, mask)
    track.frame_prompts = dict(wanted)


def masks_from_prompts(predictor, track: LabelTrack, wanted: dict) -> dict:
    """MedSAM2's point protocol, first step: each prompted slice's mask from its prompts, in a fresh state."""
    with network_lock(predictor):
        predictor.reset_state(track.state)
    masks = {}
    for k, prompt in sorted(wanted.items()):
        masks[k] = add_prompt(predictor, track.state, k, track.in_view(prompt))
        report_prompted(k, masks[k])
    track.frame_prompts = dict(wanted)
    return masks


def masks_only(predictor, track: LabelTrack, masks: dict) -> None:
    """A fresh state given the prompted slices' masks back (``add_new_mask``), as each point-protocol pass starts."""
    with network_lock(predictor):
        predictor.reset_state(track.state)
        for k, mask in sorted(masks.items()):
            predictor.add_new_mask(track.state, frame_idx=k, obj_id=OBJ_ID, mask=mask)


def apply_changes(predictor, track: LabelTrack, diff: PromptDiff) -> list:
    """sam2 protocol: bring the kept state to the wanted prompts; returns the changed slices' masks.

    Points added to a slice refine that slice's mask (SAM 2 feeds the previous mask back
    in); a slice whose earlier points are gone (an undo) starts again from its prompts alone.
    """
    old = track.frame_prompts
    for k in diff.removed:
        with network_lock(predictor):
            predictor.clear_all_prompts_in_frame(track.state, k, OBJ_ID, need_output=False)
        old.pop(k)
    for k in diff.restarted:
        with network_lock(predictor):
            restart_frame(predictor, track.state, k)
        old.pop(k)
    masks = []
    # slices kept first: sam2 needs a conditioning slice before it can add one that was propagated
    for k, frame_prompt in sorted(diff.changed.items(), key=lambda item: (item[0] not in old, item[0])):
        masks.append(add_prompt(predictor, track.state, k, track.in_view(frame_prompt)))
        old[k] = frame_prompt
    return masks
