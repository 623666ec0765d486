"""One-prompt segmentation through a real MONAI Label server on loopback, small untrained model.

A datastore of small constructed CT-like studies: one labelled support, two unlabelled
targets, one study whose final label must survive batch mode untouched, and one whose
final label is empty (a support that must be refused, never used).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import make_volume
from tests.support.server import RunningServer

SHAPE = (36, 28, 9)
FAST = {"support_slices": 2, "max_supports": 1}  # less memory to encode on a 2-core CI machine
AFFINE = np.diag([0.8, 0.7, 2.5, 1.0])


def _save(path: Path, array, dtype) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), AFFINE), path)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_prompt_studies")
    final = root / "labels" / "final"
    for name, seed in (("a_support", 1), ("b_target", 2), ("c_target", 3), ("d_done", 4), ("e_empty", 5)):
        volume = make_volume(SHAPE, seed=seed)
        _save(root / f"{name}.nii.gz", volume.array, np.int16)
        if name == "a_support":
            _save(final / f"{name}.nii.gz", volume.array > 120, np.uint8)
    done = np.zeros(SHAPE, np.uint8)
    done[5:12, 5:12, 2:5] = 1  # a clinician's label, unlike anything the model would produce
    _save(final / "d_done.nii.gz", done, np.uint8)
    _save(final / "e_empty.nii.gz", np.zeros(SHAPE), np.uint8)
    return root


@pytest.fixture(scope="module")
def server(studies, small_model_files):
    config, checkpoint = small_model_files
    running = RunningServer(
        studies,
        {"model_config": config, "checkpoint": checkpoint, "labels": "organ,lesion", "early_stop_patience": 1},
        studies.parent / "one_prompt_server.log",
    )
    yield running.url
    running.stop()


@pytest.fixture
def client(server, tmp_path):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(server, tmpdir=str(tmp_path), client_id="one-prompt-test")


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def test_the_task_is_listed_as_a_segmentation_model(client):
    models = client.info()["models"]
    task = models["medsam2_one_prompt"]
    assert task["type"] == "segmentation" and task["dimension"] == 3
    assert {"support", "label_value", "max_supports"} <= set(task["config"])


def test_infer_returns_the_targets_mask_and_says_which_support_was_used(client):
    label_file, params = client.infer("medsam2_one_prompt", "b_target", {"label": "organ", **FAST})
    mask = nib.load(label_file)
    assert mask.shape == SHAPE
    np.testing.assert_allclose(mask.affine, AFFINE, atol=1e-4)
    used = [s["name"] for s in params["supports"] if s["used"]]
    assert len(used) == 1 and used[0] in {"a_support", "d_done"}
    assert "e_empty" in {s["name"] for s in params["supports"] if not s["used"]}
    assert params["found"] == bool(np.asarray(mask.dataobj).any())
    assert 0.0 <= params["confidence"] <= 1.0 and params["model"]["random_weights"] is False
    assert params["start_slice"] is None or 0 <= params["start_slice"] < SHAPE[2]

    other_support = ({"a_support", "d_done"} - set(used)).pop()
    _, other = client.infer("medsam2_one_prompt", "b_target", {"support": other_support, **FAST})
    assert [s["name"] for s in other["supports"] if s["used"]] == [other_support]
    assert other["probes"] != params["probes"] or other["voxels"] != params["voxels"]


def test_an_empty_support_is_refused(client):
    from monailabel.client.client import MONAILabelClientException

    with pytest.raises(MONAILabelClientException) as raised:
        client.infer("medsam2_one_prompt", "b_target", {"support": "e_empty"})
    assert "Status: 400" in raised.value.msg and "empty" in raised.value.msg
    with pytest.raises(MONAILabelClientException) as raised:
        client.infer("medsam2_one_prompt", "b_target", {"support": "c_target"})  # has no final label
    assert "Status: 400" in raised.value.msg and "no 'final' label" in raised.value.msg


def test_a_session_the_user_just_segmented_is_the_support(client):
    from monailabel.client.client import MONAILabelClientException

    with pytest.raises(MONAILabelClientException) as raised:  # nothing segmented yet by this client
        client.infer("medsam2_one_prompt", "b_target", {"support_session": "c_target", "label": "lesion", **FAST})
    assert "Status: 400" in raised.value.msg and "segment it with medsam2_3d first" in raised.value.msg

    _, clicked = client.infer("medsam2_3d", "c_target", {"foreground": [[16, 14, 4]], "label": "lesion"})
    assert clicked["labels"]["lesion"]["voxels"] > 0
    _, params = client.infer("medsam2_one_prompt", "b_target", {"support_session": "c_target", "label": "lesion",
                                                                **FAST})
    assert [s["name"] for s in params["supports"] if s["used"]] == ["session:c_target"]


def test_batch_writes_original_labels_and_never_touches_a_final_one(server, studies):
    final_done = (studies / "labels" / "final" / "d_done.nii.gz").read_bytes()
    results = _post_json(f"{server}/batch/infer/medsam2_one_prompt?images=all&run_sync=true",
                         {"label": "organ", "label_tag": "final", "max_workers": 1, "device": "cpu",
                          "multi_gpu": False, **FAST})
    original = studies / "labels" / "original"
    assert sorted(p.name for p in original.iterdir() if not p.name.startswith(".")) == [
        "b_target.nii.gz", "c_target.nii.gz"]
    assert (studies / "labels" / "final" / "d_done.nii.gz").read_bytes() == final_done  # despite label_tag final
    assert "final label" in results["d_done"]["params"]["skipped"]
    for name in ("b_target", "c_target"):
        saved = nib.load(original / f"{name}.nii.gz")
        assert saved.shape == SHAPE
        assert results[name]["params"]["saved_label"]["tag"] == "original"

    with urllib.request.urlopen(f"{server}/datastore/?output=all", timeout=30) as response:
        objects = json.loads(response.read())["objects"]
    for name in ("b_target", "c_target"):
        record = objects[name]["image"]["info"]["medsam2_one_prompt"]
        assert 0.0 <= record["confidence"] <= 1.0 and record["supports"]
        assert objects[name]["labels"]["original"]["info"]["confidence"] == record["confidence"]
    assert "medsam2_one_prompt" not in objects["a_support"]["image"]["info"]
