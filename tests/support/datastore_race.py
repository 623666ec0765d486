"""Several processes saving labels into one studies folder at once, as replicas do.

``race(folder, ...)`` writes ``studies`` small images, starts ``processes`` processes that
each open the datastore and save a final label for each of their own studies, all at the
same moment, and then counts the label records a fresh datastore finds. Used by
``tests/test_shared_datastore.py`` and ``scripts/benchmark_replicas.py --datastore-only``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

APP_DIR = Path(__file__).resolve().parents[2] / "apps" / "medsam2"
SHAPE = (16, 16, 4)


def write_studies(folder: Path, count: int) -> list:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for n in range(count):
        image = np.full(SHAPE, n, dtype=np.int16)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / f"study_{n:03d}.nii.gz"))
        ids.append(f"study_{n:03d}")
    return ids


def _open(folder: str, kind: str):
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    if kind == "monai":  # MONAI Label's own: records in memory, the whole JSON written by each process
        from monailabel.datastore.local import LocalDatastore

        return LocalDatastore(folder, extensions=("*.nii.gz",), auto_reload=False)
    from lib.datastores.local import SafeLocalDatastore

    return SafeLocalDatastore(folder, max_upload_bytes=1 << 30, extensions=("*.nii.gz",), auto_reload=False)


def _label_file(folder: str, image_id: str, scratch: str) -> str:
    import nibabel as nib

    image = nib.load(os.path.join(folder, image_id + ".nii.gz"))
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:8, 4:8, 1:3] = 1
    path = os.path.join(scratch, f"{image_id}_label.nii.gz")
    nib.save(nib.Nifti1Image(label, image.affine), path)
    return path


def _worker(folder: str, kind: str, image_ids: list, barrier, scratch: str, out) -> None:
    store = _open(folder, kind)
    files = {i: _label_file(folder, i, scratch) for i in image_ids}
    barrier.wait(timeout=240)  # every process has opened its datastore: the saves start together
    seconds = []
    for image_id in image_ids:
        began = time.perf_counter()
        store.save_label(image_id, files[image_id], "final", {"by": os.getpid()})
        seconds.append(time.perf_counter() - began)
    out.put(seconds)


def race(folder: Path, processes: int = 2, per_process: int = 10, kind: str = "safe") -> dict:
    """Records found after ``processes`` x ``per_process`` concurrent saves, and each save's seconds."""
    ids = write_studies(folder, processes * per_process)
    _open(str(folder), kind)  # the records file exists before the race, as on a running server
    scratch = folder.parent / f"{folder.name}_scratch"
    scratch.mkdir(exist_ok=True)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    barrier = context.Barrier(processes)
    workers = [context.Process(target=_worker, args=(str(folder), kind, ids[n::processes], barrier, str(scratch),
                                                     out)) for n in range(processes)]
    for worker in workers:
        worker.start()
    seconds = [s for _ in workers for s in out.get(timeout=300)]
    for worker in workers:
        worker.join(timeout=60)
    fresh = _open(str(folder), kind)
    recorded = [i for i in ids if fresh.get_label_by_image_id(i, "final")]
    with_info = [i for i in recorded if (fresh.get_label_info(i, "final") or {}).get("by")]
    return {"expected": len(ids), "recorded": len(recorded), "with_info": len(with_info),
            "save_s": sorted(seconds)}
