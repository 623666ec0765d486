"""Which labelled slices and which labelled studies become the support memory.

Slices: several slices spanning the structure, not only its largest cross-section, so
the memory holds the structure's shape at its ends as well as its middle (the extreme
tips are left out: a few voxels say little about the structure).

Studies: the paper's memory bank keeps memories that are confident and unlike each other.
Here every candidate is a reference labelled by a person, so confidence is equal; what
differs is how much each looks like the target. Candidates are ranked by the cosine
similarity of image-encoder descriptors (support slices against the target's slices),
and taken greedily, skipping one that is nearly a duplicate of a support already chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def spanning_slices(mask: np.ndarray, count: int) -> list:
    """Up to ``count`` slice indices (last axis) evenly spread over the slices ``mask`` covers."""
    if count < 1:
        raise ValueError(f"support slices per study must be at least 1, got {count}")
    present = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(axis=0))
    if present.size == 0:
        return []
    if present.size <= count:
        return [int(k) for k in present]
    # interior points of an even split: for 3 slices, 1/4, 1/2 and 3/4 of the extent
    positions = np.linspace(0, present.size - 1, count + 2)[1:-1]
    return sorted({int(present[int(round(p))]) for p in positions})


@dataclass
class SupportChoice:
    name: str
    similarity: float | None  # best cosine similarity of its support slices to any target slice; None: not compared
    used: bool = False
    reason: str = ""
    slices: list = field(default_factory=list)  # the support slices given to SAM 2's memory


def similarity(support: torch.Tensor, target: torch.Tensor) -> float:
    """Best cosine similarity between the mean support descriptor and any target descriptor.

    ``support`` is ``(n, C)`` (one row per support slice); ``target`` is ``(m, C)``.
    """
    mean = torch.nn.functional.normalize(support.float().mean(dim=0, keepdim=True), dim=1)
    rows = torch.nn.functional.normalize(target.float(), dim=1)
    return float((rows @ mean.T).max())


def choose_supports(
    candidates: dict,
    target: torch.Tensor,
    max_supports: int,
    redundancy: float = 0.995,
    excluded: dict | None = None,
) -> list:
    """Rank ``candidates`` (name -> ``(n, C)`` descriptors) by likeness to ``target``; mark the chosen.

    ``excluded`` (name -> reason) lists candidates that may not be used (e.g. another
    modality); they are reported, never chosen. Returns every candidate, best first.
    """
    if max_supports < 1:
        raise ValueError(f"max_supports must be at least 1, got {max_supports}")
    excluded = excluded or {}
    choices = [SupportChoice(name, similarity(desc, target)) for name, desc in candidates.items()]
    choices.sort(key=lambda c: (-c.similarity, c.name))
    chosen: list = []
    for choice in choices:
        if choice.name in excluded:
            choice.reason = excluded[choice.name]
            continue
        if len(chosen) >= max_supports:
            choice.reason = f"not among the {max_supports} most similar"
            continue
        mean = candidates[choice.name].float().mean(dim=0, keepdim=True)
        twins = [c.name for c in chosen if similarity(candidates[c.name], mean) >= redundancy]
        if twins:
            choice.reason = f"nearly the same as {twins[0]}, already used"
            continue
        choice.used, choice.reason = True, "most similar to the target" if not chosen else "similar, and adds variety"
        chosen.append(choice)
    return choices
