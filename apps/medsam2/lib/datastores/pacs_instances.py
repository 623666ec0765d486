"""Ultrasound and angiography on a PACS: each instance is a study of the app, named by its
SOPInstanceUID, as a DICOM file is in a folder: a multi-frame instance is a cine loop, a
single-frame one a still (a picture).

An echo exam often keeps several loops and stills in one series, so a series is not a study
here, nor a volume. The instances are found with one QIDO-RS instance query per modality,
fetched whole (WADO-RS) into the cache once, and read by the engine as a video or a picture.
Their labels are DICOM SEG: a loop's written by ``cine_seg.py``, a still's by highdicom.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass

INSTANCE_MODALITIES = ("US", "XA")
_FIELDS = {"SOPInstanceUID": "00080018", "SeriesInstanceUID": "0020000E", "StudyInstanceUID": "0020000D",
           "Modality": "00080060", "NumberOfFrames": "00280008", "StudyDate": "00080020", "StudyTime": "00080030",
           "SeriesDescription": "0008103E", "PatientID": "00100020"}


@dataclass(frozen=True)
class InstanceStudy:
    instance_uid: str
    series_uid: str
    study_uid: str
    modality: str
    frames: int
    study_date: str
    study_time: str
    series_description: str
    patient_id: str  # for grouping a patient's studies only: never sent to a client

    @property
    def is_loop(self) -> bool:
        return self.frames > 1

    def description(self) -> str:
        """What the study list shows: "US, 20260102, apical 4 chamber, loop of 48 frames" (or "still image")."""
        kind = f"loop of {self.frames} frames" if self.is_loop else "still image"
        parts = (self.modality, self.study_date, self.series_description, kind)
        return ", ".join(p for p in parts if p)

    def info(self) -> dict:
        """What the datastore records of the instance (no patient identifier)."""
        return {"StudyInstanceUID": self.study_uid, "SeriesInstanceUID": self.series_uid,
                "SOPInstanceUID": self.instance_uid, "Modality": self.modality, "NumberOfFrames": self.frames,
                "StudyDate": self.study_date, "SeriesDescription": self.series_description}


def _instance_study(entry: dict) -> InstanceStudy | None:
    """The study of a QIDO instance entry (None without an instance UID)."""

    def value(name, default=""):
        values = entry.get(_FIELDS[name], {}).get("Value") or [default]
        return values[0]

    try:
        frames = int(value("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if not value("SOPInstanceUID"):
        return None
    return InstanceStudy(str(value("SOPInstanceUID")), str(value("SeriesInstanceUID")),
                         str(value("StudyInstanceUID")), str(value("Modality")), max(frames, 1),
                         str(value("StudyDate")), str(value("StudyTime")), str(value("SeriesDescription")),
                         str(value("PatientID")))


class PacsInstances:
    def __init__(self, client, modalities: list):
        self._client = client
        self.modalities = [m for m in modalities if m in INSTANCE_MODALITIES]
        self._known: dict = {}  # instance UID -> InstanceStudy, or None: not one (a series UID, say)
        self._lock = threading.Lock()

    def listed(self) -> dict:
        """Instance UID -> InstanceStudy of every image of the configured modalities of these, as the PACS says now."""
        found = {}
        for modality in self.modalities:
            for entry in self._client.search_for_instances(search_filters={"Modality": modality},
                                                           fields=list(_FIELDS)):
                study = _instance_study(entry)
                if study is not None:
                    found[study.instance_uid] = study
        with self._lock:
            self._known.update(found)
        return found

    def find(self, uid: str) -> InstanceStudy | None:
        """The instance study named ``uid`` (known from a listing, else one QIDO query, remembered), or None."""
        with self._lock:
            if uid in self._known:
                return self._known[uid]
        study = None
        if self.modalities:
            entries = self._client.search_for_instances(search_filters={"SOPInstanceUID": uid}, fields=list(_FIELDS))
            study = _instance_study(entries[0]) if entries else None
            if study is not None and study.modality not in self.modalities:
                study = None
        with self._lock:
            self._known[uid] = study
        return study

    def download(self, study: InstanceStudy, folder: str) -> str:
        """The instance's DICOM file, fetched whole (WADO-RS) into a new file in ``folder``; the caller
        moves it into the datastore."""
        instance = self._client.retrieve_instance(study.study_uid, study.series_uid, study.instance_uid)
        fd, path = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=folder)
        os.close(fd)
        try:
            instance.save_as(path)
        except Exception:
            os.unlink(path)
            raise
        return path

    def descriptions(self) -> dict:
        with self._lock:
            return {uid: study.description() for uid, study in self._known.items() if study is not None}

