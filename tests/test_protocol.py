"""The pieces of the faithful default: hole filling on CPU, largest component, input, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam2_engine.checkpoints import CheckpointError, build_model, get_preset, save_checkpoint
from medsam2_engine.frames import IMAGENET_MEAN, IMAGENET_STD, SliceFrames
from medsam2_engine.hole_filling import connected_components, install
from medsam2_engine.protocols import default_protocol, largest_component
from medsam2_engine.windowing import choose_window, guess_modality
from tests.conftest import SHARED_DATA, needs_shared_data


def test_connected_components_follow_sam2s_contract_by_hand():
    # two components: an L of 4 pixels and, touching it only diagonally, one pixel (8-connected: one
    # component of 5); and a separate pair of 2
    mask = torch.tensor([[1, 1, 0, 0, 0],
                         [1, 0, 0, 0, 0],
                         [1, 0, 0, 1, 1],
                         [0, 1, 0, 0, 0]], dtype=torch.uint8)[None, None]
    labels, counts = connected_components(mask)
    assert labels.shape == counts.shape == mask.shape and labels.dtype == torch.int32
    expected_counts = torch.tensor([[5, 5, 0, 0, 0],
                                    [5, 0, 0, 0, 0],
                                    [5, 0, 0, 2, 2],
                                    [0, 5, 0, 0, 0]], dtype=torch.int32)
    assert torch.equal(counts[0, 0], expected_counts)
    assert (labels[0, 0] > 0).eq(mask[0, 0].bool()).all()
    assert labels[0, 0, 3, 1] == labels[0, 0, 0, 0] != labels[0, 0, 2, 3]


def test_sam2_fills_holes_up_to_eight_pixels_on_the_cpu():
    from sam2.utils.misc import fill_holes_in_mask_scores

    install()
    scores = torch.full((1, 1, 20, 20), 5.0)
    scores[0, 0, 3:5, 3:7] = -5.0  # a hole of 8 pixels: filled
    scores[0, 0, 10:13, 10:13] = -5.0  # a hole of 9 pixels: kept
    filled = fill_holes_in_mask_scores(scores, 8)
    assert (filled[0, 0, 3:5, 3:7] > 0).all()
    assert (filled[0, 0, 10:13, 10:13] < 0).all()
    assert torch.equal(filled[0, 0, 0, :], scores[0, 0, 0, :])


def test_largest_component_is_26_connected_and_keeps_the_biggest():
    mask = np.zeros((6, 6, 6), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True  # corner-touching: one component of 3
    mask[4:6, 4:6, 0] = True  # 4 voxels apart from it
    kept = largest_component(mask)
    assert kept.sum() == 4 and kept[4:6, 4:6, 0].all()
    mask[3, 3, 3] = mask[3, 3, 4] = True  # the diagonal chain grows to 5
    assert largest_component(mask).sum() == 5 and largest_component(mask)[0, 0, 0]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_each_preset_names_the_protocol_its_weights_were_validated_with():
    assert default_protocol(get_preset("medsam2")) == "medsam2"
    assert default_protocol(get_preset("sam2.1_hiera_tiny")) == "sam2"
    assert default_protocol(get_preset("sam2_hiera_large")) == "sam2"
    assert default_protocol(get_preset("medsam2_us_heart")) == "medsam2_video"


def test_the_echo_preset_builds_the_predictor_medsam2s_video_script_builds():
    """``medsam2_us_heart`` against sam2's own builder called as ``medsam2_infer_video.py`` calls it
    (no post-processing, non-overlapping objects), at MedSAM2's 512 px."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2_video_predictor

    preset = get_preset("medsam2_us_heart")
    assert preset.url == "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_US_Heart.pt"
    ours = build_model(preset, "random")
    extra = ["++model.non_overlap_masks=true"] + [f"++{key}={value}".replace(" ", "")
                                                   for key, value in get_preset("medsam2").overrides.items()]
    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    script = build_sam2_video_predictor(preset.config, None, device="cpu", apply_postprocessing=False,
                                        hydra_overrides_extra=extra)
    for name in ("image_size", "fill_hole_area", "non_overlap_masks", "binarize_mask_from_pts_for_mem_enc",
                 "multimask_output_in_sam", "multimask_output_for_tracking"):
        assert getattr(ours, name) == getattr(script, name), name
    for name in ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta"):
        assert getattr(ours.sam_mask_decoder, name) == getattr(script.sam_mask_decoder, name), name
    assert ours.image_size == 512 and ours.fill_hole_area == 0 and ours.non_overlap_masks


@pytest.mark.parametrize("resampling", ["medsam2", "float"])
def test_ct_input_at_512_px_equals_medsam2s_preprocessing(resampling):
    """W400/L40 to [0, 255] uint8, three channels, /255, ImageNet statistics: within one uint8 step
    (the float path), exactly up to float rounding (the medsam2 protocol's path)."""
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 1600, (512, 512, 2)).astype(np.float32)  # [i, j, k], air to bone
    frames = SliceFrames(hu, choose_window(hu, "CT", None), image_size=512, resampling=resampling)
    ours = frames[1].numpy()
    reference = _medsam2_input(hu[:, :, 1].T)  # the slice as MedSAM2 reads it from SimpleITK: [y, x]
    assert ours.shape == reference.shape == (3, 512, 512)
    difference_01 = np.abs(ours - reference) * np.array(IMAGENET_STD)[:, None, None]  # back in [0, 1] units
    assert difference_01.max() <= (1e-6 if resampling == "medsam2" else 1.0 / 255.0 + 1e-6)


@pytest.mark.parametrize("side", [200, 768])
def test_slices_of_another_size_are_resized_as_medsam2_does(side):
    """Up- and downsampled to 512 px with PIL's bicubic on the uint8 image, as MedSAM2's script."""
    from medsam2_engine.protocols import input_resampling

    rng = np.random.default_rng(side)
    hu = rng.uniform(-1100, 1600, (side, side, 1)).astype(np.float32)
    hu[: side // 2] = 40.0 + rng.normal(0, 20, (side // 2, side, 1))  # smooth tissue beside the noise
    frames = SliceFrames(hu, choose_window(hu, "CT", None), image_size=512, resampling=input_resampling("medsam2"))
    difference_01 = np.abs(frames[0].numpy() - _medsam2_input(hu[:, :, 0].T)) * np.array(IMAGENET_STD)[:, None, None]
    assert difference_01.max() <= 1e-6


def _medsam2_input(plane_yx: np.ndarray) -> np.ndarray:
    """MedSAM2's preprocessing of one slice ([y, x] HU): W400/L40, uint8, RGB, 512 px, /255, ImageNet."""
    from PIL import Image

    clipped = np.clip(plane_yx, -160.0, 240.0)
    as_uint8 = np.uint8((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255.0)
    rgb = np.array(Image.fromarray(as_uint8).convert("RGB").resize((512, 512))).transpose(2, 0, 1) / 255.0
    return (rgb - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]


@needs_shared_data
def test_a_real_ct_series_reaches_the_model_as_medsam2_prepares_it():
    """A DICOM CT series read by the app, against SimpleITK's reading (as MedSAM2 reads) and its preprocessing."""
    import SimpleITK as sitk

    from medsam2_engine.volume_io import load_image

    folder = SHARED_DATA / "ct_3slice_dcmqi"
    volume = load_image(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference_zyx = sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)
    modality = guess_modality(volume.array, volume.declared_modality)
    for resampling, tolerance in (("medsam2", 1e-6), ("float", 1.0 / 255.0 + 1e-6)):
        frames = SliceFrames(volume.array, choose_window(volume.array, modality, None), image_size=512,
                             resampling=resampling)
        assert modality == "CT" and volume.array.shape[:2] == (512, 512)
        for k in range(len(frames)):
            difference_01 = np.abs(frames[k].numpy() - _medsam2_input(reference_zyx[k])) * \
                np.array(IMAGENET_STD)[:, None, None]
            assert difference_01.max() <= tolerance, f"slice {k}, {resampling}"


def test_a_checkpoint_for_another_input_size_is_refused(tmp_path, small_model_files):
    from medsam2_engine.checkpoints import preset_for_config_file

    preset = preset_for_config_file(small_model_files[0])  # 128 px
    torch.manual_seed(0)
    model = build_model(preset, "random")
    model.image_size = 256  # as if trained at 256 px: recorded in the file
    save_checkpoint(model, tmp_path / "other_size.pt")
    with pytest.raises(CheckpointError, match="256 px"):
        build_model(preset, str(tmp_path / "other_size.pt"))
    model.image_size = 128
    save_checkpoint(model, tmp_path / "MedSAM2_latest.pt")  # a MedSAM2 file by name, made for 512 px
    with pytest.raises(CheckpointError, match="512 px"):
        # a file that records no size: the name tells
        payload = torch.load(tmp_path / "MedSAM2_latest.pt", weights_only=True)
        payload.pop("image_size")
        torch.save(payload, tmp_path / "MedSAM2_latest.pt")
        build_model(preset, str(tmp_path / "MedSAM2_latest.pt"))
    save_checkpoint(model, tmp_path / "right_size.pt")
    assert build_model(preset, str(tmp_path / "right_size.pt")).image_size == 128


def test_largest_component_ties_go_as_the_references_scan_order():
    from skimage import measure

    mask = np.zeros((6, 5, 4), bool)  # [i, j, k]
    mask[0, 4, 3] = mask[0, 3, 3] = True  # first in [i, j, k] order, last in [k, j, i] order
    mask[5, 0, 0] = mask[4, 0, 0] = True  # same size, first in [k, j, i] (the reference's [z, y, x])
    segs = np.transpose(mask, (2, 1, 0)).astype(np.uint8)  # as MedSAM2 holds it
    labels = measure.label(segs)
    reference = np.transpose(labels == np.argmax(np.bincount(labels.flat)[1:]) + 1, (2, 1, 0))
    assert np.array_equal(largest_component(mask), reference) and reference[5, 0, 0]
