"""A series' latest final label read back from the PACS (DICOM SEG), for replicas sharing one PACS.

A replica's cache is only a cache: the label of a series is the newest DICOM SEG in the
PACS that references it. ``PacsLabels.latest(series, study)`` finds it (a QIDO query for
the study's SEG series; each SEG's metadata fetched once, as a SEG never changes), and
``to_label_file`` turns it into a label map on the grid of the series' cached NIfTI.
A label saved through this app is versioned by its SEG's SeriesInstanceUID, so every
replica names the same version for it. ``labelled_series()`` is the set of series any SEG in
the PACS references, seconds old at most (MONAI Label caches its own list for hours, so a
replica would not see labels saved through another: the trainer would not train on them and
the next study could be one already labelled).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time

import numpy as np
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)


def _value(meta: Dataset, keyword: str, default=""):
    value = getattr(meta, keyword, None)
    return default if value is None else value


class PacsLabels:
    def __init__(self, client, label_names: list, list_ttl_s: float = 5.0):
        self._client = client
        self._label_names = list(label_names)
        self._references: dict = {}  # SEG series UID -> (referenced series UID, sort key)
        self._lock = threading.Lock()
        self.list_ttl_s = list_ttl_s
        self._labelled: tuple = (-float("inf"), frozenset())  # (when listed, series UIDs)

    def labelled_series(self) -> frozenset:
        """Series UIDs some SEG in the PACS references (one QIDO query per ``list_ttl_s``; each SEG's
        metadata fetched once, as a SEG never changes)."""
        listed_at, series = self._labelled
        if time.monotonic() - listed_at < self.list_ttl_s:
            return series
        found = set()
        for entry in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            meta = Dataset.from_json(entry)
            reference = self._reference(str(meta["StudyInstanceUID"].value), str(meta["SeriesInstanceUID"].value))
            if reference:
                found.update(uid for uid in (reference[0], reference[2]) if uid)
        self._labelled = (time.monotonic(), frozenset(found))
        return self._labelled[1]

    def latest(self, series_uid: str, study_uid: str):
        """(SEG series UID, study UID) of the newest SEG referencing ``series_uid`` (or the loop of that
        instance UID: ``pacs_instances.py``), or None."""
        found = []
        for entry in self._client.search_for_series(search_filters={"Modality": "SEG",
                                                                     "StudyInstanceUID": study_uid}):
            seg_uid = str(Dataset.from_json(entry)["SeriesInstanceUID"].value)
            reference = self._reference(study_uid, seg_uid)
            if reference and series_uid in (reference[0], reference[2]):
                found.append((reference[1], seg_uid))
        return (max(found)[1], study_uid) if found else None

    def _reference(self, study_uid: str, seg_uid: str):
        with self._lock:
            if seg_uid in self._references:
                return self._references[seg_uid]
        try:
            meta = Dataset.from_json(self._client.retrieve_series_metadata(study_uid, seg_uid)[0])
        except Exception as err:  # noqa: BLE001 - a SEG that cannot be read is not this app's label
            logger.warning("SEG series %s: metadata not readable: %s", seg_uid, err)
            return None
        referenced = _value(meta, "ReferencedSeriesSequence", [])
        series = str(referenced[0].SeriesInstanceUID) if referenced else ""
        instances = _value(referenced[0], "ReferencedInstanceSequence", []) if referenced else []
        # a SEG of one instance: of a loop, whose id in the app is that instance's UID
        single = str(instances[0].ReferencedSOPInstanceUID) if len(instances) == 1 else ""
        when = f"{_value(meta, 'ContentDate')}{_value(meta, 'ContentTime')}"
        reference = (series, (when, seg_uid), single)
        with self._lock:
            self._references[seg_uid] = reference
        return reference

    def value_of(self, segment_label: str, number: int) -> int:
        """A segment's label value: its name's place in ``--conf labels``, ``label N``, or its number."""
        if segment_label in self._label_names:
            return self._label_names.index(segment_label) + 1
        if segment_label.startswith("label ") and segment_label[6:].isdigit():
            return int(segment_label[6:])
        return number

    def to_label_file(self, seg_uid: str, study_uid: str, series_dir: str, image_file: str) -> tuple:
        """(label NIfTI path, label_info, structures) of a SEG, on the grid of ``image_file`` (made from
        ``series_dir``). ``structures``: (stack ``[i, j, k, segment]``, label value per segment), each
        segment whole (overlaps included, as the app writes them); the label map is made from it by
        the app's one overlap rule (``label_structures.label_map_of``)."""
        from medsam2_engine.label_structures import label_map_of

        import highdicom as hd
        import pydicom
        import SimpleITK as sitk

        instance = self._client.retrieve_series(study_uid, seg_uid)[0]
        seg = hd.seg.Segmentation.from_dataset(instance)
        files = sitk.ImageSeriesReader().GetGDCMSeriesFileNames(series_dir)
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        listed = {uid for _, _, uid in seg.get_source_image_uids()}
        present = [u for u in uids if u in listed]
        image = sitk.ReadImage(image_file)
        shape = sitk.GetArrayFromImage(image).shape  # [slice, row, column]
        numbers = list(seg.segment_numbers)
        stack = np.zeros((*shape, len(numbers)), dtype=np.uint8)
        info, values = [], []
        for number in numbers:
            name = str(seg.get_segment_description(number).segment_label)
            values.append(self.value_of(name, number))
            info.append({"name": name, "idx": values[-1]})
        if present:
            pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=present, combine_segments=False,
                                                       assert_missing_frames_are_empty=True)
            for row, uid in enumerate(present):
                stack[uids.index(uid)] = pixels[row] > 0
        label = label_map_of(stack, values) if numbers else np.zeros(shape, dtype=np.uint8)
        out = sitk.GetImageFromArray(label)
        out.CopyInformation(image)
        fd, path = tempfile.mkstemp(suffix=".nii.gz")
        os.close(fd)
        sitk.WriteImage(out, path)
        return path, info, (np.transpose(stack, (2, 1, 0, 3)), values)

    def to_instance_label_file(self, seg_uid: str, study_uid: str, instance_uid: str, instance_file: str) -> tuple:
        """As :meth:`to_label_file`, for a SEG of a cine loop or a still (``cine_seg.py``): on the grid of
        the instance as the engine reads ``instance_file`` (``[column, row, frame]``; a still: one frame)."""
        from medsam2_engine.label_structures import label_map_of
        import nibabel as nib
        from medsam2_engine.volume_io import Volume, load_image, save_mask

        from ..shown_volumes import PICTURE_AFFINE
        from .cine_seg import read_instance_segmentation

        image = load_image(instance_file)
        still = not image.is_3d  # a picture, whose label is the one-slice study the page shows, [i, j, 1]
        if still:
            image = Volume(array=np.zeros(image.spatial_shape + (1,), np.uint8), affine=PICTURE_AFFINE)
        instance = self._client.retrieve_series(study_uid, seg_uid)[0]
        masks, names = read_instance_segmentation(instance, instance_uid, image.array.shape[2])
        stack = np.transpose(masks, (2, 1, 0, 3)).astype(np.uint8)  # [frame, row, column, s] -> [i, j, k, s]
        if stack.shape[:3] != image.array.shape:
            raise ValueError(f"SEG {seg_uid}: frames of {masks.shape[1:3]} do not fit the image {image.array.shape}")
        values = [self.value_of(name, number) for number, name in enumerate(names, start=1)]
        info = [{"name": name, "idx": value} for name, value in zip(names, values)]
        label = label_map_of(stack, values) if values else np.zeros(image.array.shape, dtype=np.uint8)
        fd, path = tempfile.mkstemp(suffix=".nii.gz")
        os.close(fd)
        if still:  # as the page saves a picture's label
            nib.save(nib.Nifti1Image(label.astype(np.uint8), PICTURE_AFFINE), path)
        else:
            save_mask(path, label, image)  # as a folder's loop label is written
        return path, info, (stack, values)
