"""Held-out Dice with the inference protocol: one box on one slice, propagated both ways.

The box is the reference mask's bounding box on the slice where the structure is largest
(where a clinician would draw it). The weights being trained are copied into a video
predictor and run through the app's own :class:`VolumeSegmenter`, early stop included,
so the number is what a user would get from the served model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from ..volume_segmenter import EngineSettings, VolumeSegmenter
from ..mask_measures import box_on_largest_slice, dice
from ..model_source import LoadedModel
from ..prompts import LabelPrompts
from ..volume_io import Volume
from .cases import Case

logger = logging.getLogger(__name__)


class InMemorySource:
    """What VolumeSegmenter needs of a ModelSource, for weights that live in memory."""

    def __init__(self, model: torch.nn.Module, device: str, name: str = "in-training"):
        self.device = device
        self._name = name
        self._loaded = LoadedModel(model.eval(), name, 1, None)

    def update(self, state_dict: dict) -> None:
        self._loaded.model.load_state_dict(state_dict, strict=True)
        self._loaded = LoadedModel(self._loaded.model, self._name, self._loaded.version + 1, None)

    def get(self) -> LoadedModel:
        return self._loaded


@dataclass
class CaseScore:
    case: str
    value: int
    dice: float
    seconds: float


def volume_of(case: Case) -> Volume | None:
    """The case as a volume the 3D engine takes (a grey 2D image is a one-slice volume)."""
    volume = case.volume
    if volume.is_3d:
        return volume
    if volume.is_rgb:
        return None
    return Volume(volume.array[:, :, None], volume.affine, volume.path)


def evaluate(segmenter: VolumeSegmenter, cases: list, label_names: dict | None = None) -> dict:
    """Dice per (case, label value) and its means; ``label_names`` maps values to names."""
    scores = []
    for case in cases:
        volume = volume_of(case)
        if volume is None:
            logger.info("validation skips colour image %s (the 3D engine reads grey images)", case.name)
            continue
        for value in case.values:
            reference = case.mask_of(value)
            reference = reference if reference.ndim == 3 else reference[:, :, None]
            started = time.perf_counter()
            prompts = {str(value): LabelPrompts(boxes=[box_on_largest_slice(reference)])}
            result = segmenter.run(volume, prompts, session_key=("validation", case.name))
            scores.append(CaseScore(case.name, value, dice(result.labels[str(value)].mask, reference),
                                    time.perf_counter() - started))
        segmenter.memory.drop(("validation", case.name))
    return summarise(scores, label_names or {})


def summarise(scores: list, label_names: dict) -> dict:
    per_label: dict = {}
    per_study: dict = {}
    for score in scores:
        per_label.setdefault(label_names.get(score.value, str(score.value)), []).append(score.dice)
        per_study.setdefault(score.case, []).append(score.dice)
    return {
        "mean_dice": float(np.mean([s.dice for s in scores])) if scores else float("nan"),
        "per_label": {name: round(float(np.mean(values)), 4) for name, values in sorted(per_label.items())},
        "per_study": {name: round(float(np.mean(values)), 4) for name, values in per_study.items()},
        "per_case": [{"case": s.case, "label": label_names.get(s.value, s.value), "dice": round(s.dice, 4)}
                     for s in scores],
        "count": len(scores),
        "seconds": round(sum(s.seconds for s in scores), 2),
    }


def make_validator(preset, device: str, extra_overrides: dict | None = None, settings: EngineSettings | None = None):
    """A VolumeSegmenter over an in-memory predictor, and the source to push new weights into."""
    from hydra.utils import instantiate

    from ..checkpoints import load_model_config

    # weights arrive through source.update(); building with sam2's random init is only a shell
    predictor = instantiate(load_model_config(preset, extra_overrides).model, _recursive_=True).to(device)
    source = InMemorySource(predictor, device)
    return VolumeSegmenter(source, settings or EngineSettings()), source
