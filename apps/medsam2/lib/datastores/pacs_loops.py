"""Cine loops on a PACS: each multi-frame instance of a loop modality (ultrasound, X-ray angiography)
is a study of the app, named by its SOPInstanceUID, as a multi-frame DICOM file is in a folder.

An echo exam often keeps several loops in one series, so a series is not a study here; and a
series of single-frame images of these modalities (stills) is not a volume. The loops are found
with one QIDO-RS instance query per modality, fetched whole (WADO-RS) into the cache once, and
read by the engine as videos. Their labels are DICOM SEG written by ``cine_seg.py``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass

LOOP_MODALITIES = ("US", "XA")
_FIELDS = {"SOPInstanceUID": "00080018", "SeriesInstanceUID": "0020000E", "StudyInstanceUID": "0020000D",
           "Modality": "00080060", "NumberOfFrames": "00280008", "StudyDate": "00080020", "StudyTime": "00080030",
           "SeriesDescription": "0008103E", "PatientID": "00100020"}


@dataclass(frozen=True)
class PacsLoop:
    instance_uid: str
    series_uid: str
    study_uid: str
    modality: str
    frames: int
    study_date: str
    study_time: str
    series_description: str
    patient_id: str  # for grouping a patient's studies only: never sent to a client

    def description(self) -> str:
        """What the study list shows: "US, 20260102, apical 4 chamber, loop of 48 frames"."""
        parts = (self.modality, self.study_date, self.series_description, f"loop of {self.frames} frames")
        return ", ".join(p for p in parts if p)

    def info(self) -> dict:
        """What the datastore records of the loop (no patient identifier)."""
        return {"StudyInstanceUID": self.study_uid, "SeriesInstanceUID": self.series_uid,
                "SOPInstanceUID": self.instance_uid, "Modality": self.modality, "NumberOfFrames": self.frames,
                "StudyDate": self.study_date, "SeriesDescription": self.series_description}


def _loop(entry: dict) -> PacsLoop | None:
    def value(name, default=""):
        values = entry.get(_FIELDS[name], {}).get("Value") or [default]
        return values[0]

    try:
        frames = int(value("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames < 2 or not value("SOPInstanceUID"):
        return None
    return PacsLoop(str(value("SOPInstanceUID")), str(value("SeriesInstanceUID")), str(value("StudyInstanceUID")),
                    str(value("Modality")), frames, str(value("StudyDate")), str(value("StudyTime")),
                    str(value("SeriesDescription")), str(value("PatientID")))


class PacsLoops:
    def __init__(self, client, modalities: list):
        self._client = client
        self.modalities = [m for m in modalities if m in LOOP_MODALITIES]
        self._known: dict = {}  # instance UID -> PacsLoop, or None: not a loop (a series UID, say)
        self._lock = threading.Lock()

    def listed(self) -> dict:
        """Instance UID -> PacsLoop of every loop of the configured loop modalities, as the PACS says now."""
        found = {}
        for modality in self.modalities:
            for entry in self._client.search_for_instances(search_filters={"Modality": modality},
                                                           fields=list(_FIELDS)):
                loop = _loop(entry)
                if loop is not None:
                    found[loop.instance_uid] = loop
        with self._lock:
            self._known.update(found)
        return found

    def find(self, uid: str) -> PacsLoop | None:
        """The loop named ``uid`` (known from a listing, else one QIDO query, remembered), or None."""
        with self._lock:
            if uid in self._known:
                return self._known[uid]
        loop = None
        if self.modalities:
            entries = self._client.search_for_instances(search_filters={"SOPInstanceUID": uid}, fields=list(_FIELDS))
            loop = _loop(entries[0]) if entries else None
            if loop is not None and loop.modality not in self.modalities:
                loop = None
        with self._lock:
            self._known[uid] = loop
        return loop

    def download(self, loop: PacsLoop, folder: str) -> str:
        """The loop's DICOM file, fetched whole (WADO-RS) into a new file in ``folder``; the caller
        moves it into the datastore."""
        instance = self._client.retrieve_instance(loop.study_uid, loop.series_uid, loop.instance_uid)
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
            return {uid: loop.description() for uid, loop in self._known.items() if loop is not None}

