"""The app's own record of its fine-tunes: one entry per published fine-tune, in the model folder.

Each entry says how many studies were labelled, how the new weights scored on the held-out
studies (SAM 2 from a box on the largest slice) and, on the same studies and boxes, what two
classical baselines score (fill the box on the structure's slices; Otsu inside the box), so
a team sees whether labelling more pays off. The file lives in the model folder, which no
route writes; the page's chart and ``python -m medsam2_eval.learning_curve`` read only it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from medsam2_engine.atomic_files import atomic_write_text
from medsam2_engine.mask_measures import box_on_largest_slice, dice
from medsam2_engine.training.validation import volume_of

from medsam2_eval.learning_curve import HISTORY_NAME  # the report reads what this writes


def read_history(model_dir) -> list:
    try:
        entries = json.loads((Path(model_dir) / HISTORY_NAME).read_text())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def next_number(model_dir) -> int:
    return max([int(e.get("number", 0)) for e in read_history(model_dir)] + [0]) + 1


def classical_baselines(cases: list) -> dict:
    """Mean Dice of fill-the-box and Otsu-in-the-box over the held-out structures (3D grey studies)."""
    from medsam2_eval.baselines import fill_box_baseline, otsu_box_baseline

    scores = {"fill_box": [], "otsu_box": []}
    for case in cases:
        volume = volume_of(case)
        if volume is None:
            continue
        for value in case.values:
            reference = case.mask_of(value)
            reference = reference if reference.ndim == 3 else reference[:, :, None]
            box = box_on_largest_slice(reference)
            scores["fill_box"].append(dice(fill_box_baseline(reference, box), reference))
            image = volume.array if volume.array.ndim == 3 else volume.array[:, :, None]
            scores["otsu_box"].append(dice(otsu_box_baseline(image, box), reference))
    return {name: round(float(np.mean(v)), 4) if v else None for name, v in scores.items()}


def record(model_dir, number: int, summary: dict, labelled: int, val_cases: list) -> dict:
    """Append the entry of a fine-tune that published weights; returns it."""
    entry = {
        "number": number, "ts": time.time(), "labelled_studies": labelled,
        "train_studies": summary.get("train_cases"), "held_out_studies": summary.get("val_cases"),
        "metric": summary.get("best_metric_name"), "value": summary.get("best_metric"),
        "val_dice": summary.get("best_metric") if summary.get("best_metric_name") == "val_mean_dice" else None,
        "start_dice": summary.get("baseline_dice"), "epochs": summary.get("epoch"),
        "baselines": classical_baselines(val_cases),
    }
    entries = read_history(model_dir) + [entry]
    atomic_write_text(Path(model_dir) / HISTORY_NAME, json.dumps(entries, indent=1))
    return entry
