"""Two replicas of the app behind nginx, sharing one PACS (Orthanc) and one model folder.

One module-wide set-up: Orthanc with the phantom series, replicas "a" (the trainer) and "b"
(``--conf trainer false``), nginx with the shipped configuration in front. Then: each study's
requests land on its replica and stay there; a label saved through one replica is read
through the other (from the PACS, as DICOM SEG); a fine-tune published by the trainer is
served by both; killing a replica moves its studies, and the next click restarts the session
and says so.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.support.nginx import RunningNginx, needs_nginx
from tests.support.orthanc import RunningOrthanc, needs_orthanc
from tests.support.pacs_app import LABELS, _phantom_series
from tests.support.server import RunningServer

pytestmark = [needs_nginx, needs_orthanc]
REPLICA = "X-MedSAM2-Replica"


SERIES = 10  # small phantom series: enough that the hash gives each replica some (all on one: 2 in 1,000)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """An Orthanc of this module's own: the phantom series, no label another test saved (training
    reads every labelled study: a shared PACS would make its time depend on the test order)."""
    folder = tmp_path_factory.mktemp("replicas_pacs")
    server = RunningOrthanc(folder / "orthanc")
    try:
        series = []
        for seed in range(SERIES):
            series.append(_phantom_series(folder, 20 + seed, f"replica{seed}").uids["series"])
            server.upload(folder / f"replica{seed}")
        server.series = series
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(pacs, small_model_files, tmp_path_factory):
    config, checkpoint = small_model_files
    folder = tmp_path_factory.mktemp("replicas")
    model_dir = folder / "model"  # shared: the trainer publishes here, both serve it
    model_dir.mkdir()
    shutil.copy(checkpoint, folder / "base.pt")
    common = {"model_config": config, "checkpoint": folder / "base.pt", "model_dir": model_dir, "labels": LABELS,
              "encode_ahead": "false"}
    confs = {"a": {"replica_name": "a", "trainer": "true"},
             "b": {"replica_name": "b", "trainer": "false", "trainer_name": "a"}}
    servers: dict = {}

    def start(name):
        servers[name] = RunningServer(pacs.dicomweb, {**common, **confs[name]}, folder / f"{name}.log",
                                      env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(folder / f"cache_{name}")})

    threads = [threading.Thread(target=start, args=(n,)) for n in confs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if set(servers) != set(confs):
        for server in servers.values():
            server.stop()
        pytest.fail("a replica did not start (see its log)")
    nginx = RunningNginx(folder / "nginx", [f"{n}=127.0.0.1:{servers[n].port}" for n in confs],
                         trainer=f"127.0.0.1:{servers['a'].port}", fail_timeout_s=30)
    try:
        yield {"nginx": nginx, "model_dir": model_dir, **servers}
    finally:
        nginx.stop()
        for server in servers.values():
            server.stop()


def _replica_of(url: str, series: str) -> str:
    answer = requests.get(f"{url}/datastore/image/info", params={"image": series}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.headers[REPLICA]


def _nifti(content: bytes):
    return nib.Nifti1Image.from_bytes(gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content)


def _click(url: str, series: str, client: str, points: list) -> requests.Response:
    params = {"foreground": points, "background": [], "client_id": client, "label": "lesion"}
    return requests.post(f"{url}/infer/medsam2_3d", params={"image": series, "output": "json"},
                         files={"params": (None, json.dumps(params))}, timeout=300)


@pytest.fixture(scope="module")
def two_studies(cluster, pacs):
    """One series on each replica (the hash decides; there are enough series for both to get one)."""
    url = cluster["nginx"].url
    by_replica: dict = {}
    for series in pacs.series:
        by_replica.setdefault(_replica_of(url, series), series)
    assert set(by_replica) == {"a", "b"}, f"every candidate series hashed to {set(by_replica)}"
    return by_replica


def test_each_study_stays_on_its_replica(cluster, two_studies):
    url = cluster["nginx"].url
    for replica, series in two_studies.items():
        first = _click(url, series, f"user-{replica}", [[20, 20, 5]])
        assert first.status_code == 200, first.text
        assert first.headers[REPLICA] == replica and first.json()["replica"] == replica
        again = _click(url, series, f"user-{replica}", [[20, 20, 5], [22, 21, 5]])
        assert again.headers[REPLICA] == replica
        assert again.json()["session"]["started"] is None  # the same session continued
        assert "new session" not in again.json().get("warning", "")
        # a second clinician on the study reaches the same replica (its encoded slices)
        other = _click(url, series, f"colleague-{replica}", [[20, 20, 5]])
        assert other.headers[REPLICA] == replica
    info = {name: requests.get(f"{cluster[name].url}/info/", timeout=30).json()["medsam2"]["replica"]
            for name in ("a", "b")}
    assert info["a"] == {"name": "a", "trainer": True, "trainer_name": "a"}
    assert info["b"] == {"name": "b", "trainer": False, "trainer_name": "a"}


def test_a_label_saved_through_one_replica_is_read_through_the_other(cluster, two_studies):
    """As the page saves: each structure whole (a 4D stack), two overlapping; read through the other
    replica from the PACS's SEG, both structures come back whole and the label map keeps the app's rule."""
    series = two_studies["a"]
    image = requests.get(f"{cluster['nginx'].url}/datastore/image", params={"image": series}, timeout=60)
    volume = _nifti(image.content)
    stack = np.zeros((*volume.shape, 2), dtype=np.uint8)
    stack[20:30, 20:30, 4:8, 0] = 1  # lesion: 400 voxels
    stack[16:34, 16:34, 3:9, 1] = 1  # organ: 1,944 voxels, holding the whole lesion
    entries = [{"name": "lesion", "idx": 1, "voxels": 400}, {"name": "organ", "idx": 2, "voxels": 1944}]
    body = gzip.compress(nib.Nifti1Image(stack, volume.affine).to_bytes())
    saved = requests.put(f"{cluster['nginx'].url}/datastore/label", params={"image": series, "tag": "final"},
                         files={"label": ("label.nii.gz", body),
                                "params": (None, json.dumps({"label_info": entries, "structures": True}))},
                         timeout=120)
    assert saved.status_code == 200, saved.text
    assert saved.headers[REPLICA] == "a"
    version = saved.json()["saved"]["version"]
    info = requests.get(f"{cluster['b'].url}/datastore/label/info", params={"label": series, "tag": "final"},
                        timeout=120)
    assert info.status_code == 200, info.text
    assert info.json()["version"] == version  # the SEG's series UID: one version on every replica
    read = requests.get(f"{cluster['b'].url}/datastore/label", params={"label": series, "tag": "final"}, timeout=60)
    assert read.status_code == 200, read.text
    label_map = np.asarray(_nifti(read.content).dataobj)
    assert label_map.shape == volume.shape
    assert int((label_map == 1).sum()) == 400 and int((label_map == 2).sum()) == 1944 - 400  # the smaller keeps
    # the page on replica b reopens each structure whole, so saving it again loses no voxel
    reopened = requests.get(f"{cluster['b'].url}/medsam2/viewer/label", params={"image": series}, timeout=60)
    assert reopened.status_code == 200, reopened.text
    structures = np.asarray(_nifti(reopened.content).dataobj) > 0
    reopened_entries = json.loads(reopened.headers["X-Label-Info"])
    assert sorted((e["name"], e["idx"]) for e in reopened_entries) == [("lesion", 1), ("organ", 2)]
    for channel, entry in enumerate(reopened_entries):  # each structure whole, overlap included
        assert np.array_equal(structures[..., channel], stack[..., entry["idx"] - 1] > 0), entry


def test_every_replica_counts_a_label_saved_through_another_within_seconds(cluster, two_studies):
    """The labelled studies (the loop's progress, the next study, what the trainer trains on) are the
    PACS's now on every replica, not a list one replica cached hours ago."""
    def labelled_on_a() -> int:
        answer = requests.get(f"{cluster['a'].url}/medsam2/loop", timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["progress"]["labelled"]

    before = labelled_on_a()  # replica a has listed the labelled studies once
    series = two_studies["b"]
    volume = _nifti(requests.get(f"{cluster['nginx'].url}/datastore/image", params={"image": series},
                                 timeout=60).content)
    label = np.zeros(volume.shape, dtype=np.uint8)
    label[20:28, 20:28, 4:7] = 1
    saved = requests.put(f"{cluster['nginx'].url}/datastore/label", params={"image": series, "tag": "final"},
                         files={"label": ("label.nii", nib.Nifti1Image(label, volume.affine).to_bytes()),
                                "params": (None, json.dumps({"label_info": [{"name": "lesion", "idx": 1}]}))},
                         timeout=120)
    assert saved.status_code == 200 and saved.headers[REPLICA] == "b", saved.text
    deadline = time.monotonic() + 20
    while labelled_on_a() != before + 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert labelled_on_a() == before + 1, "replica a counts the label saved through replica b"


def test_the_trainer_publishes_and_both_replicas_serve_it(cluster, two_studies):
    refused = requests.post(f"{cluster['b'].url}/train/medsam2_finetune", json={}, timeout=30)
    assert refused.status_code == 409 and "'a'" in refused.json()["detail"]
    request = {"epochs": 1, "steps_per_epoch": 1, "clip_length": 2, "max_objects": 1, "val_fraction": 0,
               "baseline_validation": False, "correction_clicks": 1}
    started = requests.post(f"{cluster['nginx'].url}/train/medsam2_finetune", json=request, timeout=60)
    assert started.status_code == 200, started.text
    assert started.headers[REPLICA] == "a"
    deadline = time.monotonic() + 240
    versions = {}
    while time.monotonic() < deadline:
        versions = {name: requests.get(f"{cluster[name].url}/info/", timeout=30).json()["medsam2"]["version"]
                    for name in ("a", "b")}
        if all((v or {}).get("name") == "fine-tune 1" for v in versions.values()):
            break
        stats = cluster["model_dir"] / "train_stats.json"
        assert not stats.exists() or json.loads(stats.read_text()).get("status") != "FAILED", stats.read_text()
        time.sleep(0.5)
    assert versions["a"] == versions["b"] and versions["a"]["name"] == "fine-tune 1", versions
    for replica, series in two_studies.items():  # each replica's next click is made by those weights
        result = _click(cluster["nginx"].url, series, f"user-{replica}", [[20, 20, 5], [22, 21, 5]]).json()
        assert result["model"]["version"]["name"] == "fine-tune 1", result["model"]


def test_killing_a_replica_moves_its_studies_and_loses_nothing(cluster, two_studies):
    url = cluster["nginx"].url
    series = two_studies["b"]
    cluster["b"].kill()
    began = time.monotonic()
    moved = _click(url, series, "user-b", [[20, 20, 5], [22, 21, 5]])
    failover_s = time.monotonic() - began
    assert moved.status_code == 200, moved.text
    assert moved.headers[REPLICA] == "a"
    result = moved.json()
    assert result["session"]["started"] == "new"
    assert "new session on replica a" in result["warning"]
    assert failover_s < 120
    # the label saved earlier (through a) is still there, read through the PACS
    info = requests.get(f"{url}/datastore/label/info", params={"label": two_studies["a"], "tag": "final"}, timeout=60)
    assert info.status_code == 200 and info.json().get("version")
