"""A label is segmented in a region around its prompts, at the model's own scale, grown when needed."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2_engine.prompts import Click, FramePrompt, LabelPrompts
from medsam2_engine.crop_region import CropRegion, CropRegionSettings, choose_region, grown, prompt_extent, reaches_edge
from medsam2_engine.volume_io import Volume

SETTINGS = CropRegionSettings(enabled=True, context=2.0, min_input=256, full_fraction=0.75)


def test_region_keeps_the_model_scale_and_centres_on_the_prompts():
    # a 512 x 512 slice for a 512 px model: one model pixel per voxel
    region = choose_region((200, 200, 259, 239), (512, 512), 512, SETTINGS)  # 60 rows x 40 cols of box
    assert region.input_size == 256 and (region.rows, region.cols) == (256, 256)  # min_input wins over 2 x 60
    assert region.row0 == round(229.5 - 128) and region.col0 == round(219.5 - 128)
    # a 1024 px model on the same slice: two model pixels per voxel
    at_1024 = choose_region((200, 200, 259, 239), (512, 512), 1024, SETTINGS)
    assert (at_1024.rows, at_1024.input_size) == (128, 256)  # min_input is 128 voxels there
    wide_1024 = choose_region((100, 100, 249, 249), (512, 512), 1024, SETTINGS)
    assert (wide_1024.rows, wide_1024.input_size) == (304, 608)
    # a larger box: 2 x 150 = 300 voxels, rounded up to a multiple of 32 model pixels
    big = choose_region((100, 100, 249, 249), (512, 512), 512, SETTINGS)
    assert big.input_size == 320 and big.rows == 320 and big.input_size % 32 == 0


def test_region_stays_inside_the_slice_and_gives_way_to_whole_slices():
    corner = choose_region((0, 0, 9, 9), (512, 400), 512, SETTINGS)
    assert (corner.row0, corner.col0) == (0, 0)
    far = choose_region((500, 390, 511, 399), (512, 400), 512, SETTINGS)
    assert far.row0 + far.rows == 512 and far.col0 + far.cols == 400
    # a structure half the slice wide: the region would be most of the slice
    assert choose_region((100, 100, 299, 299), (512, 512), 512, SETTINGS) is None
    assert choose_region((200, 100, 259, 139), (512, 512), 512, CropRegionSettings(enabled=False)) is None
    assert choose_region(None, (512, 512), 512, SETTINGS) is None


def test_prompts_move_into_region_coordinates():
    region = CropRegion(row0=100, col0=50, rows=64, cols=64, input_size=64)
    prompt = FramePrompt(points=[(70.0, 120.0)], labels=[1], box=(55.0, 105.0, 80.0, 130.0))
    moved = region.prompt_in_region(prompt)
    assert moved.points == [(20.0, 20.0)] and moved.box == (5.0, 5.0, 30.0, 30.0)
    assert prompt_extent([prompt]) == (105, 55, 130, 80)


def test_a_mask_reaches_only_inner_edges():
    shape = (100, 100)
    inner = CropRegion(row0=20, col0=20, rows=40, cols=40, input_size=64)
    at_slice_edge = CropRegion(row0=0, col0=0, rows=40, cols=40, input_size=64)
    mask = np.zeros((40, 40), bool)
    mask[0, 10] = True  # the region's top row
    assert reaches_edge(mask, inner, shape, 2)
    assert not reaches_edge(mask, at_slice_edge, shape, 2)  # that edge is the slice's own
    mask[:] = False
    mask[20, 20] = True
    assert not reaches_edge(mask, inner, shape, 2)
    bigger = grown(inner, (20, 20, 59, 59), shape, 200, CropRegionSettings(enabled=True, min_input=32, full_fraction=0.95))
    assert bigger.rows == 80 and bigger.row0 <= 20 and bigger.row0 + bigger.rows >= 60


def test_view_at_another_input_size_shares_every_parameter(small_source):
    from medsam2_engine.predictor import at_input_size

    model = small_source.get().model
    view = at_input_size(model, 64)
    assert view.image_size == 64 and model.image_size == 128
    assert view.sam_prompt_encoder.image_embedding_size == (4, 4)
    assert model.sam_prompt_encoder.image_embedding_size == (8, 8)
    assert all(a is b for a, b in zip(view.parameters(), model.parameters()))
    assert at_input_size(model, 64) is view and at_input_size(model, 128) is model
    with pytest.raises(ValueError, match="multiple of 32"):
        at_input_size(model, 100)


def test_one_feature_cache_holds_whole_slices_and_regions_apart():
    import torch

    from medsam2_engine.frames import SliceFrames
    from medsam2_engine.feature_cache import FeatureCache
    from medsam2_engine.windowing import Window

    def encoded(size):  # an image-encoder output: FPN maps and their positional encodings
        maps = [torch.full((1, 2, size, size), float(size))]
        return {"backbone_fpn": maps, "vision_pos_enc": [torch.zeros(1, 2, size, size)]}

    frames = SliceFrames(np.zeros((64, 64, 3), np.float32), Window(0.0, 1.0, "test"), 128)
    region = frames.cropped((slice(0, 32), slice(0, 32)), 64)
    cache = FeatureCache(1 << 20)
    cache.put(frames.key(1), encoded(8))
    assert cache.get(region.key(1)) is None  # the same slice in a region is another frame
    cache.put(region.key(1), encoded(4))
    assert len(cache) == 2 and cache.misses == 1
    for sequence, size in ((frames, 8), (region, 4)):
        out = cache.get(sequence.key(1))
        assert out["backbone_fpn"][0].shape[-1] == size and out["vision_pos_enc"][0].shape[-1] == size


# -- through the engine, with the small model fine-tuned on bright-ellipsoid phantoms -----------
SHAPE = (96, 80, 16)


def _study(radii):
    from tests.support.trained_small_model import AFFINE, STRUCTURE_HU, body, ellipsoid

    mask = ellipsoid((40, 44, 8), radii, SHAPE)
    array = body(3, SHAPE)
    array[mask] = STRUCTURE_HU
    return Volume(array, AFFINE, f"roi{radii[0]}"), mask


def _segment(segmenter, volume, prompts, crop_region: CropRegionSettings, key):
    result = segmenter.run(volume, {"x": prompts}, session_key=key,
                           options=segmenter.settings.options(crop_region=crop_region))
    segmenter.memory.drop(key)
    return result


def test_region_gives_the_whole_slice_result_at_a_fraction_of_the_pixels(fine_tuned):
    from medsam2_engine.mask_measures import box_on_largest_slice, dice

    segmenter, _ = fine_tuned
    volume, truth = _study((7, 6, 5))
    prompts = LabelPrompts(boxes=[box_on_largest_slice(truth)])
    small = CropRegionSettings(enabled=True, min_input=64)
    whole = _segment(segmenter, volume, prompts, CropRegionSettings(enabled=False), ("whole",))
    region = _segment(segmenter, volume, prompts, small, ("region",))
    label = region.labels["x"]
    assert whole.labels["x"].crop_region is None
    crop = label.crop_region
    assert crop is not None and crop.grows == 0 and crop.region.input_size < 128
    outside = np.ones(SHAPE, bool)
    outside[crop.region.voxel_region()] = False
    assert not label.mask[outside].any()
    assert dice(whole.labels["x"].mask, truth) > 0.6, "the fine-tuned model should find the structure"
    assert dice(label.mask, whole.labels["x"].mask) > 0.8
    assert region.session.slices_encoded == whole.session.slices_encoded


def test_region_grows_when_the_structure_is_larger_than_the_prompt(fine_tuned):
    from medsam2_engine.mask_measures import dice

    segmenter, _ = fine_tuned
    volume, truth = _study((30, 26, 6))
    prompts = LabelPrompts(clicks=[Click(40, 44, 8, True)])  # one click: the region starts at min_input
    small = CropRegionSettings(enabled=True, min_input=64, full_fraction=0.95)
    whole = _segment(segmenter, volume, prompts, CropRegionSettings(enabled=False), ("whole",))
    region = _segment(segmenter, volume, prompts, small, ("grow",))
    label = region.labels["x"]
    assert label.crop_region.grows >= 1, "the first region cannot hold a 60-voxel structure"
    assert dice(label.mask, whole.labels["x"].mask) > 0.8
    assert label.mask[:, :, 8].sum() > 0.5 * truth[:, :, 8].sum()


def test_a_prompt_outside_the_region_starts_a_larger_one(fine_tuned):
    from medsam2_engine.mask_measures import box_on_largest_slice

    segmenter, _ = fine_tuned
    volume, truth = _study((7, 6, 5))
    prompts = LabelPrompts(boxes=[box_on_largest_slice(truth)])
    key = ("moved",)
    small = CropRegionSettings(enabled=True, min_input=64, full_fraction=0.95)
    first = segmenter.run(volume, {"x": prompts}, session_key=key,
                           options=segmenter.settings.options(crop_region=small)).labels["x"]
    prompts.clicks.append(Click(88, 8, 10, False))  # a negative click far outside the first region
    second = segmenter.run(volume, {"x": prompts}, session_key=key,
                           options=segmenter.settings.options(crop_region=small)).labels["x"]
    segmenter.memory.drop(key)
    assert first.crop_region is not None and not first.crop_region.region.contains((8, 88, 8, 88))
    assert second.crop_region is None or second.crop_region.region is None \
        or second.crop_region.region.contains((8, 88, 8, 88))
    # a full pass, not a correction: forward from the first prompted slice, backward from the last
    assert [p.start for p in second.passes] == [min(second.prompted_slices), max(second.prompted_slices)]
