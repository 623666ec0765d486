"""How unsure SAM 2 is about a study, from its own signals (no reference label needed).

An unlabelled study has no prompts, so the prompt a clinician would give is simulated:
for every structure in the final labels, a box at the place (as a fraction of the field
of view and of the slice range) where that structure usually lies; with no final labels
yet, a box over the middle third of the central slice.

For each box, SAM 2 propagates both ways (pass A). Three signals, each in [0, 1]:

- disagreement: the mask of pass A on a slice three quarters of the way to each end of
  the structure is boxed and propagated again (pass B); where the model tracks reliably
  the two passes agree, where it drifts they do not (1 - 3D Dice of A and B);
- predicted IoU: 1 - the mask decoder's own quality estimate, on slices with a mask;
- object score: how close SAM 2's presence logit is to undecided (1 - |2 sigmoid - 1|);
- box leak: the share of the prompted slice's mask outside the (slightly enlarged) box.
  A model that is confidently wrong, e.g. fills the whole body, agrees with itself and
  reports high IoU; only the prompt it was given shows that the mask is not what was asked.

The study's score is 0.35 disagreement + 0.15 IoU + 0.15 object score + 0.35 box leak,
averaged over the structures; higher means less sure. Nothing here imports MONAI Label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medsam2_engine.volume_segmenter import VolumeSegmenter
from medsam2_engine.prompts import Box, LabelPrompts
from medsam2_engine.mask_measures import dice, largest_slice

WEIGHTS = {"disagreement": 0.35, "predicted_iou": 0.15, "object_score": 0.15, "box_leak": 0.35}
BOX_MARGIN = 0.5  # the prior box is a guess: a mask this far beyond it (per side) is not a leak
DEFAULT_PRIOR = (1 / 3, 1 / 3, 2 / 3, 2 / 3, 0.5)  # fractions: i0, j0, i1, j1, slice


@dataclass(frozen=True)
class BoxPrior:
    """Where a structure usually is, as fractions of the image: (i0, j0, i1, j1, k)."""

    name: str
    fractions: tuple

    def box(self, shape) -> Box:
        fi0, fj0, fi1, fj1, fk = self.fractions
        i0, i1 = fi0 * (shape[0] - 1), max(fi1 * (shape[0] - 1), fi0 * (shape[0] - 1) + 1)
        j0, j1 = fj0 * (shape[1] - 1), max(fj1 * (shape[1] - 1), fj0 * (shape[1] - 1) + 1)
        return Box(i0, j0, min(i1, shape[0] - 1.0), min(j1, shape[1] - 1.0), int(round(fk * (shape[2] - 1))))


def priors_from_labels(label_maps: list) -> list:
    """Mean box per label value over label maps ([i, j, k] int arrays), on its largest slice."""
    boxes: dict = {}
    for labels in label_maps:
        labels = labels if labels.ndim == 3 else labels[:, :, None]
        size = np.maximum(np.array(labels.shape, float) - 1, 1)
        for value in (int(v) for v in np.unique(labels) if v > 0):
            mask = labels == value
            k = largest_slice(mask)
            ii, jj = np.nonzero(mask[:, :, k])
            boxes.setdefault(value, []).append(
                (ii.min() / size[0], jj.min() / size[1], ii.max() / size[0], jj.max() / size[1], k / size[2])
            )
    if not boxes:
        return [BoxPrior("default", DEFAULT_PRIOR)]
    return [BoxPrior(str(v), tuple(float(x) for x in np.mean(b, axis=0))) for v, b in sorted(boxes.items())]


def _bbox_prompt(mask2d: np.ndarray, k: int) -> LabelPrompts:
    ii, jj = np.nonzero(mask2d)
    return LabelPrompts(boxes=[Box(float(ii.min()), float(jj.min()), float(max(ii.max(), ii.min() + 1)),
                                   float(max(jj.max(), jj.min() + 1)), k)])


def _structure_terms(segmenter: VolumeSegmenter, volume, prior: BoxPrior, key: tuple) -> dict:
    shape = volume.array.shape
    box = prior.box(shape)
    # every pass is its own SAM 2 object: re-prompting one object on another slice after it has
    # propagated would leave it tracking from memory with no conditioning frame (sam2 asserts)
    name = f"{prior.name}:A"
    first = segmenter.run(volume, {name: LabelPrompts(boxes=[box])}, session_key=key).labels[name]
    mask = first.mask
    present = np.flatnonzero(mask.reshape(-1, shape[2]).any(axis=0))
    scores = [s.object_score for s in first.slices.values() if not math.isnan(s.object_score)]
    p = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(scores, float), -30, 30))) if scores else np.array([0.5])
    object_term = float(np.mean(1.0 - np.abs(2.0 * p - 1.0)))
    if present.size == 0:  # nothing found inside the box: nothing to check, as unsure as can be
        return {"disagreement": 1.0, "predicted_iou": 1.0, "object_score": object_term, "box_leak": 1.0,
                "slices": 0}
    leak_term = _box_leak(mask[:, :, box.k], box)
    ious = [s.predicted_iou for s in first.slices.values() if s.predicted_iou is not None and s.area]
    iou_term = float(np.mean([1.0 - min(max(v, 0.0), 1.0) for v in ious])) if ious else 1.0
    disagreements = []
    for n, end in enumerate((present.min(), present.max())):
        k = int(round(box.k + 0.75 * (end - box.k)))
        if k == box.k or not mask[:, :, k].any():
            continue
        name = f"{prior.name}:B{n}"
        again = segmenter.run(volume, {name: _bbox_prompt(mask[:, :, k], k)}, session_key=key).labels[name]
        disagreements.append(1.0 - dice(again.mask, mask))
    disagreement = float(np.mean(disagreements)) if disagreements else 0.0
    return {"disagreement": disagreement, "predicted_iou": iou_term, "object_score": object_term,
            "box_leak": leak_term, "slices": int(present.size)}


def _box_leak(mask2d: np.ndarray, box: Box) -> float:
    """Share of the prompted slice's mask outside the box grown by BOX_MARGIN on each side."""
    area = mask2d.sum()
    if area == 0:
        return 1.0
    di, dj = BOX_MARGIN * (box.i1 - box.i0), BOX_MARGIN * (box.j1 - box.j0)
    i0, i1 = int(np.floor(box.i0 - di)), int(np.ceil(box.i1 + di))
    j0, j1 = int(np.floor(box.j0 - dj)), int(np.ceil(box.j1 + dj))
    inside = mask2d[max(i0, 0): i1 + 1, max(j0, 0): j1 + 1].sum()
    return float(1.0 - inside / area)


def study_uncertainty(segmenter: VolumeSegmenter, volume, priors: list, key: tuple = ("uncertainty",)) -> dict:
    """``{"score": float, "structures": {name: terms}}`` for one volume (higher: less sure)."""
    if volume.array.ndim == 2:
        from medsam2_engine.volume_io import Volume

        volume = Volume(volume.array[:, :, None], volume.affine, volume.path)
    structures = {}
    try:
        for prior in priors:
            terms = _structure_terms(segmenter, volume, prior, key)
            terms["score"] = sum(WEIGHTS[name] * terms[name] for name in WEIGHTS)
            structures[prior.name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in terms.items()}
    finally:
        segmenter.memory.drop(key)
    score = float(np.mean([s["score"] for s in structures.values()])) if structures else 1.0
    return {"score": round(score, 4), "structures": structures}
