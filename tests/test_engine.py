"""The 3D engine over a small untrained SAM 2: coordinates, propagation, sessions, corrections.

Untrained weights make no claim about accuracy; these tests check the mechanics, each in a
way that fails if the mechanism is broken (a transposed axis, a one-way pass, a lost
session, a re-encoded slice).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from medsam2_engine.frames import slice_to_image
from medsam2_engine.prompts import Box, Click, LabelPrompts
from medsam2_engine.propagation import EarlyStop
from medsam2_engine.results import SliceScore
from tests.conftest import make_volume


def test_click_lands_on_the_voxel_it_names(segmenter, phantom, monkeypatch):
    """A click at [i, j, k] reaches SAM 2 on frame k at the pixel showing voxel [i, j, k]."""
    seen = []
    model = segmenter.models.get().model
    original = type(model).add_new_points_or_box

    def spy(self, state, frame_idx, obj_id, points=None, labels=None, **kwargs):
        seen.append((frame_idx, np.asarray(points).copy(), state))
        return original(self, state, frame_idx, obj_id, points=points, labels=labels, **kwargs)

    monkeypatch.setattr(type(model), "add_new_points_or_box", spy)
    i, j, k = 31, 9, 7  # deliberately off-centre in a 40 x 28 x 12 volume
    phantom.array[i, j, k] = 3000.0  # one unmistakable voxel
    segmenter.run(phantom, {"organ": LabelPrompts(clicks=[Click(i, j, k, True)])}, ("t", "axis"))
    frame_idx, points, state = seen[0]
    assert frame_idx == k
    x, y = points[0]
    frames = state["images"]
    assert (frames.video_width, frames.video_height) == (40, 28)
    image = frames.image01(k)
    assert image.shape == (28, 40)
    assert image[int(y), int(x)] == image.max() == 1.0  # the bright voxel, after windowing


def test_propagates_both_ways_over_every_slice(segmenter, phantom, capsys):
    prompts = {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}
    result = segmenter.run(phantom, prompts, ("t", "both"))
    assert "propagate in video" not in capsys.readouterr().err  # no sam2 progress bars in a server's log
    label = result.labels["organ"]
    directions = {p.direction: p for p in label.passes}
    assert directions["forward"].last == phantom.array.shape[2] - 1
    assert directions["backward"].last == 0
    assert sorted(label.slices) == list(range(phantom.array.shape[2]))
    assert all(isinstance(s, SliceScore) for s in label.slices.values())


def test_several_labels_live_in_one_session(segmenter, phantom):
    key = ("t", "labels")
    first = segmenter.run(phantom, {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}, key)
    both = segmenter.run(
        phantom,
        {
            "organ": LabelPrompts(clicks=[Click(18, 14, 5, True)]),
            "lesion": LabelPrompts(boxes=[Box(4, 3, 20, 12, 8)]),
        },
        key,
    )
    assert both.session.labels == ["lesion", "organ"]
    assert both.labels["organ"].reused  # unchanged prompts: not propagated again
    assert not both.labels["lesion"].reused
    assert np.array_equal(both.labels["organ"].mask, first.labels["organ"].mask)
    assert not np.array_equal(both.labels["organ"].mask, both.labels["lesion"].mask)


def test_correction_repropagates_from_the_session_without_reencoding(segmenter, phantom):
    key = ("t", "correct")
    prompts = LabelPrompts(clicks=[Click(18, 14, 5, True)])
    first = segmenter.run(phantom, {"organ": prompts}, key)
    assert first.session.slices_encoded == phantom.array.shape[2]
    before = first.labels["organ"].mask.copy()
    prompts.clicks.append(Click(30, 20, 9, False))  # a negative click on another slice
    second = segmenter.run(phantom, {"organ": prompts}, key)
    assert second.session.started is None  # same session
    assert second.session.slices_encoded == 0  # every slice came from the feature cache
    assert second.labels["organ"].prompted_slices == [5, 9]
    assert not np.array_equal(second.labels["organ"].mask, before)


def test_early_stop_ends_each_pass_where_the_object_ends(segmenter, monkeypatch):
    """Object scores scripted to say 'present' on slices 8-14 only: both passes stop just past them."""
    volume = make_volume(shape=(32, 24, 30))
    model = segmenter.models.get().model
    original = type(model)._track_step

    def scripted(self, frame_idx, *args, **kwargs):
        current_out, sam_outputs, high_res, pix = original(self, frame_idx, *args, **kwargs)
        present = 8 <= frame_idx <= 14
        score = torch.full_like(sam_outputs[6], 5.0 if present else -5.0)
        return current_out, (*sam_outputs[:6], score), high_res, pix

    monkeypatch.setattr(type(model), "_track_step", scripted)
    prompts = {"lesion": LabelPrompts(clicks=[Click(16, 12, 11, True)])}
    result = segmenter.run(volume, prompts, ("t", "stop"),
                            options=segmenter.settings.options(early_stop=EarlyStop(enabled=True, patience=2)))
    passes = {p.direction: p for p in result.labels["lesion"].passes}
    assert passes["forward"].stopped_early and passes["forward"].last == 16
    assert passes["backward"].stopped_early and passes["backward"].last == 6
    assert len(result.labels["lesion"].slices) == 11  # 6..16, not 30
    assert not result.labels["lesion"].mask[:, :, 17:].any()
    # only the slices reached were encoded: not sam2's init_state warm-up on slice 0
    assert result.session.slices_encoded == 11

    full = segmenter.run(volume, prompts, ("t", "stop"),
                          options=segmenter.settings.options(early_stop=EarlyStop(enabled=False)))
    assert len(full.labels["lesion"].slices) == 30


def test_window_changes_the_frames(segmenter, phantom):
    a = segmenter.run(phantom, {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}, ("t", "w"))
    b = segmenter.run(
        phantom, {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}, ("t", "w"), window="lung"
    )
    assert a.window.source == "CT preset soft_tissue"
    assert b.window.source == "CT preset lung"
    assert b.session.started == "window changed"


def test_sessions_are_evicted_least_recently_used_first(small_source):
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.sessions import SessionLimits

    seg = VolumeSegmenter(small_source, EngineSettings(early_stop=EarlyStop(enabled=False),
                                                       limits=SessionLimits(max_sessions=2)))
    prompts = {"organ": LabelPrompts(clicks=[Click(10, 10, 3, True)])}
    volumes = [make_volume(shape=(24, 20, 6), seed=s) for s in range(3)]
    for n, volume in enumerate(volumes):
        seg.run(volume, prompts, ("user", f"img{n}"))
    assert seg.memory.keys() == [("user", "img1"), ("user", "img2")]
    again = seg.run(volumes[0], prompts, ("user", "img0"))
    assert again.session.started == "new"


def test_frames_are_never_written_to_disk(segmenter, phantom, tmp_path, monkeypatch):
    """In-memory frames: sam2's JPEG loader is never reached."""
    import sam2.utils.misc as misc

    def refuse(*args, **kwargs):
        raise AssertionError("JPEG loader called")

    monkeypatch.setattr(misc, "load_video_frames_from_jpg_images", refuse)
    result = segmenter.run(phantom, {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}, ("t", "mem"))
    assert result.labels["organ"].mask.shape == phantom.array.shape
    assert slice_to_image(phantom.array[:, :, 0]).shape == (28, 40)


def test_sam2_is_extended_never_patched(segmenter, phantom, tmp_path):
    """After a segmentation, sam2's module globals are sam2's own, and sam2's own predictor still
    reads a JPEG folder (with its progress bar): the in-memory loader and the quiet passes belong
    to VolumePredictor alone."""
    import sam2.sam2_video_predictor as sam2_video
    import sam2.utils.misc as misc
    import tqdm

    segmenter.run(phantom, {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}, ("t", "unpatched"))
    assert sam2_video.load_video_frames is misc.load_video_frames
    assert sam2_video.tqdm is tqdm.tqdm
    predictor = segmenter.models.get().model
    assert inspect.unwrap(predictor.init_state).__code__ is inspect.unwrap(sam2_video.SAM2VideoPredictor.init_state).__code__


def test_replacing_the_points_on_a_slice_matches_a_fresh_session(segmenter, phantom):
    """An undo (or OHIF starting a new structure) must not refine the old mask."""
    old = {"organ": LabelPrompts(clicks=[Click(10, 8, 5, True)])}
    new = {"organ": LabelPrompts(clicks=[Click(30, 20, 5, True), Click(12, 9, 5, False)])}
    segmenter.run(phantom, old, ("t", "replaced"))
    replaced = segmenter.run(phantom, new, ("t", "replaced")).labels["organ"].mask
    fresh = segmenter.run(phantom, new, ("t", "fresh")).labels["organ"].mask
    np.testing.assert_array_equal(replaced, fresh)


def test_added_points_refine_the_slice_from_its_previous_mask(small_source, phantom, monkeypatch):
    """sam2 protocol: clicks refine a slice from its previous mask (medsam2 rebuilds from the prompts)."""
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter

    segmenter = VolumeSegmenter(small_source, EngineSettings(protocol="sam2"))
    model = segmenter.models.get().model
    original = type(model)._run_single_frame_inference
    fed_back = []

    def spy(self, *args, **kwargs):
        fed_back.append(kwargs.get("prev_sam_mask_logits") is not None)
        return original(self, *args, **kwargs)

    prompts = LabelPrompts(clicks=[Click(18, 14, 5, True)])
    segmenter.run(phantom, {"organ": prompts}, ("t", "refine"))
    monkeypatch.setattr(type(model), "_run_single_frame_inference", spy)
    prompts.clicks.append(Click(22, 16, 5, True))
    segmenter.run(phantom, {"organ": prompts}, ("t", "refine"))
    assert fed_back[0] is True  # the click on slice 5 was decoded with slice 5's previous mask


def test_medsam2_protocol_depends_on_the_prompts_only(segmenter, phantom):
    """The same prompts give the same mask whatever came before them in the session."""
    final = LabelPrompts(clicks=[Click(18, 14, 5, True), Click(22, 16, 5, True)], boxes=[Box(6, 4, 28, 22, 7)])
    segmenter.run(phantom, {"organ": LabelPrompts(clicks=[Click(18, 14, 5, True)])}, ("t", "history"))
    segmenter.run(phantom, {"organ": LabelPrompts(clicks=[Click(30, 20, 3, False)])}, ("t", "history"))
    result = segmenter.run(phantom, {"organ": final}, ("t", "history"))
    after_history = result.labels["organ"]
    fresh = segmenter.run(phantom, {"organ": final}, ("t", "no-history")).labels["organ"]
    assert result.run.protocol == "medsam2"
    np.testing.assert_array_equal(after_history.mask, fresh.mask)
    assert after_history.slices == fresh.slices
