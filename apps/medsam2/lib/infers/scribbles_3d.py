"""3D Slicer's Scribbles section, served by SAM 2: painted foreground and background scribbles.

The MONAI Label module (0.8.5, ``onUpdateScribbles``) exports every visible segment,
``foreground_scribbles`` and ``background_scribbles`` included, as one label volume on the
image's grid and sends it as the ``label`` file of ``POST /infer/<model>`` with
``label_info`` (``[{"name", "id"}]``: the value of each segment in that volume) and
``selected_label_name`` (the structure being segmented). A model of type ``scribbles`` is
listed in that section, so Slicer users get scribbles without a plug-in.

Each painted region (a connected part of the scribbles on one slice) becomes points, as a
drawn stroke does (:mod:`medsam2_engine.drawn_prompts`): its voxel nearest its centre, then
the voxels farthest from those chosen so far, up to ``STROKE_POINTS``. Foreground points are
the structure's, background points its outside; then the 3D model runs as for clicks.
"""

from __future__ import annotations

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType
from scipy import ndimage

from medsam2_engine.drawn_prompts import STROKE_POINTS
from medsam2_engine.prompts import PromptError

from ..options import OptionError
from .interactive_3d import Interactive3D
from .request import LABEL_UPLOAD_FIELD, uploaded_label

LAYERS = {"foreground_scribbles": "foreground", "background_scribbles": "background"}


def painted_points(painted: np.ndarray) -> list:
    """``[[i, j, k], ...]``: points spread over each connected painted region of each slice."""
    points = []
    for k in np.flatnonzero(painted.any(axis=(0, 1))):
        regions, count = ndimage.label(painted[:, :, k])
        for region in range(1, count + 1):
            voxels = np.argwhere(regions == region).astype(float)
            chosen = [int(np.argmin(np.linalg.norm(voxels - voxels.mean(axis=0), axis=1)))]
            distance = np.linalg.norm(voxels - voxels[chosen[0]], axis=1)
            while len(chosen) < STROKE_POINTS and distance.max() >= 2.0:
                chosen.append(int(np.argmax(distance)))
                distance = np.minimum(distance, np.linalg.norm(voxels - voxels[chosen[-1]], axis=1))
            points += [[int(voxels[n, 0]), int(voxels[n, 1]), int(k)] for n in chosen]
    return points


class Scribbles3D(Interactive3D):
    def __init__(self, segmenter, labels: list, datastore=None):
        super().__init__(segmenter, labels, datastore)
        self.type = InferType.SCRIBBLES
        self.description = ("MedSAM-2 from scribbles: paint foreground and background, SAM 2 segments the "
                            "selected structure through the volume")

    def run(self, request):
        return super().run(self.as_points(request))

    def as_points(self, request: dict) -> dict:
        """The request with the scribbles volume turned into foreground and background points."""
        path = uploaded_label(request)
        if path is None:
            raise OptionError("label", "scribbles: send the scribbles as the label file (Slicer's Scribbles "
                                       "section does), with label_info naming foreground_scribbles")
        info = request.get("label_info")
        if not isinstance(info, list) or not all(isinstance(e, dict) for e in info):
            raise OptionError("label_info", 'expected [{"name": ..., "id": ...}] for the segments in the label file')
        values = {LAYERS[e.get("name")]: e.get("id", e.get("idx")) for e in info if e.get("name") in LAYERS}
        if "foreground" not in values:
            raise OptionError("label_info", "no foreground_scribbles segment: paint some foreground first")
        from medsam2_engine.volume_io import ImageReadError, load_image

        try:
            scribbles = np.round(load_image(path).array)
        except ImageReadError as err:  # the message names the server's temporary file: not the caller's
            raise OptionError("label", "the scribbles label file cannot be read as an image "
                                       "(send NIfTI or NRRD on the study's grid)") from err
        converted = {key: value for key, value in request.items() if key not in ("label", LABEL_UPLOAD_FIELD)}
        for layer, value in values.items():
            converted[layer] = painted_points(scribbles == value)
        if not converted["foreground"]:
            raise PromptError("foreground_scribbles: nothing is painted in it")
        converted["label"] = request.get("label") or request.get("selected_label_name")
        return converted
