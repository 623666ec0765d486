"""Encode a study's slices before the first click: the image encoder's work does not depend
on the prompts, so it can be done while the clinician is still looking at the study.

One background thread works through queued studies, encoding whole slices outward from the
slice the clinician is looking at (the page reports it as they scroll, :meth:`EncodeAhead.focus`;
the middle until then; the prompted slices after a request), so the slices a pass stopped
near the structure needs (``exact_stop.py``) are the first encoded, into the image's shared
feature cache (``feature_cache.py``), exactly as the
predictor would (same input tensor, same ``forward_image``, same cache key): a later request
of any session on that image, window and weights finds them encoded, and its masks are the
same as without it. A job is either for a session (the viewer names its tab: the session is
opened, so the volume is read before the click too) or for the image alone (a client that
downloads the study before its first click, a PACS series just fetched): then the first
request's session finds the image's cache. After a session's first request, the slices it
did not reach are queued too (``follow_request``).

It yields to interactive work: it waits while any request is running and takes the network
lock per slice, so a click waits for at most one slice. It stops when the cache or the
store's memory budget would overflow, when its session or cache is evicted, or when
cancelled. Nothing is encoded when the server segments in crop regions by default (a region
is chosen from the prompts, unknown yet; whole slices would be wasted).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from .precision import autocast_for
from .predictor import network_lock
from .prompts import PromptError

logger = logging.getLogger(__name__)


@dataclass
class EncodeJob:
    session_key: tuple | None  # None: for the image, whichever session comes to it
    image: object
    window: object = None
    modality: str | None = None
    focus: int | None = None  # the slice to encode outward from; None: the middle (or the session's focus)
    encoded: int = 0
    stopped: str = ""  # why it ended: "done", "budget", "evicted", "cancelled", "crop region", "error: ..."
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Target:
    """Where a job encodes: the model, the frames, their cache, and whether it is still wanted."""

    predictor: object
    frames: object
    cache: object
    still_held: object  # () -> bool
    touch: object  # () -> None


def centre_out(count: int, focus: int | None = None) -> list:
    """Slice indices outward from ``focus`` (None: the middle, where a structure more often is)."""
    middle = count // 2 if focus is None else min(max(int(focus), 0), count - 1)
    order = [middle]
    for step in range(1, count):
        for index in (middle - step, middle + step):
            if 0 <= index < count:
                order.append(index)
    return order[:count]


def _job_status(job: EncodeJob) -> dict:
    name = "in-memory volume" if hasattr(job.image, "array") else os.path.basename(str(job.image).rstrip("/"))
    return {"image": name, "slices_encoded": job.encoded, "stopped": job.stopped or None}


def _job_id(session_key, image, window, modality) -> tuple:
    from .sessions import image_stamp, window_key

    return (None if session_key is None else tuple(session_key), image_stamp(image), window_key(window, modality))


class EncodeAhead:
    """A single background worker encoding queued studies for a :class:`VolumeSegmenter`.

    To also queue, after a session's first request, the slices it left, the app passes
    :meth:`follow_request` as the segmenter's ``after_first_request`` (main.py wires it).
    """

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self._queue: queue.Queue = queue.Queue()
        self._jobs: dict = {}  # (session key, image, window) -> the latest job for it
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.queued = 0  # jobs accepted since start
        self._running: EncodeJob | None = None
        self._last: EncodeJob | None = None
        self._focus: dict = {}  # (session key, image stamp) -> the slice the clinician looks at

    def request(self, session_key, image, window=None, modality=None) -> EncodeJob:
        """Queue a study (path or Volume) for the session ``session_key`` (None: for the image,
        any session); one unfinished job per (key, image, window) at a time."""
        job_id = _job_id(session_key, image, window, modality)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and not job.finished.is_set():
                return job
            job = EncodeJob(None if session_key is None else tuple(session_key), image, window, modality)
            self._jobs = {k: j for k, j in self._jobs.items() if not j.finished.is_set()}
            self._jobs[job_id] = job
            self.queued += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="medsam2-encode-ahead", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def open_session(self, session_key, image, window=None, modality=None) -> None:
        """Open the session ``session_key``'s first click will use (the study read and windowed),
        encoding nothing: the page asks while the rest of the study is on its way to it."""
        segmenter = self.segmenter
        if session_key is None or segmenter.settings.crop_region.enabled:
            return
        try:
            with segmenter.open(tuple(session_key), image, window, modality) as session:
                segmenter.memory.put(session)
        except PromptError:
            return  # a 2D image: the 2D model opens its own
        except Exception as err:  # noqa: BLE001 - the click opens it again and reports what is wrong
            logger.warning("could not open the session of %s ahead: %s: %s", session_key, type(err).__name__, err)

    def follow_request(self, session, prompted: list | None = None) -> EncodeJob:
        """After a session's first request: the slices it did not reach, outward from its prompts."""
        window, modality = session.window_key
        if prompted:
            self.focus(session.key, session.image, int(sum(prompted) // len(prompted)))
        return self.request(session.key, session.image, window, modality)

    def focus(self, session_key, image, k: int) -> None:
        """The clinician of ``session_key`` now looks at slice ``k`` of ``image``: encode outward from it."""
        from .sessions import image_stamp

        key = (None if session_key is None else tuple(session_key), image_stamp(image))
        with self._lock:
            if len(self._focus) > 1024:  # one entry per tab and study; forget the oldest
                self._focus.pop(next(iter(self._focus)))
            self._focus[key] = int(k)

    def _focus_of(self, job: EncodeJob) -> int | None:
        from .sessions import image_stamp

        with self._lock:
            focus = self._focus.get((job.session_key, image_stamp(job.image)))
        return job.focus if focus is None else focus

    def join(self, timeout: float) -> bool:
        """Wait until every queued job has finished (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [job for job in self._jobs.values() if not job.finished.is_set()]
            if not pending:
                return True
            if not pending[0].finished.wait(max(0.0, deadline - time.monotonic())):
                return False

    def status(self) -> dict:
        """For /info: jobs accepted, waiting, the one running (slices so far) and the last finished."""
        with self._lock:
            waiting = [job for job in self._jobs.values() if not job.finished.is_set()]
            running, last = self._running, self._last
        return {"queued": self.queued, "waiting": sum(job is not running for job in waiting),
                "running": None if running is None else _job_status(running),
                "last": None if last is None else _job_status(last)}

    def cancel(self, session_key) -> None:
        key = None if session_key is None else tuple(session_key)
        with self._lock:
            jobs = [job for job in self._jobs.values() if job.session_key == key]
        for job in jobs:
            job.cancelled.set()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            with self._lock:
                self._running = job
            try:
                job.stopped = self._encode(job)
            except Exception as err:  # noqa: BLE001 - the request itself will encode what is missing
                logger.warning("encode-ahead of %s stopped: %s: %s", job.session_key or job.image,
                               type(err).__name__, err)
                job.stopped = f"error: {type(err).__name__}: {err}"
            finally:
                with self._lock:
                    self._running, self._last = None, job
                job.finished.set()
                logger.info("encode-ahead %s: %d slices (%s)", job.session_key or job.image, job.encoded,
                            job.stopped)

    def _target(self, job: EncodeJob) -> _Target:
        segmenter, store = self.segmenter, self.segmenter.memory
        if job.session_key is None:
            loaded, frames, key, cache = segmenter.prepare_features(job.image, job.window, job.modality)
            return _Target(loaded.model, frames, cache, lambda: store.holds_features(key, cache),
                           lambda: store.touch_features(key))
        # as a request opens it (same key, image, window): the first click finds this session
        with segmenter.open(job.session_key, job.image, job.window, job.modality) as session:
            store.put(session)
        return _Target(session.model.model, session.frames, session.feature_cache,
                       lambda: store.peek(job.session_key) is session,
                       lambda: store.touch_features(session.feature_cache.key))

    def _encode(self, job: EncodeJob) -> str:
        if job.cancelled.is_set():
            return "cancelled"
        settings = self.segmenter.settings
        if settings.crop_region.enabled:
            return "crop region"  # requests segment regions chosen from their prompts: whole slices unused
        if job.session_key is None and not settings.share_features:
            return "sharing off"  # no session would read the image's own cache
        self.segmenter.wait_idle()
        try:
            target = self._target(job)
        except PromptError:
            return "not a volume"  # a 2D image: no slices to encode
        predictor, frames, cache = target.predictor, target.frames, target.cache
        store = self.segmenter.memory
        budget = store.limits.max_memory_mb * 2**20
        slice_bytes = None
        device = self.segmenter.models.device
        done: set = set()
        while len(done) < len(frames):
            index = next(k for k in centre_out(len(frames), self._focus_of(job)) if k not in done)
            done.add(index)
            if job.cancelled.is_set():
                return "cancelled"
            if not target.still_held():
                return "evicted"
            if slice_bytes is not None and (cache.bytes + slice_bytes > cache.max_bytes
                                            or store.memory_bytes() + slice_bytes > budget):
                return "budget"
            key = frames.key(index)
            if key in cache:
                continue
            self.segmenter.wait_idle()  # a clinician's request goes first, whole
            with network_lock(predictor), torch.inference_mode(), \
                    autocast_for(device, settings.cpu_bf16):
                if key in cache:  # a request encoded it while this waited
                    continue
                # as sam2's _get_image_feature prepares a frame
                image = frames[index].to(predictor.device).float().unsqueeze(0)
                backbone_out = predictor.forward_image(image)
                cache.put(key, backbone_out)
            target.touch()
            slice_bytes = slice_bytes or sum(t.numel() * t.element_size() for t in backbone_out["backbone_fpn"])
            job.encoded += 1
        return "done"
