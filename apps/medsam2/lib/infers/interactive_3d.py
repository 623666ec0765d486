"""MedSAM-2 3D: clicks or a box on any slice, propagated through the volume both ways.

A request's path: ``open`` the session (the image read once, or the session that has it),
check the prompts against its volume, ``segment`` it, write the label map and the JSON
(:mod:`.results_json`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from medsam2_engine.volume_segmenter import SegmentOptions, VolumeSegmenter

from .base import MODALITY_CHOICES, WINDOW_CHOICES, Sam2Task
from .mask_sources import MaskSources
from .request import IMAGE_ID_FIELD, early_stop_option, parse_prompts, read_head, request_flag, uploaded_label
from .results_json import volume_result_json

logger = logging.getLogger(__name__)


class Interactive3D(Sam2Task):
    def __init__(self, segmenter: VolumeSegmenter, labels: list, datastore=None):
        early = segmenter.settings.early_stop
        super().__init__(
            segmenter.models,
            labels,
            dimension=3,
            description="MedSAM-2: click or box on one slice, SAM 2 memory carries the mask through the volume",
            config={
                "window": WINDOW_CHOICES,
                "modality": MODALITY_CHOICES,
                "early_stop": early.enabled,
                "early_stop_patience": early.patience,
                "exact_stop": early.exact_stop,
                "correction_stop": segmenter.settings.correction_stop.enabled,
                "crop_region": segmenter.settings.crop_region.enabled,
                "reset_state": False,
            },
        )
        self.segmenter = segmenter
        self.datastore = datastore  # () -> the app's datastore: saved labels as mask prompts and locks

    def options(self, request: dict) -> SegmentOptions:
        """The engine's options with the request's overrides (strict: a bad value is a 400)."""
        settings = self.segmenter.settings
        return SegmentOptions(
            early_stop=early_stop_option(request, settings.early_stop),
            correction_stop=dataclasses.replace(
                settings.correction_stop,
                enabled=request_flag(request, "correction_stop", settings.correction_stop.enabled)),
            crop_region=dataclasses.replace(
                settings.crop_region, enabled=request_flag(request, "crop_region", settings.crop_region.enabled)),
        )

    def segment(self, request: dict, on_slice=None):
        """(VolumeResult, the request's warnings): the request's prompts segmented in its session.

        The one path of ``/infer`` and the page's stream (``lib/http/segment_stream.py``), so both
        give the same voxels for the same prompts; ``on_slice`` (SlicePreview) streams the passes.
        """
        head, options = read_head(request, self.labels), self.options(request)
        with self.segmenter.open(head.session_key, request["image"], head.window, head.modality) as session:
            sources = MaskSources(session, self.datastore() if self.datastore else None, request.get(IMAGE_ID_FIELD),
                                  uploaded_label(request), self.labels)
            parsed = parse_prompts(request, head, session.volume.array.shape, self.labels, sources)
            result = self.segmenter.segment(session, parsed.prompts, options, reset_labels=parsed.reset_labels,
                                            on_slice=on_slice)
        return result, parsed.warnings

    def label_values(self, result) -> dict:
        """label -> its value in the answer's label map: 1 for one label (as Slicer expects), else its
        1-based place in the app's labels."""
        names = list(result.labels)
        if len(names) == 1:
            return {names[0]: 1}
        return {name: self.labels.index(name) + 1 for name in names}

    def run(self, request):
        started = time.perf_counter()
        result, warnings = self.segment(request)
        infer_done = time.perf_counter()

        label_names = self.label_values(result)
        label_map = np.zeros(result.volume.array.shape, np.uint8)
        for name, value in label_names.items():
            label_map[result.labels[name].mask] = value
        out = volume_result_json(result, label_names)
        out["request_warnings"] = warnings
        file_name, out = self.write(request, result.volume, label_map, out)
        total = time.perf_counter() - started
        load = result.run.timings.get("load", 0.0)
        out["latencies"] = {
            "pre": round(load, 4),
            "infer": round(infer_done - started - load, 4),
            "write": round(total - (infer_done - started), 4),
            "total": round(total, 4),
        }
        return file_name, out
