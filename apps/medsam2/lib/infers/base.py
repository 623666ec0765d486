"""What the tasks share: errors as HTTP answers, result writing, model status (the result JSON
is built in :mod:`.results_json`)."""

from __future__ import annotations

import logging

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.transform.writer import Writer

from ..errors import answered
from ..options import OptionError, result_format

from medsam2_engine.model_source import ModelSource
from medsam2_engine.volume_io import Volume
from medsam2_engine.windowing import CT_WINDOW_PRESETS

logger = logging.getLogger(__name__)

WINDOW_CHOICES = ["auto", *CT_WINDOW_PRESETS, "dicom", "percentile"]
MODALITY_CHOICES = ["auto", "CT", "MR", "other"]


class Sam2Task(InferTask):
    """An interactive (``deepgrow``) task: the Slicer module and OHIF list these for clicks."""

    def __init__(self, models: ModelSource, labels: list, dimension: int, description: str, config: dict):
        super().__init__(type=InferType.DEEPGROW, labels=list(labels), dimension=dimension,
                         description=description, config=config)
        self.models = models

    def is_valid(self) -> bool:
        # Listed even when the checkpoint is missing, so /info can say why it is not ready.
        return True

    def info(self):
        info = super().info()
        info["model_status"] = self.models.status()
        return info

    def __call__(self, request):
        return self.answering(lambda: (result_format(request), self.run(request))[1])

    def answering(self, call):
        """``call()`` with the errors that describe the request as the client's 4xx/503 answers
        (``lib/errors.py``, the one mapping); any other error is a bug here and stays a 500 with its
        traceback in the log. ``result_format`` is checked before any work."""
        return answered(call, f"{self.__class__.__name__} request")

    def run(self, request):
        raise NotImplementedError

    @staticmethod
    def write(request: dict, volume: Volume, label_map: np.ndarray, result: dict):
        """Write ``label_map`` on the image's grid with MONAI Label's writer."""
        fmt = result_format(request)
        if fmt.extension == ".png" and label_map.ndim == 3:
            raise OptionError("result_extension", "'.png' holds a 2D result only; use .nii.gz or .nrrd for a volume")
        data = {
            "image_path": volume.path,
            "pred": label_map,
            "image": label_map,  # the writer looks here when there is no affine (2D images)
            "image_meta_dict": {"affine": volume.affine if label_map.ndim == 3 else None},
            "result_extension": fmt.extension or _default_extension(volume.path),
            "result_dtype": fmt.dtype,
            "result_compress": fmt.compress,
            "result": result,
        }
        return Writer(label="pred", ref_image="image", json="result")(data)


def _default_extension(path: str) -> str:
    lowered = (path or "").lower()
    for ext in (".nii.gz", ".nii", ".nrrd", ".png"):
        if lowered.endswith(ext):
            return ext
    return ".nii.gz"  # DICOM series folders and everything else
