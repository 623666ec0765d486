"""A label upload read as what the client means: a label map, or its structures as a stack.

A client that keeps each structure whole (the viewer page) uploads ``[i, j, k, n]``, one
binary channel per structure, with ``params`` ``{"structures": true, "label_info":
[{"name", "idx", "voxels"}, ...]}`` in channel order. The app makes the label map from it
(``medsam2_engine.label_structures``: one rule, the page's) and keeps the stack, so overlaps
lose nothing. ``voxels`` is what the client shows for each structure: a stack that holds
anything else is refused, so a save never differs from the screen without a word.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from medsam2_engine.label_structures import (describe, label_map_of, mask_as_label_values, saved_structures,
                                             structures_path, write_stack)
from medsam2_engine.volume_io import IMAGE_2D_SUFFIXES

from ..options import OptionError
from ..shown_volumes import PICTURE_AFFINE
from .upload_checks import check_label_values, decoded, decoded_nifti, grid_limit

logger = logging.getLogger(__name__)

MAX_STRUCTURES = 64


@dataclass
class PreparedLabel:
    label_file: str  # the label map to store (the upload itself, or one made from the stack)
    stack: Optional[np.ndarray] = None  # [i, j, k, n] uint8 when the client sent structures
    affine: Optional[np.ndarray] = None
    structures: list = field(default_factory=list)  # label_structures.Structure
    overlaps: list = field(default_factory=list)  # label_structures.Overlap
    made: bool = False  # label_file is ours to delete

    @property
    def values(self) -> list:
        return [s.value for s in self.structures]

    def summary(self) -> dict:
        if self.stack is None:
            return {}
        return {"structures": [s.as_json() for s in self.structures],
                "overlaps": [o.as_json() for o in self.overlaps],
                "overlap_rule": "where structures overlap, the label map keeps the smaller one; "
                                "the structures file and the DICOM SEG keep each whole"}

    def cleanup(self) -> None:
        if self.made and os.path.exists(self.label_file):
            os.unlink(self.label_file)


def _entries(label_info: dict) -> list:
    entries = label_info.get("label_info")
    if not isinstance(entries, list) or not entries:
        raise OptionError("params.label_info", "a structures upload needs label_info: one {name, idx} per channel")
    if len(entries) > MAX_STRUCTURES:
        raise OptionError("params.label_info", f"{len(entries)} structures; at most {MAX_STRUCTURES}")
    names, values, voxels = [], [], []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise OptionError(f"params.label_info[{n}]", "needs a name")
        value = entry.get("idx")
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            raise OptionError(f"params.label_info[{n}].idx", "must be a whole number from 1 to 65535")
        count = entry.get("voxels")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise OptionError(f"params.label_info[{n}].voxels", "must be a non-negative whole number")
        names.append(entry["name"].strip())
        values.append(value)
        voxels.append(count)
    if len(set(values)) != len(values) or len(set(names)) != len(names):
        raise OptionError("params.label_info", "each structure needs its own name and idx")
    return names, values, voxels


def image_grid(image_path: str):
    """The spatial shape a label of this image must have (None if the image cannot be read: the
    full check after decoding then says why)."""
    from medsam2_engine.volume_io import ImageReadError, load_image

    try:
        return load_image(image_path).spatial_shape
    except ImageReadError:
        return None


def prepare_label(label_file: str, label_info: Optional[dict], max_decoded_bytes: int, grid=None) -> PreparedLabel:
    """Read ``label_file`` as the client means it, decoded once and whole within ``max_decoded_bytes``
    and, given its image's ``grid`` (spatial shape), only if its header declares that grid
    (``upload_checks``); raises OptionError (4xx) naming what is wrong."""
    label_info = label_info or {}
    if not label_info.get("structures"):
        check_label_values(decoded(label_file, label_file, grid_limit(grid, max_decoded_bytes), "label", grid))
        return PreparedLabel(label_file)
    names, values, voxels = _entries(label_info)
    if not label_file.lower().endswith((".nii", ".nii.gz")):
        raise OptionError("label", "a structures file is NIfTI ([i, j, k, structure])", status=415)
    picture = grid is not None and len(grid) == 2  # the page's one-slice study of a picture: [i, j, 1, structure]
    grid = (*grid, 1) if picture else grid
    array, affine = decoded_nifti(label_file, grid_limit(grid, max_decoded_bytes, len(names)), "label", grid,
                                  extra_dims=1)
    check_label_values(array)
    stack = (array > 0).astype(np.uint8)
    if stack.ndim != 4 or stack.shape[-1] != len(names):
        raise OptionError("label", f"a structures file is [i, j, k, structure] with {len(names)} structure(s) "
                                   f"(label_info); this one has shape {list(stack.shape)}", status=422)
    structures, overlaps = describe(stack, values, names)
    for structure, shown in zip(structures, voxels):
        if shown is not None and shown != structure.voxels:
            raise OptionError("label", f"structure {structure.name!r}: the file holds {structure.voxels} voxels, "
                                       f"the client showed {shown}; nothing was saved", status=422)
    fd, made = tempfile.mkstemp(prefix="medsam2-label-", suffix=".png" if picture else ".nii.gz")
    os.close(fd)
    try:
        if picture:  # as MONAI Label keeps a picture's label: a PNG on its grid, one value per structure
            from PIL import Image

            Image.fromarray(np.ascontiguousarray(label_map_of(stack, values)[:, :, 0].T.astype(np.uint8))).save(made)
        else:
            import nibabel as nib

            image = nib.Nifti1Image(label_map_of(stack, values), np.asarray(affine, dtype=np.float64))
            image.set_qform(image.affine, code=1)
            image.set_sform(image.affine, code=1)
            nib.save(image, made)
    except BaseException:
        os.unlink(made)
        raise
    return PreparedLabel(made, stack, affine, structures, overlaps, made=True)


def saved_label_structures(label_path: str, info: dict, app_labels: list) -> tuple:
    """(stack ``[i, j, k, n]``, affine, [{name, idx}] per channel) of a saved label (any tag).

    The structures saved with it when there are any (overlaps whole), else one channel per
    value of the label map, named by the saved ``label_info``, else by the app's labels.
    """
    if label_path.lower().endswith(IMAGE_2D_SUFFIXES):  # a picture's label (PNG, rows first): its one-slice study
        from PIL import Image

        label_map = mask_as_label_values(np.asarray(Image.open(label_path)).T[:, :, None].astype(np.int32))
        affine = PICTURE_AFFINE  # as the page shows a picture (lib/shown_volumes.py)
    else:
        import nibabel as nib

        loaded = nib.load(label_path)
        label_map, affine = np.asarray(loaded.dataobj), loaded.affine
        label_map = np.round(label_map).astype(np.int32) if label_map.ndim == 3 else label_map[..., 0].astype(np.int32)
    names = {value: name for value, name in enumerate(app_labels, start=1)}
    for entry in info.get("label_info") or []:
        if isinstance(entry, dict) and isinstance(entry.get("idx"), int) and entry.get("name"):
            names[entry["idx"]] = str(entry["name"])
    masks = saved_structures(label_path, label_map)
    if masks is None:
        masks = {int(v): label_map == v for v in np.unique(label_map) if v > 0}
    values = sorted(masks)
    stack = np.stack([masks[v] for v in values], axis=-1).astype(np.uint8) if values else \
        np.zeros(label_map.shape + (0,), np.uint8)
    return stack, affine, [{"name": names.get(v, f"label {v}"), "idx": int(v)} for v in values]


def keep_structures_beside(label_file: str, stack, values: list) -> None:
    """A SEG's segments whole beside the label map read from it (as a save through this replica
    keeps them), so the page reopens each structure with its overlaps and saves it again unchanged."""
    import nibabel as nib

    stack_file = structures_path(label_file)
    if os.path.exists(stack_file):
        os.unlink(stack_file)  # the structures of the label the PACS's newer one replaces
    if not values or not os.path.isfile(label_file):
        return
    saved = nib.load(label_file)
    if stack.shape[:-1] != saved.shape or not np.array_equal(label_map_of(stack, values), np.asarray(saved.dataobj)):
        logger.warning("%s: the SEG's segments do not make the label map read from it; only the map is kept",
                       label_file)
        return
    write_stack(stack_file, stack, saved.affine, values)
