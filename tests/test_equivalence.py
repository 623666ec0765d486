"""Same weights, same frames, same prompts: this engine and sam2's own video predictor agree.

- ``medsam2`` protocol (the default): against MedSAM2's published 3D protocol
  (``medsam2_infer_3D_CT.py``) written here from its description on sam2's own
  ``SAM2VideoPredictor`` with MedSAM2's predictor settings: box on the key slice, forward
  pass, ``reset_state``, the same box, reverse pass, union, largest 3D component
  (``skimage.measure.label``, as MedSAM2 does), ``fill_hole_area=8``.
- ``sam2`` protocol: against sam2's documented flow, both passes in one state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from medsam2_engine.checkpoints import load_model_config, read_state_dict
from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
from medsam2_engine.frames import SliceFrames, image_to_slice
from medsam2_engine.propagation import CorrectionStop, EarlyStop
from medsam2_engine.prompts import Box, Click, LabelPrompts
from medsam2_engine.crop_region import CropRegionSettings
from medsam2_engine.volume_io import Volume
from medsam2_engine.windowing import choose_window
from tests.support.small_model import small_preset

# build_sam2_video_predictor_npz(..., apply_postprocessing=True) in MedSAM2's repository
MEDSAM2_PREDICTOR_SETTINGS = {
    "model.sam_mask_decoder_extra_args": {"dynamic_multimask_via_stability": True,
                                          "dynamic_multimask_stability_delta": 0.05,
                                          "dynamic_multimask_stability_thresh": 0.98},
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 8,
}


def _sam2_own_predictor(checkpoint, medsam2_settings: bool = False):
    """sam2's SAM2VideoPredictor class itself, built from the same config and weights.

    With ``medsam2_settings``: the class MedSAM2 vendors (its ``SAM2VideoPredictorNPZ`` is
    sam2 1.1.0's ``sam2_video_predictor_legacy.SAM2VideoPredictor`` with ``init_state`` taking
    tensors) and MedSAM2's predictor settings.
    """
    cfg = load_model_config(small_preset())
    OmegaConf.update(cfg, "model._target_", "sam2.sam2_video_predictor.SAM2VideoPredictor")
    if medsam2_settings:  # the reference's own class and settings, not the app's
        OmegaConf.update(cfg, "model._target_", "sam2.sam2_video_predictor_legacy.SAM2VideoPredictor")
        OmegaConf.update(cfg, "model.add_all_frames_to_correct_as_cond", False, force_add=True)
        for key, value in MEDSAM2_PREDICTOR_SETTINGS.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    model = instantiate(cfg.model, _recursive_=True)
    model.load_state_dict(read_state_dict(str(checkpoint)))
    return model.eval()


def _state_on(predictor, frames: SliceFrames, jpeg_dir):
    """sam2's documented init_state on a JPEG folder, then the exact same frames swapped in."""
    for t in range(len(frames)):
        Image.new("RGB", (frames.video_width, frames.video_height)).save(jpeg_dir / f"{t:05d}.jpg")
    state = predictor.init_state(video_path=str(jpeg_dir))
    state["images"] = frames.stack()  # identical input tensors, no JPEG round trip
    state["cached_features"] = {}
    return state


def _run_sam2_own(predictor, frames: SliceFrames, jpeg_dir, prompts: LabelPrompts):
    with torch.inference_mode():
        state = _state_on(predictor, frames, jpeg_dir)
        for k, prompt in sorted(prompts.by_frame().items()):
            predictor.add_new_points_or_box(
                state, frame_idx=k, obj_id=1,
                points=np.asarray(prompt.points, np.float32).reshape(-1, 2) if prompt.points else None,
                labels=np.asarray(prompt.labels, np.int32) if prompt.points else None,
                box=prompt.box,
            )
        start = min(prompts.slices())
        masks = {}
        for reverse in (False, True):
            for t, _, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
                masks[t] = image_to_slice((logits[0, 0] > 0).numpy())
    return masks


def medsam2_reference(predictor, frames: SliceFrames, jpeg_dir, box, key_slice: int) -> tuple:
    """MedSAM2's 3D protocol: forward, reset_state, the same box, reverse; union; largest 3D component.

    Returns the mask and, per slice, the highest object score of the passes (the masks of a
    confident model may agree even where the memories differ; the scores do not).
    """
    from skimage import measure

    segs = np.zeros((len(frames), frames.video_height, frames.video_width), np.uint8)  # [z, y, x] as MedSAM2
    scores: dict = {}
    with torch.inference_mode():
        state = _state_on(predictor, frames, jpeg_dir)
        for reverse in (False, True):
            predictor.add_new_points_or_box(inference_state=state, frame_idx=key_slice, obj_id=1,
                                            box=np.asarray(box, np.float32))
            for t, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                segs[t, (logits[0] > 0.0).numpy()[0]] = 1
                out = state["output_dict_per_obj"][0]
                out = out["cond_frame_outputs"].get(t) or out["non_cond_frame_outputs"][t]
                scores[t] = max(scores.get(t, -np.inf), float(out["object_score_logits"].flatten()[0]))
            predictor.reset_state(state)
    if segs.max() > 0:
        labels = measure.label(segs)
        segs = labels == np.argmax(np.bincount(labels.flat)[1:]) + 1
    return np.transpose(segs, (2, 1, 0)).astype(bool), scores  # [z, y, x] -> [i, j, k]


def test_engine_matches_sam2_video_predictor(small_source, phantom, small_model_files, tmp_path):
    segmenter = VolumeSegmenter(small_source, EngineSettings(protocol="sam2"))
    prompts = LabelPrompts(clicks=[Click(18, 14, 4, True), Click(30, 20, 4, False), Click(12, 10, 8, True)],
                           boxes=[Box(6, 4, 28, 22, 4)])
    ours = segmenter.run(phantom, {"organ": prompts}, ("eq", "1")).labels["organ"].mask

    window = choose_window(phantom.array, "CT", None)
    frames = SliceFrames(phantom.array, window, image_size=128)
    reference = _run_sam2_own(_sam2_own_predictor(small_model_files[1]), frames, tmp_path, prompts)

    assert sorted(reference) == list(range(phantom.array.shape[2]))
    expected = np.stack([reference[t] for t in range(phantom.array.shape[2])], axis=-1)
    assert expected.any()  # a comparison of two empty volumes would prove nothing
    np.testing.assert_array_equal(ours, expected)


def _lesion_study():
    """A structure through most of 16 slices with a second, smaller blob apart from it (26-disconnected)."""
    from tests.support.trained_small_model import AFFINE, STRUCTURE_HU, body, ellipsoid

    shape = (40, 32, 16)
    mask = ellipsoid((17, 16, 8), (8, 6, 6), shape)
    array = body(3, shape)
    array[mask] = STRUCTURE_HU
    array[ellipsoid((34, 6, 3), (2.5, 2.5, 1.5), shape)] = STRUCTURE_HU  # a distractor the passes may pick up
    return Volume(array, AFFINE, "lesion"), mask


@pytest.mark.parametrize("key_slice", [8, 0])
def test_default_protocol_is_medsam2s_published_3d_protocol(fine_tuned, small_model_files, tmp_path, key_slice):
    from medsam2_engine.mask_measures import dice

    segmenter, _ = fine_tuned
    default = VolumeSegmenter(segmenter.models)  # the app's defaults, nothing turned on or off
    assert default.protocol == "medsam2"
    volume, truth = _lesion_study()
    ii, jj = np.nonzero(truth[:, :, 8])
    box = Box(float(ii.min()), float(jj.min()), float(ii.max()), float(jj.max()), key_slice)
    ours = default.run(volume, {"lesion": LabelPrompts(boxes=[box])}, ("eq", key_slice)).labels["lesion"]

    frames = SliceFrames(volume.array, choose_window(volume.array, "CT", None), image_size=128,
                         resampling="medsam2")  # MedSAM2's input (test_protocol.py checks it against its script)
    checkpoint = segmenter.models.explicit
    reference, scores = medsam2_reference(_sam2_own_predictor(checkpoint, medsam2_settings=True), frames,
                                          tmp_path, (box.i0, box.j0, box.i1, box.j1), key_slice)
    assert reference.any() and (key_slice != 8 or dice(reference, truth) > 0.7)  # weights that segment it
    np.testing.assert_array_equal(ours.mask, reference)
    # the default's passes end where the structure is cut off (exact_stop.py): the slices it
    # reached score as the reference's; the full passes score every slice as the reference does
    reached = {k: v.object_score for k, v in ours.slices.items()}
    assert reached == {k: round(v, 4) for k, v in scores.items() if k in reached}
    full = VolumeSegmenter(segmenter.models, EngineSettings(early_stop=EarlyStop(exact_stop=False)))
    full_label = full.run(volume, {"lesion": LabelPrompts(boxes=[box])}, ("full", key_slice)).labels["lesion"]
    np.testing.assert_array_equal(full_label.mask, reference)
    assert {k: v.object_score for k, v in full_label.slices.items()} == {k: round(v, 4) for k, v in scores.items()}

    # the app's earlier default (one state for both passes, crop region, early stop) is not the reference
    old = VolumeSegmenter(segmenter.models, EngineSettings(
        protocol="sam2", early_stop=EarlyStop(True), correction_stop=CorrectionStop(True),
        crop_region=CropRegionSettings(enabled=True)))
    old_mask = old.run(volume, {"lesion": LabelPrompts(boxes=[box])}, ("old", key_slice)).labels["lesion"].mask
    if key_slice == 8:
        assert not np.array_equal(old_mask, reference)


def medsam2_point_reference(predictor, frames: SliceFrames, jpeg_dir, points, labels, key_slice: int) -> np.ndarray:
    """MedSAM2's point protocol: the key slice's mask from its points, then each pass from a fresh
    state given that mask back (``add_new_mask``); the union, no largest-component step."""
    segs = np.zeros((len(frames), frames.video_height, frames.video_width), np.uint8)  # [z, y, x]
    with torch.inference_mode():
        state = _state_on(predictor, frames, jpeg_dir)
        _, _, logits = predictor.add_new_points_or_box(inference_state=state, frame_idx=key_slice, obj_id=1,
                                                       points=points, labels=labels)
        key_mask = (logits[0, 0] > 0.0).numpy()
        for reverse in (False, True):
            predictor.reset_state(state)
            predictor.add_new_mask(inference_state=state, frame_idx=key_slice, obj_id=1, mask=key_mask)
            for t, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                segs[t, (logits[0] > 0.0).numpy()[0]] = 1
    return np.transpose(segs, (2, 1, 0)).astype(bool)


def test_a_click_without_a_box_runs_medsam2s_point_protocol(fine_tuned, small_model_files, tmp_path):
    segmenter, _ = fine_tuned
    default = VolumeSegmenter(segmenter.models)
    volume, truth = _lesion_study()
    clicks = [Click(17.0, 16.0, 8, True), Click(12.0, 14.0, 8, True)]
    ours = default.run(volume, {"lesion": LabelPrompts(clicks=clicks)}, ("point", 1)).labels["lesion"]
    assert ours.protocol == "medsam2_point" and ours.exact_stop is None

    frames = SliceFrames(volume.array, choose_window(volume.array, "CT", None), image_size=128, resampling="medsam2")
    points = np.array([[c.i, c.j] for c in clicks], np.float32)  # SAM 2's (x, y) is the voxel's (i, j)
    reference = medsam2_point_reference(_sam2_own_predictor(segmenter.models.explicit, medsam2_settings=True),
                                        frames, tmp_path, points, np.ones(len(clicks), np.int32), 8)
    assert reference.any()
    np.testing.assert_array_equal(ours.mask, reference)
    from medsam2_engine.protocols import label_protocol

    with_box = LabelPrompts(boxes=[Box(9.0, 10.0, 25.0, 22.0, 8)], clicks=clicks).by_frame().values()
    assert label_protocol("medsam2", with_box) == "medsam2" and label_protocol("sam2", []) == "sam2"
