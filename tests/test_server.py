"""A real MONAI Label server on loopback, driven by the client code the Slicer module uses."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from tests.support.server import RunningServer, sample_studies


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return sample_studies(tmp_path_factory)


@pytest.fixture(scope="module")
def server(studies, small_model_files, tmp_path_factory):
    config, checkpoint = small_model_files
    running = RunningServer(
        studies,
        {"model_config": config, "checkpoint": checkpoint, "labels": "liver,spine,lesion,tumour"},
        tmp_path_factory.mktemp("logs") / "server.log",
    )
    yield running
    running.stop()


@pytest.fixture
def client(server, tmp_path):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="slicer-test")


def _params(params):
    return params if isinstance(params, dict) else json.loads(params)


def test_info_lists_interactive_models_and_model_status(client):
    info = client.info()
    assert {"medsam2_3d", "medsam2_2d"} <= set(info["models"])
    model = info["models"]["medsam2_3d"]
    assert model["type"] == "deepgrow" and model["dimension"] == 3
    assert model["labels"] == ["liver", "spine", "lesion", "tumour"]
    assert "soft_tissue" in model["config"]["window"]
    assert info["medsam2"]["ready"] is True
    # departures from the reference protocol are off by default; /info names the protocol served
    assert model["config"]["crop_region"] is False and model["config"]["correction_stop"] is False
    assert model["config"]["early_stop"] is False and info["medsam2"]["protocol"] == "medsam2"
    assert info["models"]["medsam2_2d"]["dimension"] == 2


def test_3d_infer_then_correction(client, studies):
    request = {"foreground": [[34, 36, 20]], "label": "liver", "result_extension": ".nii.gz", "result_dtype": "uint8"}
    result_file, params = client.infer("medsam2_3d", "ct_phantom_0", request)
    params = _params(params)
    image = nib.load(studies / "ct_phantom_0.nii.gz")
    result = nib.load(result_file)
    assert result.shape == image.shape
    np.testing.assert_allclose(result.affine, image.affine, atol=1e-4)
    values = set(np.unique(np.asarray(result.dataobj)).tolist())
    assert values <= {0, 1} and 1 in values  # value 1, as Slicer's deepgrow import expects
    assert params["label_names"] == {"liver": 1}
    assert params["modality"] == "CT" and params["window"]["source"] == "CT preset soft_tissue"
    liver = params["labels"]["liver"]
    assert {p["direction"] for p in liver["passes"]} == {"forward", "backward"}
    assert {"slice", "object_score", "predicted_iou", "area"} <= set(liver["slices"][0])
    assert liver["crop_region"] is None  # the small test model's 128 px input leaves no room for a region
    assert params["latencies"]["total"] > 0 and "propagation" in params["stages"]
    assert set(params["runtimes"]) == {"image_encoder", "memory_attention", "mask_decoder", "memory_encoder"}
    assert params["session"]["started"] == "new"

    request["background"] = [[60, 20, 24]]  # a correction on another slice
    result_file, params = client.infer("medsam2_3d", "ct_phantom_0", request)
    params = _params(params)
    assert params["session"]["started"] is None
    assert params["session"]["slices_encoded"] == 0 and "image_encoder" not in params["runtimes"]
    assert params["labels"]["liver"]["prompted_slices"] == [20, 24]


def test_slicer_roi_prompt(client):
    # Slicer's ROI in IJK, corners in either order: [i0, i1, j0, j1, k0, k1]
    _, params = client.infer("medsam2_3d", "ct_phantom_1", {"roi": [50, 15, 55, 18, 18, 22], "label": "liver"})
    assert _params(params)["labels"]["liver"]["prompted_slices"] == [20]
    assert _params(params)["request_warnings"] == []
    # Slicer sends each segment's points under its name: one the app has not is said, not silently dropped
    _, params = client.infer("medsam2_3d", "ct_phantom_1", {"roi": [50, 15, 55, 18, 18, 22], "label": "liver",
                                                            "kidney": [[30, 30, 20]], "result_dtype": "uint8"})
    assert _params(params)["request_warnings"] == [
        "kidney: points for a label this app does not have (its labels: liver, spine, lesion, tumour); not used"]


def test_2d_infer_on_a_photograph(client, studies):
    result_file, params = client.infer("medsam2_2d", "skin_lesion_0", {"foreground": [[80, 64]], "label": "lesion",
                                                                        "result_extension": ".png"})
    params = _params(params)
    assert 0.0 <= params["predicted_iou"] <= 1.5
    from PIL import Image

    assert Image.open(result_file).size == Image.open(studies / "skin_lesion_0.png").size
    assert params["embedding_reused"] is False
    _, again = client.infer("medsam2_2d", "skin_lesion_0", {"foreground": [[80, 64], [20, 20]], "label": "lesion"})
    assert _params(again)["embedding_reused"] is True  # a second click only runs the decoder


def test_2d_infer_on_one_slice_of_a_volume(client, studies):
    result_file, params = client.infer("medsam2_2d", "mr_phantom_0",
                                       {"foreground": [[48, 30, 16]], "label": "tumour", "slice": 16})
    mask = np.asarray(nib.load(result_file).dataobj)
    assert mask.shape == nib.load(studies / "mr_phantom_0.nii.gz").shape
    assert _params(params)["slice"] == 16
    assert not mask[:, :, :16].any() and not mask[:, :, 17:].any()


@pytest.mark.parametrize(
    "model, image, request_params, status, message",
    [
        ("medsam2_3d", "ct_phantom_0", {"foreground": [[500, 3, 3]], "label": "liver"}, 400, "foreground[0]"),
        ("medsam2_3d", "ct_phantom_0", {"roi": [1, 2, 3], "label": "liver"}, 400, "roi"),
        ("medsam2_3d", "ct_phantom_0", {"foreground": [[3, 3, 3]], "label": "kidney"}, 400, "unknown label 'kidney'"),
        ("medsam2_3d", "ct_phantom_0", {"background": [[3, 3, 3]], "label": "liver"}, 400, "only background"),
        ("medsam2_3d", "ct_phantom_0", {"foreground": [[3, 3, 3]], "window": "lungs"}, 400, "window preset 'lungs'"),
        ("medsam2_3d", "skin_lesion_0", {"foreground": [[3, 3]], "label": "lesion"}, 400, "use the 2D model"),
    ],
)
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(client, server, model, image, request_params,
                                                                    status, message):
    with pytest.raises(MONAILabelClientException) as err:
        client.infer(model, image, request_params)
    assert f"Status: {status}" in err.value.msg
    assert message in err.value.msg
    assert server.alive()
    assert client.info()["medsam2"]["ready"] is True


def test_unknown_image_is_an_error_not_a_crash(client, server):
    with pytest.raises(MONAILabelClientException):
        client.infer("medsam2_3d", "no_such_study", {"foreground": [[3, 3, 3]], "label": "liver"})
    assert server.alive()
    _, params = client.infer("medsam2_3d", "ct_phantom_2", {"foreground": [[34, 36, 20]], "label": "liver"})
    assert _params(params)["labels"]["liver"]["voxels"] >= 0


def test_server_without_checkpoint_starts_and_says_what_to_place(studies, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    running = RunningServer(studies, {"model_dir": model_dir, "download": "false"}, tmp_path / "server.log")
    try:
        client = MONAILabelClient(running.url, tmpdir=str(tmp_path))
        status = client.info()["medsam2"]
        assert status["ready"] is False
        assert str(model_dir / "MedSAM2_latest.pt") in status["reason"]
        with pytest.raises(MONAILabelClientException) as err:
            client.infer("medsam2_3d", "ct_phantom_0", {"foreground": [[34, 36, 20]]})
        assert "Status: 503" in err.value.msg and "MedSAM2_latest.pt" in err.value.msg
        assert running.alive()
    finally:
        running.stop()
    shutil.rmtree(model_dir)
