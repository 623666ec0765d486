"""Same weights, same frames, same prompts: this engine and sam2's own video predictor agree."""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from medsam2_engine.checkpoints import load_model_config, read_state_dict
from medsam2_engine.frames import SliceFrames, image_to_slice
from medsam2_engine.prompts import Box, Click, LabelPrompts
from medsam2_engine.windowing import choose_window
from tests.support.small_model import small_preset


def _sam2_own_predictor(checkpoint):
    """sam2's SAM2VideoPredictor class itself, built from the same config and weights."""
    cfg = load_model_config(small_preset())
    OmegaConf.update(cfg, "model._target_", "sam2.sam2_video_predictor.SAM2VideoPredictor")
    model = instantiate(cfg.model, _recursive_=True)
    model.load_state_dict(read_state_dict(str(checkpoint)))
    return model.eval()


def _run_sam2_own(predictor, frames: SliceFrames, jpeg_dir, prompts: LabelPrompts):
    """sam2's documented flow: init_state on a JPEG folder, then swap in the exact same frames."""
    for t in range(len(frames)):
        Image.new("RGB", (frames.video_width, frames.video_height)).save(jpeg_dir / f"{t:05d}.jpg")
    with torch.inference_mode():
        state = predictor.init_state(video_path=str(jpeg_dir))
        state["images"] = frames.stack()  # identical input tensors, no JPEG round trip
        state["cached_features"] = {}
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


def test_engine_matches_sam2_video_predictor(segmenter, phantom, small_model_files, tmp_path):
    prompts = LabelPrompts(clicks=[Click(18, 14, 4, True), Click(30, 20, 4, False), Click(12, 10, 8, True)],
                           boxes=[Box(6, 4, 28, 22, 4)])
    ours = segmenter.segment(phantom, {"organ": prompts}, ("eq", "1")).labels["organ"].mask

    window = choose_window(phantom.array, "CT", None)
    frames = SliceFrames(phantom.array, window, image_size=128)
    reference = _run_sam2_own(_sam2_own_predictor(small_model_files[1]), frames, tmp_path, prompts)

    assert sorted(reference) == list(range(phantom.array.shape[2]))
    expected = np.stack([reference[t] for t in range(phantom.array.shape[2])], axis=-1)
    assert expected.any()  # a comparison of two empty volumes would prove nothing
    np.testing.assert_array_equal(ours, expected)
