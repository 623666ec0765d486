"""MedSAM-2 one-prompt: segment a study from the datastore's labelled studies, with no clicks.

Type ``segmentation`` (Slicer lists it under Auto-segmentation, OHIF in its segmentation
panel): the user opens a study and presses Run. Request fields, all optional but ``image``:

- ``image``: the target study (datastore id);
- ``label``: the name given to the result (default: the first of ``--conf labels``);
- ``label_value``: the structure's value in the support label maps. Not needed when the
  maps are binary, their label info names ``label``, or the map holds the value of ``label``'s
  place in ``--conf labels`` (as the page names a saved label's values); required otherwise;
- ``support``: a study id, a comma-separated list or a list of ids to use as support
  (default: every other study with a ``support_tag`` label, the most similar chosen);
- ``support_tag``: the support labels' tag (default ``final``);
- ``support_session``: a study id this client (``client_id``) has just segmented with
  ``medsam2_3d``; that session's mask of ``label`` is the support (with ``support`` also
  given, the datastore supports join it);
- ``max_supports`` (2), ``support_slices`` (3 per support), ``max_candidates`` (8),
  ``window``, ``modality``, ``early_stop``, ``early_stop_patience``.

The result JSON says which supports were used and why (``supports``), the start slice,
the per-slice and overall ``confidence``, and ``found`` (false: empty mask, not a guess).

Batch mode, ``POST /batch/infer/medsam2_one_prompt`` (e.g. ``{"images": "unlabeled",
"label_value": 1}``): every study without a final label is segmented from the labelled
ones; the result is saved as an ``original`` label for clinicians to correct (whatever
``label_tag`` the request names: a final label is never written or overwritten), and the
study's confidence is recorded in the datastore under ``image info["medsam2_one_prompt"]``
for the active-learning strategy. Studies that have a final label are skipped. On a
machine without CUDA add ``"multi_gpu": false`` (MONAI Label's batch runner otherwise
divides the studies among zero GPUs and fails).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Callable

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType

from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
from medsam2_engine.one_prompt import OnePromptError, OnePromptSegmenter, OnePromptSettings, Support

from .base import MODALITY_CHOICES, WINDOW_CHOICES, Sam2Task
from ..options import identifier
from .request import early_stop_option, modality_option, positive_int, request_flag, session_key_for, window_option
from .results_json import pass_json, query_json, run_json, slices_json, support_json
from .support_studies import DEFAULT_SUPPORT_TAG, candidate_ids, has_label, image_id_for, load_supports

logger = logging.getLogger(__name__)

CONFIDENCE_KEY = "medsam2_one_prompt"  # image info key read by active learning


def one_prompt_settings(engine: EngineSettings) -> OnePromptSettings:
    """The engine's settings that one-prompt shares: early stop, feature cache bound, CPU bf16."""
    return OnePromptSettings(early_stop=engine.early_stop, feature_cache_mb=engine.feature_cache_mb,
                             cpu_bf16=engine.cpu_bf16)


class OnePrompt(Sam2Task):
    """A thin task over the one-prompt service (``segmenter``, built in main.py over the app's one
    StudyMemory); ``interactive``: the 3D service, whose sessions hold what users just segmented."""

    def __init__(self, segmenter: OnePromptSegmenter, labels: list, datastore: Callable[[], Datastore],
                 interactive: VolumeSegmenter | None = None):
        settings = segmenter.settings
        super().__init__(
            segmenter.models,
            labels,
            dimension=3,
            description="MedSAM-2 one-prompt: segment this study from labelled studies in SAM 2's memory, no clicks",
            config={
                "label_value": "",
                "support": "",
                "support_tag": DEFAULT_SUPPORT_TAG,
                "max_supports": settings.max_supports,
                "support_slices": settings.slices_per_support,
                "window": WINDOW_CHOICES,
                "modality": MODALITY_CHOICES,
                "early_stop": settings.early_stop.enabled,
            },
        )
        self.type = InferType.SEGMENTATION  # runs without clicks
        self.segmenter = segmenter
        self.datastore = datastore
        self.interactive = interactive  # its sessions hold what users just segmented
        self._read_here = threading.local()  # uri -> Volume study_kind read, for this thread's next segment

    def run(self, request):
        started = time.perf_counter()
        datastore = self.datastore()
        target_id = request.get("_image_id") or image_id_for(datastore, request["image"])
        if request_flag(request, "save_label", False) and has_label(datastore, target_id, DefaultLabelTag.FINAL):
            return None, {"skipped": f"{target_id} has a final label; one-prompt never overwrites it"}
        target, mask, out = self.segment(request)
        file_name, out = self.write(request, target, mask.astype(np.uint8), out)
        out["latencies"] = {"total": round(time.perf_counter() - started, 4)}
        if request_flag(request, "save_label", False):
            return None, self._save(datastore, out["target"], file_name, out["label"], out)
        return file_name, out

    def segment(self, request: dict, cancelled=None) -> tuple:
        """(the target Volume, its mask on the app's grid, the result JSON): the one path of /infer, the
        batch route and the page's runs (lib/one_prompt_runs.py). ``cancelled``: an Event that stops it."""
        datastore = self.datastore()
        target_id = request.get("_image_id") or image_id_for(datastore, request["image"])
        label = request.get("label") or self.labels[0]
        tag = identifier(request.get("support_tag") or DEFAULT_SUPPORT_TAG, "support_tag")
        session_support = self._session_support(request, datastore, label)
        supports, rejected = [], {}
        if session_support is None or request.get("support"):
            ids = candidate_ids(datastore, target_id, request.get("support"), tag,
                                positive_int(request.get("max_candidates", 8), "max_candidates"))
            supports, rejected = load_supports(datastore, ids, tag, label, request.get("label_value"),
                                               self.labels)
        supports = ([session_support] if session_support else []) + supports
        if not supports:
            raise OnePromptError("no usable support study: " + "; ".join(f"{k}: {v}" for k, v in rejected.items()))
        target = getattr(self._read_here, "volumes", {}).pop(request["image"], None)  # study_kind read it
        if target is None:
            target = self.segmenter.memory.read(request["image"])  # as encode-ahead read it, if it did
        window, modality = window_option(request), modality_option(request)
        if target.is_3d:
            out, mask = self._volume(request, target, supports, rejected, window, modality, cancelled)
        else:
            out, mask = self._image(target, supports, rejected, window, modality)
        out.update({"label": label, "label_names": {label: 1}, "target": target_id})
        return target, mask, out

    def study_kind(self, image_id: str) -> tuple:
        """(is 3D, modality as the model sees it) of a datastore study: which studies a prompt study fits.
        The study as read is kept for this thread's next :meth:`segment` of it (a run checks a target's
        kind, then segments it: one read, not two)."""
        from medsam2_engine.windowing import model_window

        uri = self.datastore().get_image_uri(image_id)
        volume = self.segmenter.memory.read(uri)
        self._read_here.volumes = {uri: volume}  # one at most: the last study this thread checked
        return volume.is_3d, model_window(volume)[1]

    def _session_support(self, request: dict, datastore: Datastore, label: str) -> Support | None:
        """``support_session``: a study this client has just segmented with medsam2_3d, label ``label``."""
        support_id = request.get("support_session")
        if not support_id:
            return None
        if self.interactive is None:
            raise OnePromptError("support_session: this app keeps no interactive sessions")
        client = session_key_for(request)[0]
        segmented = self.interactive.segmented((client, identifier(support_id, "support_session")), label)
        if segmented is None:
            raise OnePromptError(
                f"support_session: client {client!r} has no segmented {label!r} on {support_id}; segment it with "
                "medsam2_3d first (same client_id and label)"
            )
        return Support(f"session:{support_id}", segmented.volume, segmented.mask)

    def _volume(self, request, volume, supports, rejected, window, modality, cancelled=None):
        base = self.segmenter.settings
        settings = dataclasses.replace(
            base,
            max_supports=positive_int(request.get("max_supports", base.max_supports), "max_supports"),
            slices_per_support=positive_int(request.get("support_slices", base.slices_per_support),
                                             "support_slices"),
            early_stop=early_stop_option(request, base.early_stop),
        )
        volumes = [s for s in supports if s.volume.is_3d]
        result = self.segmenter.segment_volume(request["image"], volumes or supports, window, modality, settings,
                                               cancelled, volume=volume)
        out = run_json(result.run, result.window, result.modality)
        out.update({
            "found": result.found,
            "confidence": result.confidence,
            "start_slice": result.start_slice,
            "supports": [support_json(c) for c in result.supports] + _not_loaded(rejected),
            "passes": [pass_json(p) for p in result.passes],
            "probes": [{"slice": k, "confidence": v} for k, v in result.probes.items()],
            "slices": slices_json(result.slices),
            "voxels": int(result.mask.sum()),
            "warnings": result.warnings,
        })
        return out, result.mask

    def _image(self, target, supports, rejected, window, modality):
        """A 2D target: the first 2D support (by id) is the prompted image."""
        result = self.segmenter.segment_image(target, supports, window, modality)
        query = result.query
        out = run_json(result.run, result.window, result.modality)
        out.update({
            **query_json(query),
            "supports": [support_json(c) for c in result.supports] + _not_loaded(rejected),
            "warnings": [] if query.found else ["the support's structure was not found; the mask is empty"],
        })
        return out, query.mask

    @staticmethod
    def _save(datastore: Datastore, target_id: str, file_name: str, label: str, out: dict) -> dict:
        """Store the result as the study's ORIGINAL label and its confidence in the image info."""
        try:
            label_id = datastore.save_label(target_id, file_name, DefaultLabelTag.ORIGINAL,
                                            {"model": "medsam2_one_prompt", "label": label,
                                             "confidence": out["confidence"], "found": out["found"],
                                             "supports": [s["name"] for s in out["supports"] if s["used"]]})
        finally:
            if file_name and os.path.exists(file_name):
                os.unlink(file_name)
        datastore.update_image_info(target_id, {CONFIDENCE_KEY: {
            "confidence": out["confidence"],
            "found": out["found"],
            "label": label,
            "supports": [s["name"] for s in out["supports"] if s["used"]],
            "random_weights": out["model"]["random_weights"],
            "ts": int(time.time()),
        }})
        out["saved_label"] = {"id": label_id, "tag": DefaultLabelTag.ORIGINAL.value}
        return out


def _not_loaded(rejected: dict) -> list:
    """Support studies the datastore offered but that could not be used, with why."""
    return [{"name": k, "similarity": None, "used": False, "reason": v, "slices": []} for k, v in rejected.items()]
