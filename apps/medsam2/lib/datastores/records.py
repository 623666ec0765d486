"""The local datastore's records (``datastore_v2.json``) shared by several server processes.

MONAI Label's ``LocalDatastore`` keeps the records in memory and writes the whole JSON on
every change, so two replicas on one studies folder would overwrite each other's records.
Here every read-modify-write holds one cross-process lock (``flock`` on the folder's
``.lock``, reentrant within a thread) and re-reads the JSON inside it when another process
changed it; every read sees the file's latest version (one ``stat`` per access, a re-parse
only after another process wrote). The JSON is renamed into place, so a reader never needs
the lock.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager

from filelock import FileLock
from monailabel.datastore.local import LocalDatastoreModel
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

from medsam2_engine.atomic_files import atomic_write_text, file_stamp

from ..options import OptionError

RECORDS_TEMP_SUFFIX = ".partial"


class SharedRecords:
    """Mixin placed before ``LocalDatastore``: call ``_init_shared_records(path)`` before its ``__init__``."""

    def _init_shared_records(self, datastore_path: str, config_name: str = "datastore_v2.json") -> None:
        self._records_path = os.path.join(datastore_path, config_name)
        self._records_stamp = None
        self._records_guard = threading.RLock()  # this process's threads; the file lock orders processes
        self._records_depth = 0
        os.makedirs(datastore_path, exist_ok=True)
        self._records_flock = FileLock(os.path.join(datastore_path, ".lock"), thread_local=False)
        self.reloads_from_other_processes = 0

    # --- the records, always the file's latest version -----------------------------------
    @property
    def _datastore(self) -> LocalDatastoreModel:
        self._reload_if_changed()
        return self.__dict__["_shared_model"]

    @_datastore.setter
    def _datastore(self, model: LocalDatastoreModel) -> None:
        self.__dict__["_shared_model"] = model

    def _reload_if_changed(self) -> None:
        if "_shared_model" not in self.__dict__:
            return
        stamp = file_stamp(self._records_path)
        if stamp is None or stamp == self._records_stamp:
            return
        with self._records_guard:
            stamp = file_stamp(self._records_path)
            if stamp is None or stamp == self._records_stamp:
                return
            with open(self._records_path) as fp:
                text = fp.read()
            model = LocalDatastoreModel.model_validate_json(text)
            model.base_path = self.__dict__["_shared_model"].base_path
            self.__dict__["_shared_model"] = model
            if self._records_stamp is not None:
                self.reloads_from_other_processes += 1
            self._records_stamp = stamp
            self._config_ts = stamp[0] / 1e9

    @contextmanager
    def records_lock(self):
        """Read-modify-write of the records: other processes wait, and the records are re-read first."""
        with self._records_guard:
            if self._records_depth == 0:
                self._records_flock.acquire()
            self._records_depth += 1
            try:
                self._reload_if_changed()
                yield
            finally:
                self._records_depth -= 1
                if self._records_depth == 0:
                    self._records_flock.release()

    # --- MONAI Label's hooks, under the lock -----------------------------------------------
    def _init_from_datastore_file(self, throw_exception=False):
        try:
            self._reload_if_changed()
        except ValueError:
            if throw_exception:
                raise

    def _update_datastore_file(self, lock=True):
        """As MONAI Label's, but renamed into place and under the records lock (``lock`` is ignored:
        the lock is reentrant, so a caller already holding it is not blocked)."""
        with self.records_lock():
            self._ignore_event_config = True
            model = self.__dict__["_shared_model"]
            content = json.dumps(model.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._records_path, content, prefix=".", suffix=RECORDS_TEMP_SUFFIX)
            self._records_stamp = file_stamp(self._records_path)
            self._config_ts = self._records_stamp[0] / 1e9

    def refresh(self):
        with self.records_lock():
            super().refresh()

    def _reconcile_datastore(self):
        with self.records_lock():
            super()._reconcile_datastore()

    def update_image_info(self, image_id: str, info: dict) -> None:
        with self.records_lock():
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            obj.image.info.update(info)
            self._update_datastore_file()

    def update_label_info(self, label_id: str, label_tag: str, info: dict) -> None:
        with self.records_lock():
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise LabelNotFoundException(f"Label: {label_id} Tag: {label_tag} not found")
            label.info.update(info)
            self._update_datastore_file()


def check_replaces(request: dict | None, current, tag: str, image_id: str) -> None:
    """A save naming the version it replaces (``params.replaces``) is refused (409) when the label is
    another version now (``current``; None: there is none). The one rule: the save route checks it
    for every datastore, the local one again under its records lock (a save by another replica)."""
    if not request or "replaces" not in request:
        return
    if request["replaces"] != current:
        raise OptionError("params.replaces", f"the {tag} label of {image_id} changed since you read it (version "
                                             f"{request['replaces']}, now {current}); nothing was saved: read "
                                             "the current one, or send its version to replace it", status=409)
