"""A final label as its structures, each whole, and the label map made from them.

A label map holds one value per voxel, so structures that overlap (a lesion inside an organ,
a vessel through it) cannot all be kept in it. A client that has each structure's mask
saves them as a stack, ``[i, j, k, n]`` with one binary channel per structure; the datastore
keeps that stack beside the label map (:func:`structures_path`) and derives the label map
from it with one rule, :func:`label_map_of`, that the viewer page applies too (so the map on
screen is the map saved): where structures overlap, the smaller structure keeps the voxel
(a lesion stays visible inside its organ; ties: the lower label value). Training and the
DICOM SEG read the stack, so no structure loses a voxel there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

STRUCTURES_DIR = ".structures"  # beside a tag's label maps; MONAI Label lists files, not folders


@dataclass(frozen=True)
class Structure:
    name: str
    value: int  # its value in the label map
    voxels: int  # voxels of its own mask
    voxels_in_label_map: int  # voxels the label map gives it (fewer where a smaller one overlaps)

    def as_json(self) -> dict:
        return {"name": self.name, "idx": self.value, "voxels": self.voxels,
                "voxels_in_label_map": self.voxels_in_label_map}


@dataclass(frozen=True)
class Overlap:
    names: tuple  # the two structures
    voxels: int
    label_map_keeps: str  # the structure the label map shows there

    def as_json(self) -> dict:
        return {"structures": list(self.names), "voxels": self.voxels, "label_map_keeps": self.label_map_keeps}


def structures_path(label_path: str) -> str:
    """Where the structure stack of the label map at ``label_path`` lives."""
    folder, name = os.path.split(label_path)
    stem = name.split(".")[0]
    return os.path.join(folder, STRUCTURES_DIR, stem + ".nii.gz")


def priority(stack: np.ndarray, values: list) -> list:
    """Channel indices in the order they claim an overlapping voxel: smallest structure first."""
    sizes = stack.reshape(-1, stack.shape[-1]).sum(axis=0)
    return sorted(range(stack.shape[-1]), key=lambda c: (int(sizes[c]), values[c]))


def mask_as_label_values(values: np.ndarray) -> np.ndarray:
    """Whole-number label values as the app reads them: a 2D mask saved as 0/255 (a PNG mask, as
    MONAI Label's 2D apps keep them) is one structure of value 1."""
    if values.max() > 0 and np.array_equal(np.unique(values), [0, 255]):
        return (values > 0).astype(values.dtype)
    return values


def label_map_of(stack: np.ndarray, values: list) -> np.ndarray:
    """The label map of a ``[..., n]`` binary stack whose channel ``c`` has label value ``values[c]``."""
    out = np.zeros(stack.shape[:-1], dtype=np.uint16 if max(values, default=0) > 255 else np.uint8)
    for channel in reversed(priority(stack, values)):  # the first in priority is painted last
        out[stack[..., channel] > 0] = values[channel]
    return out


def describe(stack: np.ndarray, values: list, names: list) -> tuple:
    """([Structure], [Overlap]) of a stack: what each keeps, and where two share voxels."""
    label_map = label_map_of(stack, values)
    structures = [Structure(names[c], values[c], int(np.count_nonzero(stack[..., c])),
                            int(np.count_nonzero(label_map == values[c]))) for c in range(stack.shape[-1])]
    overlaps = []
    for a in range(stack.shape[-1]):
        for b in range(a + 1, stack.shape[-1]):
            shared = int(np.count_nonzero((stack[..., a] > 0) & (stack[..., b] > 0)))
            if shared:
                first = next(c for c in priority(stack, values) if c in (a, b))
                overlaps.append(Overlap((names[a], names[b]), shared, names[first]))
    return structures, overlaps


VALUES_TAG = "medsam2 structures "  # the NIfTI description names each channel's label value


def read_stack(path: str):
    """(binary stack ``[i, j, k, n]`` as uint8, affine, label value per channel or None)."""
    import nibabel as nib

    image = nib.load(path)
    stack = (np.asarray(image.dataobj) > 0).astype(np.uint8)
    described = bytes(image.header["descrip"]).decode("ascii", "replace").rstrip("\x00")
    values = None
    if described.startswith(VALUES_TAG):
        try:
            values = [int(v) for v in described[len(VALUES_TAG):].split(",")]
        except ValueError:
            values = None
    return stack, image.affine, values


def stack_bytes(stack: np.ndarray, affine: np.ndarray, values: list | None = None) -> bytes:
    """The stack as gzipped NIfTI-1 (uint8, qform and sform set to ``affine``, values described)."""
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(stack, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    if values is not None:
        image.header["descrip"] = (VALUES_TAG + ",".join(str(int(v)) for v in values)).encode()[:79]
    return gzip.compress(image.to_bytes(), compresslevel=1)


def write_stack(path: str, stack: np.ndarray, affine: np.ndarray, values: list, **naming) -> str:
    """Write the stack whole or not at all (``naming``: the temporary file's prefix and suffix)."""
    from pathlib import Path

    from .atomic_files import atomic_write

    data = stack_bytes(stack, affine, values)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), **naming)


def saved_structures(label_path: str, label_map: np.ndarray) -> dict | None:
    """Label value -> that structure's whole mask, from the stack saved with the label map.

    None when there is no stack, or when it no longer makes this label map (the map was
    replaced or edited by hand since): then the map is all there is.
    """
    stack_file = structures_path(label_path)
    if not os.path.isfile(stack_file):
        return None
    stack, _, values = read_stack(stack_file)
    if values is None or len(values) != stack.shape[-1] or stack.shape[:-1] != label_map.shape:
        return None
    if not np.array_equal(label_map_of(stack, values), label_map):
        return None
    return {value: stack[..., c] > 0 for c, value in enumerate(values)}
