"""Encode-ahead: slices encoded before the first click, the same masks, bounded and cancellable."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medsam2_engine.encode_ahead import EncodeAhead, centre_out
from tests.support.orthanc import needs_orthanc


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


def _ahead(segmenter) -> EncodeAhead:
    """Encode-ahead as main.py wires it: it also follows each session's first request."""
    ahead = EncodeAhead(segmenter)
    segmenter.after_first_request = ahead.follow_request
    return ahead


def _segmenter(models, share_features=True, memory=None, **limits):
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.propagation import EarlyStop
    from medsam2_engine.sessions import SessionLimits

    return VolumeSegmenter(models, EngineSettings(early_stop=EarlyStop(enabled=False), limits=SessionLimits(**limits),
                                                  share_features=share_features), memory=memory)


def test_centre_out_visits_every_slice_once():
    assert centre_out(5) == [2, 1, 3, 0, 4]
    assert sorted(centre_out(8)) == list(range(8)) and centre_out(1) == [0]
    assert centre_out(6, focus=4) == [4, 3, 5, 2, 1, 0] and centre_out(3, focus=99) == [2, 1, 0]


def test_encoding_works_outward_from_the_slice_the_clinician_looks_at(fine_tuned):
    models, volume, _ = _study(fine_tuned)
    slices = volume.array.shape[2]
    segmenter = _segmenter(models, max_memory_mb=volume.array.nbytes / 2**20 + 1.0)  # a few slices' features
    ahead = _ahead(segmenter)
    key = ("u", "focused")
    ahead.focus(key, volume, 1)  # the page reports the slice shown
    job = ahead.request(key, volume)
    assert job.finished.wait(120) and job.stopped == "budget" and 0 < job.encoded < slices - 1
    session = segmenter.memory.peek(key)
    encoded = [k for k in range(slices) if session.frames.key(k) in session.feature_cache]
    assert encoded == sorted(centre_out(slices, focus=1)[:job.encoded])
    assert encoded != sorted(centre_out(slices)[:job.encoded])  # not the middle-out order


def test_first_click_after_a_pause_finds_the_slices_encoded_with_the_same_masks(fine_tuned):
    models, volume, prompts = _study(fine_tuned)
    slices = volume.array.shape[2]

    cold = _segmenter(models).run(volume, prompts, session_key=("u", "study"))
    reached = len(cold.labels["l"].slices)
    assert cold.session.slices_encoded == reached > 0  # without it the click pays every slice it reaches

    segmenter = _segmenter(models)
    job = _ahead(segmenter).request(("u", "study"), volume)
    assert job.finished.wait(120), "encode-ahead did not finish"
    assert (job.stopped, job.encoded) == ("done", slices)
    warm = segmenter.run(volume, prompts, session_key=("u", "study"))
    assert warm.session.slices_encoded == 0
    assert cold.labels["l"].mask.any()
    assert np.array_equal(warm.labels["l"].mask, cold.labels["l"].mask)


def test_a_session_opened_ahead_is_the_one_the_first_click_finds_and_encodes_nothing(fine_tuned):
    models, volume, prompts = _study(fine_tuned)
    segmenter = _segmenter(models)
    _ahead(segmenter).open_session(("u", "study"), volume)
    opened = segmenter.memory.peek(("u", "study"))
    assert opened is not None and len(opened.feature_cache) == 0  # read and windowed, nothing encoded
    first = segmenter.run(volume, prompts, session_key=("u", "study"))
    assert segmenter.memory.peek(("u", "study")) is opened  # the session opened ahead, not a new one
    cold = _segmenter(models).run(volume, prompts, session_key=("u", "study"))
    assert np.array_equal(first.labels["l"].mask, cold.labels["l"].mask)


def test_encoding_stops_at_the_session_memory_budget(fine_tuned):
    models, volume, _ = _study(fine_tuned)
    volume_mb = volume.array.nbytes / 2**20
    segmenter = _segmenter(models, max_memory_mb=volume_mb + 1.0)  # the volume and a few slices' features
    job = _ahead(segmenter).request(("u", "small budget"), volume)
    assert job.finished.wait(120)
    assert job.stopped == "budget" and 0 < job.encoded < volume.array.shape[2]
    assert segmenter.memory.memory_bytes() <= (volume_mb + 1.0) * 2**20


def test_an_evicted_session_stops_its_encoding(fine_tuned):
    from medsam2_engine.predictor import network_lock

    models, volume, _ = _study(fine_tuned)
    segmenter = _segmenter(models)
    key = ("u", "evicted")
    with network_lock(models.get().model):  # an interactive step holds the network: the worker waits
        job = _ahead(segmenter).request(key, volume)
        deadline = time.monotonic() + 60
        while segmenter.memory.peek(key) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert segmenter.memory.peek(key) is not None, "encode-ahead opened no session"
        segmenter.memory.drop(key)  # evicted (or expired) while the worker waits for its first slice
    assert job.finished.wait(60)
    assert job.stopped == "evicted" and job.encoded <= 1


def test_a_cancelled_job_encodes_nothing_more(fine_tuned):
    models, volume, _ = _study(fine_tuned)
    from medsam2_engine.predictor import network_lock

    segmenter = _segmenter(models)
    ahead = _ahead(segmenter)
    with network_lock(models.get().model):
        job = ahead.request(("u", "cancelled"), volume)
        while segmenter.memory.peek(("u", "cancelled")) is None and not job.finished.is_set():
            time.sleep(0.01)
        ahead.cancel(("u", "cancelled"))
    assert job.finished.wait(60)
    assert job.stopped == "cancelled" and job.encoded <= 1


def test_the_viewer_opening_a_study_queues_it_for_the_tabs_session(tmp_path, phantom):
    """GET /medsam2/viewer/volume queues the study under the key the same tab's clicks will use."""
    import nibabel as nib
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib.infers.request import IMAGE_ID_FIELD, session_key_for
    from lib.http.viewer import build_router

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

        def prefetch_study(self, uri, request=None, focus=None, open_only=False):
            queued.append((session_key_for(request), uri, open_only))

    server = FastAPI()
    server.include_router(build_router(lambda: App(), lambda: None))
    client = TestClient(server)
    assert client.get("/medsam2/viewer/volume", params={"image": "study1", "client_id": "tab-7"}).status_code == 200
    # the key an infer request of that tab gets (client_id in its params, the image id from the route)
    expected = session_key_for({"client_id": "tab-7", IMAGE_ID_FIELD: "study1"})
    assert queued == [(expected, str(path), False)]
    # the first slice alone: the same tab's session is opened while the rest travels, nothing encoded
    queued.clear()
    one = client.get("/medsam2/viewer/volume", params={"image": "study1", "client_id": "tab-7", "part": "slice"})
    assert one.status_code == 200 and queued == [(expected, str(path), True)]
    bad = client.get("/medsam2/viewer/volume", params={"image": "study1", "client_id": "x" * 5000})
    assert bad.status_code == 400 and "client_id" in bad.json()["detail"]


# -- encoded slices shared by the sessions on one image ------------------------------------

def test_two_sessions_on_one_image_encode_each_slice_once_with_the_masks_of_separate_caches(fine_tuned):
    models, volume, prompts = _study(fine_tuned)
    slices = volume.array.shape[2]
    shared, separate = _segmenter(models), _segmenter(models, share_features=False)
    results = {}
    for name, segmenter in (("shared", shared), ("separate", separate)):
        for user in ("alice", "bob"):
            results[name, user] = segmenter.run(volume, prompts, session_key=(user, "study"))
    # the second user finds the first user's slices; without sharing each session encodes them all
    assert [results["shared", u].session.slices_encoded for u in ("alice", "bob")] == [slices, 0]
    assert [results["separate", u].session.slices_encoded for u in ("alice", "bob")] == [slices, slices]
    assert len(shared.memory.features) == 1 and len(separate.memory.features) == 2
    reference = results["separate", "alice"].labels["l"].mask
    assert reference.any()
    for result in results.values():
        assert np.array_equal(result.labels["l"].mask, reference)
    # the budget counts the shared cache (and the one in-memory volume) once
    sessions = [shared.memory.peek((u, "study")) for u in ("alice", "bob")]
    assert sessions[0].feature_cache.shared is sessions[1].feature_cache.shared
    once = sessions[0].memory_bytes() + sessions[1].private_bytes()
    assert shared.memory.memory_bytes() == once < sessions[0].memory_bytes() + sessions[1].memory_bytes()


def test_another_window_or_new_weights_never_reuse_encoded_slices(fine_tuned):
    import dataclasses

    models, volume, prompts = _study(fine_tuned)
    slices = volume.array.shape[2]
    segmenter = _segmenter(models)
    assert segmenter.run(volume, prompts, session_key=("alice", "s")).session.slices_encoded == slices
    other_window = segmenter.run(volume, prompts, session_key=("bob", "s"), window=[-500.0, 500.0])
    assert other_window.session.slices_encoded == slices

    class NewWeights:  # the same source, its weights published again: a new model version
        def __init__(self, source):
            self.source, self.device = source, source.device

        def get(self):
            loaded = self.source.get()
            return dataclasses.replace(loaded, version=loaded.version + 1)

        def __getattr__(self, name):
            return getattr(self.source, name)

    renewed = _segmenter(NewWeights(models), memory=segmenter.memory)  # one store: the old version's slices are there
    after = renewed.run(volume, prompts, session_key=("carol", "s"))
    assert after.session.slices_encoded == slices
    versions = {key.model_version for key in segmenter.memory.features._caches}
    assert versions == {models.get().version + 1}, "slices of the old weights are no longer offered"


def test_a_download_queues_the_image_for_any_session_and_the_first_click_finds_it(fine_tuned, tmp_path, monkeypatch):
    import os

    import nibabel as nib

    from medsam2_engine import study_memory

    models, volume, prompts = _study(fine_tuned)
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, volume.affine), str(path))
    cold = _segmenter(models).run(str(path), prompts, session_key=("slicer-user", "study"))
    assert cold.session.slices_encoded == volume.array.shape[2]

    reads, read = [], study_memory.load_image
    monkeypatch.setattr(study_memory, "load_image", lambda image: reads.append(image) or read(image))
    segmenter = _segmenter(models)
    ahead = _ahead(segmenter)
    job = ahead.request(None, str(path))  # no session yet: the client is not known
    assert job.finished.wait(120) and (job.stopped, job.encoded) == ("done", volume.array.shape[2])
    first = segmenter.run(str(path), prompts, session_key=("slicer-user", "study"))
    assert first.session.slices_encoded == 0
    assert np.array_equal(first.labels["l"].mask, cold.labels["l"].mask)
    assert reads == [str(path)], "the click reads the volume encode-ahead read"
    segmenter.run(str(path), prompts, session_key=("second-user", "study"))
    store = segmenter.memory
    kept = store.peek(("slicer-user", "study")).volume
    assert reads == [str(path)] and store.peek(("second-user", "study")).volume is kept
    store.drop(("slicer-user", "study"))
    store.drop(("second-user", "study"))  # no session: the volume kept with the slices still counts
    assert store.memory_bytes() == kept.array.nbytes + sum(cache.bytes for cache in store.features.caches())

    assert ahead.join(120)  # the sessions' follow-up jobs are done before the file changes
    os.utime(path, ns=(0, 0))  # the file changed: read again
    segmenter.run(str(path), prompts, session_key=("slicer-user", "study"))
    assert reads == [str(path)] * 2


def test_the_first_request_queues_the_slices_it_did_not_reach(fine_tuned):
    from medsam2_engine.crop_region import CropRegionSettings
    from medsam2_engine.propagation import EarlyStop

    models, volume, prompts = _study(fine_tuned)
    slices = volume.array.shape[2]
    segmenter = _segmenter(models)
    ahead = _ahead(segmenter)
    stop = segmenter.settings.options(early_stop=EarlyStop(enabled=True, patience=1, score_threshold=1e9))
    first = segmenter.run(volume, prompts, session_key=("u", "s"), options=stop)
    assert first.session.slices_encoded < slices, "early stop should leave slices unreached"
    assert ahead.join(120)
    assert ahead.queued == 1 and len(segmenter.memory.peek(("u", "s")).feature_cache) == slices
    whole = segmenter.run(volume, prompts, session_key=("u", "s"))  # early stop off: every slice
    assert whole.session.slices_encoded == 0

    cropped = _segmenter(models)
    ahead = _ahead(cropped)
    region = cropped.settings.options(crop_region=CropRegionSettings(enabled=True, min_input=64))
    cropped.run(volume, prompts, session_key=("u", "s"), options=region)
    assert ahead.join(10) and ahead.queued == 0  # regions never use whole slices


def test_eviction_drops_encoded_slices_no_session_holds_before_a_session(fine_tuned):
    from medsam2_engine.volume_io import Volume

    models, volume, prompts = _study(fine_tuned)
    segmenter = _segmenter(models)
    store = segmenter.memory
    segmenter.run(volume, prompts, session_key=("alice", "s"))
    cache = store.peek(("alice", "s")).feature_cache.shared
    store.drop(("alice", "s"))  # the session ends; its image's slices stay for the next user, counted
    assert store.features.caches() == [cache] and store.memory_bytes() == cache.bytes > 0
    assert segmenter.run(volume, prompts, session_key=("bob", "s")).session.slices_encoded == 0
    store.drop(("bob", "s"))
    # over the budget with another study: the unheld cache goes, the new session stays
    store.limits.max_memory_mb = (cache.bytes / 2 + volume.array.nbytes) / 2**20
    with segmenter.open(("carol", "t"), Volume(volume.array.copy(), volume.affine, "")) as session:
        store.put(session)
    assert store.features.caches() == [session.feature_cache.shared]
    assert store.keys() == [("carol", "t")] and store.memory_bytes() <= store.limits.max_memory_mb * 2**20


# -- through a real server: 3D Slicer's download before its first click -----------------------

@pytest.fixture(scope="module")
def slicer_server(small_model_files, tmp_path_factory):
    from tests.support.server import RunningServer, sample_studies

    config, checkpoint = small_model_files
    studies = sample_studies(tmp_path_factory)
    running = RunningServer(studies, {"model_config": config, "checkpoint": checkpoint, "labels": "liver"},
                            tmp_path_factory.mktemp("ahead_logs") / "server.log")
    running.studies = studies
    yield running
    running.stop()


def _wait_for_log(server, pattern: str, timeout: float = 60.0):
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, server.log())
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in the server log:\n{server.log()[-3000:]}")


def test_slicer_downloading_a_study_has_it_encoded_before_the_first_click(slicer_server, tmp_path):
    import json

    import requests
    from monailabel.client import MONAILabelClient

    server = slicer_server
    slices = 40  # the sample CT phantoms' depth
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="slicer-1")
    click = {"foreground": [[34, 36, 20]], "label": "liver"}

    def encoded_by_first_click(image):
        _, params = client.infer("medsam2_3d", image, click)
        session = (params if isinstance(params, dict) else json.loads(params))["session"]
        return session["slices_encoded"], session["feature_cache_slices"]

    assert encoded_by_first_click("ct_phantom_1") == (slices, slices)  # nobody downloaded it: the click encodes all

    download = requests.get(f"{server.url}/datastore/image", params={"image": "ct_phantom_0"}, timeout=60)
    assert download.status_code == 200
    assert download.content == (server.studies / "ct_phantom_0.nii.gz").read_bytes()
    found = _wait_for_log(server, r"encode-ahead \S*ct_phantom_0\.nii\.gz: (\d+) slices \((\w+)\)")
    assert found.groups() == (str(slices), "done")
    status = requests.get(f"{server.url}/info/", timeout=10).json()["medsam2"]["encode_ahead"]
    assert status["last"] == {"image": "ct_phantom_0.nii.gz", "slices_encoded": slices, "stopped": "done"}
    assert status["running"] is None and status["waiting"] == 0 and status["queued"] >= 2  # and ct_phantom_1's rest
    assert encoded_by_first_click("ct_phantom_0") == (0, slices)  # Slicer sends client_id only now: any session

    bad = requests.get(f"{server.url}/datastore/image", params={"image": "../ct_phantom_0"}, timeout=10)
    assert bad.status_code == 400 and "image" in bad.json()["detail"]
    assert requests.get(f"{server.url}/datastore/image", params={"image": "nope"}, timeout=10).status_code == 404


def test_two_users_and_the_worker_at_once_on_one_image_encode_each_slice_once(fine_tuned):
    import threading

    models, volume, prompts = _study(fine_tuned)
    slices = volume.array.shape[2]
    reference = _segmenter(models, share_features=False).run(volume, prompts, session_key=("ref", "s"))
    segmenter = _segmenter(models)
    ahead = EncodeAhead(segmenter)
    results, start = {}, threading.Barrier(3)

    def user(name):
        start.wait()
        results[name] = segmenter.run(volume, prompts, session_key=(name, "s"))

    threads = [threading.Thread(target=user, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    start.wait()
    job = ahead.request(None, volume)
    for thread in threads:
        thread.join(120)
    assert job.finished.wait(120)
    encoded = [results[name].session.slices_encoded for name in ("alice", "bob")] + [job.encoded]
    assert sum(encoded) == slices, f"each slice encoded once, got {encoded} for {slices} slices"
    for result in results.values():
        assert np.array_equal(result.labels["l"].mask, reference.labels["l"].mask)


def test_a_one_slice_request_queues_the_study_for_the_3d_click_that_follows(slicer_server, tmp_path):
    import json

    from monailabel.client import MONAILabelClient

    server = slicer_server
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="ohif-2")
    client.infer("medsam2_2d", "ct_phantom_2", {"foreground": [[34, 36, 20]], "slice": 20, "label": "liver"})
    found = _wait_for_log(server, r"encode-ahead \S*ct_phantom_2\.nii\.gz: (\d+) slices \((\w+)\)")
    assert found.groups() == ("40", "done")
    _, params = client.infer("medsam2_3d", "ct_phantom_2", {"foreground": [[34, 36, 20]], "label": "liver"})
    assert (params if isinstance(params, dict) else json.loads(params))["session"]["slices_encoded"] == 0
    # a photograph has no slices: a 2D request on it queues nothing; a download queues it and the worker says so
    import requests

    queued = requests.get(f"{server.url}/info/", timeout=10).json()["medsam2"]["encode_ahead"]["queued"]
    client.infer("medsam2_2d", "skin_lesion_0", {"foreground": [[80, 64]], "label": "liver"})
    assert requests.get(f"{server.url}/info/", timeout=10).json()["medsam2"]["encode_ahead"]["queued"] == queued
    assert requests.get(f"{server.url}/datastore/image", params={"image": "skin_lesion_0"}, timeout=30).ok
    _wait_for_log(server, r"encode-ahead \S*skin_lesion_0\.\w+: 0 slices \(not a volume\)")


@needs_orthanc
def test_a_series_fetched_from_the_pacs_is_queued_for_any_session(pacs_server, orthanc, tmp_path):  # noqa: F811
    """The first request on a PACS series fetches it: the series is queued for its image (trigger of the datastore)."""
    import json
    import re

    import requests

    from tests.support.dicom_series import write_series
    from tests.support.trained_small_model import AFFINE, phantom

    array, _ = phantom(11, shape=(64, 56, 12))
    uid = write_series(array, AFFINE, tmp_path / "fresh", description="fetched once")["series"]  # no other test has it
    orthanc.upload(tmp_path / "fresh")
    params = {"foreground": [[20, 28, 6]], "label": "lesion"}
    answer = requests.post(f"{pacs_server.url}/infer/medsam2_3d", params={"image": uid, "output": "json"},
                           files={"params": (None, json.dumps(params))}, timeout=300)
    assert answer.status_code == 200, answer.text
    pattern = rf"encode-ahead \S*{re.escape(uid)}\.nii\.gz: (\d+) slices \((\w+)\)"  # an image job: the file
    found = _wait_for_log(pacs_server, pattern)
    assert found.group(2) == "done"
