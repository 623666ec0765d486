"""One-prompt runs: a saved structure of one study segments the same structure in others, off
the request, for a person to review.

A run belongs to the user who started it (one running at a time per user; the next is
refused until it ends or is cancelled). Each target is segmented in turn by the one-prompt
task's own path (``OnePrompt.segment``); its mask waits in the run, in memory, until a person
decides: accept saves it (or their correction of it) as the study's final label through
``PUT /datastore/label``, which records the run here; reject drops it. Nothing is saved
otherwise. A restart of the server drops the runs that were waiting (never a saved label).

``kind``: ``review`` (targets chosen by the user) or ``follow-up`` (the same patient's later
study, lib/patients.py). The routes are lib/http/one_prompt.py.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from medsam2_engine.label_structures import stack_bytes
from medsam2_engine.model_source import ModelNotReady
from medsam2_engine.sessions import MemoryBusy
from medsam2_engine.propagation import Cancelled

from .options import OptionError

logger = logging.getLogger(__name__)

KEEP_RUNS_PER_USER = 5
WITHOUT_LOG_IN = "local"  # every run's owner when the server asks no one to log in


def run_owner(user_name: Optional[str]) -> str:
    return user_name or WITHOUT_LOG_IN
# target states: waiting -> segmenting -> ready (to review) -> accepted | rejected; or failed, skipped, cancelled
DECIDED = ("accepted", "rejected")


@dataclass
class RunTarget:
    image: str
    state: str = "waiting"
    confidence: Optional[float] = None
    found: Optional[bool] = None
    voxels: Optional[int] = None
    seconds: Optional[float] = None
    note: str = ""  # why it failed or was skipped, in words
    saved_version: Optional[str] = None
    changed_voxels: Optional[int] = None  # accepted: voxels the person changed before saving
    mask_bytes: Optional[bytes] = field(default=None, repr=False)  # the page's format (labelmap.js)
    mask_packed: Optional[tuple] = field(default=None, repr=False)  # (bits, shape): for the change on accept

    def json(self) -> dict:
        return {"image": self.image, "state": self.state, "confidence": self.confidence, "found": self.found,
                "voxels": self.voxels, "seconds": self.seconds, "note": self.note,
                "saved_version": self.saved_version, "changed_voxels": self.changed_voxels,
                "corrected": None if self.changed_voxels is None else self.changed_voxels > 0}

    def mask(self) -> Optional[np.ndarray]:
        if self.mask_packed is None:
            return None
        bits, shape = self.mask_packed
        return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


@dataclass
class OnePromptRun:
    id: str
    user: str
    kind: str
    support: str
    label: str
    label_value: Optional[int]
    targets: list
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    state: str = "running"  # running, done, cancelled, failed
    error: str = ""
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def target(self, image: str) -> RunTarget:
        for t in self.targets:
            if t.image == image:
                return t
        raise OptionError("image", f"{image!r} is not a target of this one-prompt run", status=404)

    def progress(self) -> dict:
        ended = [t for t in self.targets if t.seconds is not None]
        left = [t for t in self.targets if t.state in ("waiting", "segmenting")]
        seconds_left = None
        if self.state == "running" and ended:
            seconds_left = round(sum(t.seconds for t in ended) / len(ended) * len(left))
        return {"done": len(self.targets) - len(left), "total": len(self.targets), "seconds_left": seconds_left,
                "elapsed": round((self.finished or time.time()) - self.started, 1)}

    def json(self) -> dict:
        # the results to review first: the least sure of those ready, then the rest in order
        def order(t):
            ready = t.state == "ready"
            return (0 if ready else 1, t.confidence if ready and t.confidence is not None else 0.0)

        return {"id": self.id, "kind": self.kind, "support": self.support, "label": self.label,
                "state": self.state, "error": self.error, "progress": self.progress(),
                "targets": [t.json() for t in sorted(self.targets, key=order)]}


class OnePromptRuns:
    """The runs of every user. ``segment(request, cancelled) -> (Volume, mask, result JSON)`` is the
    one-prompt task's; ``modality_of(image id) -> (is_3d, modality)`` tells which targets fit."""

    def __init__(self, segment: Callable, image_uri: Callable[[str], str], modality_of: Callable[[str], tuple],
                 affine_of: Callable):
        self._segment = segment
        self._image_uri = image_uri
        self._modality_of = modality_of
        self._affine_of = affine_of  # (Volume) -> the affine the page shows the mask with
        self._runs: dict = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)

    def start(self, user: str, kind: str, support: str, label: str, label_value: Optional[int],
              targets: list) -> OnePromptRun:
        targets = list(dict.fromkeys(t for t in targets if t != support))
        if not targets:
            raise OptionError("targets", "no study to segment: choose at least one study other than the prompt one")
        with self._lock:
            running = [r for r in self._runs.values() if r.user == user and r.state == "running"]
            if running:
                raise OptionError("run", "you already have a one-prompt run going; wait for it or cancel it first",
                                  status=409)
            run = OnePromptRun(f"{next(self._numbers)}-{uuid.uuid4().hex[:8]}", user, kind, support, label,
                               label_value, [RunTarget(t) for t in targets])
            self._runs[run.id] = run
            mine = sorted((r for r in self._runs.values() if r.user == user), key=lambda r: r.started)
            for old in mine[:-KEEP_RUNS_PER_USER]:
                if old.state != "running":
                    del self._runs[old.id]
        threading.Thread(target=self._work, args=(run,), name=f"medsam2-one-prompt-{run.id}", daemon=True).start()
        logger.info("one-prompt run %s (%s) by %s: %s of %s onto %d studies", run.id, kind, user, label, support,
                    len(run.targets))
        return run

    def get(self, user: str, run_id: str) -> OnePromptRun:
        run = self._runs.get(run_id)
        if run is None or run.user != user:  # another user's run is not named to this one
            raise OptionError("run", f"no one-prompt run {run_id!r} of yours (a restart of the server drops them)",
                              status=404)
        return run

    def runs(self, user: str) -> list:
        return sorted((r for r in self._runs.values() if r.user == user), key=lambda r: -r.started)

    def cancel(self, user: str, run_id: str) -> OnePromptRun:
        run = self.get(user, run_id)
        run.cancel.set()
        return run

    def mask(self, user: str, run_id: str, image: str) -> bytes:
        target = self.get(user, run_id).target(image)
        if target.mask_bytes is None:
            raise OptionError("image", f"{image}: no result to show ({target.state})", status=409)
        return target.mask_bytes

    def reject(self, user: str, run_id: str, image: str) -> RunTarget:
        target = self._reviewable(user, run_id, image)
        target.state = "rejected"
        target.mask_bytes = target.mask_packed = None
        return target

    def accepting(self, request: dict, image: str, tag: str, user: str):
        """A save's params naming ``one_prompt_run``: the (run, target) it accepts (the field taken out of
        the params), or None; refused unless that result waits for review and the save is a final label."""
        run_id = request.pop("one_prompt_run", None)
        if run_id in (None, ""):
            return None
        if tag != "final":
            raise OptionError("params.one_prompt_run", "a one-prompt result is accepted as the final label only")
        run = self.get(user, str(run_id))
        return run, self._reviewable(user, run.id, image)

    def record(self, accepting: tuple, datastore, image: str, labels: list) -> dict:
        """After the save: the result is accepted, and the label's info says how it was made."""
        from .datastores.saved_structures import saved_label_structures

        run, target = accepting
        info = datastore.get_label_info(image, "final") or {}
        saved = None
        try:
            stack, _, entries = saved_label_structures(datastore.get_label_uri(image, "final"), info, labels)
            channel = next((n for n, e in enumerate(entries) if e["name"] == run.label), None)
            saved = None if channel is None else stack[..., channel] > 0
        except Exception:  # noqa: BLE001 - the label is saved; only the count of changed voxels is unknown
            logger.warning("could not compare the accepted label of %s with its one-prompt result", image,
                           exc_info=True)
        record = self._accepted(run, target, saved, info.get("version"))
        datastore.update_label_info(image, "final", {"one_prompt": record})
        return record

    def _accepted(self, run: OnePromptRun, target: RunTarget, saved_mask: Optional[np.ndarray], version) -> dict:
        original = target.mask()
        if saved_mask is not None and original is not None and saved_mask.shape == original.shape:
            target.changed_voxels = int(np.count_nonzero(saved_mask != original))
        target.state, target.saved_version = "accepted", None if version is None else str(version)
        target.mask_bytes = target.mask_packed = None
        return {"made_by": "one-prompt", "run": run.id, "kind": run.kind, "from_study": run.support,
                "structure": run.label, "confidence": target.confidence, "changed_voxels": target.changed_voxels}

    def _reviewable(self, user: str, run_id: str, image: str) -> RunTarget:
        target = self.get(user, run_id).target(image)
        if target.state != "ready":
            raise OptionError("image", f"{image}: its one-prompt result is {target.state}, not waiting for review",
                              status=409)
        return target

    # -- the run's own thread ------------------------------------------------------------
    def _work(self, run: OnePromptRun) -> None:
        try:
            support_kind = self._modality_of(run.support)
            for target in run.targets:
                if run.cancel.is_set():
                    break
                self._one(run, target, support_kind)
            run.state = "cancelled" if run.cancel.is_set() else "done"
        except Exception as err:  # noqa: BLE001 - the run says so; the log has the traceback
            logger.error("one-prompt run %s failed", run.id, exc_info=err)
            run.state, run.error = "failed", "the run stopped on an error (it is in the server log)"
        finally:
            for target in run.targets:
                if target.state in ("waiting", "segmenting"):
                    target.state, target.note = "cancelled", "not segmented: the run was cancelled"
            run.finished = time.time()
            logger.info("one-prompt run %s %s: %s", run.id, run.state,
                        {t.image: t.state for t in run.targets})

    def _one(self, run: OnePromptRun, target: RunTarget, support_kind: tuple) -> None:
        started = time.perf_counter()
        target.state = "segmenting"
        try:
            kind = self._modality_of(target.image)
            if kind != support_kind:
                target.state = "skipped"
                target.note = (f"not the prompt study's kind ({_kind_words(kind)}; the prompt study is "
                               f"{_kind_words(support_kind)})")
                return
            request = {"image": self._image_uri(target.image), "_image_id": target.image, "support": run.support,
                       "label": run.label}
            if run.label_value is not None:
                request["label_value"] = run.label_value
            volume, mask, out = self._segment(request, run.cancel)
        except Cancelled:
            target.state, target.note = "cancelled", "stopped while it was being segmented"
            return
        except (ValueError, ModelNotReady, MemoryBusy) as err:  # in words: OnePromptError, ImageReadError, ...
            target.state, target.note = "failed", str(err)
            return
        except Exception as err:  # noqa: BLE001 - this target fails; the run goes on to the next
            logger.error("one-prompt run %s: %s failed", run.id, target.image, exc_info=err)
            target.state, target.note = "failed", "the server ran into an error on this study (it is in the log)"
            return
        finally:
            target.seconds = round(time.perf_counter() - started, 2)
        mask = np.asarray(mask, bool)
        if mask.ndim == 2:
            mask = mask[:, :, None]
        target.mask_packed = (np.packbits(mask.ravel()), mask.shape)
        target.mask_bytes = stack_bytes(mask[..., None], self._affine_of(volume), [1])
        target.confidence, target.found = out.get("confidence"), bool(out.get("found"))
        target.voxels = int(mask.sum())
        target.state = "ready"


def _kind_words(kind: tuple) -> str:
    is_3d, modality = kind
    return f"{'a volume' if is_3d else 'a picture'}, {modality}"


def unpack_mask_bytes(data: bytes) -> np.ndarray:
    """The mask a run holds, as the page receives it (for tests and scripts)."""
    import nibabel as nib

    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    return np.asarray(image.dataobj)[..., 0] > 0 if image.ndim == 4 else np.asarray(image.dataobj) > 0
