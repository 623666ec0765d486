"""Encode a study's slices before the first click: the image encoder's work does not depend
on the prompts, so it can be done while the clinician is still looking at the study.

One background thread works through queued studies. For each it opens (or finds) the
session the first request will use, then encodes whole slices from the middle outwards into
the session's feature cache, exactly as the predictor would (same input tensor, same
``forward_image``, same cache key): the first request then finds them encoded and its masks
are the same as without it. It yields to interactive work by taking the network lock per
slice (a click waits for at most one slice), and stops when the session's feature cache or
the store's memory budget would overflow, when the session is evicted or replaced, or when
cancelled. Only the medsam2/sam2 protocols' whole slices are encoded (a crop region is
chosen from the prompts, which are not known yet).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

import torch

from .precision import autocast_for
from .predictor import network_lock

logger = logging.getLogger(__name__)


@dataclass
class EncodeJob:
    session_key: tuple
    image: object
    window: object = None
    modality: str | None = None
    encoded: int = 0
    stopped: str = ""  # why it ended: "done", "budget", "evicted", "cancelled", "error: ..."
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


def centre_out(count: int) -> list:
    """Slice indices from the middle outwards (the structure is more often central)."""
    middle = count // 2
    order = [middle]
    for step in range(1, count):
        for index in (middle - step, middle + step):
            if 0 <= index < count:
                order.append(index)
    return order[:count]


class EncodeAhead:
    """A single background worker encoding queued studies for a :class:`VolumeSegmenter`."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self._queue: queue.Queue = queue.Queue()
        self._jobs: dict = {}  # session key -> the latest job for it
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self, session_key, image, window=None, modality=None) -> EncodeJob:
        """Queue a study (path or Volume) for the session ``session_key``; one job per key at a time."""
        key = tuple(session_key)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.finished.is_set():
                return job
            job = self._jobs[key] = EncodeJob(key, image, window, modality)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="medsam2-encode-ahead", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def cancel(self, session_key) -> None:
        with self._lock:
            job = self._jobs.get(tuple(session_key))
        if job is not None:
            job.cancelled.set()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job.stopped = self._encode(job)
            except Exception as err:  # noqa: BLE001 - the request itself will encode what is missing
                logger.exception("encode-ahead of %s failed", job.session_key)
                job.stopped = f"error: {type(err).__name__}: {err}"
            finally:
                job.finished.set()
                logger.info("encode-ahead %s: %d slices (%s)", job.session_key, job.encoded, job.stopped)

    def _session(self, job: EncodeJob):
        segmenter = self.segmenter
        # as a request opens it (same key, image, window): the first click finds this session
        with segmenter.open(job.session_key, job.image, job.window, job.modality) as session:
            segmenter.sessions.put(session)
        return session

    def _encode(self, job: EncodeJob) -> str:
        if job.cancelled.is_set():
            return "cancelled"
        session = self._session(job)
        predictor, frames, cache = session.model.model, session.frames, session.feature_cache
        store = self.segmenter.sessions
        budget = store.limits.max_memory_mb * 2**20
        slice_bytes = None
        device = self.segmenter.models.device
        for index in centre_out(len(frames)):
            if job.cancelled.is_set():
                return "cancelled"
            if store.peek(job.session_key) is not session:
                return "evicted"
            if slice_bytes is not None and (cache.bytes + slice_bytes > cache.max_bytes
                                            or store.memory_bytes() + slice_bytes > budget):
                return "budget"
            key = frames.key(index)
            if key in cache:
                continue
            with network_lock(predictor), torch.inference_mode(), \
                    autocast_for(device, self.segmenter.settings.cpu_bf16):
                # as sam2's _get_image_feature prepares a frame
                image = frames[index].to(predictor.device).float().unsqueeze(0)
                backbone_out = predictor.forward_image(image)
                cache.put(key, backbone_out)
            slice_bytes = slice_bytes or sum(t.numel() * t.element_size() for t in backbone_out["backbone_fpn"])
            job.encoded += 1
        return "done"
