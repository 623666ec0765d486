"""Encode-ahead: slices encoded before the first click, the same masks, bounded and cancellable."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medsam2_engine.encode_ahead import EncodeAhead, centre_out


def _study(fine_tuned):
    from medsam2_engine.prompts import Box, LabelPrompts
    from medsam2_engine.volume_io import Volume

    segmenter, cases = fine_tuned
    case = cases[1]
    mask = case.labels == 1
    k = int(np.median(np.nonzero(mask)[2]))
    ii, jj = np.nonzero(mask[:, :, k])
    prompts = {"l": LabelPrompts(boxes=[Box(ii.min(), jj.min(), ii.max(), jj.max(), k)])}
    return segmenter.models, Volume(case.volume.array, case.volume.affine, ""), prompts


def _segmenter(models, **limits):
    from medsam2_engine.engine import EngineSettings, VolumeSegmenter
    from medsam2_engine.propagation import EarlyStop
    from medsam2_engine.sessions import SessionLimits

    return VolumeSegmenter(models, EngineSettings(early_stop=EarlyStop(enabled=False), limits=SessionLimits(**limits)))


def test_centre_out_visits_every_slice_once():
    assert centre_out(5) == [2, 1, 3, 0, 4]
    assert sorted(centre_out(8)) == list(range(8)) and centre_out(1) == [0]


def test_first_click_after_a_pause_finds_the_slices_encoded_with_the_same_masks(fine_tuned):
    models, volume, prompts = _study(fine_tuned)
    slices = volume.array.shape[2]

    cold = _segmenter(models).run(volume, prompts, session_key=("u", "study"))
    assert cold.session.slices_encoded == slices  # without it the click pays every slice

    segmenter = _segmenter(models)
    job = EncodeAhead(segmenter).request(("u", "study"), volume)
    assert job.finished.wait(120), "encode-ahead did not finish"
    assert (job.stopped, job.encoded) == ("done", slices)
    warm = segmenter.run(volume, prompts, session_key=("u", "study"))
    assert warm.session.slices_encoded == 0
    assert cold.labels["l"].mask.any()
    assert np.array_equal(warm.labels["l"].mask, cold.labels["l"].mask)


def test_encoding_stops_at_the_session_memory_budget(fine_tuned):
    models, volume, _ = _study(fine_tuned)
    volume_mb = volume.array.nbytes / 2**20
    segmenter = _segmenter(models, max_memory_mb=volume_mb + 1.0)  # the volume and a few slices' features
    job = EncodeAhead(segmenter).request(("u", "small budget"), volume)
    assert job.finished.wait(120)
    assert job.stopped == "budget" and 0 < job.encoded < volume.array.shape[2]
    assert segmenter.sessions.memory_bytes() <= (volume_mb + 1.0) * 2**20


def test_an_evicted_session_stops_its_encoding(fine_tuned):
    from medsam2_engine.predictor import network_lock

    models, volume, _ = _study(fine_tuned)
    segmenter = _segmenter(models)
    key = ("u", "evicted")
    with network_lock(models.get().model):  # an interactive step holds the network: the worker waits
        job = EncodeAhead(segmenter).request(key, volume)
        deadline = time.monotonic() + 60
        while segmenter.sessions.peek(key) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert segmenter.sessions.peek(key) is not None, "encode-ahead opened no session"
        segmenter.sessions.drop(key)  # evicted (or expired) while the worker waits for its first slice
    assert job.finished.wait(60)
    assert job.stopped == "evicted" and job.encoded <= 1


def test_a_cancelled_job_encodes_nothing_more(fine_tuned):
    models, volume, _ = _study(fine_tuned)
    from medsam2_engine.predictor import network_lock

    segmenter = _segmenter(models)
    ahead = EncodeAhead(segmenter)
    with network_lock(models.get().model):
        job = ahead.request(("u", "cancelled"), volume)
        while segmenter.sessions.peek(("u", "cancelled")) is None and not job.finished.is_set():
            time.sleep(0.01)
        ahead.cancel(("u", "cancelled"))
    assert job.finished.wait(60)
    assert job.stopped == "cancelled" and job.encoded <= 1


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


def test_the_viewer_opening_a_study_queues_it_for_the_tabs_session(tmp_path, phantom):
    """GET /medsam2/viewer/volume queues the study under the key the same tab's clicks will use."""
    import nibabel as nib
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib.infers.request import IMAGE_ID_FIELD, session_key_for
    from lib.viewer_routes import build_router

    path = tmp_path / "study1.nii.gz"
    nib.save(nib.Nifti1Image(phantom.array, phantom.affine), str(path))
    queued = []

    class Datastore:
        def list_images(self):
            return ["study1"]

        def get_image_uri(self, image):
            return str(path)

    class App:
        def datastore(self):
            return Datastore()

        def encode_study_ahead(self, request, uri):
            queued.append((session_key_for(request), uri))

    server = FastAPI()
    server.include_router(build_router(lambda: App(), lambda: None))
    client = TestClient(server)
    assert client.get("/medsam2/viewer/volume", params={"image": "study1", "client_id": "tab-7"}).status_code == 200
    # the key an infer request of that tab gets (client_id in its params, the image id from the route)
    expected = session_key_for({"client_id": "tab-7", IMAGE_ID_FIELD: "study1"})
    assert queued == [(expected, str(path))]
    bad = client.get("/medsam2/viewer/volume", params={"image": "study1", "client_id": "x" * 5000})
    assert bad.status_code == 400 and "client_id" in bad.json()["detail"]
