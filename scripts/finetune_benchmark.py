"""Fine-tune SAM 2 from untrained weights on real scans and report held-out 3D Dice per epoch.

    python scripts/finetune_benchmark.py [--epochs 10] [--budget-min 10] [--data ../shared/data] [--out /tmp/bench]

Protocol (the app's inference protocol): one box, the reference mask's bounding box on
the slice where the structure is largest, then SAM 2 propagates both ways through the
volume; 3D Dice against the reference. Baselines get the same box: filling it, and an
Otsu threshold inside it, on the prompted slice only and, with the reference's slice
extent given to them for free (an oracle), on every slice the structure spans.

Training: TotalSegmentator's example CT (organs), TCIA PGBM-001 (two studies, T1 post
contrast) and pyradiomics brain1. Held out: TotalSegmentator's example MR (its largest
organs), TCIA PGBM-003 (two studies) and pyradiomics brain2. The model is the small SAM 2
configuration of the tests (128 px), as anything larger does not train on two CPU cores in
minutes. Numbers are printed and written to OUT/results.json.

Recipe (defaults): a fixed 10 x 50 steps, peak lr 3e-4 with 50 warmup steps and a cosine
(1e-3 is too high from random weights: masks stop depending on the prompt and swing
between the whole image and a small blob), box prompts on one slice per clip as the
protocol prompts, up to 6 structures per clip (several boxes on one image are what
teach the model to read the box), focal weight 1 (sam2's 20 stays at 0 from random
weights). From untrained weights this learns the prompt on the training studies but
does not yet generalise to the held-out ones within minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # sam2's per-slice progress bars
ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from skimage.filters import threshold_otsu  # noqa: E402

from medsam2_engine.training.cases import CaseFiles, load_case  # noqa: E402
from medsam2_engine.training.finetune import FineTuneConfig, FineTuner  # noqa: E402
from medsam2_engine.mask_measures import box_on_largest_slice, dice  # noqa: E402
from medsam2_eval.small_preset import small_preset  # noqa: E402

logger = logging.getLogger("finetune_benchmark")


def study_lists(data: Path):
    organs, tcia, pyrad = data / "ct_mr_organs_totalseg", data / "mr_brain_tumor_tcia" / "nifti", \
        data / "mr_brain_breast_pyradiomics"
    train = [
        CaseFiles(str(organs / "example_ct_sm.nii.gz"), str(organs / "example_seg.nii.gz"), "totalseg_ct"),
        *[CaseFiles(str(tcia / f"PGBM-001_{d}_T1post.nii.gz"), str(tcia / f"PGBM-001_{d}_MaskTumor.nii.gz"),
                    f"PGBM-001_{d}") for d in ("11-19-1991", "04-02-1992")],
        CaseFiles(str(pyrad / "brain1_image.nrrd"), str(pyrad / "brain1_label.nrrd"), "pyradiomics_brain1"),
    ]
    held_out = [
        CaseFiles(str(organs / "example_mr_sm.nii.gz"), str(organs / "example_seg_mr.nii.gz"), "totalseg_mr"),
        *[CaseFiles(str(tcia / f"PGBM-003_{d}_T1post.nii.gz"), str(tcia / f"PGBM-003_{d}_MaskTumor.nii.gz"),
                    f"PGBM-003_{d}") for d in ("03-29-1995", "10-17-1995")],
        CaseFiles(str(pyrad / "brain2_image.nrrd"), str(pyrad / "brain2_label.nrrd"), "pyradiomics_brain2"),
    ]
    return train, held_out


def keep_largest_labels(case, count: int):
    """Limit a many-organ case to its ``count`` largest structures (others become background)."""
    if len(case.values) <= count:
        return case
    sizes = {v: int((case.labels == v).sum()) for v in case.values}
    keep = sorted(sizes, key=sizes.get, reverse=True)[:count]
    case.labels = np.where(np.isin(case.labels, keep), case.labels, 0)
    case.values = sorted(keep)
    return case


def baselines(cases) -> dict:
    """Fill-the-box and Otsu-in-the-box Dice, prompted slice only and oracle slice extent."""
    scores = {"box_fill_slice": [], "otsu_slice": [], "box_fill_oracle_extent": [], "otsu_oracle_extent": []}
    for case in cases:
        image = case.window.apply(case.volume.array)
        for value in case.values:
            reference = case.labels == value
            box = box_on_largest_slice(reference)
            i0, i1, j0, j1 = int(box.i0), int(box.i1) + 1, int(box.j0), int(box.j1) + 1
            slices = np.flatnonzero(reference.reshape(-1, reference.shape[2]).any(axis=0))
            for name, ks in (("slice", [box.k]), ("oracle_extent", slices)):
                filled = np.zeros_like(reference)
                otsu = np.zeros_like(reference)
                for k in ks:
                    filled[i0:i1, j0:j1, k] = True
                    patch = image[i0:i1, j0:j1, k]
                    inside = reference[i0:i1, j0:j1, box.k]
                    if patch.max() > patch.min():
                        bright = patch > threshold_otsu(patch)
                        # the side of the threshold the structure is on, judged on the prompted slice
                        use_bright = image[i0:i1, j0:j1, box.k][inside].mean() >= patch.mean()
                        otsu[i0:i1, j0:j1, k] = bright if use_bright else ~bright
                scores[f"box_fill_{name}"].append(dice(filled, reference))
                scores[f"otsu_{name}"].append(dice(otsu, reference))
    return {k: round(float(np.mean(v)), 4) for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default="/tmp/medsam2_finetune_benchmark")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of --steps-per-epoch steps: a fixed step count, so runs compare across machines")
    parser.add_argument("--budget-min", type=float, default=10.0,
                        help="training time cap in minutes (the cosine then ends with the budget)")
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (1e-3 is too high from random weights)")
    parser.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"])
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--clip-length", type=int, default=6)
    parser.add_argument("--max-objects", type=int, default=6,
                        help="structures per training clip: several boxes on one image force the model to use the box")
    parser.add_argument("--prob-box", type=float, default=1.0,
                        help="share of training prompts that are boxes (else one click); the benchmark prompts with a box")
    parser.add_argument("--init-cond-frames", type=int, default=1,
                        help="prompted frames per training clip (random 1..n); the benchmark prompts one slice")
    parser.add_argument("--correction-clicks", type=int, default=1)
    parser.add_argument("--max-organs", type=int, default=6, help="largest structures kept per many-organ study")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--focal-weight", type=float, default=1.0,
                        help="weight of the focal mask loss (sam2's fine-tuning recipe: 20; it stays at 0 from random weights)")
    parser.add_argument("--class-weight", type=float, default=1.0,
                        help="weight of the object-score loss (sam2's recipe: 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("monai", "medsam2_engine.volume_segmenter"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"real scans not found at {data}; pass --data")

    train_files, held_out_files = study_lists(data)
    train = [keep_largest_labels(load_case(f), 12) for f in train_files]
    held_out = [keep_largest_labels(load_case(f), args.max_organs) for f in held_out_files]
    print(f"training studies: {[(c.name, len(c.values)) for c in train]}")
    print(f"held-out studies: {[(c.name, len(c.values)) for c in held_out]}")
    classical = baselines(held_out)
    print(f"classical baselines (held-out mean 3D Dice): {classical}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = FineTuneConfig(epochs=args.epochs, max_seconds=args.budget_min * 60,
                            steps_per_epoch=args.steps_per_epoch, lr=args.lr, lr_schedule=args.lr_schedule,
                            warmup_steps=args.warmup_steps, clip_length=args.clip_length,
                            max_objects=args.max_objects, device=args.device, seed=args.seed, log_every=25,
                            baseline_validation=True,
                            loss_weights={"loss_mask": args.focal_weight, "loss_class": args.class_weight})
    config.prompts.prob_box = args.prob_box
    config.prompts.init_cond_frames = args.init_cond_frames
    config.prompts.frames_to_correct = args.init_cond_frames  # correction clicks only on the prompted frames
    config.prompts.correction_clicks = args.correction_clicks
    started = time.monotonic()
    summary = FineTuner(small_preset(), config).run(train, held_out, "random", str(out / "finetuned.pt"))
    print(f"\n{'epoch':>5} {'steps':>5} {'minutes':>7} {'loss':>8} {'held-out Dice':>13}")
    print(f"{0:>5} {0:>5} {0:>7.1f} {'-':>8} {summary['baseline_dice']:>13.4f}")
    elapsed = 0.0
    for entry in summary["history"]:
        elapsed += entry["seconds"]
        print(f"{entry['epoch']:>5} {entry['steps']:>5} {elapsed / 60:>7.1f} {entry['train_loss']:>8.3f} "
              f"{entry['val_mean_dice']:>13.4f}  {entry['val_per_study']}")
    print(f"best {summary['best_metric']} at epoch {summary['best_metric_epoch']}; "
          f"wall time {(time.monotonic() - started) / 60:.1f} min; device {summary['device']}, "
          f"{args.threads} threads; baselines {classical}")
    (out / "results.json").write_text(json.dumps({"summary": summary, "baselines": classical,
                                                  "args": vars(args)}, indent=1, default=str))


if __name__ == "__main__":
    main()
