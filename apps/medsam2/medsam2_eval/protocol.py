"""The simulated user, run against any method, one structure at a time.

- ``box``: one box on the structure's largest slice (see :mod:`.clicks`), then the method
  propagates as it does (both ways for this engine);
- ``click``: one positive click at the structure's centre on that slice instead;
- ``correction``: starts from the ``box`` result and adds up to ``max_clicks`` clicks, each
  at the centre of the largest error of the current 3D result; Dice and NSD after every
  click give the Dice-against-clicks curve. Step 0 is the ``box`` protocol itself. When
  the result is already perfect, no further clicks are placed and the curve stays flat.

Each method is given the same rule; clicks after the first depend on the method's own
errors, as they would for a real user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .clicks import box_prompt, centre_click, correction_click
from .metrics import scores

logger = logging.getLogger(__name__)


@dataclass
class ProtocolSettings:
    max_clicks: int = 5
    nsd_tolerance: float = 2.0


@dataclass
class StructureRun:
    """All results of one method on one structure."""

    method: str
    records: list = field(default_factory=list)  # one dict per (protocol, step)
    masks: dict = field(default_factory=dict)  # protocol -> final mask (for overlays)


def _record(protocol: str, step: int, mask, reference, spacing, tolerance, info: dict, click=None) -> dict:
    record = {"protocol": protocol, "step": step, **scores(mask, reference, spacing, tolerance)}
    record["seconds"] = round(float(info.get("seconds", 0.0)), 3)
    record.update({k: v for k, v in info.items() if k != "seconds"})
    if click is not None:
        record["click"] = {"i": click.click.i, "j": click.click.j, "k": click.click.k,
                           "positive": click.click.positive, "error_voxels": click.region_voxels}
    return record


def run_structure(method, case, structure, settings: ProtocolSettings, max_clicks: int | None = None) -> StructureRun:
    """The three protocols for one method on one structure."""
    reference = structure.mask
    spacing = case.spacing[: reference.ndim]
    tol = settings.nsd_tolerance
    run = StructureRun(method.name)
    box = box_prompt(reference)
    limit = settings.max_clicks if max_clicks is None else max_clicks

    method.begin(case, structure, "correction")
    mask, info = method.segment(box, [])
    run.records.append(_record("box", 0, mask, reference, spacing, tol, info))
    run.masks["box"] = mask
    curve = [_record("correction", 0, mask, reference, spacing, tol, info)]
    if method.learned and limit > 0:
        clicks = []
        for step in range(1, limit + 1):
            placed = correction_click(mask, reference, spacing)
            if placed is None:
                curve.append({**curve[-1], "step": step, "seconds": 0.0, "perfect": True})
                continue
            clicks.append(placed.click)
            mask, info = method.segment(box, clicks)
            curve.append(_record("correction", step, mask, reference, spacing, tol, info, placed))
            logger.info("%s %s %s click %d: dice %.3f", method.name, case.name, structure.name, step,
                        curve[-1]["dice"])
        run.masks["correction"] = mask
    run.records.extend(curve)

    if not method.needs_box:
        method.begin(case, structure, "click")
        mask, info = method.segment(None, [centre_click(reference)])
        run.records.append(_record("click", 0, mask, reference, spacing, tol, info))
        run.masks["click"] = mask
    return run


def per_slice_dice(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Dice of each slice (last axis) by ``monai.metrics``; NaN where the reference slice is empty."""
    import torch
    from monai.metrics import compute_dice

    if reference.ndim == 2:
        prediction, reference = prediction[:, :, None], reference[:, :, None]

    def one_hot(mask):
        fg = torch.from_numpy(np.ascontiguousarray(np.moveaxis(mask, -1, 0), dtype=bool))
        return torch.stack([~fg, fg], dim=1).float()  # [slices, 2, i, j]

    values = compute_dice(one_hot(prediction), one_hot(reference), include_background=False, ignore_empty=True)
    return values[:, 0].numpy()
