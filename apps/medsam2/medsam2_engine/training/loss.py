"""SAM 2's training loss, from sam2's own training package.

Focal and Dice on the masks of every prompt/correction step (only the best of several
candidate masks is supervised), L1 on the predicted IoU of all candidates, and a loss on
the object score so the model learns when the structure has ended. Weights are those of
sam2's published fine-tuning configs.
"""

from __future__ import annotations

from training.loss_fns import MultiStepMultiMasksAndIous
from training.trainer import CORE_LOSS_KEY

WEIGHTS = {"loss_mask": 20.0, "loss_dice": 1.0, "loss_iou": 1.0, "loss_class": 1.0}


def sam2_loss(weights: dict | None = None) -> MultiStepMultiMasksAndIous:
    unknown = set(weights or {}) - set(WEIGHTS)
    if unknown:
        raise ValueError(f"loss weights: unknown term(s) {sorted(unknown)}; known: {sorted(WEIGHTS)}")
    return MultiStepMultiMasksAndIous(
        weight_dict={**WEIGHTS, **(weights or {})},
        supervise_all_iou=True,
        iou_use_l1_loss=True,
        pred_obj_scores=True,
        focal_gamma_obj_score=0.0,
        focal_alpha_obj_score=-1.0,
    )


def total(losses: dict):
    return losses[CORE_LOSS_KEY]
