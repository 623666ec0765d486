"""The DICOMweb datastore (``--studies http://host/dicom-web``) as this app needs it.

Over MONAI Label's ``DICOMWebDatastore``, it changes four things:
- lists every series of the configured modalities (``--conf dicomweb_modalities``,
  default CT, MR and US: MONAI Label's default search filter shows CT only); of ultrasound
  and angiography, each instance is a study: a cine loop or a still (``pacs_instances.py``);
- resolves a series once to one stable file in the cache (download and conversion under
  a per-series lock, then an atomic rename), so later requests read the same file and
  the engine's session for that image lives on instead of re-encoding the volume;
- names the series and its transfer syntax when its pixels cannot be decoded (HTTP 422),
  and refuses image ids that are not DICOM UIDs (HTTP 400) before touching the cache;
- stores a final label as DICOM SEG written with highdicom (``dicom_seg.py``), not with
  MONAI Label's converter (which needs dcmqi, downloaded from GitHub, and mislabels it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, List

import requests
from cachetools import TTLCache, cached
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image, dicom_to_nifti
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from .cine_seg import build_cine_segmentation, build_still_segmentation, instance_masks
from .dicom_seg import SegAuthor, build_segmentation
from .pacs_labels import PacsLabels
from .pacs_instances import PacsInstances
from .saved_structures import PreparedLabel, image_grid, keep_structures_beside, prepare_label
from medsam2_engine.label_structures import structures_path, write_stack
from ..privacy import KEYWORDS as PATIENT_IDENTIFIERS

logger = logging.getLogger(__name__)

DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# the study list asks the PACS again after this: a study stored now is listed within seconds (MONAI Label's
# own list is kept for MONAI_LABEL_DICOMWEB_CACHE_EXPIRY, two hours by default)
PACS_LIST_TTL_S = 10
RAW_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class SeriesNotDecodable(HTTPException):
    """The series' pixel data cannot be decoded here and the PACS did not transcode it."""

    def __init__(self, series_uid: str, transfer_syntax: str, cause: str):
        super().__init__(status_code=422, detail=(
            f"series {series_uid}: its pixel data ({transfer_syntax}) could not be decoded, and the PACS did not "
            f"transcode it to an uncompressed transfer syntax ({cause}); have the PACS transcode it, or store it "
            f"uncompressed"))


def check_series_uid(image_id: str) -> str:
    if not isinstance(image_id, str) or len(image_id) > 64 or not DICOM_UID.match(image_id):
        raise HTTPException(status_code=400, detail=f"image must be a DICOM SeriesInstanceUID, got {image_id!r}")
    return image_id


def describe_transfer_syntax(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return f"transfer syntax {name} ({uid})" if name and name != uid else f"transfer syntax {uid or 'unknown'}"


class MedSam2DicomWebDatastore(DICOMWebDatastore):
    def __init__(self, client, modalities: List[str], author: SegAuthor, label_names: List[str],
                 cache_path: str | None = None, fetch_by_frame: bool = False):
        super().__init__(client, {"Modality": ",".join(modalities)}, cache_path=cache_path,
                         fetch_by_frame=fetch_by_frame, convert_to_nifti=True)
        self._modalities = list(modalities)
        self._author = author
        self._label_names = list(label_names)
        self.max_decoded_bytes = 4 << 30  # set by the app (--conf upload_max_decoded_mb)
        self._series_locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # (series UID, file) -> None, called once a series is fetched: it is about to be segmented
        self.on_series_ready: Callable[[str, str], None] | None = None
        # the final label is the PACS's newest SEG of the series (replicas share the PACS; the cache is a cache)
        self._pacs_labels = PacsLabels(client, label_names)
        self.instances = PacsInstances(client, modalities)
        self._synced: Dict[str, float] = {}  # series UID -> when its label was last compared with the PACS
        self.label_sync_s = 2.0  # within one request (several label lookups) the PACS is asked once

    @cached(cache=TTLCache(maxsize=16, ttl=PACS_LIST_TTL_S))
    def list_images(self) -> List[str]:
        series = []
        for modality in self._modalities:  # one query per modality: list matching is not universal in QIDO
            if modality in self.instances.modalities:
                continue  # their instances are studies, not their series
            for entry in self._client.search_for_series(search_filters={"Modality": modality}):
                uid = str(Dataset.from_json(entry)["SeriesInstanceUID"].value)
                if uid not in series:
                    series.append(uid)
        return series + [uid for uid in self.instances.listed() if uid not in series]

    def _dicom_info(self, series_id):
        """What MONAI Label records per series, without the patient's identifiers (never returned by the API)."""
        study = self.instances.find(series_id)
        if study is not None:
            return study.info()
        info = super()._dicom_info(series_id)
        for keyword in PATIENT_IDENTIFIERS:
            info.pop(keyword, None)
        return info

    def _is_instance(self, image_id: str) -> bool:
        """A study that is one instance (``pacs_instances.py``: a cine loop or a still), not a series."""
        return self.instances.find(image_id) is not None

    def _lock_for(self, series_uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._series_locks.setdefault(series_uid, threading.Lock())

    def _stable_path(self, series_uid: str) -> str:
        suffix = ".dcm" if self._is_instance(series_uid) else ".nii.gz"  # an instance as the PACS holds it
        return os.path.join(self._datastore.image_path(), f"{series_uid}{suffix}")

    def _series_dir(self, series_uid: str) -> str:
        return os.path.join(self._datastore.image_path(), series_uid)

    def get_image_uri(self, image_id: str) -> str:
        series_uid = check_series_uid(image_id)
        stable = self._stable_path(series_uid)
        with self._lock_for(series_uid):
            if os.path.exists(stable) and series_uid in self._datastore.objects:
                return stable
            study = self.instances.find(series_uid)
            if study is not None:
                converted = self.instances.download(study, self._datastore.image_path())
            else:
                converted = self._convert(series_uid, self._download(series_uid))
            try:
                # registers the series in the datastore (copied under its stable name)
                LocalDatastore.add_image(self, series_uid, converted, self._dicom_info(series_uid))
            finally:
                os.unlink(converted)
        if self.on_series_ready is not None:
            try:
                self.on_series_ready(series_uid, stable)
            except Exception as err:  # noqa: BLE001 - the series is there; only the encoding ahead is lost
                logger.warning("series %s: not queued for encoding ahead: %s", series_uid, err)
        return stable

    def _download(self, series_uid: str) -> str:
        """The series' DICOM files in the cache, downloaded once (to a temporary folder, then renamed)."""
        from monailabel.datastore.utils.dicom import dicom_web_download_series

        series_dir = self._series_dir(series_uid)
        if os.path.isdir(series_dir) and os.listdir(series_dir):
            return series_dir
        parent = self._datastore.image_path()
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
        try:
            try:
                dicom_web_download_series(None, series_uid, tmp, self._client, self._fetch_by_frame)
            except IndexError as err:
                raise HTTPException(status_code=404, detail=f"series {series_uid} is not in the PACS") from err
            except requests.ConnectionError as err:
                raise HTTPException(status_code=502, detail=f"the PACS at {self._client.base_url} could not be "
                                                            f"reached for series {series_uid}: {err}") from err
            except requests.HTTPError as err:  # it could not send it as asked: try its stored transfer syntax
                logger.warning("series %s: PACS refused to send it transcoded (%s); asking for it as stored",
                               series_uid, err)
                self._download_as_stored(series_uid, tmp, err)
            shutil.rmtree(series_dir, ignore_errors=True)
            os.replace(tmp, series_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return series_dir

    def _download_as_stored(self, series_uid: str, folder: str, first_error: Exception) -> None:
        meta = Dataset.from_json(self._client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})[0])
        study_uid = str(meta["StudyInstanceUID"].value)
        try:
            instances = self._client.retrieve_series(study_uid, series_uid, media_types=(("application/dicom", "*"),))
        except Exception as err:
            raise HTTPException(status_code=502, detail=(
                f"the PACS could not send series {series_uid}, neither transcoded ({first_error}) nor as stored "
                f"({err})")) from err
        for instance in instances:
            instance.save_as(os.path.join(folder, f"{instance.SOPInstanceUID}.dcm"))

    def _convert(self, series_uid: str, series_dir: str) -> str:
        try:
            return dicom_to_nifti(series_dir)
        except Exception as err:  # SimpleITK/GDCM: name the series and its encoding instead of a bare 500
            raise SeriesNotDecodable(series_uid, describe_transfer_syntax(_transfer_syntax(series_dir)),
                                     f"decoder said: {str(err).strip().splitlines()[-1] if str(err) else err!r}"
                                     ) from err

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any],
                   label_id: str = "") -> str:
        series_uid = check_series_uid(image_id)
        image_uri = self.get_image_uri(series_uid)
        label_info = dict(label_info or {})
        converted, prepared = "", None
        try:
            if label_filename.endswith(".bin"):
                converted = label_filename = binary_to_image(image_uri, label_filename)
            prepared = prepare_label(label_filename, label_info, self.max_decoded_bytes, grid=image_grid(image_uri))
            label_info.update(prepared.summary())
            label_info["version"] = uuid.uuid4().hex  # what a client names to replace exactly this label
            if label_tag == DefaultLabelTag.FINAL:
                label_info.update(self._store_seg(series_uid, prepared, label_info.get("label_info")))
                label_info["version"] = label_info["SeriesInstanceUID"]  # the same on every replica
            saved = LocalDatastore.save_label(self, series_uid, prepared.label_file, label_tag, label_info)
            stack_file = structures_path(os.path.join(self._datastore.label_path(label_tag), series_uid + ".nii.gz"))
            if prepared.stack is not None:
                write_stack(stack_file, prepared.stack, prepared.affine, prepared.values)
            elif os.path.exists(stack_file):
                os.unlink(stack_file)  # a plain label map replaces the structures saved before it
            return saved
        finally:  # refused or saved, no copy of the upload is left behind
            if prepared is not None:
                prepared.cleanup()
            if converted and os.path.exists(converted):
                os.unlink(converted)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The app's copy of the label (saved through the app, stored in the PACS as SEG).

        MONAI Label's own version downloads the series named ``label_id`` and reads it as a SEG;
        ``GET /datastore/label`` passes the image's series there, so it failed with HTTP 500.
        """
        if image_id:  # MONAI Label's own sync of the PACS's SEGs (label_id: the SEG series)
            own = self._saved_label_path(check_series_uid(image_id), label_tag)
            return own or super().get_label_uri(label_id, label_tag, image_id)
        series_uid = check_series_uid(label_id)
        path = self._saved_label_path(series_uid, label_tag)
        if not path:
            raise HTTPException(status_code=404, detail=f"label: series {series_uid} has no {label_tag!r} label "
                                                        "saved through this app")
        return path

    def sync_final_label(self, series_uid: str, fetch: bool = False) -> None:
        """Make the cached final label the PACS's newest SEG of the series (saved through any replica).

        ``fetch``: a series not in this replica's cache is fetched first when the PACS holds a
        SEG of it (a label read); otherwise only cached series are compared (study lists).
        """
        now = time.monotonic()
        if now - self._synced.get(series_uid, -1e9) < self.label_sync_s:
            return
        try:
            if fetch and series_uid not in self._datastore.objects:
                instance = self.instances.find(series_uid)
                found = [] if instance else self._client.search_for_series(
                    search_filters={"SeriesInstanceUID": series_uid})
                study_uid = (instance.study_uid if instance else
                             str(Dataset.from_json(found[0])["StudyInstanceUID"].value) if found else "")
                if not study_uid or self._pacs_labels.latest(series_uid, study_uid) is None:
                    return
                self.get_image_uri(series_uid)  # the label's grid is the series' own
            with self._lock_for(series_uid):
                self._sync_final_label(series_uid)
            self._synced[series_uid] = time.monotonic()
        except HTTPException:
            raise
        except Exception as err:  # noqa: BLE001 - the PACS is unreachable: the cached label is served
            logger.warning("series %s: final label not compared with the PACS: %s", series_uid, err)

    def _sync_final_label(self, series_uid: str) -> None:
        study_uid = (self._datastore.objects[series_uid].image.info.get("StudyInstanceUID")
                     if series_uid in self._datastore.objects else None)
        if not study_uid:
            return  # not fetched here yet: get_image_uri fetches it, and the next lookup syncs
        latest = self._pacs_labels.latest(series_uid, study_uid)
        obj = self._datastore.objects.get(series_uid)
        cached = obj.labels.get(DefaultLabelTag.FINAL) if obj else None
        if latest is None or (cached is not None and cached.info.get("version") == latest[0]):
            return
        if self._is_instance(series_uid):
            path, segments, (stack, values) = self._pacs_labels.to_instance_label_file(
                latest[0], study_uid, series_uid, self._stable_path(series_uid))
        else:
            path, segments, (stack, values) = self._pacs_labels.to_label_file(
                latest[0], study_uid, self._series_dir(series_uid), self._stable_path(series_uid))
        try:
            info = {"version": latest[0], "SeriesInstanceUID": latest[0], "label_info": segments, "from_pacs": True}
            LocalDatastore.save_label(self, series_uid, path, DefaultLabelTag.FINAL, info)
        finally:
            os.unlink(path)
        label_file = os.path.join(self._datastore.label_path(DefaultLabelTag.FINAL), series_uid + ".nii.gz")
        keep_structures_beside(label_file, stack, values)
        logger.info("series %s: final label read from the PACS (SEG %s)", series_uid, latest[0])

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        if label_tag == DefaultLabelTag.FINAL and DICOM_UID.match(label_id or ""):
            self.sync_final_label(label_id)
        return super().get_label_info(label_id, label_tag)

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        """A label asked for by name: a final one saved through another replica is fetched with its series."""
        if tag == DefaultLabelTag.FINAL and DICOM_UID.match(image_id or ""):
            self.sync_final_label(image_id, fetch=True)
        return super().get_label_by_image_id(image_id, tag)

    def get_labels_by_image_id(self, image_id: str) -> Dict[str, str]:
        if DICOM_UID.match(image_id or ""):
            self.sync_final_label(image_id)
        return super().get_labels_by_image_id(image_id)

    def _saved_label_path(self, series_uid: str, label_tag: str) -> str:
        if label_tag == DefaultLabelTag.FINAL:  # a label read: labelled through another replica, it is fetched
            self.sync_final_label(series_uid, fetch=True)
        obj = self._datastore.objects.get(series_uid)
        label = obj.labels.get(label_tag) if obj else None
        path = os.path.join(self._datastore.label_path(label_tag), series_uid + label.ext) if label else ""
        return path if path and os.path.isfile(path) else ""

    @staticmethod
    def check_image_id(image_id: str) -> str:
        return check_series_uid(image_id)

    def get_labeled_images(self, label_tag=None, labels=None) -> List[str]:
        """Series a SEG in the PACS references, as the PACS says now (seconds old at most, whichever
        replica saved it), and those saved through this replica (a save counts at once)."""
        saved = [uid for uid, obj in self._datastore.objects.items() if DefaultLabelTag.FINAL in obj.labels]
        in_pacs = set(self._pacs_labels.labelled_series()) & set(self.list_images())
        return sorted(in_pacs | set(saved))

    def get_unlabeled_images(self, label_tag=None, labels=None) -> List[str]:
        return sorted(set(self.list_images()) - set(self.get_labeled_images(label_tag, labels)))

    def segment_names(self, label_info) -> Dict[int, str]:
        """Label value -> name: the client's ``label_info`` (Slicer sends it), else ``--conf labels`` order."""
        names = {value: name for value, name in enumerate(self._label_names, start=1)}
        for entry in label_info or []:
            if isinstance(entry, dict) and entry.get("name"):
                value = entry.get("idx", entry.get("id"))
                if isinstance(value, int):
                    names[value] = str(entry["name"])
        return names

    def _store_seg(self, series_uid: str, prepared: PreparedLabel, label_info) -> dict:
        try:
            names = self.segment_names(label_info)
            if self._is_instance(series_uid):
                seg = self._instance_seg(series_uid, prepared, names)
            elif prepared.stack is not None:  # each structure whole, overlaps included
                seg = build_segmentation(self._series_dir(series_uid), prepared.label_file, names, self._author,
                                         stack=prepared.stack, stack_values=[s.value for s in prepared.structures])
            else:
                seg = build_segmentation(self._series_dir(series_uid), prepared.label_file, names, self._author)
        except ValueError as err:
            raise HTTPException(status_code=400, detail=f"label for series {series_uid}: {err}") from err
        except Exception as err:  # highdicom refuses what the source series lacks: say so, keep serving
            logger.exception("DICOM SEG for series %s could not be made", series_uid)
            raise HTTPException(status_code=500, detail=f"DICOM SEG for series {series_uid} could not be made: "
                                                        f"{type(err).__name__}: {err}") from err
        try:
            self._client.store_instances([seg])
        except Exception as err:
            raise HTTPException(status_code=502, detail=f"the PACS refused the DICOM SEG for series {series_uid}: "
                                                        f"{err}") from err
        logger.info("stored DICOM SEG %s for series %s", seg.SeriesInstanceUID, series_uid)
        info = self.get_image_info(series_uid)
        return {"SeriesInstanceUID": str(seg.SeriesInstanceUID), "Modality": info.get("Modality"),
                "StudyInstanceUID": info.get("StudyInstanceUID"),
                "seg_segments": [d.SegmentLabel for d in seg.SegmentSequence]}

    def _instance_seg(self, instance_uid: str, prepared: PreparedLabel, names: dict):
        import pydicom

        source = pydicom.dcmread(self._stable_path(instance_uid))  # the loop or still as the PACS holds it
        masks = instance_masks(prepared)
        if self.instances.find(instance_uid).is_loop:
            return build_cine_segmentation(source, masks, names, self._author)
        return build_still_segmentation(source, masks, names, self._author)


def _transfer_syntax(series_dir: str) -> str:
    import pydicom

    for name in sorted(os.listdir(series_dir)):
        try:
            return str(pydicom.dcmread(os.path.join(series_dir, name), stop_before_pixels=True).file_meta
                       .TransferSyntaxUID)
        except Exception:  # not a DICOM file: look at the next
            continue
    return ""


def open_dicomweb_datastore(url: str, modalities: List[str], author: SegAuthor,
                            label_names: List[str]) -> MedSam2DicomWebDatastore:
    """The datastore for ``--studies <DICOMweb URL>``, with MONAI Label's own client and settings
    (``MONAI_LABEL_DICOMWEB_USERNAME``/``_PASSWORD``, ``_CACHE_PATH``, ``_FETCH_BY_FRAME``, prefixes)."""
    from monailabel.datastore.dicom import DICOMwebClientX
    from dicomweb_client.session_utils import create_session_from_user_pass

    session = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = DICOMwebClientX(url=url, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                             wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                             stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
    return MedSam2DicomWebDatastore(client, modalities, author, label_names, cache_path=cache_path,
                                    fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME)
