"""8 clients at once on a real server (loopback, the small untrained model: plumbing only).

Each client runs a fixed script (3D clicks and a correction, 2D clicks, or a 3D click then a
label save); its masks under load must equal the masks it gets when it runs alone, with no
error, and ``/info`` must keep answering within a second while propagations run.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import ROOT
from tests.support.server import RunningServer

CLIENTS = 8


@pytest.fixture(scope="module")
def server(small_model_files, tmp_path_factory):
    studies = tmp_path_factory.mktemp("load_studies")
    subprocess.run([sys.executable, str(ROOT / "sample-data" / "make_sample_data.py"), str(studies)], check=True)
    config, checkpoint = small_model_files
    running = RunningServer(studies, {"model_config": config, "checkpoint": checkpoint,
                                      "labels": "liver,spine,lesion,tumour"},
                            tmp_path_factory.mktemp("load_logs") / "server.log")
    running.studies = studies
    yield running
    running.stop()


def _mask(response) -> np.ndarray:
    data = response.content
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:4] == b"\x89PNG":
        return np.asarray(Image.open(io.BytesIO(data)))
    return np.asarray(nib.Nifti1Image.from_bytes(data).dataobj)


def _infer(url, model, image, params):
    response = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "image"},
                             data={"params": json.dumps(params)}, timeout=300)
    return response


def script(n: int, round_name: str = "alone"):
    """Client ``n``'s requests: (kind, model or None, image, params); its own sessions per round."""
    who = {"client_id": f"{round_name}-{n}"}
    if n < 4:  # 3D click, then a correction on another slice
        image = ["ct_phantom_0", "ct_phantom_1", "ct_phantom_2", "mr_phantom_1"][n]
        label = "tumour" if image.startswith("mr") else "liver"
        first = {**who, "label": label, "foreground": [[34 + n, 36, 16]], "result_extension": ".nii"}
        return [("infer", "medsam2_3d", image, first),
                ("infer", "medsam2_3d", image, {**first, "background": [[60, 20, 20]]})]
    if n < 6:  # 2D clicks on a photograph
        image = f"skin_lesion_{n - 4}"
        first = {**who, "label": "lesion", "foreground": [[80, 64]], "result_extension": ".png"}
        return [("infer", "medsam2_2d", image, first),
                ("infer", "medsam2_2d", image, {**first, "foreground": [[80, 64], [70, 60]]})]
    image = ["mr_phantom_0", "ct_phantom_2"][n - 6]  # a 3D click, then the mask saved as a final label
    params = {**who, "label": "tumour" if image.startswith("mr") else "spine",
              "foreground": [[40, 36, 16]], "result_extension": ".nii"}
    return [("infer", "medsam2_3d", image, params), ("save", None, image, None)]


def run_client(url: str, n: int, results: dict, errors: list, round_name: str) -> None:
    masks = []
    try:
        for kind, model, image, params in script(n, round_name):
            if kind == "infer":
                response = _infer(url, model, image, params)
                if response.status_code != 200:
                    errors.append((n, image, response.status_code, response.text[:300]))
                    return
                masks.append(_mask(response))
            else:
                path_affine = nib.load(str(results["studies"] / f"{image}.nii.gz")).affine
                label = nib.Nifti1Image(masks[-1].astype(np.uint8), path_affine)
                response = requests.put(f"{url}/datastore/label", params={"image": image, "tag": "final"},
                                        files={"label": ("label.nii.gz", io.BytesIO(gzip.compress(label.to_bytes())))},
                                        data={"params": "{}"}, timeout=120)
                if response.status_code != 200:
                    errors.append((n, image, response.status_code, response.text[:300]))
                    return
    except Exception as err:  # noqa: BLE001 - every failure is counted, none may happen
        errors.append((n, "exception", repr(err)))
    results[n] = masks


def poll_info(url: str, stop: threading.Event, latencies: list, errors: list) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = requests.get(f"{url}/info/", timeout=30)
            if response.status_code != 200:
                errors.append(("info", response.status_code))
        except requests.RequestException as err:
            errors.append(("info", repr(err)))
        latencies.append(time.perf_counter() - started)
        stop.wait(0.1)


def test_eight_clients_get_their_own_masks_and_info_stays_fast(server):
    shared = {"studies": server.studies}
    alone, errors = dict(shared), []
    for n in range(CLIENTS):  # each client's reference: the same script with nobody else on the server
        run_client(server.url, n, alone, errors, "alone")
    assert not errors, errors

    together, latencies, stop = dict(shared), [], threading.Event()
    poller = threading.Thread(target=poll_info, args=(server.url, stop, latencies, errors))
    poller.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=run_client, args=(server.url, n, together, errors, "together")) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    stop.set()
    poller.join()

    requests_made = sum(len(script(n)) for n in range(CLIENTS)) * 2 + len(latencies)
    p50, p95, worst = np.percentile(latencies, 50), np.percentile(latencies, 95), max(latencies)
    print(f"\nload: {CLIENTS} clients, {requests_made} requests ({len(latencies)} /info), {len(errors)} errors, "
          f"concurrent round {elapsed:.1f} s; /info latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {worst * 1000:.0f} ms (small untrained model, CPU)")
    assert not errors, errors
    print("mask voxels alone:", {n: [int((m > 0).sum()) for m in alone[n]] for n in range(CLIENTS)})
    assert all(m.any() for n in range(CLIENTS) for m in alone[n]), "empty masks would make the comparison vacuous"
    assert all(not np.array_equal(*alone[n]) for n in range(6)), "each correction changes the client's mask"
    assert len(latencies) >= 5
    assert worst < 1.0, f"/info took {worst:.2f} s under load"
    for n in range(CLIENTS):
        assert len(together[n]) == len(alone[n])
        for got, expected in zip(together[n], alone[n]):
            assert np.array_equal(got, expected), f"client {n}: mask under load differs from its mask alone"
    for n in (6, 7):  # the saved final labels are the clients' own masks
        image = script(n)[-1][2]
        saved = np.asarray(nib.load(str(server.studies / "labels" / "final" / f"{image}.nii.gz")).dataobj)
        assert np.array_equal(saved, together[n][-1])


def test_two_anonymous_viewers_on_one_image_never_see_each_others_prompts(server):
    """As OHIF sends: no client_id, every point resent; A and B interleave on one image from one address."""
    def ask(points, background=()):
        params = {"label": "liver", "foreground": points, "background": list(background), "result_extension": ".nii"}
        response = _infer(server.url, "medsam2_3d", "ct_phantom_1", params)
        assert response.status_code == 200, response.text
        return _mask(response)

    a_points, b_points = [[34, 36, 20]], [[60, 30, 22]]
    a_first = ask(a_points)
    ask(b_points)  # B on the same image, same address, no client_id
    a_again = ask(a_points + [[30, 40, 20]])  # A's correction (OHIF resends A's first point)
    ask(b_points + [[62, 28, 22]], background=[[40, 40, 20]])
    a_last = ask(a_points + [[30, 40, 20]], background=[[50, 20, 18]])

    # the same sequence of A's requests with nobody else: a client of its own
    def alone(points, background=()):
        params = {"label": "liver", "foreground": points, "background": list(background), "client_id": "solo",
                  "result_extension": ".nii"}
        return _mask(_infer(server.url, "medsam2_3d", "ct_phantom_1", params))

    assert np.array_equal(a_first, alone(a_points))
    assert np.array_equal(a_again, alone(a_points + [[30, 40, 20]]))
    assert np.array_equal(a_last, alone(a_points + [[30, 40, 20]], background=[[50, 20, 18]]))
