"""A mask as the box it occupies and its voxels there, gzipped: how masks travel to and from the page.

``{"i": [start, stop], "j": [...], ("k": [...]), "data": base64 of gzipped uint8 0/1 with i
fastest (NIfTI order)}``, or ``{"empty": true}``. The page's stream receives results in this
form (``lib/http/segment_stream.py``) and sends a painted slice in it (``slice_masks``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import zlib

import numpy as np

from .prompts import PromptError


def mask_region(mask: np.ndarray) -> dict:
    """A bool mask (2D ``[i, j]`` or 3D ``[i, j, k]``) as its region (``{"empty": True}`` when nothing is set)."""
    if not mask.any():
        return {"empty": True}
    out = {}
    box = []
    for axis, name in enumerate("ijk"[: mask.ndim]):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out[name] = [int(hit[0]), int(hit[-1]) + 1]
        box.append(slice(hit[0], hit[-1] + 1))
    voxels = np.asarray(mask[tuple(box)], dtype=np.uint8).tobytes(order="F")
    out["data"] = base64.b64encode(gzip.compress(voxels, compresslevel=1)).decode("ascii")
    return out


def decode_region(region: dict, shape: tuple) -> np.ndarray:
    """The bool mask of ``shape`` that a region made by :func:`mask_region` describes."""
    mask = np.zeros(shape, dtype=bool)
    if region.get("empty"):
        return mask
    box = tuple(slice(*region[name]) for name in "ijk"[: len(shape)])
    size = tuple(s.stop - s.start for s in box)
    voxels = np.frombuffer(gzip.decompress(base64.b64decode(region["data"])), dtype=np.uint8)
    mask[box] = voxels.reshape(size, order="F").astype(bool)
    return mask


def parse_region(value, shape: tuple, field_name: str) -> np.ndarray:
    """A region a client sent, checked (its box on the grid ``shape``, its data exactly the box's
    voxels, inflated no further than that), as the bool mask of ``shape``."""
    if not isinstance(value, dict):
        raise PromptError(f'{field_name}: expected {{"i": [start, stop], "j": [start, stop], "data": ...}}')
    box = []
    for axis, name in enumerate("ijk"[: len(shape)]):
        span = value.get(name)
        if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(n, int) and not isinstance(n, bool)
                                                                    for n in span)
                or not 0 <= span[0] < span[1] <= shape[axis]):
            raise PromptError(f"{field_name}.{name}: expected [start, stop] within 0..{shape[axis]}, "
                              f"got {str(span)[:40]}")
        box.append(slice(*span))
    size = int(np.prod([s.stop - s.start for s in box]))
    data = value.get("data")
    if not isinstance(data, str) or len(data) > 4 * size + 1024:
        raise PromptError(f"{field_name}.data: expected base64 of the box's gzipped voxels")
    try:
        inflater = zlib.decompressobj(wbits=31)  # gzip, bounded: a bomb stops at the box's size
        voxels = inflater.decompress(base64.b64decode(data, validate=True), size + 1)
    except (binascii.Error, zlib.error, ValueError) as err:
        raise PromptError(f"{field_name}.data: not base64 of gzipped voxels ({err})") from err
    if len(voxels) != size:
        raise PromptError(f"{field_name}.data: {len(voxels)} voxels for a box of {size}")
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(box)] = np.frombuffer(voxels, dtype=np.uint8).reshape([s.stop - s.start for s in box], order="F") > 0
    return mask
