"""Finding evaluation cases in a folder: images paired with reference labels.

A *case* is one image with one or more binary reference structures on its grid. Found
automatically, in any sub-folder:

- ``*.npz`` with ``imgs`` and ``gts`` arrays, stored slice-first (``imgs[z, y, x]``);
- 2D images (PNG/JPEG) in a folder, with masks named ``<image stem>_<structure>.png`` in a
  sibling or the same folder (one file per structure, any non-zero pixel is foreground);
- volumes (NIfTI, NRRD, MHA) and DICOM series folders: a file or folder whose name has a
  label word (``seg``, ``label``, ``mask``, ``gt``) is a label map; it is paired with the
  image beside it (same folder, or a sibling series folder) of the same shape whose name
  shares most words with it. Several equally good images each make a case. A label map
  with several values gives one structure per value.

Labels on another grid than their image (a different affine) are resampled onto it with
nearest-neighbour interpolation (``medsam2_engine.label_grid``, which also holds the stricter
rule for labels saved through the app).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam2_engine.label_grid import label_on_grid
from medsam2_engine.volume_io import IMAGE_2D_SUFFIXES, Volume, load_image

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_WORDS = ("seg", "segmentation", "segmentations", "label", "labels", "mask", "masks", "gt", "masktumor")


class CaseError(ValueError):
    """A case could not be read or its label does not fit its image."""


@dataclass
class Structure:
    name: str
    mask: np.ndarray  # bool, the image's spatial shape, voxel order


@dataclass
class Case:
    name: str
    volume: Volume
    structures: list = field(default_factory=list)
    source: dict = field(default_factory=dict)  # where image and labels came from
    window: list | None = None  # [low, high] the model is given; None: the engine's choice for the modality

    @property
    def spacing(self) -> tuple:
        """Voxel size per spatial axis (mm; 1.0 per pixel for 2D images)."""
        if "spacing" in self.volume.meta:
            return tuple(self.volume.meta["spacing"])
        ndim = 2 if not self.volume.is_3d else 3
        return tuple(float(np.linalg.norm(self.volume.affine[:3, a])) or 1.0 for a in range(ndim))


def words(name: str) -> set:
    stem = re.sub(r"(\.nii\.gz|\.[A-Za-z]+)$", "", name)
    stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem).lower()  # MaskTumor -> mask tumor
    return {w for w in re.split(r"[^a-z0-9]+", stem) if w}


def is_label_name(name: str) -> bool:
    return bool(words(name) & set(LABEL_WORDS))


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _label_values(array: np.ndarray) -> list:
    """The non-zero values of an integer label map, ascending (a count of each small value: one pass,
    where np.unique sorts the whole map: 1.3 s for a 512 x 512 x 24 MR here)."""
    if array.size and array.min() >= 0 and array.max() < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel())) if v != 0]
    return [int(v) for v in np.unique(array) if v != 0]


def _structures_from_map(array: np.ndarray, prefix: str) -> list:
    values = _label_values(array)
    if len(values) == 1:
        return [Structure(prefix, array != 0)]
    return [Structure(f"{prefix}_{v}", array == v) for v in values]


def _load_label_on(volume: Volume, path: Path) -> np.ndarray:
    """A reference label file on ``volume``'s grid (resampled by nearest neighbour: see label_grid)."""
    return label_on_grid(volume, load_image(path), resample=True, name=f"label {path}")


def load_npz_case(path: Path) -> Case:
    with np.load(path) as data:
        if "imgs" not in data or "gts" not in data:
            raise CaseError(f"{path}: an npz case needs 'imgs' and 'gts' arrays, found {list(data)}")
        imgs, gts = data["imgs"], data["gts"]
        spacing = tuple(float(s) for s in data["spacing"]) if "spacing" in data else (1.0, 1.0, 1.0)
    if imgs.shape != gts.shape or imgs.ndim != 3:
        raise CaseError(f"{path}: imgs {imgs.shape} and gts {gts.shape} must be equal 3D shapes")
    array = np.transpose(imgs, (2, 1, 0)).astype(np.float32)  # [z, y, x] -> [i, j, k]
    affine = np.diag([*spacing, 1.0])
    volume = Volume(array, affine, path=str(path), declared_modality="CT", meta={"spacing": spacing})
    labels = np.transpose(gts, (2, 1, 0))
    # MedSAM2's npz images are uint8, already windowed: the model sees imgs / 255, never a second window
    window = [0.0, 255.0] if imgs.dtype == np.uint8 else None
    return Case(path.stem, volume, _structures_from_map(labels, "lesion"), {"image": str(path), "labels": [str(path)]},
                window)


def model_input_window(case: Case) -> dict:
    """The exact intensity range the engine maps to [0, 1] for this case (low, high, where it came from)."""
    from medsam2_engine.windowing import model_window

    volume = case.volume
    if volume.is_rgb:
        return {"low": 0.0, "high": 255.0, "source": "RGB 0-255"}
    return model_window(volume, None, case.window)[0].to_json()


def _find_2d_cases(folder: Path, images: list) -> list:
    masks = [p for p in folder.parent.rglob("*") if p.suffix.lower() in IMAGE_2D_SUFFIXES and p not in images]
    cases = []
    for image_path in sorted(images):
        stem = image_path.stem
        own = sorted(m for m in masks if m.stem.startswith(stem + "_"))
        if not own:
            continue
        volume = load_image(image_path)
        structures = []
        for mask_path in own:
            mask = load_image(mask_path).array
            mask = mask.max(axis=-1) if mask.ndim == 3 else mask
            if mask.shape != volume.spatial_shape:
                raise CaseError(f"mask {mask_path} shape {mask.shape} differs from image {volume.spatial_shape}")
            structures.append(Structure(mask_path.stem[len(stem) + 1:], mask > 0))
        cases.append(Case(stem, volume, structures, {"image": str(image_path), "labels": [str(m) for m in own]}))
    return cases


def _volume_entries(root: Path) -> list:
    """Volume files and DICOM series folders under ``root``."""
    entries = []
    for path in [root, *sorted(root.rglob("*"))]:
        if path.is_file() and _is_volume_file(path):
            entries.append(path)
        elif path.is_dir() and any(_is_dicom_file(f) for f in sorted(path.iterdir())[:3] if f.is_file()):
            entries.append(path)
    return entries


def _spatial_shape(path: Path, cache: dict) -> tuple:
    if path not in cache:
        cache[path] = load_image(path)
    return cache[path].array.shape


def _pair_labels(entries: list) -> dict:
    """``{image path: [label paths]}``: each label with its best-matching image nearby."""
    labels = [e for e in entries if is_label_name(e.name)]
    images = [e for e in entries if e not in labels]
    loaded: dict = {}
    pairs: dict = {}
    for label in labels:
        near = [im for im in images if im == label.parent or im.parent in (label.parent, label.parent.parent)
                or (im.parent.parent == label.parent.parent and im.is_dir() and label.is_dir())]
        shape = _spatial_shape(label, loaded)
        fitting = [im for im in near if _spatial_shape(im, loaded) == shape]
        if not fitting:
            logger.warning("no image of shape %s beside label %s; skipped", shape, label)
            continue
        target = words(label.name) - set(LABEL_WORDS)
        scores = {im: len(words(im.name) & target) for im in fitting}
        best = max(scores.values())
        for im in sorted(im for im, s in scores.items() if s == best):
            pairs.setdefault(im, []).append(label)
    return pairs


def _volume_case(image_path: Path, label_paths: list, root: Path) -> Case:
    volume = load_image(image_path)
    structures = []
    for label_path in label_paths:
        array = _load_label_on(volume, label_path)
        prefix = "_".join(sorted(words(label_path.name) - set(LABEL_WORDS), key=label_path.name.lower().find))
        if len(label_paths) == 1 or not prefix:
            prefix = "label" if len(label_paths) == 1 else label_path.name
        structures.extend(_structures_from_map(np.rint(array).astype(np.int64), prefix))
    name = str(image_path.relative_to(root)).replace("/", "__") if image_path != root else root.name
    return Case(name, volume, structures, {"image": str(image_path), "labels": [str(p) for p in label_paths]})


def find_cases(root: str | Path) -> list:
    """Every case under ``root``, sorted by name; raises CaseError if there is none."""
    root = Path(root)
    if not root.is_dir():
        raise CaseError(f"data folder {root} not found")
    cases = [load_npz_case(p) for p in sorted(root.rglob("*.npz"))]
    image_dirs: dict = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_2D_SUFFIXES and not is_label_name(path.parent.name):
            image_dirs.setdefault(path.parent, []).append(path)
    for folder, files in image_dirs.items():
        cases.extend(_find_2d_cases(folder, files))
    for image_path, label_paths in _pair_labels(_volume_entries(root)).items():
        cases.append(_volume_case(image_path, label_paths, root))
    if not cases:
        raise CaseError(f"no labelled cases under {root} (see medsam2_eval.cases for the layouts)")
    return sorted(cases, key=lambda c: c.name)


def select_structures(case: Case, max_structures: int, min_voxels: int) -> list:
    """The case's largest structures (at most ``max_structures``; 0 means all) above ``min_voxels``."""
    kept = [s for s in case.structures if int(s.mask.sum()) >= min_voxels]
    kept.sort(key=lambda s: (-int(s.mask.sum()), s.name))
    return kept[:max_structures] if max_structures > 0 else kept
