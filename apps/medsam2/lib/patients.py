"""Which studies belong to one patient, in time order: what "carry to follow-up" needs.

- A PACS (DICOMweb datastore): the series' ``PatientID``, ordered by ``StudyDate``, ``StudyTime``,
  then ``StudyInstanceUID`` (one QIDO query).
- A studies folder: a study's image info ``patient_id`` and ``study_date`` (``YYYYMMDD``) when
  set (``PUT /datastore/image/info``, or the upload's info), else the DICOM header of a DICOM
  study (the file, or the first file of its folder). A NIfTI, NRRD or picture without that info
  belongs to no patient: it has no follow-up.

The app never answers with the patient identifier itself: only study ids and dates.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyTime:
    image: str
    patient: str
    date: str  # YYYYMMDD, or "" when unknown
    order: tuple  # sorts the patient's studies in time


def _dicom_header(path: str):
    import pydicom

    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if not f.startswith("."))
        path = next((f for f in files if os.path.isfile(f)), "")
    if not path or not os.path.isfile(path):
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyDate", "StudyTime",
                                                                             "StudyInstanceUID"])
    except Exception:  # noqa: BLE001 - not DICOM (NIfTI, NRRD, pictures): no patient
        return None


def _local(datastore, image: str) -> Optional[StudyTime]:
    info = datastore.get_image_info(image) or {}
    patient, date = str(info.get("patient_id") or ""), str(info.get("study_date") or "")
    uid = ""
    if not patient:
        header = _dicom_header(datastore.get_image_uri(image))
        if header is None or not str(getattr(header, "PatientID", "") or ""):
            return None
        patient = str(header.PatientID)
        date = str(getattr(header, "StudyDate", "") or "")
        uid = str(getattr(header, "StudyInstanceUID", "") or "")
        return StudyTime(image, patient, date, (date, str(getattr(header, "StudyTime", "") or ""), uid, image))
    return StudyTime(image, patient, date, (date, "", uid, image))


def _pacs(client) -> dict:
    fields = {"PatientID": "00100020", "StudyDate": "00080020", "StudyTime": "00080030",
              "StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E"}
    entries = client.search_for_series(fields=list(fields))

    def value(entry, name):
        values = entry.get(fields[name], {}).get("Value") or [""]
        return str(values[0])

    out = {}
    for e in entries:
        series, patient = value(e, "SeriesInstanceUID"), value(e, "PatientID")
        if series and patient:
            date = value(e, "StudyDate")
            out[series] = StudyTime(series, patient, date, (date, value(e, "StudyTime"), value(e, "StudyInstanceUID"),
                                                            series))
    return out


def study_times(datastore, images: list) -> dict:
    """image id -> StudyTime, for those that belong to a patient."""
    client = getattr(datastore, "_client", None)  # MONAI Label's DICOMwebClient of a PACS datastore
    if client is not None:
        found = _pacs(client)
        # ultrasound and angiography loops and stills: studies by instance
        for study in (datastore.instances.listed().values() if hasattr(datastore, "instances") else ()):
            if study.patient_id:
                found[study.instance_uid] = StudyTime(study.instance_uid, study.patient_id, study.study_date,
                                                      (study.study_date, study.study_time, study.study_uid,
                                                       study.instance_uid))
        return {k: v for k, v in found.items() if k in set(images)}
    found = {}
    for image in images:
        try:
            entry = _local(datastore, image)
        except Exception:  # noqa: BLE001 - one unreadable study does not hide the others
            logger.warning("could not read which patient %s belongs to", image, exc_info=True)
            entry = None
        if entry is not None:
            found[image] = entry
    return found


def later_studies(datastore, image: str) -> tuple:
    """(this study's StudyTime or None, the same patient's later studies, earliest first)."""
    times = study_times(datastore, list(datastore.list_images()))
    this = times.get(image)
    if this is None:
        return None, []
    later = sorted((t for t in times.values() if t.patient == this.patient and t.image != image
                    and t.order > this.order), key=lambda t: t.order)
    return this, later
