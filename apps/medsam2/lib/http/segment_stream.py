"""The page's segmentation as a stream: ``POST /medsam2/viewer/segment`` (server-sent events).

The same request as ``POST /infer/medsam2_3d`` (the ``params`` form field, the image as a
datastore id, the same checks, roles and session) and the same engine call
(``Interactive3D.segment``), so the final mask is ``/infer``'s voxel for voxel. What differs
is how the answer travels:

- ``event: slice``: each slice as a pass reaches it (the prompted slice first, after one
  decoder call), a *preview* before the protocol's last step (largest component, holes);
- ``event: final``: the result JSON ``/infer`` answers with, and each label's mask as the
  region it occupies (a box, gzipped), never the whole volume; the page replaces the label
  with it;
- ``event: error``: what went wrong, as ``/infer`` would have said it, with its status.

Closing the connection cancels: the propagation stops at its next slice, the label's track
is dropped (its next request starts again from its prompts; the encoded slices stay) and
nothing is answered. Slicer and OHIF keep ``/infer`` and its whole-volume answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time

import numpy as np
from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from medsam2_engine.mask_regions import mask_region
from medsam2_engine.propagation import Cancelled
from medsam2_engine.volume_io import is_picture_file

from ..infers.results_json import run_json, volume_result_json
from ..replicas import annotate_result
from ..shown_volumes import PICTURE_AFFINE
from .errors import as_http
from .inference import checked_request, with_label_upload

logger = logging.getLogger(__name__)

MODEL = "medsam2_3d"
MODEL_2D = "medsam2_2d"  # a picture (PNG, JPEG, BMP, TIFF, one-frame DICOM): SAM 2's image predictor
_END = object()


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class SegmentRun:
    """One stream's work in a thread of its own; events go through a queue to the answer."""

    def __init__(self, task, request: dict, annotate):
        self.task = task
        self.request = request
        self.annotate = annotate  # (result JSON, request) -> the JSON with the replica's notes
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name="medsam2-segment-stream", daemon=True)

    def _on_slice(self, preview) -> None:
        if self.cancelled.is_set():
            raise Cancelled("the page closed the stream")
        region = mask_region(preview.mask)
        if not region.get("empty"):  # from the mask's place on the slice to the slice's voxels
            region["i"] = [n + preview.rows.start for n in region["i"]]
            region["j"] = [n + preview.cols.start for n in region["j"]]
        self.events.put(("slice", {"label": preview.label, "pass": preview.direction, "slice": preview.k,
                                   "step": preview.step, "expected": preview.expected,
                                   "seconds": round(time.perf_counter() - self.started, 3),
                                   "mask": region}))

    def _run(self) -> None:
        try:
            result, warnings = self.task.answering(lambda: self.task.segment(self.request, self._on_slice))
            label_values = self.task.label_values(result)
            out = volume_result_json(result, label_values)
            out["request_warnings"] = warnings
            total = time.perf_counter() - self.started
            load = result.run.timings.get("load", 0.0)
            out["latencies"] = {"pre": round(load, 4), "infer": round(total - load, 4), "write": 0.0,
                                "total": round(total, 4)}
            out = self.annotate(out, self.request)
            labels = {name: {"value": value, "mask": mask_region(result.labels[name].mask)}
                      for name, value in label_values.items()}
            self.events.put(("final", {"result": out, "labels": labels, "shape": list(result.volume.array.shape),
                                       "affine": np.asarray(result.volume.affine).round(6).tolist()}))
        except Cancelled:
            logger.info("segment stream of %s cancelled by the page", self.request.get("_image_id"))
        except Exception as err:  # noqa: BLE001 - the stream's answer says so; the log has the traceback
            self._put_error(err)
        finally:
            self.events.put(_END)

    def _put_error(self, err: Exception) -> None:
        if isinstance(err, HTTPException):
            self.events.put(("error", {"status": err.status_code, "detail": err.detail}))
        else:
            logger.error("segment stream failed", exc_info=err)
            self.events.put(("error", {"status": 500, "detail": ""}))

    async def answer(self, http: Request):
        """The events as they come; the page closing the connection cancels the run."""
        self.thread.start()
        try:
            while True:
                try:
                    item = await asyncio.to_thread(self.events.get, True, 0.5)
                except queue.Empty:
                    if await http.is_disconnected():
                        return
                    continue
                if item is _END:
                    return
                yield _sse(*item)
        finally:
            self.cancelled.set()


class PictureRun(SegmentRun):
    """A picture's segmentation (``/infer/medsam2_2d``'s path, ``Interactive2D.segment``): one plane,
    so no slice events; the final event holds the mask as a one-slice study, as the page shows it."""

    def _run(self) -> None:
        try:
            result, label, warnings, _ = self.task.answering(lambda: self.task.segment(self.request))
            mask = result.mask[:, :, None]
            area = int(mask.sum())
            out = run_json(result.run, result.window, result.modality)
            # no object score: SAM 2's image predictor has none (None, never a made-up value)
            out.update({"dimension": 2, "label_names": {label: 1}, "request_warnings": warnings,
                        "labels": {label: {"voxels": area, "passes": [], "slices": [
                            {"slice": 0, "predicted_iou": round(result.predicted_iou, 4), "object_score": None,
                             "area": area}]}}})
            total = time.perf_counter() - self.started
            out["latencies"] = {"pre": 0.0, "infer": round(total, 4), "write": 0.0, "total": round(total, 4)}
            out = self.annotate(out, self.request)
            self.events.put(("final", {"result": out, "labels": {label: {"value": 1, "mask": mask_region(mask)}},
                                       "shape": list(mask.shape), "affine": PICTURE_AFFINE.tolist()}))
        except Exception as err:  # noqa: BLE001 - the stream's answer says so (HTTP-like), the log the rest
            self._put_error(err)
        finally:
            self.events.put(_END)


def build_route(router, app_instance, user_dependency) -> None:
    """Add ``POST /segment`` to the viewer's ``router`` (lib/http/viewer.py)."""

    @router.post("/segment", summary="Segment in the page's session, streamed: each slice as it is reached, "
                                     "then the final mask as the region it occupies")
    def segment(http: Request, background_tasks: BackgroundTasks,
                image: str = Query(..., description="image id of the datastore"),
                params: str = Form("{}", description="the request fields of POST /infer/medsam2_3d"),
                label: UploadFile = File(None, description="a label file on the study's grid, for a mask_prompt "
                                                           "from 'upload' (deleted once answered)"),
                user=Depends(user_dependency)):
        instance = app_instance()
        uri, checked = as_http(lambda: checked_request(instance, MODEL, image, params, http, user))
        picture = is_picture_file(uri)
        model = MODEL_2D if picture else MODEL
        if label is not None:
            checked = as_http(lambda: with_label_upload(checked, label, uri, background_tasks))
        request = {**json.loads(checked), "image": uri, "model": model}
        task = instance._infers[model]
        replica = instance.settings.replica
        run = (PictureRun if picture else SegmentRun)(task, request, lambda out, req: annotate_result(out, req, replica))
        return StreamingResponse(run.answer(http), media_type="text/event-stream", background=background_tasks,
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
