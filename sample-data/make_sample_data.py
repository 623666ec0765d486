"""Make the sample studies deterministically: CT-like and MR-like phantoms and 2D images.

    python sample-data/make_sample_data.py [OUT_DIR]   (default: sample-data/studies)

Volumes are deliberately non-square and non-cubic (so axis mix-ups show) and carry a
real, oblique-free but anisotropic affine. Reference labels go where MONAI Label's
datastore keeps final labels (``labels/final``) for the first study of each kind only,
so the others are left for the user (and the active-learning strategy) to pick.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medsam2_engine.phantoms import ellipsoid, grid

CT_LABELS = {"liver": 1, "spine": 2, "lesion": 3}
MR_LABELS = {"tumour": 1}


def ct_phantom(seed: int, shape=(96, 80, 40), spacing=(0.9, 0.9, 2.5)):
    """Abdomen-like CT in HU with liver, spine and a hypodense liver lesion."""
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-4, 4, size=3)
    body = ellipsoid((48, 40, 20), (44, 34, 60), shape)
    liver = ellipsoid((34 + shift[0], 36 + shift[1], 20 + shift[2] / 2), (20, 16, 12), shape)
    spine = ellipsoid((48, 66, 20), (6, 6, 60), shape)
    lesion = ellipsoid((30 + shift[0], 34 + shift[1], 21 + shift[2] / 2), (5, 5, 3), shape) & liver
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[liver] = 110.0
    hu[spine] = 700.0
    hu[lesion] = 20.0
    hu += rng.normal(0, 12, size=shape).astype(np.float32) * body
    label = np.zeros(shape, np.uint8)
    label[liver] = CT_LABELS["liver"]
    label[spine] = CT_LABELS["spine"]
    label[lesion] = CT_LABELS["lesion"]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-40.0, -30.0, -50.0]
    return np.round(hu).astype(np.int16), label, affine


def mr_phantom(seed: int, shape=(80, 72, 32), spacing=(1.0, 1.0, 3.0)):
    """Brain-like MR (arbitrary units, smooth bias field) with an enhancing tumour."""
    rng = np.random.default_rng(seed)
    head = ellipsoid((40, 36, 16), (36, 32, 20), shape)
    tumour = ellipsoid((48 + rng.uniform(-3, 3), 30 + rng.uniform(-3, 3), 16), (8, 7, 5), shape)
    i, _, _ = grid(shape)
    bias = 1.0 + 0.3 * (i / shape[0] - 0.5)
    mr = np.zeros(shape, np.float32)
    mr[head] = 300.0
    mr[tumour] = 800.0
    mr = mr * bias + rng.normal(0, 15, size=shape).astype(np.float32) * head
    affine = np.diag([*spacing, 1.0])
    return np.clip(mr, 0, None).astype(np.float32), tumour.astype(np.uint8), affine


def image_2d(seed: int, size=(160, 128)):
    """A dermoscopy-like RGB photograph (width x height) with one dark lesion, and its mask."""
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width / 2 + rng.uniform(-15, 15), height / 2 + rng.uniform(-10, 10)
    lesion = ((xx - cx) / 30) ** 2 + ((yy - cy) / 22) ** 2 <= 1.0
    rgb = np.stack([np.full((height, width), v, np.float32) for v in (220, 170, 150)], axis=-1)
    rgb[lesion] = (110, 70, 50)
    rgb += rng.normal(0, 6, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), (lesion * 255).astype(np.uint8)


def main(out_dir: Path) -> None:
    labels_dir = out_dir / "labels" / "final"
    labels_dir.mkdir(parents=True, exist_ok=True)
    for n in range(3):
        hu, label, affine = ct_phantom(seed=n)
        nib.save(nib.Nifti1Image(hu, affine), out_dir / f"ct_phantom_{n}.nii.gz")
        if n == 0:
            nib.save(nib.Nifti1Image(label, affine), labels_dir / f"ct_phantom_{n}.nii.gz")
    for n in range(2):
        mr, label, affine = mr_phantom(seed=10 + n)
        nib.save(nib.Nifti1Image(mr, affine), out_dir / f"mr_phantom_{n}.nii.gz")
        if n == 0:
            nib.save(nib.Nifti1Image(label, affine), labels_dir / f"mr_phantom_{n}.nii.gz")
    for n in range(2):
        rgb, mask = image_2d(seed=20 + n)
        Image.fromarray(rgb).save(out_dir / f"skin_lesion_{n}.png")
        if n == 0:
            Image.fromarray(mask).save(labels_dir / f"skin_lesion_{n}.png")
    print(f"sample studies written to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "studies")
