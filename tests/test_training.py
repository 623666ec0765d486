"""Fine-tuning pieces: label checks, clips, freezing, and a crash never breaking the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_volume

pytest.importorskip("training.model.sam2", reason="sam2's training package (needs tensordict) is not installed")


def _save(path, array, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


@pytest.fixture
def labelled(tmp_path):
    """A phantom volume on disk with its label (value 1 in the blob, 2 in a small cube)."""
    volume = make_volume(shape=(40, 28, 12))
    label = (volume.array > 120).astype(np.uint8)
    label[5:9, 5:9, 2:5] = 2
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    image = _save(tmp_path / "image.nii.gz", volume.array.astype(np.int16), affine)
    return image, _save(tmp_path / "label.nii.gz", label, affine), affine


def test_label_on_another_grid_or_corrupt_is_refused_naming_the_files(labelled, tmp_path):
    from medsam2_engine.training.cases import CaseFiles, LabelMismatch, load_case, load_cases

    image, label, affine = labelled
    case = load_case(CaseFiles(image, label, "ok"))
    assert case.values == [1, 2] and case.labels.shape == (40, 28, 12)

    wrong_shape = _save(tmp_path / "shape.nii.gz", np.zeros((40, 28, 11), np.uint8), affine)
    with pytest.raises(LabelMismatch, match=r"shape \[40, 28, 11\].*\[40, 28, 12\]"):
        load_case(CaseFiles(image, wrong_shape))
    shifted = affine.copy()
    shifted[0, 3] = 5.0
    wrong_affine = _save(tmp_path / "affine.nii.gz", np.asarray(case.labels, np.uint8), shifted)
    with pytest.raises(LabelMismatch, match="another affine"):
        load_case(CaseFiles(image, wrong_affine))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really a label")
    with pytest.raises(LabelMismatch, match="cannot be read"):
        load_case(CaseFiles(image, str(corrupt)))

    rejected = []
    cases = load_cases([CaseFiles(image, label, "good"), CaseFiles(image, wrong_shape, "bad")],
                       on_reject=lambda item, why: rejected.append(item.name))
    assert [c.name for c in cases] == ["good"] and rejected == ["bad"]


def test_clips_are_consecutive_slices_starting_on_the_structure(labelled):
    from medsam2_engine.training.cases import CaseFiles, load_case
    from medsam2_engine.training.clips import ClipSampler

    image, label, _ = labelled
    case = load_case(CaseFiles(image, label))
    sampler = ClipSampler([case], image_size=64, clip_length=4, max_objects=2)
    labelled_slices = set(np.flatnonzero(case.labels.reshape(-1, 12).any(axis=0)))
    for ref in sampler.refs:
        batch = sampler.batch(ref)
        assert batch.img_batch.shape == (4, 1, 3, 64, 64)
        first = ref.start + 3 if ref.reverse else ref.start
        assert first in labelled_slices
        masks = batch.masks  # [T, objects, S, S]
        assert masks.shape[0] == 4 and 1 <= masks.shape[1] <= 2 and masks[0].flatten(1).any(dim=1).all()
    assert any(r.reverse for r in sampler.refs) and any(not r.reverse for r in sampler.refs)


def test_freezing_defaults_follow_the_starting_weights():
    from medsam2_engine.training.model import frozen_modules

    assert frozen_modules("auto", pretrained=True) == ["image_encoder"]
    assert frozen_modules("auto", pretrained=False) == []
    assert frozen_modules("image_encoder,memory_encoder", True) == ["image_encoder", "memory_encoder"]
    with pytest.raises(ValueError, match="unknown module"):
        frozen_modules("backbone", True)


def test_crash_while_publishing_leaves_the_previous_checkpoint_whole(labelled, tmp_path, monkeypatch):
    from medsam2_engine.checkpoints import read_state_dict
    from medsam2_engine.training import finetune
    from medsam2_engine.training.cases import CaseFiles, load_case
    from tests.support.small_model import small_preset

    image, label, _ = labelled
    case = load_case(CaseFiles(image, label, "case"))
    output = tmp_path / "model" / "finetuned.pt"
    output.parent.mkdir()
    previous = {"model": {"marker": torch.arange(4)}}
    torch.save(previous, output)
    before = output.read_bytes()

    real_save = torch.save

    def dies_half_way(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt("simulated crash while writing the checkpoint")

    monkeypatch.setattr(torch, "save", dies_half_way)
    config = finetune.FineTuneConfig(epochs=1, steps_per_epoch=1, clip_length=3, max_objects=1,
                                     baseline_validation=False)
    config.prompts.correction_clicks = 1
    with pytest.raises(KeyboardInterrupt):
        finetune.FineTuner(small_preset(), config).run([case], [], "random", str(output))
    monkeypatch.setattr(torch, "save", real_save)
    assert output.read_bytes() == before
    assert torch.equal(read_state_dict(str(output))["marker"], torch.arange(4))
    assert [p.name for p in output.parent.iterdir()] == ["finetuned.pt"], "a temporary file was left behind"


def test_learning_rate_warms_up_then_decays_to_its_floor():
    from medsam2_engine.training.schedule import warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=4, total_steps=14, min_ratio=0.1)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(rates[4:], rates[5:])) and rates[4] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="min_ratio"):
        warmup_cosine(optimizer, 1, 10, min_ratio=2.0)


def test_fine_tune_from_random_weights_stays_untrained_in_origin(labelled, tmp_path):
    """The published file says it descends from random weights and names its metric truthfully."""
    from medsam2_engine.checkpoints import UNTRAINED_ORIGIN, load_model, read_checkpoint, untrained_origin
    from medsam2_engine.training import finetune
    from medsam2_engine.training.cases import CaseFiles, load_case
    from tests.support.small_model import small_preset

    image, label, _ = labelled
    case = load_case(CaseFiles(image, label, "case"))
    config = finetune.FineTuneConfig(epochs=1, steps_per_epoch=1, clip_length=3, max_objects=1,
                                     baseline_validation=False)
    config.prompts.correction_clicks = 1
    first = tmp_path / "first.pt"
    summary = finetune.FineTuner(small_preset(), config).run([case], [], "random", str(first))
    payload = read_checkpoint(str(first))
    assert payload[UNTRAINED_ORIGIN] is True and summary[UNTRAINED_ORIGIN] is True
    # nothing held out: the score is the (negated) training loss, and it is called that
    assert payload["finetune"]["metric"] == "negative_train_loss" and "val_mean_dice" not in payload["finetune"]
    assert summary["best_metric_name"] == "negative_train_loss"
    # a fine-tune of that file inherits the origin, and the built model carries it
    second = tmp_path / "second.pt"
    finetune.FineTuner(small_preset(), config).run([case], [], str(first), str(second))
    assert untrained_origin(str(second))
    assert load_model(small_preset(), str(second))[1].untrained_origin is True  # the facts loaded with it
    # what /info and every result report for it
    from medsam2_engine.model_source import ModelSource

    source = ModelSource(small_preset(), tmp_path, checkpoint=str(second), device="cpu")
    assert source.status()["untrained_origin"] is True  # read from the file before it is loaded
    assert source.get().random_weights is True
    assert source.status()["random_weights"] is True and source.status()["untrained_origin"] is True
