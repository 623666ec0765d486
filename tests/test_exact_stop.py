"""The exact stop: a pass ends where nothing is connected to the prompted slices (exact_stop.py).

Proved three ways against the full protocol (both passes to the volume's ends):
- the rule itself, on scripted passes drawn by hypothesis: the voxels are the full protocol's
  unless the full protocol keeps a structure with no voxel on the prompted slices, at least
  as large as the one kept, and then the result says so;
- the small model fine-tuned on phantoms, on phantoms with the structure at the volume's
  edge, with gaps between its parts, and with a larger structure beyond a gap;
- the same model on every 3D case in ../shared/data (plumbing weights: the property holds
  for any weights, so these prove the code, not the model).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
from medsam2_engine.prompts import Box, LabelPrompts
from medsam2_engine.exact_stop import exact_stop_report, misses_prompted_range
from medsam2_engine.predictor import Serving
from medsam2_engine.propagation import EarlyStop, PassPlan, propagate_both_ways
from medsam2_engine.protocols import largest_component
from medsam2_engine.study_memory import StudyMemory
from medsam2_engine.volume_io import Volume
from tests.conftest import SHARED_DATA, needs_shared_data

_26 = np.ones((3, 3, 3), bool)


class ScriptedPasses:
    """A stand-in for SAM 2's video predictor whose passes give masks fixed in advance.

    Each pass is causal by construction (a slice's mask never depends on slices after it),
    which is all the exact stop relies on; the forward and backward passes have masks of
    their own, as two passes from a reset state do.
    """

    def __init__(self, forward: np.ndarray, backward: np.ndarray):
        self.masks = {False: forward, True: backward}  # [H, W, K] bool per direction
        self.serving = Serving()
        self.steps = 0

    def propagate_in_video(self, state, start_frame_idx, reverse=False):
        masks = self.masks[reverse]
        order = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, masks.shape[2])
        for k in order:
            self.steps += 1
            mask = masks[:, :, k]
            score = torch.tensor([[4.0 if mask.any() else -4.0]])
            state["output_dict_per_obj"][0]["non_cond_frame_outputs"][k] = {"object_score_logits": score}
            yield k, [1], torch.from_numpy(np.where(mask, 1.0, -1.0)).float()[None, None]


def _state(num_frames: int) -> dict:
    return {"num_frames": num_frames, "obj_ids": [1],
            "output_dict_per_obj": {0: {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}},
            "temp_output_dict_per_obj": {0: {"cond_frame_outputs": {}}}}


def _protocol(forward, backward, prompted: list, exact: bool):
    """MedSAM2's passes over the scripted masks, then the largest 3D component, as the engine runs them
    (with its fallback to the full passes when the kept component misses the prompted slices)."""
    predictor = ScriptedPasses(forward, backward)
    plan = PassPlan(min(prompted), max(prompted), None, union=True, exact_stop=exact)
    propagation = propagate_both_ways(predictor, _state(forward.shape[2]), EarlyStop(), plan=plan, prompted=prompted)
    union = np.zeros(forward.shape, bool)
    for k, output in propagation.outputs.items():
        union[:, :, k] = output.mask
    kept = largest_component(union)
    if exact and any(p.ended_detached for p in propagation.passes) and misses_prompted_range(kept, prompted):
        kept, _, steps = _protocol(forward, backward, prompted, exact=False)
        return kept, None, predictor.steps + steps
    return kept, exact_stop_report(propagation, forward.shape[2], int(kept.sum())), predictor.steps


def _components(mask: np.ndarray) -> list:
    labels, n = ndimage.label(mask, structure=_26)
    return [labels == v for v in range(1, n + 1)]


@st.composite
def scripted_study(draw):
    """Two passes' masks on a small grid: sparse random blobs, with runs of empty slices."""
    k = draw(st.integers(4, 14))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.15, 0.3, 0.5]))
    shape = (4, 4, k)
    forward = rng.random(shape) < density
    backward = forward if draw(st.booleans()) else rng.random(shape) < density
    for masks in (forward, backward):
        masks[:, :, rng.random(k) < draw(st.sampled_from([0.0, 0.2, 0.4]))] = False  # empty slices
    prompted = sorted(set(draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=3))))
    return forward, backward, prompted


@settings(max_examples=200, deadline=None)
@given(scripted_study())
def test_the_stop_changes_nothing_unless_a_structure_beyond_is_as_large(study):
    forward, backward, prompted = study
    full, none_stopped, full_steps = _protocol(forward, backward, prompted, exact=False)
    stopped, report, steps = _protocol(forward, backward, prompted, exact=True)
    assert none_stopped is None
    if report is None:  # both passes reached the ends, or the engine ran them after a miss
        assert np.array_equal(stopped, full)
        return
    assert steps <= full_steps  # a pass may stop on the volume's last slice
    inside = np.zeros(full.shape, bool)
    inside[:, :, report.first:report.last + 1] = True
    assert report.kept_voxels == int(stopped.sum())
    assert not (stopped & ~inside).any() and stopped[:, :, min(prompted):max(prompted) + 1].any()
    if np.array_equal(stopped, full):
        return
    # the one exception, and the result names it: the full protocol kept a structure with no
    # voxel on the prompted slices, at least as large as the one kept, reaching beyond them
    assert not full[:, :, min(prompted):max(prompted) + 1].any() and int(full.sum()) >= report.kept_voxels
    assert (full & ~inside).any()
    assert f"slices {report.first}-{report.last}" in report.note() and f"{report.kept_voxels} voxels" in report.note()


def _union(forward, backward, prompted) -> np.ndarray:
    """What the full protocol unions: forward from the first prompt, backward from the last."""
    union = np.zeros(forward.shape, bool)
    union[:, :, min(prompted):] |= forward[:, :, min(prompted):]
    union[:, :, :max(prompted) + 1] |= backward[:, :, :max(prompted) + 1]
    return union


def test_a_larger_structure_beyond_an_empty_slice_is_the_exception_and_is_named():
    forward = np.zeros((6, 6, 12), bool)
    forward[1:3, 1:3, 2:5] = True  # the prompted structure, 12 voxels
    forward[:, :, 7:11] = True  # beyond an empty slice (5, 6): 144 voxels, nobody prompted it
    full, _, full_steps = _protocol(forward, forward, [3], exact=False)
    stopped, report, steps = _protocol(forward, forward, [3], exact=True)
    assert full[:, :, 7:11].all() and not full[:, :, :5].any()  # the reference keeps the unprompted block
    assert stopped[1:3, 1:3, 2:5].all() and stopped.sum() == 12  # the app keeps the prompted structure
    assert (report.first, report.last, report.kept_voxels) == (1, 5, 12)
    assert steps == 3 + 3 < full_steps == 9 + 4  # forward 3-5 and backward 3-1, against 3-11 and 3-0
    assert "would keep that structure instead" in report.note()


def test_a_pass_stops_at_a_slice_whose_specks_are_cut_off_from_the_structure():
    forward = np.zeros((8, 8, 12), bool)
    forward[2:5, 2:5, 3:6] = True  # the structure
    forward[7, 7, 6:] = True  # a speck on every slice beyond it, never touching it
    stopped, report, steps = _protocol(forward, forward, [4], exact=True)
    full, _, _ = _protocol(forward, forward, [4], exact=False)
    assert np.array_equal(stopped, full) and (report.first, report.last) == (2, 6)
    assert steps == 3 + 3  # forward 4-6 (slice 6 holds only the speck), backward 4-2


def test_a_structure_that_turns_back_keeps_the_pass_going():
    # a U: the structure leaves slice 5, goes up to 8 and comes back down on another branch to 5,
    # which continues to 11; a cut judged slice by slice from below would stop too early
    forward = np.zeros((10, 3, 12), bool)
    forward[0:2, 1, 3:9] = True  # branch A, slices 3-8
    forward[0:9, 1, 8] = True  # the bridge on slice 8
    forward[7:9, 1, 6:12] = True  # branch B, slices 6-11: not touching A below slice 8
    stopped, report, _ = _protocol(forward, forward, [4], exact=True)
    full, _, _ = _protocol(forward, forward, [4], exact=False)
    assert np.array_equal(stopped, full) and stopped[7:9, 1, 11].all()


# ------------------------------------------------------------------ the fine-tuned small model
def _phantom(parts, shape=(40, 32, 24), seed=5):
    from tests.support.trained_small_model import AFFINE, STRUCTURE_HU, body, ellipsoid

    array = body(seed, shape)
    masks = [ellipsoid(centre, radii, shape) for centre, radii in parts]
    for mask in masks:
        array[mask] = STRUCTURE_HU
    return Volume(array, AFFINE, f"phantom{seed}"), masks


def _box_on_largest_slice(mask: np.ndarray) -> Box:
    k = int(np.argmax(mask.sum(axis=(0, 1))))
    ii, jj = np.nonzero(mask[:, :, k])
    return Box(float(ii.min()), float(jj.min()), float(ii.max()), float(jj.max()), k)


def _both(models, volume, prompts: LabelPrompts, key: str, skip_same: bool = False):
    """The app's run and the full protocol's, on the same encoded slices (one memory: the encoder is
    deterministic, so only the passes differ, and the image is encoded once). ``skip_same``: when the
    exact stop cut no pass, the app's run was the full protocol's computation: (stop, None)."""
    memory = StudyMemory()
    stop = VolumeSegmenter(models, memory=memory).run(volume, {"s": prompts}, ("stop", key)).labels["s"]
    if skip_same and not any(p.ended_detached for p in stop.passes) and stop.exact_stop is None:
        return stop, None
    full = VolumeSegmenter(models, EngineSettings(early_stop=EarlyStop(exact_stop=False)), memory=memory)
    return stop, full.run(volume, {"s": prompts}, ("full", key)).labels["s"]


def _steps(result) -> int:
    return sum(p.slices for p in result.passes)


PHANTOMS = {
    "at the first slices": [((18, 16, 2), (8, 6, 4))],
    "at the last slices": [((18, 16, 21), (8, 6, 4))],
    "two parts with a gap": [((18, 16, 6), (7, 6, 3)), ((18, 16, 17), (7, 6, 3))],
}


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_fine_tuned_model_gives_the_full_protocols_voxels_on_phantoms(fine_tuned, name):
    segmenter, _ = fine_tuned
    volume, masks = _phantom(PHANTOMS[name])
    prompts = LabelPrompts(boxes=[_box_on_largest_slice(m) for m in masks])
    stop, full = _both(segmenter.models, volume, prompts, name)
    assert full.mask.any()
    np.testing.assert_array_equal(stop.mask, full.mask)
    assert _steps(stop) <= _steps(full)
    if stop.exact_stop is None:
        assert _steps(stop) == _steps(full)


def test_fine_tuned_model_with_a_larger_structure_beyond_a_gap(fine_tuned):
    segmenter, _ = fine_tuned
    volume, (small, large) = _phantom([((18, 16, 4), (5, 5, 2.5)), ((18, 16, 16), (9, 8, 6))])
    stop, full = _both(segmenter.models, volume, LabelPrompts(boxes=[_box_on_largest_slice(small)]), "blob")
    report = stop.exact_stop
    assert stop.mask.any() and report is not None and _steps(stop) < _steps(full)
    if np.array_equal(stop.mask, full.mask):
        return  # the model never re-found the larger structure after the empty slice
    assert not full.mask[:, :, report.first:report.last + 1].any() and full.mask.sum() >= report.kept_voxels
    assert (full.mask & large).sum() > 0.5 * full.mask.sum()  # the reference kept the unprompted one


@needs_shared_data
def test_every_real_3d_case_gives_the_full_protocols_voxels_or_names_the_exception(fine_tuned):
    from medsam2_eval.cases import find_cases, select_structures

    segmenter, _ = fine_tuned
    checked, compared, exceptions, stopped_passes, steps_saved = 0, 0, [], 0, 0
    for case in find_cases(SHARED_DATA):
        if not case.volume.is_3d or case.volume.array.shape[2] < 3:
            continue
        for structure in select_structures(case, max_structures=1, min_voxels=20):
            box = _box_on_largest_slice(structure.mask)
            stop, full = _both(segmenter.models, case.volume, LabelPrompts(boxes=[box]), f"{case.name}/{structure.name}",
                               skip_same=True)
            checked += 1
            if full is None:
                continue  # no pass was cut: the run was the full protocol's, slice for slice
            compared += 1
            stopped_passes += sum(p.ended_detached for p in stop.passes)
            steps_saved += _steps(full) - _steps(stop)
            if np.array_equal(stop.mask, full.mask):
                continue
            # the one exception: the full protocol kept a structure wholly outside the segmented
            # slices (none on the boxed slice), at least as large as what the app kept, and said so
            report = stop.exact_stop
            assert report is not None, f"{case.name} {structure.name}: voxels differ without a stop"
            assert not full.mask[:, :, report.first:report.last + 1].any()
            assert not full.mask[:, :, box.k].any() and full.mask.sum() >= report.kept_voxels
            exceptions.append(f"{case.name}/{structure.name}: kept {report.kept_voxels}, full {int(full.mask.sum())}")
    print(f"{checked} structures, {compared} with a pass cut (compared with the full protocol), "
          f"{len(exceptions)} exceptions {exceptions}, {stopped_passes} passes stopped, {steps_saved} slice steps saved")
    assert checked >= 8 and compared >= 3
    assert stopped_passes > 0 and steps_saved > 0  # the stop was exercised, not only the full passes
