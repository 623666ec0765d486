"""A labelled study for training: the image, its label map, checked to lie on the same grid.

``LabelMismatch`` and the grid rule live in ``label_grid`` (shared with the evaluation cases).

A label that does not fit its image (another shape or affine, unreadable, not integer
valued) is refused with a :class:`LabelMismatch` that names both files and what differs,
so one bad save never silently enters training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..label_grid import LabelMismatch, label_on_grid
from ..label_structures import mask_as_label_values, saved_structures
from ..volume_io import ImageReadError, Volume, load_image
from ..windowing import Window, model_window

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class CaseFiles:
    image: str
    label: str
    name: str = ""


@dataclass
class Case:
    """One study in memory: the volume, its windowing and its integer label map (same shape)."""

    files: CaseFiles
    volume: Volume
    labels: np.ndarray  # int, volume.spatial_shape
    window: Window
    values: list = field(default_factory=list)  # label values present
    # value -> the structure's whole mask where the label was saved as structures (overlaps kept)
    structures: dict | None = None

    @property
    def name(self) -> str:
        return self.files.name or self.files.image

    def mask_of(self, value: int) -> np.ndarray:
        """The structure's own voxels: whole from the saved structures, else its share of the map."""
        if self.structures is not None and value in self.structures:
            return self.structures[value]
        return self.labels == value


def _to_label_map(label: Volume, files: CaseFiles) -> np.ndarray:
    array = label.array
    if label.is_rgb:
        array = array[..., 0]
    if not np.all(np.isfinite(array)) or not np.allclose(array, np.round(array)) or array.min() < 0:
        raise LabelMismatch(f"label {files.label} for image {files.image} is not a map of non-negative whole numbers")
    return mask_as_label_values(np.round(array).astype(np.int32))


def check_label_fits(image: Volume, label: Volume, files: CaseFiles) -> None:
    """Raise LabelMismatch when the label is not on the image's grid (never resampled: see label_grid)."""
    label_on_grid(image, label, resample=False, name=f"label {files.label} for image {files.image}")


def _read_pair(files: CaseFiles) -> tuple:
    """(image, label) read and checked to lie on one grid; an unreadable label is a LabelMismatch."""
    image = load_image(files.image)
    try:
        label = load_image(files.label)
    except ImageReadError as err:
        raise LabelMismatch(f"label {files.label} for image {files.image} cannot be read (empty or corrupt "
                            f"file?): {err}") from err
    check_label_fits(image, label, files)
    return image, label


def check_label_file(files: CaseFiles) -> list:
    """Check a label file against its image before it is stored; the label values it holds.

    Unlike ``load_case`` an all-zero label passes (a clinician may save "nothing here").
    """
    _, label = _read_pair(files)
    return [int(v) for v in np.unique(_to_label_map(label, files)) if v > 0]


def load_case(files: CaseFiles) -> Case:
    """Read and check one study; raises LabelMismatch or ImageReadError with the file names."""
    image, label = _read_pair(files)
    labels = _to_label_map(label, files)
    if image.is_3d:
        window, _ = model_window(image)
    else:
        window = Window(0.0, 255.0, "8-bit image") if image.array.max() > 1.0 else Window(0.0, 1.0, "unit image")
    structures = saved_structures(files.label, labels) if labels.ndim == 3 else None
    if structures is not None:  # a structure hidden under a smaller one in the map is still one
        values = sorted(v for v, m in structures.items() if m.any())
    else:
        values = [int(v) for v in np.unique(labels) if v > 0]
    if not values:
        raise LabelMismatch(f"label {files.label} for image {files.image} is empty (no structure to learn from)")
    return Case(files, image, labels, window, values, structures)


def load_cases(files: list, on_reject=None) -> list:
    """Load every study that can be used; each rejected one is logged (and passed to ``on_reject``)."""
    cases = []
    for item in files:
        try:
            cases.append(load_case(item))
        except (LabelMismatch, ImageReadError) as err:
            logger.error("label rejected, not used for training: %s", err)
            if on_reject is not None:
                on_reject(item, str(err))
    return cases
