"""Scribbles against clicks: Dice after the same number of interactions, a simulated user.

    PYTHONPATH=apps/medsam2 python -m medsam2_eval.scribbles --data ../shared/data \\
        --checkpoint phantom.pt --interactions 3 --out reports/scribbles_vs_clicks.json

Both users start on the structure's largest slice and then correct the largest error region
(medsam2_eval.clicks): the **click** user clicks at its centre; the **scribbling** user draws
one stroke through it, along the region's longest axis on the slice of its centre, from 15%
to 85% of its extent (inside the region), which the app turns into points along the stroke
(medsam2_engine.drawn_prompts). Every interaction re-runs the 3D model with every prompt so far
(the app's default protocol). With phantom-trained or random weights the figures measure the
plumbing, not MedSAM2: say which weights a table came from.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsam2_engine.drawn_prompts import parse_strokes
from medsam2_engine.mask_measures import dice, largest_slice
from medsam2_engine.prompts import LabelPrompts

from .clicks import centre_click, correction_click

logger = logging.getLogger("medsam2_eval.scribbles")


def stroke_through(region: np.ndarray, k: int) -> list:
    """``[[i, j, k], [i, j, k]]``: a straight stroke along the longest axis of ``region`` on slice
    ``k``, from 15% to 85% of its extent, each end moved to the nearest voxel of the region."""
    plane = region[:, :, k]
    voxels = np.argwhere(plane).astype(float)
    centre = voxels.mean(axis=0)
    if len(voxels) < 3:
        return [[*centre.round().astype(int).tolist(), k]]
    _, _, axes = np.linalg.svd(voxels - centre, full_matrices=False)
    along = (voxels - centre) @ axes[0]
    ends = []
    for q in (0.15, 0.85):
        target = centre + np.quantile(along, q) * axes[0]
        nearest = voxels[int(np.argmin(np.linalg.norm(voxels - target, axis=1)))]
        ends.append([int(nearest[0]), int(nearest[1]), int(k)])
    return ends


def error_region(prediction: np.ndarray, reference: np.ndarray):
    """(region, positive) of the largest 3D error component (as correction_click picks it), or None."""
    click = correction_click(prediction, reference)
    if click is None:
        return None
    structure = ndimage.generate_binary_structure(3, 3)
    error = reference & ~prediction if click.false_negative else prediction & ~reference
    components, _ = ndimage.label(error, structure=structure)
    c = click.click
    return components == components[int(c.i), int(c.j), int(c.k)], click.false_negative, int(c.k)


def run_user(segmenter, volume, window, modality, reference: np.ndarray, kind: str, interactions: int,
             key: tuple) -> list:
    """Dice after each interaction of the ``kind`` ("click" or "scribble") user."""
    prompts = LabelPrompts()
    shape = reference.shape
    out = []
    prediction = None
    for step in range(interactions):
        if step == 0:
            k = largest_slice(reference)
            if kind == "click":
                prompts.clicks.append(centre_click(reference))
            else:
                prompts.clicks += parse_strokes([{"points": stroke_through(reference, k), "positive": True}], shape)
        else:
            found = error_region(prediction, reference)
            if found is None:
                out.append(out[-1])
                continue
            region, positive, k = found
            if kind == "click":
                prompts.clicks.append(correction_click(prediction, reference).click)
            else:
                prompts.clicks += parse_strokes([{"points": stroke_through(region, k), "positive": positive}], shape)
        result = segmenter.run(volume, {"l": prompts}, session_key=key, window=window, modality=modality)
        prediction = result.labels["l"].mask
        out.append(round(dice(prediction, reference), 4))
    return out


def baselines(image: np.ndarray, reference: np.ndarray) -> dict:
    """Classical baselines' Dice from the first interaction's box, beside the model's."""
    from .baselines import fill_box_baseline, otsu_box_baseline
    from .clicks import box_prompt

    box = box_prompt(reference)
    return {"fill_box": round(dice(fill_box_baseline(reference, box), reference), 4),
            "otsu_in_box": round(dice(otsu_box_baseline(image, box), reference), 4)}


def phantom_cases(count: int) -> list:
    """CT-like phantoms (an elliptic body, a spindle lesion on about a third of the slices)."""
    from medsam2_engine.phantoms import spindle_lesion
    from medsam2_engine.volume_io import Volume

    from .cases import Case, Structure

    cases = []
    for seed in range(count):
        array, lesion = spindle_lesion(40, 160 + 16 * seed, 0.35, seed=seed)
        volume = Volume(array, np.diag([0.8, 0.8, 2.0, 1.0]), "", declared_modality="CT")
        cases.append(Case(f"phantom{seed}", volume, [Structure("lesion", lesion)]))
    return cases


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--preset", default="medsam2")
    p.add_argument("--interactions", type=int, default=3)
    p.add_argument("--max-structures", type=int, default=1, help="largest structures per case")
    p.add_argument("--max-slices", type=int, default=160, help="skip cases with more slices (time)")
    p.add_argument("--phantoms", type=int, default=0,
                   help="also this many CT-like phantoms (where phantom-trained weights segment at all)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.volume_segmenter import VolumeSegmenter

    from .cases import find_cases, select_structures

    models = ModelSource(get_preset(args.preset), tempfile.mkdtemp(prefix="scribbles-eval-"),
                         checkpoint=args.checkpoint, device="cpu", cpu_runtime="auto")
    segmenter = VolumeSegmenter(models)
    rows, started = [], time.perf_counter()
    for case in phantom_cases(args.phantoms) + find_cases(args.data):
        if not case.volume.is_3d or case.volume.array.shape[2] > args.max_slices:
            continue
        for structure in select_structures(case, args.max_structures, 50):
            row = {"case": case.name, "structure": structure.name, "voxels": int(structure.mask.sum()),
                   "baselines": baselines(case.volume.array, structure.mask)}
            for kind in ("click", "scribble"):
                row[kind] = run_user(segmenter, case.volume, case.window, case.volume.declared_modality,
                                     structure.mask, kind, args.interactions, (kind, case.name, structure.name))
                segmenter.memory.clear()
            logger.info("%s / %s: clicks %s, scribbles %s", case.name, structure.name, row["click"], row["scribble"])
            rows.append(row)
    summary = {kind: [round(statistics.median(r[kind][n] for r in rows), 4) for n in range(args.interactions)]
               for kind in ("click", "scribble")} if rows else {}
    report = {"checkpoint": args.checkpoint, "interactions": args.interactions, "rows": rows,
              "median_dice_per_interaction": summary, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if rows else 2


if __name__ == "__main__":
    raise SystemExit(main())
