"""The server's and its fine-tune's memory while a team works: N users clicking at once during
a fine-tune, against the server's stated limit (``--conf memory_limit_mb``).

    .venv/bin/python scripts/benchmark_team_memory.py [--users 30] [--clicks 2] [--model small|medsam2]
        [--limit-mb 6000] [--out FILE]

A server on phantom studies (two of them with saved final labels), a fine-tune started
through ``POST /train/medsam2_finetune``, and ``--users`` users each clicking on a study of
its own (a first click, then corrections) while it runs. The resident memory of the server
and of its children (the fine-tune's process) is sampled every 0.2 s; the report gives the
peaks beside the limit, the sessions evicted to stay within it, and any failed click.
``--model small``: the tests' tiny SAM 2; ``medsam2``: MedSAM2's network with random weights
(timing and memory only).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark_replicas  # noqa: E402
from benchmark_replicas import SHAPE, _cores, cpu_name, run_load, write_studies  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

FAST_FINETUNE = {"finetune_epochs": 2, "finetune_steps_per_epoch": 4, "finetune_clip_length": 3,
                 "finetune_max_objects": 1, "finetune_baseline_validation": "false"}


class Sampler:
    def __init__(self, pid: int, every_s: float = 0.2):
        self.root = psutil.Process(pid)
        self.peak = {"family_mb": 0.0, "server_mb": 0.0, "children_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                server = self.root.memory_info().rss / 2**20
                children = 0.0
                for child in self.root.children(recursive=True):
                    try:
                        children += child.memory_info().rss / 2**20
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            for key, value in (("family_mb", server + children), ("server_mb", server), ("children_mb", children)):
                self.peak[key] = max(self.peak[key], round(value))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return self.peak


def save_final_label(url: str, study: str, folder: Path) -> None:
    image = nib.load(str(folder / f"{study}.nii.gz"))
    label = np.zeros(image.shape, np.uint8)
    label[SHAPE[0] // 2 - 8:SHAPE[0] // 2 + 8, SHAPE[1] // 2 - 8:SHAPE[1] // 2 + 8, 8:16] = 1
    buffer = io.BytesIO()
    buffer.write(nib.Nifti1Image(label, image.affine).to_bytes())
    answer = requests.put(f"{url}/datastore/label", params={"image": study, "tag": "final"},
                          files={"label": ("label.nii", buffer.getvalue())}, timeout=120)
    answer.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--clicks", type=int, default=2)
    parser.add_argument("--model", choices=("small", "medsam2"), default="small")
    parser.add_argument("--limit-mb", type=float, default=6000.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    benchmark_replicas.CLICK_TIMEOUT_S = 3600  # 30 first clicks of MedSAM2's network share 2 cores
    work = Path(tempfile.mkdtemp(prefix="bench_team_memory_"))
    studies = write_studies(work / "studies", args.users + 2)
    if args.model == "small":
        from tests.support.small_model import write_small_checkpoint, write_small_config

        model_conf = {"model_config": write_small_config(work / "small.yaml"),
                      "checkpoint": write_small_checkpoint(work / "small.pt")}
    else:
        model_conf = {"model": "medsam2", "checkpoint": "random", "download": "false"}
    conf = {**model_conf, **FAST_FINETUNE, "labels": "lesion", "encode_ahead": "false", "max_sessions": args.users,
            "memory_limit_mb": args.limit_mb}
    server = RunningServer(work / "studies", conf, work / "server.log", timeout=900)
    try:
        for study in studies[-2:]:
            save_final_label(server.url, study, work / "studies")
        idle = psutil.Process(server.process.pid).memory_info().rss / 2**20
        sampler = Sampler(server.process.pid)
        began = time.perf_counter()
        started = requests.post(f"{server.url}/train/medsam2_finetune", json={}, timeout=60)
        load = run_load(server.url, studies[:args.users], args.clicks)
        while requests.get(f"{server.url}/train/", params={"check_if_running": "true"}, timeout=30).status_code == 200:
            time.sleep(1)
        peak = sampler.stop()
        info = requests.get(f"{server.url}/info/", timeout=30).json()["medsam2"]["memory"]
        report = {"machine": f"{cpu_name()}, {_cores()} cores", "model": args.model, "users": args.users,
                  "clicks_per_user": args.clicks, "limit_mb": args.limit_mb, "server_idle_mb": round(idle),
                  "fine_tune_started": started.status_code, "wall_s": round(time.perf_counter() - began, 1),
                  "peak": peak, "within_limit": peak["family_mb"] <= args.limit_mb,
                  "evictions": info.get("evictions"), "waited_for_memory": info.get("waited_for_memory"),
                  "memory_now": info,
                  "clicks": {k: load[k] for k in ("requests", "first_click_p50_s", "correction_p50_s",
                                                  "correction_p95_s")}, "errors": load["errors"]}
        text = json.dumps(report, indent=1)
        print(text)
        if args.out:
            args.out.write_text(text)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
