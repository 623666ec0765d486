"""Agreement of the CPU runtimes' 3D masks with PyTorch float32, on every real 3D scan with a
reference mask in a data folder (issue 14: Dice >= 0.999 for the default runtime).

    OMP_NUM_THREADS=2 PYTHONPATH=apps/medsam2 python scripts/runtime_agreement.py \
        --data ../shared/data --checkpoint /tmp/h5_phantom.pt --out agreement.json

Cases come from ``medsam2_eval.cases`` (2D images are skipped), each structure gets the
evaluation protocol's box (its largest slice) and the app's window for its modality. One
model and one ``VolumeSegmenter`` with the faithful default settings; each runtime is attached
once (``runtime.attach_cpu_runtime``) and runs every structure, on a fresh copy of
each image so no runtime finds another's encoded slices. Per structure: Dice and differing
voxels of each runtime against PyTorch float32, what ran each stage (``result.run.runtimes``),
and PyTorch's Dice against the reference mask beside two classical baselines. The reference
Dice measures nothing about MedSAM2 unless real MedSAM2 weights are loaded: with a
phantom-trained checkpoint it is plumbing, not accuracy.

Exit 1 when ``openvino`` (float32, the app's default on CPU) is below ``--bound`` on any
measured structure; ``openvino_int8`` is an option and only reported. Exit 2 when a runtime
could not be attached or nothing was measured with ``openvino``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("runtime_agreement")
BOUND_RUNTIME = "openvino"  # the default CPU runtime, held to the bound
REFERENCE_NOTE = "reference Dice with the weights given: with phantom-trained weights, not an accuracy figure"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    p.add_argument("--checkpoint", default="/tmp/h5_phantom.pt")
    p.add_argument("--preset", default="medsam2")
    p.add_argument("--runtimes", nargs="+", default=["openvino", "openvino_bf16", "openvino_int8"],
                   help="runtimes compared with PyTorch float32 (torch always runs first)")
    p.add_argument("--max-structures", type=int, default=2, help="largest structures per case (0: all)")
    p.add_argument("--min-voxels", type=int, default=50)
    p.add_argument("--cases", default=None, help="regular expression: only cases whose name matches")
    p.add_argument("--bound", type=float, default=0.999)
    p.add_argument("--threads", type=int, default=2, help="torch threads (OpenVINO takes the same)")
    p.add_argument("--out", default=None, help="JSON file for the rows and summary")
    p.add_argument("--bf16-heads", action="store_true",
                   help="also run the mask decoder and memory encoder at bf16 under openvino_bf16 (not the default)")
    return p.parse_args(argv)


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    from medsam2_engine.mask_measures import dice

    return {"dice": round(dice(other, reference), 6), "voxels_differ": int((reference != other).sum())}


def summarise(rows: list, runtimes: list, bound: float) -> dict:
    """Per runtime: structures measured, min and median Dice, the structures below ``bound``."""
    summary = {}
    for name in runtimes:
        values = [(r["case"], r["structure"], r[name]["dice"]) for r in rows if name in r]
        dices = [d for _, _, d in values]
        summary[name] = {"measured": len(dices), "min": min(dices) if dices else None,
                         "median": statistics.median(dices) if dices else None,
                         "below_bound": [f"{c} / {s}: {d}" for c, s, d in values if d < bound]}
    return summary


def exit_code(summary: dict, unavailable: dict) -> int:
    """2: a runtime missing or nothing measured; 1: the default runtime below the bound; else 0."""
    if unavailable or not any(s["measured"] for s in summary.values()):
        return 2
    bounded = summary.get(BOUND_RUNTIME)
    if bounded is None or not bounded["measured"]:
        return 2
    return 1 if bounded["below_bound"] else 0


def markdown(rows: list, summary: dict, runtimes: list) -> str:
    head = ["case", "structure", "voxels (ref / torch)", *[f"{n} Dice (voxels differ)" for n in runtimes],
            "torch vs ref*", "fill box*", "Otsu in box*"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["case"], r["structure"], f"{r['reference_voxels']} / {r['torch_voxels']}",
                 *[f"{r[n]['dice']} ({r[n]['voxels_differ']})" if n in r else "-" for n in runtimes],
                 *[str(r["reference_dice"][k]) for k in ("torch", "fill_box", "otsu_in_box")]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"\\* {REFERENCE_NOTE}; fill box: the box filled on every slice the reference spans; "
                 "Otsu in box: medsam2_eval.baselines.")
    for name, s in summary.items():
        lines.append(f"- {name}: {s['measured']} structures, Dice min {s['min']}, median {s['median']}, "
                     f"below bound: {', '.join(s['below_bound']) or 'none'}")
    return "\n".join(lines)


def run_runtime(segmenter, work: list, runtime: str) -> dict:
    """``{(case, structure): (mask, what ran each stage)}`` of ``runtime`` (attached already) on every structure."""
    from medsam2_engine.prompts import LabelPrompts

    out = {}
    for number, (case, structures, boxes) in enumerate(work, 1):
        fresh = dataclasses.replace(case.volume, array=case.volume.array.copy())  # its own encoded slices
        for structure, box in zip(structures, boxes):
            started = time.perf_counter()
            result = segmenter.run(fresh, {"l": LabelPrompts(boxes=[box])}, session_key=(runtime, case.name, structure.name),
                                   window=case.window, modality=case.volume.declared_modality)
            out[case.name, structure.name] = (result.labels["l"].mask, result.run.runtimes)
            logger.info("%s [%d/%d] %s / %s: %d voxels, %.1f s, %s", runtime, number, len(work), case.name,
                        structure.name, int(result.labels["l"].mask.sum()), time.perf_counter() - started,
                        result.run.runtimes)
        segmenter.memory.clear()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.bf16_heads:
        from medsam2_engine.runtime import heads

        heads.HEADS["openvino_bf16"] = heads.BF16_HEADS
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from medsam2_engine.checkpoints import get_preset
    from medsam2_engine.volume_segmenter import VolumeSegmenter
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.runtime import attach_cpu_runtime, runtime_stages
    from medsam2_eval.baselines import fill_box_baseline, otsu_box_baseline
    from medsam2_eval.cases import find_cases, model_input_window, select_structures
    from medsam2_eval.clicks import box_prompt

    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"checkpoint {args.checkpoint} not found")
    started = time.perf_counter()
    cases = [c for c in find_cases(args.data) if args.cases is None or re.search(args.cases, c.name)]
    skipped = [{"case": c.name, "why": "2D image"} for c in cases if not c.volume.is_3d]
    work = []
    for case in (c for c in cases if c.volume.is_3d):
        structures = select_structures(case, args.max_structures, args.min_voxels)
        work.append((case, structures, [box_prompt(s.mask) for s in structures]))
    logger.info("%d 3D cases, %d structures (%d 2D cases skipped)", len(work), sum(len(w[1]) for w in work), len(skipped))

    models = ModelSource(get_preset(args.preset), tempfile.mkdtemp(prefix="runtime-agreement-"),
                         checkpoint=args.checkpoint, device="cpu", cpu_runtime="torch")
    segmenter = VolumeSegmenter(models)
    model = models.get().model
    masks, attached, unavailable = {}, {}, {}
    for runtime in ["torch", *args.runtimes]:
        attach_started = time.perf_counter()
        used = attach_cpu_runtime(model, runtime, [model.image_size])
        attached[runtime] = {"stages": runtime_stages(model), "attach_seconds": round(time.perf_counter() - attach_started, 1)}
        logger.info("attached %s: %s", runtime, attached[runtime])
        if used != runtime:
            unavailable[runtime] = used
            continue
        masks[runtime] = run_runtime(segmenter, work, runtime)
    attach_cpu_runtime(model, "torch")

    rows = []
    compared = [r for r in args.runtimes if r in masks]
    for case, structures, boxes in work:
        image = case.volume.array
        for structure, box in zip(structures, boxes):
            reference, ran = masks["torch"][case.name, structure.name]
            if not reference.any():
                skipped.append({"case": case.name, "structure": structure.name, "why": "PyTorch's mask is empty"})
                continue
            row = {"case": case.name, "structure": structure.name, "slices": int(image.shape[2]),
                   "reference_voxels": int(structure.mask.sum()), "torch_voxels": int(reference.sum()),
                   "box": dataclasses.asdict(box), "window": model_input_window(case),
                   "runtimes": {"torch": ran},
                   "reference_dice": {"note": REFERENCE_NOTE, "torch": agreement(structure.mask, reference)["dice"],
                                      "fill_box": agreement(structure.mask, fill_box_baseline(structure.mask, box))["dice"],
                                      "otsu_in_box": agreement(structure.mask, otsu_box_baseline(image, box))["dice"]}}
            for runtime in compared:
                mask, row["runtimes"][runtime] = masks[runtime][case.name, structure.name]
                row[runtime] = agreement(reference, mask)
            rows.append(row)

    summary = summarise(rows, compared, args.bound)
    code = exit_code(summary, unavailable)
    print(markdown(rows, summary, compared))
    for item in skipped:
        print(f"skipped: {item['case']}{' / ' + item['structure'] if 'structure' in item else ''}: {item['why']}")
    for runtime, why in unavailable.items():
        print(f"runtime {runtime} not attached: {why}")
    seconds = round(time.perf_counter() - started, 1)
    print(f"{len(rows)} structures in {seconds} s; exit {code}")
    if args.out:
        payload = {"checkpoint": args.checkpoint, "preset": args.preset, "threads": args.threads, "bound": args.bound,
                   "bound_runtime": BOUND_RUNTIME, "attached": attached, "unavailable": unavailable,
                   "rows": rows, "summary": summary, "skipped": skipped, "seconds": seconds, "exit": code}
        Path(args.out).write_text(json.dumps(payload, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
