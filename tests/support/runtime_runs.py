"""One segmentation per call on a fresh copy of the image, for comparing runtimes on one model."""

from __future__ import annotations

import dataclasses
import time


def masks_of_fresh_run(segmenter, volume, prompts):
    """(label -> mask, result) of one run on a copy of ``volume``'s array.

    Encoded slices are shared per image and weights (feature_cache.py): a runtime switched
    on the same model would otherwise find the other runtime's features.
    """
    fresh = dataclasses.replace(volume, array=volume.array.copy())
    result = segmenter.run(fresh, prompts, session_key=("runtime", str(time.monotonic())))
    return {label: r.mask for label, r in result.labels.items()}, result
