"""MONAI Label's own SAM 2 task (``monailabel.sam2.infer.Sam2InferTask``, 3D) as a method.

Importing ``monailabel.sam2.infer`` deletes its image-cache folder and starts a clean-up
thread, so it is imported only when this method is built, after pointing
``MONAI_LABEL_DATASTORE_CACHE_PATH`` at a private temporary folder. Its weights are
"downloaded" at start-up: we place the same checkpoint and a config of the same model in
its model folder and point ``MONAI_SAM_MODEL_PT``/``MONAI_SAM_MODEL_CFG`` at URLs whose file
names match, so the download is skipped.

What it is fed, exactly as its code reads requests:

- the image as a NIfTI of the case's voxels (identity orientation, so voxel ``[i, j, k]`` is
  the same voxel for both methods). ``input="raw"`` gives it the intensities as stored (its
  JPEG writer clips them to 0-255, which is its real behaviour on CT in HU);
  ``input="windowed"`` gives it our window mapped to 0-255 to separate windowing from the
  rest of the pipeline;
- clicks as ``[i, j, k]``; the box as ``roi = [i0, j0, i1, j1, k, k + 1]``, the order its
  ``run_3d`` turns into SAM 2's ``(x0, y0, x1, y1)`` (it swaps axes: Slicer's
  ``[i0, i1, j0, j1, k0, k1]`` would be misread). It adds that box on *every* prompted
  slice, and propagates forward only from the lowest prompted slice.

Every request sends the whole interaction so far; the first of each protocol resets its
inference state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from medsam2_engine.checkpoints import config_path
from medsam2_engine.windowing import model_window
from .methods import Method


def write_builtin_model_dir(model_dir: Path, preset, checkpoint: str) -> tuple:
    """Place ``checkpoint`` and the preset's plain sam2 config where the task looks for them."""
    from omegaconf import OmegaConf

    model_dir.mkdir(parents=True, exist_ok=True)
    pt_name = "builtin_" + Path(checkpoint).name
    target = model_dir / pt_name
    if not target.exists():
        os.symlink(os.path.abspath(checkpoint), target)
    cfg = OmegaConf.load(config_path(preset.config))
    for key, value in preset.overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    cfg_name = f"builtin_{preset.name}.yaml".replace("+", "p")
    OmegaConf.save(cfg, model_dir / cfg_name)
    return pt_name, cfg_name


class BuiltinSam2Method(Method):
    name = "monailabel_sam2_builtin"
    own_click_budget = True
    supports_2d = False

    def __init__(self, preset, checkpoint: str, workdir: Path, input_mode: str = "raw", device: str = "cpu"):
        if input_mode not in ("raw", "windowed"):
            raise ValueError(f"builtin input must be 'raw' or 'windowed', got {input_mode!r}")
        self.input_mode = input_mode
        self.device = device
        if input_mode == "windowed":
            self.name = self.name + "_windowed"
        self.workdir = Path(workdir)
        model_dir = self.workdir / "builtin_model"
        pt_name, cfg_name = write_builtin_model_dir(model_dir, preset, checkpoint)
        os.environ["MONAI_SAM_MODEL_PT"] = f"https://offline.invalid/{pt_name}"
        os.environ["MONAI_SAM_MODEL_CFG"] = f"https://offline.invalid/{cfg_name}"
        os.environ["MONAI_LABEL_DATASTORE_CACHE_PATH"] = str(self.workdir / "builtin_cache")
        from monailabel.config import settings

        if settings.MONAI_LABEL_DATASTORE_CACHE_PATH != os.environ["MONAI_LABEL_DATASTORE_CACHE_PATH"]:
            raise RuntimeError(
                "monailabel.config was imported before its cache folder could be made private; run the "
                "built-in baseline in a fresh process (importing it would delete the user's sam2 cache)"
            )
        settings.MONAI_SAM_MODEL_PT = os.environ["MONAI_SAM_MODEL_PT"]
        settings.MONAI_SAM_MODEL_CFG = os.environ["MONAI_SAM_MODEL_CFG"]
        from monailabel.sam2.infer import Sam2InferTask

        self.task = Sam2InferTask(str(model_dir), dimension=3)
        self._images: dict = {}
        self._first = True

    def image_file(self, case) -> str:
        """The case written once as a NIfTI the task can read (voxel order kept)."""
        if case.name not in self._images:
            import nibabel as nib

            array = case.volume.array
            if self.input_mode == "windowed":
                array = np.rint(model_window(case.volume)[0].apply(array) * 255.0).astype(np.float32)
            path = self.workdir / "builtin_images" / f"{len(self._images):04d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([*case.spacing, 1.0])), str(path))
            self._images[case.name] = str(path)
        return self._images[case.name]

    def request(self, case, box, clicks, reset: bool) -> dict:
        request = {
            "image": self.image_file(case),
            "device": self.device,
            "reset_state": reset,
            "foreground": [[int(round(c.i)), int(round(c.j)), int(c.k)] for c in clicks if c.positive],
            "background": [[int(round(c.i)), int(round(c.j)), int(c.k)] for c in clicks if not c.positive],
        }
        if box is not None:
            request["roi"] = [int(box.i0), int(box.j0), int(np.ceil(box.i1)), int(np.ceil(box.j1)), box.k, box.k + 1]
        return request

    def begin(self, case, structure, protocol: str) -> None:
        super().begin(case, structure, protocol)
        self._first = True

    def segment(self, box, clicks) -> tuple:
        import nibabel as nib

        request = self.request(self._case, box, clicks, reset=self._first)
        started = time.perf_counter()
        mask_file, _ = self.task(request)
        seconds = time.perf_counter() - started
        self._first = False
        try:
            mask = np.asarray(nib.load(mask_file).dataobj) > 0
        finally:
            if mask_file and os.path.exists(mask_file):
                os.unlink(mask_file)
        mask = mask.reshape(self._case.volume.array.shape)
        lowest = min([c.k for c in clicks] + ([box.k] if box is not None else []))
        return mask, {"seconds": seconds, "slices_propagated": self._case.volume.array.shape[2] - lowest}
