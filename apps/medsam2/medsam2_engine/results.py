"""What every engine result carries besides its masks: which weights and protocol made it,
how long each stage took and what ran the network's heavy stages. Results are plain dataclasses; JSON is built by the app's
tasks (``lib/infers``), never here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checkpoints import RANDOM_WEIGHTS


@dataclass(frozen=True)
class RunInfo:
    checkpoint: str
    random_weights: bool  # untrained: random weights, or weights fine-tuned from random ones
    protocol: str  # "medsam2" | "sam2" for the interactive engine; the engine's name otherwise
    timings: dict  # stage -> seconds, rounded
    runtimes: dict = field(default_factory=dict)  # network stage -> what ran it in this call (sorted names)
    model_version: dict = field(default_factory=dict)  # LoadedModel.model_version: base checkpoint or fine-tune N

    @property
    def untrained_origin(self) -> bool:
        """Weights fine-tuned from random ones: a file that looks trained but is not."""
        return self.random_weights and self.checkpoint != RANDOM_WEIGHTS

    @classmethod
    def of(cls, loaded, protocol: str, timings: dict, runtimes: dict | None = None) -> "RunInfo":
        """From the model that ran (``ModelSource.get()``), the stages' seconds and, where recorded
        (``predictor.runtimes_used``), what ran each network stage."""
        return cls(loaded.checkpoint, loaded.random_weights, protocol, {k: round(v, 4) for k, v in timings.items()},
                   {stage: sorted(names) for stage, names in (runtimes or {}).items()},
                   dict(getattr(loaded, "model_version", {}) or {}))


@dataclass(frozen=True)
class SliceScore:
    """How sure the model was on one slice."""

    object_score: float  # SAM 2's object score logit (above 0: present)
    predicted_iou: float | None
    area: int  # mask voxels on the slice
    confidence: float | None = None  # one-prompt: P(present) x predicted IoU


def slice_score(output, area: int, confidence: float | None = None) -> SliceScore:
    """A propagation's ``SliceOutput`` as a reported score (4 decimals, as the clients see it)."""
    return SliceScore(
        round(output.object_score, 4),
        None if output.predicted_iou is None else round(output.predicted_iou, 4),
        int(area),
        None if confidence is None else round(confidence, 4),
    )
