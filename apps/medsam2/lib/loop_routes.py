"""``GET /medsam2/loop``: the active-learning loop in one answer, for the viewer page.

How far labelling is, which strategy picks the next study, the fine-tune's progress in a
clinician's words (epoch, loss, held-out Dice, time left, or why it cannot start), which
weights are served, every published fine-tune with the classical baselines beside it, and
what this user may do (save: annotator; train: admin). The page polls it while a fine-tune
runs; the data come from the app's own records (``lib/trainers/history.py``, the fine-tune's
stats file), never from a file a user can write.
"""

from __future__ import annotations

import time

from fastapi import Depends
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from .trainers.history import read_history

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
        left = round(sum(seconds) / len(seconds) * max(0, epochs - len(history)))
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


def loop(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    app = app_instance()
    datastore = app.datastore()
    images = list(datastore.list_images())
    labelled = [i for i in datastore.get_labeled_images() if i in set(images)]
    trainer = app._trainers.get(FINETUNE) if hasattr(app, "_trainers") else None
    stats = trainer.stats() if trainer is not None else {}
    roles = set(user.roles or [])
    served = app.models.status()
    return {
        "progress": {"studies": len(images), "labelled": len(labelled)},
        "strategy": app.settings.next_study_strategy,
        "training": training_progress(stats, len(labelled)),
        "model": {"version": served.get("version"), "random_weights": served.get("random_weights"),
                  "checkpoint_file": (served.get("checkpoint") or "").rsplit("/", 1)[-1]},
        "history": read_history(app.models.model_dir),
        "can": {"save": not settings.MONAI_LABEL_AUTH_ENABLE or settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR in roles,
                "train": not settings.MONAI_LABEL_AUTH_ENABLE or settings.MONAI_LABEL_AUTH_ROLE_ADMIN in roles},
        "trainer": FINETUNE,
    }
