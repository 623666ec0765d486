"""The exact stop: a pass of the ``medsam2`` protocol ends where the structure is cut off.

MedSAM2's protocol keeps the largest 26-connected component of the union of both passes.
Past the last prompted slice ``l`` only the forward pass runs (before the first, ``f``, only
the backward one), each pass is causal, and the backward pass starts from a reset state, so
every slice a stopped pass produced is exactly the full pass's. The forward pass may stop at
slice ``s > l`` once no mask voxel on ``s`` is connected to slice ``l`` through slices
``l..s`` (slice ``l`` counted as all foreground, since the backward pass adds to it later): any
path from the prompted range to a slice beyond ``s`` would cross ``s`` connected to it. An
empty slice is the simplest such cut. Then every component that touches the prompted range
``f..l`` lies wholly inside the slices the passes reached, so the largest component is the
full protocol's unless a structure that touches none of slices ``f..l`` is at least as large
as the one kept: the full protocol would keep that one, a mask with no voxel on any prompted
slice. If the kept component itself misses slices ``f..l`` the engine runs the full passes.

Connectivity is followed incrementally, over the 8-connected blobs of each slice joined
across adjacent slices (union-find), so a step costs one slice's labelling, whatever the
pass's length. tests/test_exact_stop.py checks all of this against the full passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)
_ROOT = 0  # the prompted side: slice l (forward) or f (backward), all foreground
_OFFSETS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


class DetachmentWatch:
    """Which blobs of a pass's newest slice are connected to the prompted side."""

    def __init__(self):
        self.parent = {_ROOT: _ROOT}
        self.previous = None  # (labels, first node id) of the last slice; None: the prompted side itself
        self.next_id = 1

    def _find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the root stays _ROOT

    def detached_after(self, mask: np.ndarray) -> bool:
        """Add the pass's next slice (beyond the prompts); whether nothing on it reaches the prompted side."""
        labels, count = ndimage.label(mask, structure=_EIGHT)
        base = self.next_id
        for n in range(count):
            self.parent[base + n] = base + n
        self.next_id += count
        if count and self.previous is None:  # the slice next to the prompted side touches all of it
            for n in range(count):
                self._union(_ROOT, base + n)
        elif count:
            prev_labels, prev_base = self.previous
            for a, b in _touching_pairs(prev_labels, labels):
                self._union(prev_base + a - 1, base + b - 1)
        self.previous = (labels, base)
        return not any(self._find(base + n) == _ROOT for n in range(count))


def _touching_pairs(upper: np.ndarray, lower: np.ndarray) -> set:
    """(label on one slice, label on the next) for every pair of 26-adjacent foreground pixels."""
    pairs = set()
    rows, cols = lower.shape
    for di, dj in _OFFSETS:
        a = upper[max(di, 0):rows + min(di, 0), max(dj, 0):cols + min(dj, 0)]
        b = lower[max(-di, 0):rows + min(-di, 0), max(-dj, 0):cols + min(-dj, 0)]
        both = (a > 0) & (b > 0)
        if both.any():
            pairs.update(zip(a[both].tolist(), b[both].tolist()))
    return pairs


@dataclass(frozen=True)
class ExactStopReport:
    """Where a label's passes stopped, and the one case the full protocol differs."""

    first: int  # slices first..last were segmented
    last: int
    num_slices: int
    kept_voxels: int  # the largest component kept

    def note(self) -> str:
        return (f"exact stop: slices {self.first}-{self.last} of 0-{self.num_slices - 1} segmented, each pass "
                "ending where nothing more was connected to the prompted slices. Same voxels as MedSAM2's full "
                f"protocol unless a structure not connected to this one, of {self.kept_voxels} voxels or more, "
                f"reaches beyond slices {self.first}-{self.last}: the full protocol would keep that structure "
                "instead, a mask with no voxel on any prompted slice (exact_stop: false runs it)")


def exact_stop_report(propagation, num_slices: int, kept_voxels: int) -> ExactStopReport | None:
    """The segmented range when a pass stopped detached; None when both passes ran to the ends."""
    ended = {p.direction: p.last for p in propagation.passes if p.ended_detached}
    if not ended:
        return None
    reached = sorted(propagation.outputs)
    first = ended.get("backward", reached[0] if reached else 0)
    last = ended.get("forward", reached[-1] if reached else num_slices - 1)
    return ExactStopReport(first, last, num_slices, kept_voxels)


def misses_prompted_range(mask: np.ndarray, prompted: list) -> bool:
    """Whether the kept component has no voxel on the prompted slices' range (then: the full passes)."""
    return not mask[:, :, min(prompted):max(prompted) + 1].any()
