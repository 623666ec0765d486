"""Fine-tuning through a real server: /train, stats in /info, and hot reload of the new weights."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from tests.conftest import make_volume
from tests.support.server import RunningServer

TRAIN_REQUEST = {
    "epochs": 1, "steps_per_epoch": 3, "clip_length": 3, "max_objects": 1, "correction_clicks": 1,
    "baseline_validation": False, "lr": 1e-3, "val_fraction": 0.34, "log_every": 1,
    "multi_gpu": True,  # as the clients' option; without CUDA it trains in one CPU process
}
SHAPE = (40, 32, 8)  # small studies: two CPU cores are shared by the whole test suite


def _tiny_studies(folder):
    """Three CT-like phantoms, two with final labels (a bright blob, value 1)."""
    labels = folder / "labels" / "final"
    labels.mkdir(parents=True)
    affine = np.diag([0.9, 0.8, 3.0, 1.0])
    for n in range(3):
        volume = make_volume(shape=SHAPE, seed=n)
        nib.save(nib.Nifti1Image(volume.array.astype(np.int16), affine), folder / f"phantom_{n}.nii.gz")
        if n < 2:
            nib.save(nib.Nifti1Image((volume.array > 120).astype(np.uint8), affine), labels / f"phantom_{n}.nii.gz")
    # a label copied into the folder by hand on another grid: training must leave it out
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)), labels / "phantom_2.nii.gz")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_model_files):
    studies = tmp_path_factory.mktemp("train_studies")
    _tiny_studies(studies)
    # the served file is the config's "official" checkpoint in model_dir, so finetuned.pt takes over
    model_dir = tmp_path_factory.mktemp("train_model")
    config, checkpoint = small_model_files
    (model_dir / "small.yaml").write_text(config.read_text())
    (model_dir / "small.pt").write_bytes(checkpoint.read_bytes())
    server = RunningServer(
        studies,
        {"model_config": model_dir / "small.yaml", "model_dir": model_dir, "labels": "organ"},
        tmp_path_factory.mktemp("train_logs") / "server.log",
    )
    yield studies, model_dir, server
    server.stop()


def _wait_for_training(client, server, timeout=400.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.train_status()
        if status and status.get("status") in ("DONE", "ERROR"):
            return status
        assert server.alive(), server.log()[-3000:]
        time.sleep(0.5)
    raise TimeoutError(f"training did not finish in {timeout}s:\n{server.log()[-3000:]}")


def test_train_publishes_weights_that_the_next_infer_uses(setup, tmp_path):
    studies, model_dir, server = setup
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="train-test")
    prompt = {"foreground": [[18, 16, 4]], "label": "organ"}

    assert "medsam2_finetune" in client.info()["trainers"]
    _, before = client.infer("medsam2_3d", "phantom_2", prompt)
    assert before["model"]["checkpoint"] == str(model_dir / "small.pt")

    # through the API a label on another grid is refused before anything is written
    bad = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 12, 10), np.uint8), np.eye(4)), bad)
    before = (studies / "labels" / "final" / "phantom_2.nii.gz").read_bytes()
    with pytest.raises(MONAILabelClientException) as refused:
        client.save_label("phantom_2", str(bad), tag="final")
    assert "Status: 422" in refused.value.msg and "grid" in refused.value.msg
    assert (studies / "labels" / "final" / "phantom_2.nii.gz").read_bytes() == before

    client.train_start("medsam2_finetune", TRAIN_REQUEST)
    _, during = client.infer("medsam2_3d", "phantom_2", prompt)  # the server keeps serving
    assert during["model"]["checkpoint"].endswith(".pt")
    status = _wait_for_training(client, server)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))

    stats = client.info()["train_stats"]["medsam2_finetune"]
    assert stats["status"] == "DONE" and stats["published"] is True
    assert stats["best_metric_name"] == "val_mean_dice" and stats["untrained_origin"] is False
    assert stats["devices"] == ["cpu"]
    assert len(stats["history"]) == 1 and stats["history"][0]["steps"] == 3
    assert [r["image"] for r in stats["rejected"]] == ["phantom_2.nii.gz"]
    assert "phantom_2.nii.gz" not in stats["train_studies"] + stats["val_studies"]
    assert stats["val_studies"] and stats["history"][0]["val_mean_dice"] is not None

    finetuned = model_dir / "finetuned.pt"
    new = torch.load(finetuned, weights_only=True)["model"]
    old = torch.load(model_dir / "small.pt", weights_only=True)["model"]
    assert set(new) == set(old)
    assert any(not torch.equal(new[k], old[k]) for k in old), "training did not change any weight"

    # the new weights are prepared in the background, then served: /info says when
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        served = client.info()["medsam2"]
        if served["checkpoint"] == str(finetuned) and served["preparing"] is None:
            break
        time.sleep(0.5)
    _, after = client.infer("medsam2_3d", "phantom_2", prompt)
    assert after["model"]["checkpoint"] == str(finetuned)
    assert "preparing model" in server.log() and "now serving" in server.log()
    # the fine-tune's own process (MONAI Label's task process) never loaded the served model
    trainer_pid = next(line.split("] [")[1] for line in server.log().splitlines() if "fine-tune from" in line)
    assert trainer_pid != str(server.process.pid)
    assert not [line for line in server.log().splitlines() if f"] [{trainer_pid}] " in line and "loading model" in line]
