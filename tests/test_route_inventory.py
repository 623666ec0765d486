"""Every route the server exposes, tried as an attacker on the network would (authentication off):
the exposed routes are exactly lib/http/inventory.py's, and none gets around the app's rules.

The server runs on sample studies with links out of the studies folder, and its own
temporary folder, so files written or left outside are seen.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from tests.support.server import RunningServer

FINAL = Path("labels") / "final" / "ct_phantom_0.nii.gz"


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    root = tmp_path_factory.mktemp("inventory")
    studies = root / "studies"
    subprocess.run([sys.executable, str(ROOT / "sample-data" / "make_sample_data.py"), str(studies)], check=True)
    outside = root / "outside"
    outside.mkdir()
    secret = nib.Nifti1Image(np.ones((8, 8, 4), np.int16), np.eye(4))
    nib.save(secret, outside / "secret.nii.gz")
    nib.save(secret, outside / "secret_label.nii.gz")
    (studies / "linked.nii.gz").symlink_to(outside / "secret.nii.gz")  # a study that is a link out
    (root / "tmp").mkdir()
    return root


@pytest.fixture(scope="module")
def server(area, small_model_files):
    config, checkpoint = small_model_files
    running = RunningServer(area / "studies", {"model_config": config, "checkpoint": checkpoint,
                                               "labels": "liver,spine,lesion", "upload_max_mb": 8,
                                               "upload_max_decoded_mb": 64},
                            area / "server.log", env={"TMPDIR": str(area / "tmp")})
    yield running
    running.stop()


def url(server, path):
    return server.url + path


def files_outside(area: Path) -> set:
    keep = {area / "studies", area / "tmp"}
    return {str(p.relative_to(area)) for p in area.rglob("*")
            if p.is_file() and not any(k in p.parents for k in keep) and p.name != "server.log"}


def nii_gz(array, affine=np.eye(4)) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes())


def final_shape_like(server_area) -> tuple:
    image = nib.load(server_area / "studies" / "ct_phantom_0.nii.gz")
    return image.shape, image.affine


def while_timing_info(server, latencies: list, call):
    """``call()``, while ``/info`` is asked every 0.2 s from another thread (its latencies appended)."""
    done = threading.Event()

    def probe():
        while not done.is_set():
            started = time.monotonic()
            requests.get(url(server, "/info/"), timeout=60)
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        return call()
    finally:
        done.set()
        prober.join()


def put_label(server, content: bytes, params=None, filename="label.nii.gz", image="ct_phantom_0"):
    return requests.put(url(server, "/datastore/label"), params={"image": image, "tag": "final"},
                        files={"label": (filename, content)}, data={"params": json.dumps(params or {})}, timeout=120)


# ---- the inventory ----------------------------------------------------------------------------

def test_the_server_exposes_exactly_the_inventory(server):
    from lib.http.inventory import EXPOSED_ROUTES, INVENTORY

    line = next(line for line in server.log().splitlines() if EXPOSED_ROUTES in line)
    exposed = set(json.loads(line.split(EXPOSED_ROUTES, 1)[1]))
    listed = {f"{r.method} {r.path}" for r in INVENTORY if r.role != "login"}  # log-in: only with auth on
    assert exposed == listed, (sorted(exposed - listed), sorted(listed - exposed))
    for gone in ("PUT /model/medsam2_3d", "GET /datastore/dataset", "PUT /datastore/updatelabelinfo",
                 "POST /train/", "POST /scoring/", "POST /proxy/dicom/stow/x"):
        method, path = gone.split()
        answer = requests.request(method, url(server, path), timeout=30)
        assert answer.status_code in (404, 405), (gone, answer.status_code)


def test_unknown_names_are_404_and_start_nothing(server):
    parent = psutil.Process(server.process.pid)
    before = {p.pid for p in parent.children(recursive=True)}
    for path in ("/train/nope", "/scoring/nope", "/batch/infer/nope", "/activelearning/nope", "/infer/nope"):
        answer = requests.post(url(server, path), timeout=30)
        assert answer.status_code == 404 and "nope" in answer.text, (path, answer.status_code, answer.text)
    time.sleep(1)
    assert {p.pid for p in parent.children(recursive=True)} <= before


# ---- paths --------------------------------------------------------------------------------------

def test_a_session_archive_is_never_unpacked(server, area):
    before = files_outside(area)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name in ("../../escaped.txt", "/tmp/absolute.txt", "evil/meta.info"):
            data = json.dumps({"image": "/etc/passwd"}).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    answer = requests.put(url(server, "/session/"), params={"uncompress": "true"},
                          files={"files": ("x.tar.gz", archive.getvalue())}, timeout=30)
    assert answer.status_code == 400 and "uncompress" in answer.text
    assert files_outside(area) == before and not Path("/tmp/absolute.txt").exists()
    assert requests.get(url(server, "/session/evil"), params={"image": "true"}, timeout=30).status_code == 404
    # a plain image makes a session whose image is served from the session store, without paths
    image = (area / "studies" / "ct_phantom_1.nii.gz").read_bytes()
    made = requests.put(url(server, "/session/"), files={"files": ("vol.nii.gz", image)}, timeout=60)
    assert made.status_code == 200, made.text
    assert str(area) not in made.text and "/" not in json.dumps(made.json()["session_info"])
    session = made.json()["session_id"]
    got = requests.get(url(server, f"/session/{session}"), params={"image": "true"}, timeout=30)
    assert got.status_code == 200 and got.content == image
    assert requests.put(url(server, "/session/"), files={"files": ("x.nii.gz", b"not an image")},
                        timeout=30).status_code == 422


def test_links_out_of_the_studies_folder_are_refused(server, area):
    secret = area / "outside" / "secret.nii.gz"
    for path, params in (("/datastore/image", {"image": "linked"}), ("/medsam2/viewer/volume", {"image": "linked"}),
                         ("/datastore/image/info", {"image": "linked"})):
        answer = requests.get(url(server, path), params=params, timeout=30)
        assert answer.status_code in (403, 404), (path, answer.status_code, answer.text[:200])
    answer = requests.delete(url(server, "/datastore/image"), params={"id": "linked"}, timeout=30)
    assert answer.status_code in (403, 404), answer.text
    assert secret.exists()
    # a final label that is a link out: not served, not deleted
    label_link = area / "studies" / "labels" / "final" / "mr_phantom_1.nii.gz"
    label_link.symlink_to(area / "outside" / "secret_label.nii.gz")
    try:
        requests.get(url(server, "/datastore/"), params={"output": "all"}, timeout=30)  # the datastore rescans
        for method, params in (("GET", {"label": "mr_phantom_1", "tag": "final"}),
                               ("DELETE", {"id": "mr_phantom_1", "tag": "final"})):
            answer = requests.request(method, url(server, "/datastore/label"), params=params, timeout=30)
            assert answer.status_code in (403, 404), (method, answer.status_code, answer.text)
        assert (area / "outside" / "secret_label.nii.gz").exists()
    finally:
        label_link.unlink()


def test_no_answer_carries_the_servers_paths(server, area):
    for path, params in (("/datastore/image/info", {"image": "ct_phantom_0"}),
                         ("/datastore/label/info", {"label": "ct_phantom_0", "tag": "final"}),
                         ("/datastore/", {"output": "train"}), ("/datastore/", {"output": "all"})):
        answer = requests.get(url(server, path), params=params, timeout=30)
        assert answer.status_code == 200 and str(area) not in answer.text, (path, answer.text[:300])
    sample = requests.post(url(server, "/activelearning/random"), timeout=30)
    assert sample.status_code == 200 and str(area) not in sample.text and sample.json()["id"]


def test_an_image_id_never_reads_the_servers_own_files(server, area):
    """An image uploaded as README.md is the datastore's file, never the working folder's README."""
    array = np.zeros((16, 16, 6), np.int16)
    array[5:10, 5:10, 2:4] = 300
    added = requests.put(url(server, "/datastore/image"), params={"image": "README.md"},
                         files={"file": ("README.md.nii.gz", nii_gz(array))}, timeout=60)
    assert added.status_code == 200, added.text
    answer = requests.post(url(server, "/infer/medsam2_3d"), params={"image": "README.md", "output": "image"},
                           data={"params": json.dumps({"foreground": [[7, 7, 3]], "result_extension": ".nii"})},
                           timeout=180)
    assert answer.status_code == 200, answer.text[:300]
    assert nib.Nifti1Image.from_bytes(answer.content).shape == array.shape


# ---- labels -------------------------------------------------------------------------------------

def test_infer_never_writes_a_label(server, area):
    before = (area / "studies" / FINAL).read_bytes()
    for model in ("medsam2_2d", "medsam2_3d"):
        answer = requests.post(url(server, f"/infer/{model}"), params={"image": "ct_phantom_0"},
                               data={"params": json.dumps({"foreground": [[34, 36, 20]], "slice": 20,
                                                           "save_label": True, "label_tag": "final"})}, timeout=60)
        assert answer.status_code == 400 and "save_label" in answer.text, answer.text
    assert (area / "studies" / FINAL).read_bytes() == before


def test_bad_labels_are_refused_before_anything_is_written(server, area):
    shape, affine = final_shape_like(area)
    before = (area / "studies" / FINAL).read_bytes()
    temp_before = set((area / "tmp").iterdir())  # the server's own start-up files
    nan = np.zeros(shape, np.float32)
    nan[3, 3, 3] = np.nan
    inf = np.zeros(shape, np.float32)
    inf[3, 3, 3] = np.inf
    whole = nii_gz(np.random.default_rng(0).integers(0, 2, shape).astype(np.uint8), affine)
    assert len(whole) > 3 * 2248
    cases = {"NaN": (nii_gz(nan, affine), 422), "inf": (nii_gz(inf, affine), 422),
             "truncated gzip": (whole[:2248], 422)}
    # a small file declaring 2048 x 1024 x 1024 voxels: another grid than its image's
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 1024, 1024))
    header.set_data_dtype(np.uint8)
    cases["declares 2 GB"] = (gzip.compress(header.binaryblock + b"\0" * 4 + bytes(1 << 20)), 422)
    # a header declaring a small label, then 200 MB of zeros in the stream
    small = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)).to_bytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    cases["grows past its header"] = (compressor.compress(small + bytes(200 << 20)) + compressor.flush(), 422)
    # the image's own grid declared, then far more data than the grid holds
    on_grid = nib.Nifti1Image(np.zeros(shape, np.uint8), affine).to_bytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    cases["its grid, then 200 MB more"] = (compressor.compress(on_grid + bytes(200 << 20)) + compressor.flush(), 413)
    # a PNG or NRRD label of another grid
    cases["2D picture on a 3D image"] = (_png(np.zeros((8, 8), np.uint8)), 422)
    latencies = []
    for name, (content, status) in cases.items():
        filename = "label.png" if name.startswith("2D picture") else "label.nii.gz"
        answer = while_timing_info(server, latencies, lambda: put_label(server, content, filename=filename))
        assert answer.status_code == status, (name, answer.status_code, answer.text[:300])
        assert set((area / "tmp").iterdir()) == temp_before, f"{name}: the refused upload left a file behind"
    assert (area / "studies" / FINAL).read_bytes() == before
    print(f"bad labels: {len(cases)} refused; /info during them: max {max(latencies):.2f} s of {len(latencies)}")
    assert max(latencies) < 5, latencies
    assert set((area / "tmp").iterdir()) == temp_before, "a refused upload left its copy in the temp folder"


def _png(array) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _server_rss_mb(server) -> float:
    """Resident memory of the server process and its children, in MB."""
    import psutil

    root = psutil.Process(server.process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def test_a_label_that_declares_another_grid_is_refused_from_its_header(server, area):
    """2 MB of gzip declaring 2 GiB (2048 x 1024 x 1024), the zeros really there: refused before
    decompressing, with under 50 MB of growth (it used to decode 2 GiB first)."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 1024, 1024))
    header.set_data_dtype(np.uint8)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(header.binaryblock + b"\0" * 4)]
    zeros = bytes(64 << 20)
    for _ in range(32):  # 2 GiB of zeros
        parts.append(compressor.compress(zeros))
    bomb = b"".join(parts) + compressor.flush()
    assert len(bomb) < 3 << 20
    temp_before = set((area / "tmp").iterdir())
    peak = [before := _server_rss_mb(server)]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak.append(_server_rss_mb(server))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answer = put_label(server, bomb)
    finally:
        done.set()
        watcher.join()
    assert answer.status_code == 422 and "grid" in answer.json()["detail"], answer.text[:300]
    growth = max(peak) - before
    print(f"header bomb: refused, server grew by {growth:.1f} MB")
    assert growth < 50, f"the server grew by {growth:.0f} MB refusing a header bomb"
    assert set((area / "tmp").iterdir()) == temp_before


def test_refused_uploads_of_every_kind_leave_no_temporary_file(server, area):
    temp_before = set((area / "tmp").iterdir())
    shape, affine = final_shape_like(area)
    noise = nii_gz(np.random.default_rng(1).integers(-1000, 1000, shape).astype(np.int16), affine)
    attempts = {
        "image of an unknown type": lambda: requests.put(url(server, "/datastore/image"), params={"image": "x1"},
                                                         files={"file": ("x.exe", b"MZ" * 600_000)}, timeout=60),
        "truncated image": lambda: requests.put(url(server, "/datastore/image"), params={"image": "x2"},
                                                files={"file": ("x.nii.gz", noise[:len(noise) // 2])}, timeout=60),
        "session of a non-image": lambda: requests.put(url(server, "/session/"),
                                                       files={"files": ("notes.nii", b"not an image" * 200_000)},
                                                       timeout=60),
        "infer with a bad uploaded label": lambda: requests.post(
            url(server, "/infer/medsam2_3d"), params={"image": "ct_phantom_0"},
            data={"params": json.dumps({"foreground": [[34, 36, 20]], "label_tag": "final"})},
            files={"label": ("l.nii.gz", b"\x1f\x8b" + b"x" * 2_000_000)}, timeout=60),
    }
    for name, attempt in attempts.items():
        answer = attempt()
        assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text[:300])
        assert set((area / "tmp").iterdir()) == temp_before, f"{name}: a file was left in the temporary folder"
        if name == "image of an unknown type":  # the client's type, not the server's temporary file
            assert answer.status_code == 415 and "'.exe'" in answer.text and "tmp" not in answer.text, answer.text
    # and an accepted label: its temporary copies go once the answer is sent
    current = requests.get(url(server, "/datastore/label/info"), params={"label": "ct_phantom_0", "tag": "final"},
                           timeout=30).json().get("version")
    saved = put_label(server, nii_gz(np.zeros(shape, np.uint8), affine), {"replaces": current})
    assert saved.status_code == 200, saved.text
    deadline = time.monotonic() + 10
    while set((area / "tmp").iterdir()) != temp_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set((area / "tmp").iterdir()) == temp_before, "an accepted upload left a file in the temporary folder"


def test_a_stale_save_is_refused_and_history_restores(server, area):
    shape, affine = final_shape_like(area)
    current = requests.get(url(server, "/datastore/label/info"), params={"label": "ct_phantom_0", "tag": "final"},
                           timeout=30).json().get("version")
    first = np.zeros(shape, np.uint8)
    first[10:20, 10:20, 5:8] = 1
    saved = put_label(server, nii_gz(first, affine), {"replaces": current})
    assert saved.status_code == 200, saved.text
    mine = saved.json()["saved"]["version"]
    second = first.copy()
    second[30:35, 30:35, 5:8] = 2
    stale = put_label(server, nii_gz(second, affine), {"replaces": current})  # read before the first save
    assert stale.status_code == 409 and "changed since" in stale.text
    assert np.array_equal(np.asarray(nib.load(area / "studies" / FINAL).dataobj), first)
    again = put_label(server, nii_gz(second, affine), {"replaces": mine})
    assert again.status_code == 200 and again.json()["replaced"]["version"] == mine

    history = requests.get(url(server, "/medsam2/labels/history"), params={"image": "ct_phantom_0"}, timeout=30)
    entries = history.json()["entries"]
    assert history.status_code == 200 and entries
    restored = requests.post(url(server, "/medsam2/labels/restore"),
                             params={"image": "ct_phantom_0", "entry": entries[-1]}, timeout=60)
    assert restored.status_code == 200, restored.text
    assert np.array_equal(np.asarray(nib.load(area / "studies" / FINAL).dataobj), first)
    assert requests.post(url(server, "/medsam2/labels/restore"), params={"image": "ct_phantom_0", "entry": "../x"},
                         timeout=30).status_code == 404


# ---- availability -------------------------------------------------------------------------------

def test_concurrent_2d_requests_on_one_study(server):
    answers = []

    def one(n):
        answers.append(requests.post(url(server, "/infer/medsam2_2d"), params={"image": "ct_phantom_2"},
                                     data={"params": json.dumps({"foreground": [[30 + n, 30, 20]], "slice": 20,
                                                                 "client_id": f"c{n}"})}, timeout=300))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text[:200] for a in answers]


def test_one_task_at_a_time_and_never_on_the_event_loop(server):
    first = requests.post(url(server, "/train/medsam2_finetune"), json={"max_epochs": 1}, timeout=60)
    time.sleep(0.1)
    second = requests.post(url(server, "/train/medsam2_finetune"), json={"max_epochs": 1}, timeout=60)
    try:
        assert first.status_code == 200, first.text
        assert second.status_code == 409 and "already running" in second.text, second.text
    finally:
        requests.delete(url(server, "/train/"), timeout=60)
    latencies = []  # a scoring run on the request (one study: a DELETE /scoring/ stops only runs off it)
    scored = while_timing_info(server, latencies, lambda: requests.post(
        url(server, "/scoring/medsam2_uncertainty"), params={"run_sync": "true"}, json={"max_studies": 1}, timeout=300))
    assert scored.status_code == 200 and scored.json()["scored"] <= 1, scored.text
    print(f"/info while scoring ran synchronously: max {max(latencies):.2f} s of {len(latencies)}")
    assert latencies and max(latencies) < 3, latencies


# ---- a probe across the whole inventory ---------------------------------------------------------

NAMES = st.one_of(st.sampled_from(["ct_phantom_0", "nope", "../../etc/passwd", "README.md", "", "linked", "%00",
                                   "a" * 300, "medsam2_3d", "random"]), st.text(max_size=30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_route_answers_a_bad_request_with_a_server_error(server, area, data):
    from lib.http.inventory import INVENTORY

    route = data.draw(st.sampled_from([r for r in INVENTORY if r.method not in ("MOUNT",) and r.role != "login"
                                       and r.path not in ("/reload",)]))
    path = route.path
    for name in ("{model}", "{strategy}", "{method}", "{session_id}", "{path:path}"):
        if name in path:
            path = path.replace(name, requests.utils.quote(data.draw(NAMES), safe="") or "x")
    params = {key: data.draw(NAMES) for key in data.draw(st.lists(
        st.sampled_from(["image", "label", "tag", "id", "output", "entry", "session_id", "run_sync"]), max_size=3))}
    body = {"params": data.draw(st.sampled_from(["{}", "[]", "nan", "{\"a\": 1}", "\"x\"", "{bad"]))}
    with requests.request(route.method, url(server, path), params=params, data=body, timeout=120,
                          stream=True) as answer:
        # a stream of events (/medsam2/events) never ends: its status and headers are the answer
        streaming = answer.headers.get("content-type", "").startswith("text/event-stream")
        text = "" if streaming else answer.text
    assert answer.status_code < 500, (route.method, path, params, body, answer.status_code, text[:300])
    assert str(area) not in text


def test_a_reload_keeps_the_inventory(server):
    """``POST /reload`` (here from this machine, authentication off) builds the app again; the
    routes stay the inventory's and their rules still hold."""
    assert requests.post(url(server, "/reload"), timeout=300).status_code == 200
    assert requests.get(url(server, "/info/"), timeout=300).status_code == 200
    answer = requests.put(url(server, "/session/"), params={"uncompress": "true"},
                          files={"files": ("x.tar.gz", b"x")}, timeout=30)
    assert answer.status_code == 400
    assert requests.get(url(server, "/datastore/dataset"), timeout=30).status_code == 404
    assert requests.post(url(server, "/train/nope"), timeout=30).status_code == 404
