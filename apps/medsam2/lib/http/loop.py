"""``GET /medsam2/loop``: the active-learning loop in one answer, for the viewer page.

How far labelling is, which strategy picks the next study, the fine-tune's progress in a
clinician's words (epoch, loss, held-out Dice, time left, or why it cannot start), which
weights are served, every published fine-tune with the classical baselines beside it, and
what this user may do (save: annotator; train: admin). The data come from the app's own
records (``lib/trainers/history.py``, the fine-tune's stats file), never from a file a user
can write.

``GET /medsam2/events``: the same answer pushed to every open tab as server-sent events, an
event each time it changes (checked every second, one snapshot shared by every tab), so a
tab shows the loop as it is now: saves made elsewhere, the fine-tune's progress, the weights
being prepared and the ones served.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from ..shutdown import STOPPING
from ..trainers.history import read_history

FINETUNE = "medsam2_finetune"


def training_progress(stats: dict, final_labels: int) -> dict:
    """The fine-tune's state as the page shows it."""
    status = stats.get("status") or "NOT_STARTED"
    history = stats.get("history") or []
    last = history[-1] if history else {}
    epochs = (stats.get("config") or {}).get("epochs")
    seconds = [e.get("seconds") for e in history if e.get("seconds")]
    left = None
    if status == "RUNNING" and epochs and seconds:
        # the recent epochs' pace (the first carries the warm-up), plus one epoch's validation and publishing
        recent = seconds[-3:] if len(seconds) > 1 else seconds
        left = round(sum(recent) / len(recent) * max(0, epochs - len(history)))
    reason = None
    if status not in ("RUNNING", "LOADING") and final_labels == 0:
        reason = "no final labels yet: save at least one study's label first"
    return {"status": status, "epoch": stats.get("epoch") or 0, "epochs": epochs,
            "train_loss": last.get("train_loss"), "val_dice": last.get("val_mean_dice"),
            "start_dice": stats.get("baseline_dice"), "seconds_left": left,
            "elapsed": round(time.time() - stats["start_ts"]) if stats.get("start_ts") else None,
            "started": stats.get("start_ts"),
            "published": bool(stats.get("published")), "finetune": stats.get("finetune"),
            "error": stats.get("error"), "cannot_start": reason}


def _shared_state() -> dict:
    """Everything of the answer but the user's permissions."""
    app = app_instance()
    datastore = app.datastore()
    images = list(datastore.list_images())
    labelled = [i for i in datastore.get_labeled_images() if i in set(images)]
    trainer = app._trainers.get(FINETUNE) if hasattr(app, "_trainers") else None
    stats = trainer.stats() if trainer is not None else {}
    served = app.models.status()
    history = read_history(app.models.model_dir)
    version = served.get("version") or {}
    recorded = {entry.get("number") for entry in history}
    return {
        "progress": {"studies": len(images), "labelled": len(labelled)},
        "strategy": app.settings.next_study_strategy,
        "training": training_progress(stats, len(labelled)),
        "model": {"version": served.get("version"), "random_weights": served.get("random_weights"),
                  "checkpoint_file": (served.get("checkpoint") or "").rsplit("/", 1)[-1],
                  "preparing": served.get("preparing"),
                  # served weights of a fine-tune still running: its point joins the curve when it ends
                  "unrecorded_finetune": version.get("finetune") if version.get("finetune") not in recorded else None},
        "history": history,
        "trainer": FINETUNE,
    }


def _permissions(user: User) -> dict:
    roles = set(user.roles or [])
    return {"save": not settings.MONAI_LABEL_AUTH_ENABLE or settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR in roles,
            "train": not settings.MONAI_LABEL_AUTH_ENABLE or settings.MONAI_LABEL_AUTH_ROLE_ADMIN in roles}


def loop(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    return {**_shared_state(), "can": _permissions(user)}


class _Snapshot:
    """The shared state, computed at most once per ``max_age_s`` whatever the number of tabs."""

    def __init__(self, max_age_s: float = 1.0):
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._taken = -1e9
        self._state: dict = {}

    def get(self) -> dict:
        with self._lock:
            if time.monotonic() - self._taken >= self.max_age_s:
                self._state = _shared_state()
                self._taken = time.monotonic()
            return self._state


_SNAPSHOT = _Snapshot()
EVENT_CHECK_S = 1.0
KEEP_ALIVE_S = 15.0
MAX_STREAM_S = 600.0  # then the browser reconnects (``retry``): a forgotten tab holds nothing for long


async def events(request: Request, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    can = _permissions(user)

    async def stream():
        last, quiet_since, opened = None, time.monotonic(), time.monotonic()
        yield "retry: 2000\n\n"  # the browser reconnects after 2 s if the server goes away
        while (not await request.is_disconnected() and time.monotonic() - opened < MAX_STREAM_S
               and not STOPPING.is_set()):
            try:
                state = {**await run_in_threadpool(_SNAPSHOT.get), "can": can}
            except Exception as err:  # noqa: BLE001 - a datastore hiccup: say so, try again next second
                state = {"unavailable": f"the loop's state cannot be read just now ({type(err).__name__})"}
            text = json.dumps(state, sort_keys=True, default=str)
            if text != last:
                last, quiet_since = text, time.monotonic()
                yield f"event: loop\ndata: {text}\n\n"
            elif time.monotonic() - quiet_since > KEEP_ALIVE_S:
                quiet_since = time.monotonic()
                yield ": still here\n\n"
            await asyncio.sleep(EVENT_CHECK_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
