"""kill -9 of the server in the middle of a label save and of checkpoint publishing; and at the end,
a SIGTERM with two tabs' event streams open, which must stop it at once.

The kill is timed by watching the disk: it lands while the temporary file of the write
exists (the worst moment), and at spread-out delays after the request. After every kill
the label on disk is the old or the new one byte for byte, and after a restart the server
starts, has cleaned the leftovers, serves that label, and never reports training RUNNING.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
import torch

from tests.conftest import make_volume
from tests.support.server import RunningServer

SHAPE = (160, 160, 120)  # big enough that writing its label takes a few milliseconds to catch
FAULTS = {"label_kills": 0, "checkpoint_kills": 0, "labels_lost": 0}


def _studies(folder: Path) -> Path:
    (folder / "labels" / "final").mkdir(parents=True)
    affine = np.diag([0.9, 0.8, 2.0, 1.0])
    volume = make_volume(shape=SHAPE, seed=3)
    nib.save(nib.Nifti1Image(volume.array.astype(np.int16), affine), folder / "big.nii.gz")
    nib.save(nib.Nifti1Image((volume.array > 120).astype(np.uint8), affine), folder / "labels" / "final" / "big.nii")
    return folder


def _label_bytes(seed: int) -> bytes:
    image = nib.load(str(_label_bytes.studies / "big.nii.gz"))
    rng = np.random.default_rng(seed)
    label = (rng.random(SHAPE) < 0.3).astype(np.uint8)
    return nib.Nifti1Image(label, image.affine).to_bytes()  # uncompressed: a 3 MB write


def _save(url: str, content: bytes, answers: list) -> None:
    try:
        response = requests.put(f"{url}/datastore/label", params={"image": "big", "tag": "final"},
                                files={"label": ("big.nii", io.BytesIO(content))}, data={"params": "{}"},
                                timeout=120)
        answers.append(response.status_code)
    except requests.RequestException as err:
        answers.append(type(err).__name__)


def _kill_when(server: RunningServer, folder: Path, pattern: str, timeout: float, writer=None) -> bool:
    """kill -9 as soon as a file matching ``pattern`` appears in ``folder``; False if none did (or
    ``writer``, the thread whose request writes it, ended first: the write was too quick to see)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(folder.glob(pattern)):
            server.kill()
            return True
        if writer is not None and not writer.is_alive():
            return False
        time.sleep(0.0005)
    return False


@pytest.fixture
def conf(small_model_files):
    config, checkpoint = small_model_files
    return {"model_config": config, "checkpoint": checkpoint, "labels": "organ"}


def test_kill_during_label_saves_never_loses_a_label_and_sigterm_stops_at_once(tmp_path, conf):
    studies = _studies(tmp_path / "studies")
    _label_bytes.studies = studies
    final = studies / "labels" / "final"
    log = tmp_path / "server.log"
    server = RunningServer(studies, conf, log)
    started = time.perf_counter()
    first = _label_bytes(0)
    answers: list = []
    _save(server.url, first, answers)
    duration = time.perf_counter() - started
    assert answers == [200] and (final / "big.nii").read_bytes() == first

    previous = first
    # kill while the temporary file is being written, then at delays spread over a save
    for trial, delay in enumerate([None, None, 0.5 * duration]):
        for attempt in range(10):  # a busy machine may not look while the temporary file exists: save again
            new = _label_bytes(10 * trial + attempt + 1)
            answers = []
            thread = threading.Thread(target=_save, args=(server.url, new, answers))
            thread.start()
            if delay is not None:
                time.sleep(delay)
                server.kill()
                break
            if _kill_when(server, final, ".*.partial", timeout=60, writer=thread):
                break
            thread.join()
            assert answers == [200] and (final / "big.nii").read_bytes() == new  # saved whole, unseen
            previous = new
        else:
            raise AssertionError("the label write was never seen in ten saves")
        thread.join()
        FAULTS["label_kills"] += 1
        on_disk = (final / "big.nii").read_bytes()
        if on_disk not in (previous, new):
            FAULTS["labels_lost"] += 1
        assert on_disk in (previous, new), f"trial {trial}: the label is neither the old nor the new one"
        if answers == [200]:
            assert on_disk == new  # a save that was answered is on disk

        server = RunningServer(studies, conf, log)  # restart: leftovers cleaned, datastore readable
        assert not list(studies.rglob("*.partial")), "a temporary file survived the restart"
        served = requests.get(f"{server.url}/datastore/label", params={"label": "big", "tag": "final"}, timeout=30)
        assert served.status_code == 200 and served.content == on_disk
        previous = on_disk
    _sigterm_with_tabs_open(server)  # the last restarted server: told to stop, with two tabs open
    print(f"\nfaults: {FAULTS}")


def _hold_event_stream(url: str, opened: threading.Event, ended: list) -> None:
    """An open tab's event stream: read until the server ends it."""
    with requests.get(f"{url}/medsam2/events", stream=True, timeout=(10, 120)) as response:
        chunks = response.iter_content(chunk_size=None)
        next(chunks)
        opened.set()
        for _ in chunks:
            pass
    ended.append(time.monotonic())


def _sigterm_with_tabs_open(server: RunningServer) -> None:
    """uvicorn waits for open responses before it exits; the page's event stream is one that never
    finishes by itself. A restart must not wait for the tabs (nor end in a kill -9)."""
    ended: list = []
    streams = []
    for _ in range(2):
        opened = threading.Event()
        streams.append(threading.Thread(target=_hold_event_stream, args=(server.url, opened, ended), daemon=True))
        streams[-1].start()
        assert opened.wait(30), "the event stream did not open"
    asked = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=60)
    stopped = time.monotonic() - asked
    for stream in streams:
        stream.join(timeout=10)
    server.stop()
    assert server.process.returncode == -signal.SIGTERM  # it exited on the signal, after a clean shutdown
    assert len(ended) == 2 and stopped < 8, f"stopped after {stopped:.1f} s"


TRAIN_REQUEST = {"epochs": 3, "steps_per_epoch": 2, "clip_length": 3, "max_objects": 1, "correction_clicks": 1,
                 "baseline_validation": False, "lr": 1e-3, "val_fraction": 0, "log_every": 1}


def test_kill_while_publishing_a_checkpoint_keeps_the_served_one_whole(tmp_path, small_model_files):
    config, checkpoint = small_model_files
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    affine = np.diag([0.9, 0.8, 3.0, 1.0])
    for n in range(2):
        volume = make_volume(shape=(40, 32, 8), seed=n)
        nib.save(nib.Nifti1Image(volume.array.astype(np.int16), affine), studies / f"p{n}.nii.gz")
        nib.save(nib.Nifti1Image((volume.array > 120).astype(np.uint8), affine),
                 studies / "labels" / "final" / f"p{n}.nii.gz")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "small.yaml").write_text(Path(config).read_text())
    (model_dir / "small.pt").write_bytes(Path(checkpoint).read_bytes())
    served_before = model_dir / "finetuned.pt"
    served_before.write_bytes(Path(checkpoint).read_bytes())  # an earlier fine-tune, now served
    before = served_before.read_bytes()
    conf = {"model_config": model_dir / "small.yaml", "model_dir": model_dir, "labels": "organ"}
    log = tmp_path / "server.log"

    server = RunningServer(studies, conf, log)
    response = requests.post(f"{server.url}/train/medsam2_finetune", json=TRAIN_REQUEST, timeout=30)
    assert response.status_code == 200, response.text
    caught = _kill_when(server, model_dir, ".tmp-*.pt", timeout=400)
    if not caught:
        server.kill()
        pytest.fail(f"no checkpoint write was seen:\n{log.read_text()[-3000:]}")
    FAULTS["checkpoint_kills"] += 1
    stats = json.loads((model_dir / "train_stats.json").read_text())
    assert stats["status"] in ("LOADING", "RUNNING")  # what the killed process left behind

    # the served file is whole: the old one, or a complete new one
    current = served_before.read_bytes()
    payload = torch.load(io.BytesIO(current), weights_only=True)
    assert isinstance(payload["model"], dict) and payload["model"]
    assert current == before or "finetune" in payload

    server = RunningServer(studies, conf, log)
    try:
        assert not list(model_dir.glob(".tmp-*")), "a half-written checkpoint survived the restart"
        info = requests.get(f"{server.url}/info/", timeout=30).json()
        assert info["train_stats"]["medsam2_finetune"]["status"] == "INTERRUPTED"
        answer = requests.post(f"{server.url}/infer/medsam2_3d", params={"image": "p0", "output": "json"},
                               data={"params": json.dumps({"foreground": [[18, 16, 4]]})}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["checkpoint"] == str(served_before)
    finally:
        server.stop()
    print(f"\nfaults: {FAULTS}")



def test_a_killed_fine_tune_is_interrupted_even_as_a_zombie_or_when_its_pid_is_reused(tmp_path, small_model_files):
    """The server reports a fine-tune RUNNING only while the process that wrote its stats runs. A
    killed one whose parent died too stays a zombie until init reaps it (some container inits
    never do); after a restart its pid may be another process's. Both are the fine-tune ended."""
    import subprocess
    import sys

    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.model_source import ModelSource
    from lib.trainers.finetune import FineTuneTask, this_process, write_stats

    config, checkpoint = small_model_files
    task = FineTuneTask(ModelSource(preset_for_config_file(config), tmp_path, checkpoint=str(checkpoint)), ["organ"])

    def status(**process) -> str:
        write_stats(task.stats_path, {"status": "RUNNING", "epoch": 1, **process})
        return task.stats()["status"]

    assert status(**this_process()) == "RUNNING"
    assert status(pid=os.getpid()) == "RUNNING"  # a stats file from before the start time was recorded
    reused = this_process()
    reused["pid_started"] -= 3600  # the recorded process started an hour before this one: not it
    assert status(**reused) == "INTERRUPTED"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    try:
        assert status(pid=child.pid, pid_started=psutil.Process(child.pid).create_time()) == "INTERRUPTED"
    finally:
        child.wait()
    assert status(pid=child.pid) == "INTERRUPTED"  # reaped: gone
    assert "stopped before it finished" in task.stats()["error"]
