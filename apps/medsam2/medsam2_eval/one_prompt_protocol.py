"""The one-prompt protocol: support from one case, every other case of the set as a target.

Cases are grouped by data set (the first folder under the data root) and structure name,
so the support and its targets hold the same kind of structure (a brain tumour, a CT
lesion). In each group the first case (by name), or the one named, is the support; the
others are targets, segmented with no prompt at all. Dice and NSD per target are reported
beside the interactive protocol on the same target (MedSAM2's: one box on the target's largest
slice, both passes; what a clinician's one prompt per study gives) and a classical baseline that
uses no learning and no target label; each group says how many targets one-prompt segments
a minute on this machine:

- **centroid_copy**: the support's mask resampled to the target's grid in normalised
  coordinates (the same relative position in the field of view), then shifted so that the
  support's foreground centroid (voxels above the image's Otsu threshold, i.e. the body)
  lands on the target's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from medsam2_engine.one_prompt import OnePromptSegmenter, Support
from .cases import select_structures
from .clicks import box_prompt
from .metrics import dice, scores


def _body_centroid(array: np.ndarray) -> np.ndarray:
    values = array.astype(np.float32)
    threshold = threshold_otsu(values[:: max(1, values.size // 2_000_000)]) if values.max() > values.min() else 0
    body = values > threshold
    return np.array(ndimage.center_of_mass(body) if body.any() else np.array(values.shape) / 2.0)


def centroid_copy_baseline(support: np.ndarray, support_image: np.ndarray, target_image: np.ndarray) -> np.ndarray:
    scale = np.array(target_image.shape, float) / np.array(support.shape, float)
    resized = ndimage.zoom(support.astype(np.float32), scale, order=1) > 0.5
    resized = _fit(resized, target_image.shape)
    shift = _body_centroid(target_image) - _body_centroid(support_image) * scale
    return ndimage.shift(resized.astype(np.float32), shift, order=0) > 0.5


def _fit(mask: np.ndarray, shape: tuple) -> np.ndarray:
    out = np.zeros(shape, bool)
    common = tuple(slice(0, min(a, b)) for a, b in zip(mask.shape, shape))
    out[common] = mask[common]
    return out


def group_cases(cases: list, root: Path, min_voxels: int = 10) -> dict:
    """(data set, structure name) -> [(case, structure)], 3D cases only, groups of two or more."""
    groups: dict = {}
    for case in cases:
        if not case.volume.is_3d:
            continue
        image = Path(case.source.get("image", case.volume.path))
        try:
            parts = image.resolve().relative_to(root.resolve()).parts
            dataset = parts[0] if len(parts) > 1 else root.resolve().name  # --data may be one data set
        except ValueError:
            dataset = image.parent.name
        for structure in select_structures(case, 0, min_voxels):
            members = groups.setdefault((dataset, structure.name), [])
            # the same study in another format or sequence (identical label) is not a new target
            if not any(s.mask.shape == structure.mask.shape and np.array_equal(s.mask, structure.mask)
                       for _, s in members):
                members.append((case, structure))
    return {key: members for key, members in sorted(groups.items()) if len(members) >= 2}


def run_group(segmenter: OnePromptSegmenter, members: list, support_name: str | None = None,
              interactive=None, tolerance: float = 2.0) -> dict:
    """Segment every target of one group from its support; Dice and NSD per target for one-prompt,
    the interactive protocol (``interactive``: a VolumeSegmenter; None: not run) and the baseline."""
    from medsam2_engine.prompts import LabelPrompts

    names = [case.name for case, _ in members]
    index = names.index(support_name) if support_name in names else 0
    support_case, support_structure = members[index]
    support = Support(support_case.name, support_case.volume, support_structure.mask)
    targets = []
    for case, structure in members[:index] + members[index + 1:]:
        spacing = case.spacing
        started = time.perf_counter()
        result = segmenter.segment_volume(case.volume, [support])
        seconds = time.perf_counter() - started
        baseline = centroid_copy_baseline(support_structure.mask, support_case.volume.array, case.volume.array)
        one = scores(result.mask, structure.mask, spacing, tolerance)
        row = {
            "target": case.name,
            "dice": one["dice"],
            "nsd": one["nsd"],
            "baseline_centroid_copy_dice": round(dice(baseline, structure.mask), 4),
            "baseline_centroid_copy_nsd": scores(baseline, structure.mask, spacing, tolerance)["nsd"],
            "found": result.found,
            "confidence": result.confidence,
            "start_slice": result.start_slice,
            "reference_slices": [int(k) for k in np.flatnonzero(structure.mask.any(axis=(0, 1)))][:1]
            + [int(k) for k in np.flatnonzero(structure.mask.any(axis=(0, 1)))][-1:],
            "seconds": round(seconds, 2),
        }
        if interactive is not None:
            started = time.perf_counter()
            run = interactive.run(case.volume, {"s": LabelPrompts(boxes=[box_prompt(structure.mask)])},
                                  ("eval-one-prompt", case.name, str(time.monotonic())))
            both = scores(run.labels["s"].mask, structure.mask, spacing, tolerance)
            row.update({"interactive_dice": both["dice"], "interactive_nsd": both["nsd"],
                        "interactive_seconds": round(time.perf_counter() - started, 2)})
        targets.append(row)
    mean = lambda key: round(float(np.mean([t[key] for t in targets])), 4)  # noqa: E731
    out = {
        "support": support_case.name,
        "support_slices": support.slices,
        "targets": targets,
        "mean_dice": mean("dice"),
        "mean_nsd": mean("nsd"),
        "mean_baseline_dice": mean("baseline_centroid_copy_dice"),
        "targets_per_minute": round(60.0 * len(targets) / max(sum(t["seconds"] for t in targets), 1e-9), 2),
    }
    if interactive is not None:
        out.update({"mean_interactive_dice": mean("interactive_dice"), "mean_interactive_nsd": mean("interactive_nsd")})
    return out
