"""Checking each saved label, and fine-tuning automatically after N new final labels.

A saved label always stays in the datastore (MONAI Label's own save path wrote it); one
that does not fit its image is reported in the save response and kept out of training.
Automatic fine-tuning is queued through MONAI Label's task runner, which runs one train
task at a time; a request made while one is queued or running waits for the next label.
"""

from __future__ import annotations

import logging
import threading

from monailabel.interfaces.datastore import Datastore

from medsam2_engine.training.cases import CaseFiles, LabelMismatch, load_case
from medsam2_engine.volume_io import ImageReadError

logger = logging.getLogger(__name__)


def check_saved_label(datastore: Datastore, image_id: str) -> str | None:
    """None if the image's final label can be trained on, else why not."""
    try:
        label = datastore.get_label_uri(image_id, "final")
    except Exception:  # the datastore raises when there is no final label
        return None
    if not label:
        return None
    try:
        load_case(CaseFiles(datastore.get_image_uri(image_id), label, image_id))
    except (LabelMismatch, ImageReadError) as err:
        return str(err)
    return None


def train_task_pending() -> bool:
    """Is a train task queued or running in this server (MONAI Label's task runner)?"""
    from monailabel.utils.async_tasks.utils import processes, tasks

    return bool(processes("train")) or any(t.get("status") in ("SUBMITTED", "RUNNING") for t in tasks("train"))


class AutoFineTune:
    """Counts new final labels; starts ``start()`` after every ``after`` of them (0: never)."""

    def __init__(self, after: int, start):
        self.after = int(after)
        self.start = start
        self.new_labels = 0
        self._lock = threading.Lock()

    def label_saved(self) -> dict:
        if self.after <= 0:
            return {}
        with self._lock:
            self.new_labels += 1
            if self.new_labels < self.after:
                return {"auto_finetune": f"{self.new_labels} of {self.after} new labels"}
            if train_task_pending():
                logger.info("auto fine-tune: %d new labels, but a fine-tune is queued or running; waiting",
                            self.new_labels)
                return {"auto_finetune": "waiting for the running fine-tune"}
            count, self.new_labels = self.new_labels, 0
        logger.info("auto fine-tune: %d new final labels, starting a fine-tune", count)
        self.start()
        return {"auto_finetune": "started"}
