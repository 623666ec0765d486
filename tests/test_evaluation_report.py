"""Case discovery from the supported layouts, and the command's report files (small model)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from PIL import Image

from medsam2_eval.cases import find_cases, model_input_window, select_structures, words


def _write_folder(root):
    rng = np.random.default_rng(1)
    vol = rng.normal(40, 5, (24, 20, 6)).astype(np.float32)
    label = np.zeros(vol.shape, np.uint8)
    label[6:14, 5:12, 1:5] = 1
    label[16:20, 14:18, 2:4] = 2
    vol[label == 1] += 150
    vol[label == 2] -= 300
    affine = np.diag([1.0, 1.2, 3.0, 1.0])
    (root / "vols").mkdir()
    nib.save(nib.Nifti1Image(vol, affine), str(root / "vols" / "pat1_ct.nii.gz"))
    nib.save(nib.Nifti1Image(vol[:-2], affine), str(root / "vols" / "pat1_other.nii.gz"))  # wrong shape
    nib.save(nib.Nifti1Image(label, affine), str(root / "vols" / "pat1_seg.nii.gz"))
    imgs = np.transpose(vol, (2, 1, 0)).clip(0, 255).astype(np.uint8)
    gts = np.transpose(label == 1, (2, 1, 0)).astype(np.uint8)
    np.savez(root / "lesion.npz", imgs=imgs, gts=gts, spacing=np.array([0.5, 0.5, 5.0]))
    (root / "2d" / "images").mkdir(parents=True)
    (root / "2d" / "masks").mkdir()
    plane = np.zeros((30, 40), np.uint8)
    plane[8:20, 10:25] = 200
    Image.fromarray(plane).save(root / "2d" / "images" / "slice7.png")
    Image.fromarray(((plane > 0) * 255).astype(np.uint8)).save(root / "2d" / "masks" / "slice7_kidney_000.png")
    return vol, label


def test_cases_are_found_and_paired(tmp_path):
    vol, label = _write_folder(tmp_path)
    cases = {c.name: c for c in find_cases(tmp_path)}
    assert set(cases) == {"lesion", "slice7", "vols__pat1_ct.nii.gz"}
    ct = cases["vols__pat1_ct.nii.gz"]
    assert [s.name for s in ct.structures] == ["label_1", "label_2"]
    np.testing.assert_array_equal(ct.structures[0].mask, label == 1)
    assert np.allclose(ct.spacing, (1.0, 1.2, 3.0))
    npz = cases["lesion"]
    assert npz.volume.array.shape == (24, 20, 6) and npz.spacing == (0.5, 0.5, 5.0)
    np.testing.assert_array_equal(npz.structures[0].mask, label == 1)  # slice-first stored, [i, j, k] read
    # uint8, already windowed by MedSAM2: the model gets imgs / 255, not a second CT window
    assert {k: model_input_window(npz)[k] for k in ("low", "high")} == {"low": 0.0, "high": 255.0}
    assert model_input_window(ct)["source"].startswith("MR percentiles") or "CT" in model_input_window(ct)["source"]
    flat = cases["slice7"]
    assert flat.structures[0].name == "kidney_000" and flat.structures[0].mask.shape == (40, 30)
    assert [s.name for s in select_structures(ct, 1, 10)] == ["label_1"]
    assert words("PGBM-001_MaskTumor.nii.gz") == {"pgbm", "001", "mask", "tumor"}


def _evaluate(tmp_path, small_model_files, out, *options) -> int:
    """Run the evaluation command on the folder ``_write_folder`` makes, with the small model."""
    from medsam2_eval.cli import main

    config, checkpoint = small_model_files
    data = tmp_path / "data"
    data.mkdir()
    _write_folder(data)
    return main(["--data", str(data), "--out", str(out), "--model-config", str(config), "--checkpoint",
                 str(checkpoint), *options])


def test_command_writes_json_curve_and_overlays(tmp_path, small_model_files):
    out = tmp_path / "report"
    rc = _evaluate(tmp_path, small_model_files, out, "--clicks", "2", "--no-builtin", "--cases", "pat1|slice7",
                   "--max-structures", "1")
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["random_weights"] is False and report["settings"]["clicks"] == 2
    assert {c["case"] for c in report["cases"]} == {"slice7", "vols__pat1_ct.nii.gz"}
    methods = {r["method"] for r in report["records"]}
    assert methods == {"medsam2_engine", "copy_reference_slice", "otsu_in_box"}
    assert report["methods"]["medsam2_engine"] == {"learned": True, "runs_on_3d": True, "runs_on_2d": True}
    curve = [r for r in report["records"] if r["method"] == "medsam2_engine" and r["protocol"] == "correction"]
    assert sorted({r["step"] for r in curve}) == [0, 1, 2]
    for r in report["records"]:
        assert 0.0 <= r["dice"] <= 1.0 and 0.0 <= r["nsd"] <= 1.0
    otsu = [r for r in report["records"] if r["method"] == "otsu_in_box" and r["protocol"] == "box"]
    assert any(r["dice"] > 0.9 for r in otsu)  # a bright block with a tight box: the classical baseline is right
    assert report["summary"]["medsam2_engine"]["box"]["dice"]["n"] == 2
    assert len(report["dice_vs_clicks"]["medsam2_engine"]) == 3
    assert (out / "dice_vs_clicks.png").stat().st_size > 1000
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["slice7__kidney_000.png", "vols__pat1_ct.nii.gz__label_1.png"]


def test_compare_protocols_runs_the_reference_and_each_option(tmp_path, small_model_files):
    out = tmp_path / "report"
    rc = _evaluate(tmp_path, small_model_files, out, "--clicks", "1", "--no-builtin", "--cases", "lesion",
                   "--max-structures", "1", "--compare-protocols")
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    rows = {m for m in report["summary"] if m.startswith("engine_")}
    assert rows == {"engine_medsam2_reference", "engine_medsam2_full_passes", "engine_medsam2+crop_region",
                    "engine_medsam2+early_stop", "engine_medsam2+correction_stop", "engine_medsam2_point_protocol",
                    "engine_sam2_protocol", "engine_medsam2_video_protocol"}
    for name in rows:
        assert {"dice", "nsd"} <= set(report["summary"][name]["box"])
        box = [r for r in report["records"] if r["method"] == name and r["protocol"] == "box"]
        assert box and all(r["seconds"] > 0 for r in box)
        assert all(r["input_window"]["high"] == 255.0 for r in box)  # the npz case: imgs / 255
    assert report["cases"][0]["model_input_window"]["low"] == 0.0


def test_one_prompt_is_reported_beside_the_interactive_protocol_on_the_same_targets(tmp_path, small_model_files):
    """--one-prompt-only: per target, one-prompt's Dice and NSD beside the interactive protocol's (one
    box, recomputed here through the engine to the same value) and the baseline; targets a minute."""
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.prompts import LabelPrompts
    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_eval.clicks import box_prompt
    from medsam2_eval.cli import main
    from medsam2_eval.metrics import dice

    config, checkpoint = small_model_files
    data = tmp_path / "data" / "phantoms"
    data.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for n in range(3):
        vol = rng.normal(40, 5, (32, 28, 8)).astype(np.float32)
        label = np.zeros(vol.shape, np.uint8)
        label[8 + n:18 + n, 6:14, 2:6] = 1
        vol[label == 1] += 150
        nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), str(data / f"pat{n}_ct.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, 3.0, 1.0])), str(data / f"pat{n}_seg.nii.gz"))
    out = tmp_path / "report"
    assert main(["--data", str(tmp_path / "data"), "--out", str(out), "--model-config", str(config),
                 "--checkpoint", str(checkpoint), "--one-prompt-only", "--no-builtin"]) == 0
    [group] = json.loads((out / "report.json").read_text())["one_prompt"].values()
    assert len(group["targets"]) == 2 and group["targets_per_minute"] > 0
    cases = {c.name: c for c in find_cases(tmp_path / "data")}
    segmenter = VolumeSegmenter(ModelSource(preset_for_config_file(config), str(tmp_path), checkpoint=str(checkpoint),
                                            device="cpu"))
    for target in group["targets"]:
        assert {"dice", "nsd", "interactive_dice", "interactive_nsd", "baseline_centroid_copy_nsd"} <= set(target)
        case = cases[target["target"]]
        reference = case.structures[0].mask
        run = segmenter.run(case.volume, {"s": LabelPrompts(boxes=[box_prompt(reference)])}, ("check", case.name))
        assert target["interactive_dice"] == round(dice(run.labels["s"].mask, reference), 5)


def test_label_values_are_np_uniques_non_zero_values():
    """The case loader's one-pass count of a label map's values (np.unique sorted the whole map)."""
    from hypothesis import given, settings, strategies as st
    from medsam2_eval.cases import _label_values

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 6, 300, 1 << 17]), st.integers(-5, 0))
    def check(seed, high, low):
        array = np.random.default_rng(seed).integers(low, high, (7, 5, 3))
        assert _label_values(array) == [int(v) for v in np.unique(array) if v != 0]

    check()
    assert _label_values(np.zeros((0, 3, 3), np.int64)) == []
