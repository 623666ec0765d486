"""One-prompt segmentation in the engine, over a small untrained SAM 2.

Untrained weights say nothing about accuracy, so these tests check the mechanism, each so
that it fails when the mechanism is broken: the support's slices and masks reach sam2 as
conditioning frames ahead of the target, the target's mask depends on the support, the
start slice is the one the model is surest of, both directions are covered, supports are
chosen by likeness, and an empty support or an absent structure never yields a confident mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam2_engine.frames import slice_to_image
from medsam2_engine.one_prompt import OnePromptError, OnePromptSegmenter, OnePromptSettings, Support
from medsam2_engine.prompts import FramePrompt
from medsam2_engine.propagation import EarlyStop
from medsam2_engine.support_selection import choose_supports, spanning_slices
from tests.conftest import make_volume

SHAPE = (36, 28, 9)


@pytest.fixture(scope="module")
def one_prompt(small_source):
    settings = OnePromptSettings(slices_per_support=2, max_probes=5, early_stop=EarlyStop(enabled=False))
    return OnePromptSegmenter(small_source, settings)


def _blob_support(name="support", seed=1, where="blob"):
    volume = make_volume(SHAPE, seed=seed)
    if where == "blob":
        mask = volume.array > 120
    else:  # a region elsewhere: the right-hand strip of the body
        mask = np.zeros(SHAPE, bool)
        mask[26:33, 4:24, 2:7] = True
    return Support(name, volume, mask)


def test_spanning_slices_spread_over_the_structure_and_skip_its_tips():
    mask = np.zeros((4, 4, 20), bool)
    mask[:, :, 5:16] = True  # slices 5..15
    assert spanning_slices(mask, 3) == [7, 10, 13]
    assert spanning_slices(mask, 1) == [10]
    assert spanning_slices(mask[:, :, :7], 5) == [5, 6]  # fewer slices than asked: all of them
    assert spanning_slices(np.zeros((4, 4, 6), bool), 3) == []


def test_supports_are_ranked_by_likeness_and_twins_are_skipped():
    target = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])
    candidates = {
        "close": torch.tensor([[1.0, 0.05, 0.0]]),
        "twin_of_close": torch.tensor([[1.0, 0.05, 0.0]]),
        "far": torch.tensor([[0.0, 0.0, 1.0]]),
        "middling": torch.tensor([[0.6, 0.6, 0.1]]),
    }
    choices = {c.name: c for c in choose_supports(candidates, target, max_supports=2)}
    assert choices["close"].used and choices["middling"].used
    assert not choices["twin_of_close"].used and "nearly the same" in choices["twin_of_close"].reason
    assert not choices["far"].used
    assert choices["close"].similarity > choices["middling"].similarity > choices["far"].similarity


def test_support_slices_and_masks_are_conditioning_frames_before_the_target(one_prompt, monkeypatch):
    support, target = _blob_support(), make_volume(SHAPE, seed=2)
    model = one_prompt.models.get().model
    seen = []
    original = type(model).add_new_mask

    def spy(self, state, frame_idx, obj_id, mask):
        seen.append((frame_idx, np.asarray(mask).copy(), state["images"]))
        return original(self, state, frame_idx, obj_id, mask)

    monkeypatch.setattr(type(model), "add_new_mask", spy)
    result = one_prompt.segment_volume(target, [support])
    slices = result.supports[0].slices
    assert len(slices) == 2 and all(support.mask[:, :, k].any() for k in slices)
    first_state = [s for s in seen if s[2] is seen[0][2]]
    assert [f for f, _, _ in first_state] == [0, 1]
    for (frame_idx, mask, frames), k in zip(first_state, slices):
        np.testing.assert_array_equal(mask, slice_to_image(support.mask[:, :, k]))
        assert frames.key(frame_idx) == ("support", "support", k)
    assert frames.key(2) == ("target", 0) and len(frames) == 2 + SHAPE[2]
    assert (frames.video_height, frames.video_width) == (SHAPE[1], SHAPE[0])  # target's slice size


def test_result_comes_from_the_support_memory(one_prompt):
    target = make_volume(SHAPE, seed=2)
    light = OnePromptSettings(slices_per_support=1, max_probes=3, early_stop=EarlyStop(enabled=True, patience=1))
    first = one_prompt.segment_volume(target, [_blob_support(where="blob")], settings=light)
    again = one_prompt.segment_volume(target, [_blob_support(where="blob")], settings=light)
    other = one_prompt.segment_volume(target, [_blob_support(where="strip")], settings=light)
    np.testing.assert_array_equal(first.mask, again.mask)  # deterministic, so a change below is the support's
    assert first.probes != other.probes or not np.array_equal(first.mask, other.mask)
    assert first.mask.shape == target.array.shape


def test_start_is_the_surest_probe_and_both_directions_are_covered(one_prompt):
    result = one_prompt.segment_volume(make_volume(SHAPE, seed=2), [_blob_support()])
    assert result.found, result.warnings
    assert result.start_slice == max(result.probes, key=lambda k: (result.probes[k], -k))
    assert set(result.slices) == set(range(SHAPE[2]))  # early stop off: every slice, from the start both ways
    directions = {p.direction: p for p in result.passes}
    if result.start_slice > 0:
        assert directions["backward"].last == 0
    assert directions["forward"].last == SHAPE[2] - 1
    assert 0.0 < result.confidence <= 1.0
    per_slice = [s.confidence for s in result.slices.values() if s.area]
    assert result.confidence == pytest.approx(np.mean(per_slice), abs=1e-3)
    assert all(s.confidence is not None and s.area >= 0 for s in result.slices.values())


def test_empty_or_misshapen_support_is_refused(one_prompt):
    target = make_volume(SHAPE, seed=2)
    empty = Support("empty", make_volume(SHAPE, seed=1), np.zeros(SHAPE, bool))
    with pytest.raises(OnePromptError, match="empty"):
        one_prompt.segment_volume(target, [empty])
    wrong = Support("wrong", make_volume(SHAPE, seed=1), np.ones((5, 5, 5), bool))
    with pytest.raises(OnePromptError, match="label shape"):
        one_prompt.segment_volume(target, [wrong])
    with pytest.raises(OnePromptError, match="no support"):
        one_prompt.segment_volume(target, [])


def test_an_empty_support_among_good_ones_is_skipped_and_reported(one_prompt):
    empty = Support("empty", make_volume(SHAPE, seed=3), np.zeros(SHAPE, bool))
    result = one_prompt.segment_volume(make_volume(SHAPE, seed=2), [empty, _blob_support("good")])
    by_name = {s.name: s for s in result.supports}
    assert by_name["good"].used and not by_name["empty"].used
    assert "empty" in by_name["empty"].reason


def test_the_most_similar_support_is_used_and_other_modalities_are_not(one_prompt):
    ct_support = _blob_support("ct_like")
    mr_volume = make_volume(SHAPE, seed=4, ct=False)
    mr_support = Support("mr_like", mr_volume, mr_volume.array > 500)
    settings = OnePromptSettings(slices_per_support=2, max_probes=3, max_supports=2,
                                 early_stop=EarlyStop(enabled=True, patience=1))
    result = one_prompt.segment_volume(make_volume(SHAPE, seed=2), [mr_support, ct_support], settings=settings)
    by_name = {s.name: s for s in result.supports}
    assert by_name["ct_like"].used
    assert not by_name["mr_like"].used and "modality" in by_name["mr_like"].reason


def test_an_absent_structure_gives_an_empty_unconfident_result(one_prompt):
    """When the model's object score says 'absent' everywhere, nothing is presented as found."""
    bias = one_prompt.models.get().model.sam_mask_decoder.pred_obj_score_head.layers[2].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.fill_(-20.0)
    try:
        result = one_prompt.segment_volume(make_volume(SHAPE, seed=2), [_blob_support()])
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert not result.found and not result.mask.any()
    assert result.confidence == 0.0 and result.start_slice is None
    assert result.warnings and "not found" in result.warnings[0]


def _rgb(seed, size):
    rng = np.random.default_rng(seed)
    rows, cols = size
    yy, xx = np.mgrid[0:rows, 0:cols]
    image = np.full((rows, cols, 3), 0.8, np.float32)
    lesion = ((yy - rows * 0.5) / (rows * 0.25)) ** 2 + ((xx - cols * 0.45) / (cols * 0.2)) ** 2 <= 1
    image[lesion] = (0.4, 0.25, 0.2)
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32), lesion


def test_2d_queries_follow_the_support_and_keep_their_own_size(one_prompt):
    support, lesion = _rgb(0, (48, 64))
    queries = [_rgb(1, (40, 52))[0], _rgb(2, (64, 48))[0]]
    first = one_prompt.segment_images(support, queries, support_mask=lesion)
    background = np.zeros_like(lesion)
    background[:10, :] = True
    other = one_prompt.segment_images(support, queries, support_mask=background)
    assert [q.mask.shape for q in first.queries] == [(40, 52), (64, 48)]
    assert any(
        not np.array_equal(a.mask, b.mask) or a.object_score != b.object_score
        for a, b in zip(first.queries, other.queries)
    )
    for q in first.queries:
        assert 0.0 <= q.confidence <= 1.0 and q.found == (q.object_score > 0.0 and bool(q.mask.any()))
    alone = one_prompt.segment_images(support, queries[1:], support_mask=lesion)  # independent of other queries
    np.testing.assert_array_equal(alone.queries[0].mask, first.queries[1].mask)


def test_2d_support_from_a_prompt_and_empty_support_refused(one_prompt):
    support, lesion = _rgb(0, (48, 64))
    query = _rgb(1, (40, 52))[0]
    result = one_prompt.segment_images(support, [query], prompt=FramePrompt(box=(14, 12, 44, 36)))
    assert result.support_mask.shape == (48, 64) and result.support_mask.any()
    with pytest.raises(ValueError, match="empty"):
        one_prompt.segment_images(support, [query], support_mask=np.zeros_like(lesion))
    with pytest.raises(ValueError, match="either a mask or a prompt"):
        one_prompt.segment_images(support, [query])


def test_one_prompt_encodes_through_the_sessions_store_and_reuses_their_slices(small_source, tmp_path):
    """The target's encoded slices are the interactive sessions' (one store, one memory budget):
    a study a clinician has open is not encoded again, and one-prompt's slices serve the next click."""
    import nibabel as nib

    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_engine.prompts import Box, LabelPrompts

    target = make_volume(SHAPE, seed=2)
    path = tmp_path / "target.nii.gz"
    nib.save(nib.Nifti1Image(target.array, np.eye(4)), str(path))
    segmenter = VolumeSegmenter(small_source)
    store = segmenter.memory
    settings = OnePromptSettings(slices_per_support=2, max_probes=SHAPE[2], early_stop=EarlyStop(enabled=False))
    one_prompt = OnePromptSegmenter(small_source, settings, memory=segmenter.memory)

    before = store.memory_bytes()
    one_prompt.segment_volume(str(path), [_blob_support()])
    target_caches = [key for key in store.features._caches if key.image[0] == str(path)]
    assert len(target_caches) == 1, "the target's slices are kept in the sessions' store"
    assert len(store.features) == 1, "the supports' slices (read for this run only) are freed when it ends"
    cache = store.features.cache_for(target_caches[0], 1 << 30, now=0.0)
    assert len(cache) == SHAPE[2], "every target slice was probed, so every one is encoded"
    assert store.memory_bytes() >= before + cache.bytes, "and counted in the sessions' memory budget"

    misses = cache.misses
    one_prompt.segment_volume(str(path), [_blob_support()])
    assert cache.misses == misses, "a second run on the study encodes none of its slices again"

    prompts = {"organ": LabelPrompts(boxes=[Box(10, 8, 24, 20, k=4)])}
    result = segmenter.run(str(path), prompts, session_key=("alice", "target"))
    assert result.session.slices_encoded == 0, "a click on the study finds one-prompt's slices encoded"


def test_one_study_memory_owns_every_kind_of_session_and_one_prompts_slices(small_source, tmp_path):
    """The services (3D, 2D, one-prompt) built over one StudyMemory, as main.py builds them: each
    kind's memory is in its one report and budget; a service given none has one of its own (and
    one-prompt builds no 3D segmenter to borrow caches)."""
    import nibabel as nib

    from medsam2_engine.image_segmenter import ImageSegmenter
    from medsam2_engine.prompts import Box, Click, LabelPrompts
    from medsam2_engine.study_memory import StudyMemory
    from medsam2_engine.volume_segmenter import VolumeSegmenter

    memory = StudyMemory()
    volumes = VolumeSegmenter(small_source, memory=memory)
    images = ImageSegmenter(small_source, memory=memory)
    one_prompt = OnePromptSegmenter(small_source, OnePromptSettings(slices_per_support=2, early_stop=EarlyStop(enabled=False)),
                                    memory=memory, protocol=volumes.protocol)
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(make_volume(SHAPE, seed=3).array, np.eye(4)), str(path))

    volumes.run(str(path), {"organ": LabelPrompts(boxes=[Box(10, 8, 24, 20, k=4)])}, session_key=("ana", "study"))
    images.run(make_volume((24, 20, 4), seed=2), LabelPrompts(clicks=[Click(10, 9, 2, True)]), ("ana", "slice"),
               slice_index=2)
    one_prompt.segment_volume(str(path), [_blob_support()])
    report = memory.memory_report()
    assert report["sessions_by_kind"] == {"Session": 1, "ImageSession": 1}
    assert len(memory.features) == 1, "one-prompt used the study's slices the 3D session encoded, and freed its supports'"
    assert report["holds_mb"]["encoded_slices"] >= 0 and memory.memory_bytes() > 0
    alone = OnePromptSegmenter(small_source)
    assert isinstance(alone.memory, StudyMemory) and alone.memory is not memory
    assert not any(isinstance(v, VolumeSegmenter) for v in vars(alone).values())


def test_a_run_reads_each_target_once(small_source, tmp_path, monkeypatch):
    """A page's one-prompt run checks a target's kind, then segments it: one read of its file, not
    three (the kind check, the task and the engine each read it before)."""
    import nibabel as nib
    from monailabel.datastore.local import LocalDatastore

    import medsam2_engine.study_memory as study_memory
    from lib.infers.one_prompt import OnePrompt

    (tmp_path / "labels" / "final").mkdir(parents=True)
    for name, seed in (("support", 1), ("target", 2)):
        volume = make_volume(SHAPE, seed=seed)
        nib.save(nib.Nifti1Image(volume.array.astype(np.int16), volume.affine), str(tmp_path / f"{name}.nii.gz"))
    support = make_volume(SHAPE, seed=1)
    nib.save(nib.Nifti1Image((support.array > 120).astype(np.uint8), support.affine),
             str(tmp_path / "labels" / "final" / "support.nii.gz"))
    datastore = LocalDatastore(str(tmp_path), extensions=("*.nii.gz",), auto_reload=False)
    settings = OnePromptSettings(slices_per_support=2, max_probes=3, early_stop=EarlyStop(enabled=False))
    task = OnePrompt(OnePromptSegmenter(small_source, settings), ["organ"], lambda: datastore)
    reads = []
    real = study_memory.load_image
    monkeypatch.setattr(study_memory, "load_image", lambda path: reads.append(str(path)) or real(path))

    uri = datastore.get_image_uri("target")
    assert task.study_kind("target") == (True, "CT")
    _, mask, out = task.segment({"image": uri, "_image_id": "target", "support": "support", "label": "organ"})
    assert mask.shape == SHAPE and out["target"] == "target"
    assert reads.count(uri) == 1, reads
