"""MedSAM-2 3D: clicks or a box on any slice, propagated through the volume both ways."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from medsam2_engine.engine import VolumeSegmenter
from medsam2_engine.prompts import PromptError

from .base import MODALITY_CHOICES, WINDOW_CHOICES, Sam2Task
from .request import parse_request, positive_int, request_flag, session_key_for

logger = logging.getLogger(__name__)


class Interactive3D(Sam2Task):
    def __init__(self, segmenter: VolumeSegmenter, labels: list):
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
                "correction_stop": segmenter.settings.correction_stop.enabled,
                "crop_region": segmenter.settings.roi.enabled,
                "reset_state": False,
            },
        )
        self.segmenter = segmenter

    def run(self, request):
        started = time.perf_counter()
        default = self.segmenter.settings.early_stop
        early_stop = dataclasses.replace(
            default,
            enabled=request_flag(request, "early_stop", default.enabled),
            patience=positive_int(request.get("early_stop_patience", default.patience), "early_stop_patience"),
        )
        correction_stop = dataclasses.replace(
            self.segmenter.settings.correction_stop,
            enabled=request_flag(request, "correction_stop", self.segmenter.settings.correction_stop.enabled),
        )
        roi = dataclasses.replace(
            self.segmenter.settings.roi, enabled=request_flag(request, "crop_region", self.segmenter.settings.roi.enabled)
        )
        volume = self.segmenter.volume(session_key_for(request), request["image"])
        if not volume.is_3d:
            raise PromptError(
                f"image {session_key_for(request)[1]} is 2D (shape {list(volume.array.shape)}); use the 2D model for it"
            )
        parsed = parse_request(request, volume.array.shape, self.labels)
        result = self.segmenter.segment(
            request["image"],
            parsed.prompts,
            session_key=parsed.session_key,
            window=parsed.window,
            modality=parsed.modality,
            reset_labels=parsed.reset_labels,
            early_stop=early_stop,
            correction_stop=correction_stop,
            roi=roi,
        )
        infer_done = time.perf_counter()

        names = list(result.labels)
        if len(names) == 1:
            label_map = result.labels[names[0]].mask.astype(np.uint8)  # value 1, as Slicer expects
            label_names = {names[0]: 1}
        else:
            label_map = np.zeros(result.volume.array.shape, np.uint8)
            label_names = {}
            for name in names:
                value = self.labels.index(name) + 1
                label_map[result.labels[name].mask] = value
                label_names[name] = value
        out = self.common_json(result, result.timings)
        out.update(
            {
                "label_names": label_names,
                "session": result.session,
                "protocol": result.protocol,
                "protocol_options": result.options,
                "engine_warnings": result.warnings,  # e.g. a label's track dropped after a failure
                "labels": {
                    name: {
                        "prompted_slices": r.prompted_slices,
                        "passes": r.passes,
                        "reused_previous_result": r.reused,
                        "restarted": r.restarted,
                        "crop_region": r.roi,
                        "voxels": int(r.mask.sum()),
                        "slices": [{"slice": k, **v} for k, v in r.slices.items()],
                    }
                    for name, r in result.labels.items()
                },
            }
        )
        file_name, out = self.write(request, result.volume, label_map, out)
        total = time.perf_counter() - started
        out["latencies"] = {
            "pre": round(result.timings.get("load", 0.0), 4),
            "infer": round(infer_done - started - result.timings.get("load", 0.0), 4),
            "write": round(total - (infer_done - started), 4),
            "total": round(total, 4),
        }
        return file_name, out
