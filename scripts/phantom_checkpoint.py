"""Train a model preset on CT-like phantoms so that speed benchmarks have weights that track.

    python scripts/phantom_checkpoint.py --preset medsam2 --minutes 20 --out phantom.pt

Early stop and correction stop only mean something with weights that find the structure:
with random weights the object score is noise. No pretrained weights can be downloaded on
the development machines, so this fine-tunes the preset (SAM 2.1 tiny at 512 px by
default) from random weights, with the app's own ``FineTuner``, on the speed benchmark's
synthetic volumes (a bright lesion in soft tissue, other seeds and sizes than the one
timed). The result segments phantoms, nothing else: it is a timing fixture, never a
model to measure accuracy with. Held-out phantom Dice is printed per epoch.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from medsam2_engine.phantoms import spindle_lesion as phantom  # noqa: E402


def phantom_cases(seeds, slices: int, size: int) -> list:
    from medsam2_engine.training.cases import Case, CaseFiles
    from medsam2_engine.volume_io import Volume
    from medsam2_engine.windowing import choose_window

    cases = []
    for seed in seeds:
        fraction = 0.3 + 0.4 * np.random.default_rng(seed).random()
        array, mask = phantom(slices, size, fraction, seed=seed)
        volume = Volume(array, np.diag([0.8, 0.8, 2.5, 1.0]), f"phantom{seed}", declared_modality="CT")
        cases.append(Case(CaseFiles(f"phantom{seed}", "", f"phantom{seed}"), volume, mask.astype(np.int32),
                          choose_window(array, "CT"), [1]))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="medsam2")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--slices", type=int, default=12, help="slices per training phantom")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="phantom_checkpoint.pt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("medsam2_engine.volume_segmenter").setLevel(logging.WARNING)

    from medsam2_engine.checkpoints import build_model, get_preset, save_checkpoint
    from medsam2_engine.training.finetune import FineTuneConfig, FineTuner
    from medsam2_engine.training.model import PromptSimulation

    preset = get_preset(args.preset)
    out = Path(args.out).resolve()
    start = out.with_suffix(".start.pt")
    torch.manual_seed(0)
    model = build_model(preset, "random")
    with torch.no_grad():  # report the object everywhere at first, so early training sees masks
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(8.0)
    save_checkpoint(model, start)
    del model
    size = preset.image_size
    train = phantom_cases(range(1, 9), args.slices, size)
    held_out = phantom_cases([101, 102], args.slices, size)
    config = FineTuneConfig(epochs=10_000, max_seconds=args.minutes * 60, steps_per_epoch=args.steps_per_epoch,
                            lr=args.lr, clip_length=4, max_objects=1, freeze="none", device=args.device, log_every=5,
                            prompts=PromptSimulation(correction_clicks=1, frames_to_correct=1, init_cond_frames=1))
    started = time.monotonic()
    summary = FineTuner(preset, config).run(train, held_out, str(start), str(out))
    start.unlink()
    print(f"start: held-out phantom Dice {summary['baseline_dice']}")
    for entry in summary["history"]:
        print(f"epoch {entry['epoch']}: {entry['steps']} steps, loss {entry['train_loss']}, "
              f"held-out phantom Dice {entry['val_mean_dice']}, {entry['seconds']} s")
    print(f"best {summary['best_metric']} (epoch {summary['best_metric_epoch']}) -> {out}; "
          f"{(time.monotonic() - started) / 60:.1f} min on {summary['device']}")


if __name__ == "__main__":
    main()
