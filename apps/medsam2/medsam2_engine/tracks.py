"""One label's SAM 2 state between requests, and how a request's prompts change it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .frames import slice_to_image
from .predictor import at_input_size, network_lock
from .prompts import FramePrompt
from .propagation import OBJ_ID, EarlyStop, Propagation, restart_frame
from .roi import Roi


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
        # read while another thread may reset this state: no step assumes an entry is still there
        outputs = self.state["output_dict_per_obj"].get(0)
        frames = len(outputs["non_cond_frame_outputs"]) if outputs else 0
        per_frame = 3 * (self.state["images"].image_size // 4) ** 2 * 4  # low-res logits + bf16 memory
        mask_bytes = self.mask.nbytes if self.mask is not None else 0
        return frames * per_frame + mask_bytes

    def sized_predictor(self, predictor):
        """The predictor at this track's input size (a region's, or the model's own)."""
        return at_input_size(predictor, self.state["images"].image_size)

    def in_view(self, prompt: FramePrompt) -> FramePrompt:
        return prompt if self.roi is None else self.roi.prompt_in_region(prompt)


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
    same_base = new.box == old.box and new.key()[3] == old.key()[3]
    return same_base and new.points[:n] == old.points and new.labels[:n] == old.labels


def add_prompt(predictor, state: dict, k: int, prompt: FramePrompt) -> np.ndarray:
    """Give SAM 2 one slice's prompt (box and every point in one call); returns that slice's mask."""
    with network_lock(predictor):
        if prompt.mask is not None:
            mask = torch.from_numpy(slice_to_image(prompt.mask))
            _, _, video_res_masks = predictor.add_new_mask(state, frame_idx=k, obj_id=OBJ_ID, mask=mask)
        else:
            points = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2) if prompt.points else None
            labels = np.asarray(prompt.labels, dtype=np.int32) if prompt.points else None
            _, _, video_res_masks = predictor.add_new_points_or_box(
                state, frame_idx=k, obj_id=OBJ_ID, points=points, labels=labels, box=prompt.box,
                clear_old_points=True,
            )
    return (video_res_masks[0, 0] > 0.0).cpu().numpy()


def prompts_only(predictor, track: LabelTrack, wanted: dict) -> None:
    """MedSAM2's ``reset_state`` then the prompts again: a state without any pass's memories."""
    with network_lock(predictor):
        predictor.reset_state(track.state)
    for k, prompt in sorted(wanted.items()):
        add_prompt(predictor, track.state, k, track.in_view(prompt))
    track.frame_prompts = dict(wanted)


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
