"""MedSAM-2 2D: clicks or a box on a photograph, radiograph, or one slice of a volume."""

from __future__ import annotations

import time

import numpy as np

from medsam2_engine.image_segmenter import ImageSegmenter
from medsam2_engine.prompts import PromptError

from .base import MODALITY_CHOICES, WINDOW_CHOICES, Sam2Task
from ..options import integer
from .request import parse_prompts, read_head
from .results_json import run_json


class Interactive2D(Sam2Task):
    def __init__(self, segmenter: ImageSegmenter, labels: list, prefetch=None):
        super().__init__(
            segmenter.models,
            labels,
            dimension=2,
            description="MedSAM-2 2D: click or box on a 2D image or on one slice",
            config={"window": WINDOW_CHOICES, "modality": MODALITY_CHOICES},
        )
        self.segmenter = segmenter
        self.prefetch = prefetch  # (image, window=, modality=): a slice segmented, a 3D request may follow

    def segment(self, request) -> tuple:
        """(ImageResult, label, the request's warnings, head): the request's prompts on its plane, in its
        session. The one path of ``/infer`` and the page's stream (``lib/http/segment_stream.py``)."""
        head = read_head(request, self.labels)
        with self.segmenter.open(head.session_key, request["image"], head.window, head.modality) as session:
            volume = session.volume
            parsed = parse_prompts(request, head, volume.spatial_shape, self.labels)
            if len(parsed.prompts) != 1:
                raise PromptError(f"the 2D model segments one label per request, got {sorted(parsed.prompts)}")
            label, prompts = next(iter(parsed.prompts.items()))
            if prompts.masks:  # SAM 2's image predictor takes a mask only as its own low-resolution logits
                raise PromptError("lasso: the 2D model takes points, boxes and strokes; an outline (a mask) "
                                  "needs the 3D model (medsam2_3d), which gives SAM 2 masks")
            slice_index = self._slice(request, prompts, volume) if volume.is_3d else None
            result = self.segmenter.segment(session, prompts, slice_index)
        return result, label, parsed.warnings, head

    def run(self, request):
        started = time.perf_counter()
        result, label, warnings, head = self.segment(request)
        volume = result.volume
        if volume.is_3d and self.prefetch is not None:
            self.prefetch(request["image"], window=head.window, modality=head.modality)
        if volume.is_3d:
            # Slicer imports a 2D result as a full volume with only this slice filled
            label_map = np.zeros(volume.array.shape, np.uint8)
            label_map[:, :, result.slice_index] = result.mask
        else:
            label_map = result.mask.astype(np.uint8)
        out = run_json(result.run, result.window, result.modality)
        out.update(
            {
                "label_names": {label: 1},
                "slice": result.slice_index,
                "predicted_iou": round(result.predicted_iou, 4),
                "embedding_reused": result.embedding_reused,
                "request_warnings": warnings,
            }
        )
        file_name, out = self.write(request, volume, label_map, out)
        out["latencies"] = {"total": round(time.perf_counter() - started, 4)}
        return file_name, out

    @staticmethod
    def _slice(request: dict, prompts, volume) -> int:
        """The slice to segment: ``slice`` if given, else where the prompts are."""
        prompted = prompts.slices()
        if request.get("slice") not in (None, ""):
            k = integer(request["slice"], "slice")
            if not 0 <= k < volume.num_slices:
                raise PromptError(f"slice: {k} is outside [0, {volume.num_slices - 1}]")
            if prompted and k not in prompted:
                raise PromptError(f"slice: {k}, but the prompts are on slices {prompted}")
            return k
        if len(prompted) == 1:
            return prompted[0]
        # Slicer appends each new click, so the last one marks the slice being worked on
        return prompts.clicks[-1].k if prompts.clicks else prompts.boxes[-1].k
