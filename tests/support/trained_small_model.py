"""The small test model, briefly fine-tuned on phantoms so that it gets one kind of study right.

The untrained small model (``small_model.py``) segments nothing correctly, so no study is
"right" for it. Here it is fine-tuned, with the app's own training code (``FineTuner``:
clips, SAM2Train's simulated prompts, sam2's loss), on CT-like phantoms: a bright ellipsoid
of varying size and position in soft tissue. Afterwards it segments such a structure from
a box on one slice; a structure of another appearance it has never seen it does not.

Everything is seeded and runs on two CPU threads, so the weights are the same each run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from medsam2_engine import phantoms

SHAPE = (40, 32, 8)
AFFINE = np.diag([0.9, 0.8, 3.0, 1.0])
BODY_HU, STRUCTURE_HU = 40.0, 200.0


def ellipsoid(centre, radii, shape=SHAPE) -> np.ndarray:
    return phantoms.ellipsoid(centre, radii, shape)


def body(seed: int, shape=SHAPE) -> np.ndarray:
    """Air around soft tissue, HU-like, with a little noise."""
    return phantoms.ct_body(seed, shape, BODY_HU)


def phantom(seed: int, shape=SHAPE):
    """(array, mask): a bright ellipsoid, size and position drawn from ``seed``, in a body."""
    rng = np.random.default_rng(1000 + seed)
    radii = (rng.uniform(5, 9), rng.uniform(4, 7), rng.uniform(2.5, 4.5))
    centre = tuple(rng.uniform(r + 3, n - r - 3) if d < 2 else rng.uniform(n * 0.35, n * 0.65)
                   for d, (r, n) in enumerate(zip(radii, shape)))
    mask = ellipsoid(centre, radii, shape)
    array = body(seed, shape)
    array[mask] = STRUCTURE_HU + rng.normal(0, 5, int(mask.sum())).astype(np.float32)
    return array, mask


def training_cases(count: int = 6):
    """Phantom studies as the trainer's in-memory ``Case`` objects (label value 1)."""
    from medsam2_engine.training.cases import Case, CaseFiles
    from medsam2_engine.volume_io import Volume
    from medsam2_engine.windowing import choose_window, guess_modality

    cases = []
    for seed in range(count):
        array, mask = phantom(seed)
        volume = Volume(array, AFFINE, f"phantom{seed}")
        window = choose_window(array, guess_modality(array))
        cases.append(Case(CaseFiles(f"phantom{seed}", f"phantom{seed}-label", f"phantom{seed}"), volume,
                          mask.astype(np.int32), window, [1]))
    return cases


def fine_tune_small_model(start_checkpoint: Path, output: Path, steps: int = 60, clip_length: int = 4,
                          seed: int = 0) -> dict:
    """Fine-tune the small model from ``start_checkpoint`` for ``steps`` clips; weights go to ``output``."""
    from medsam2_engine.training.finetune import FineTuneConfig, FineTuner
    from medsam2_engine.training.model import PromptSimulation
    from tests.support.small_model import small_preset

    torch.manual_seed(seed)
    np.random.seed(seed)
    config = FineTuneConfig(epochs=1, steps_per_epoch=steps, clip_length=clip_length, max_objects=1, lr=1e-3,
                            device="cpu", seed=seed, baseline_validation=False, log_every=10**6,
                            prompts=PromptSimulation(correction_clicks=1, frames_to_correct=1, init_cond_frames=1))
    started = time.monotonic()
    summary = FineTuner(small_preset(), config).run(training_cases(), [], str(start_checkpoint), str(output))
    summary["seconds"] = round(time.monotonic() - started, 1)
    if not summary["published"]:
        raise RuntimeError(f"fine-tuning the small test model published nothing: {summary}")
    return summary
