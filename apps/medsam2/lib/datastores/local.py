"""MONAI Label's local datastore with its holes closed: nothing escapes the studies folder,
no label is lost or half-written.

- Image ids, label tags and file extensions are checked against an allow-list, and every
  path written is resolved and must lie inside the studies folder (never in the model folder).
- Uploads are size-capped, must be readable images, and an existing image is never
  replaced by different content.
- A label is checked against its image (readable, same grid, whole non-negative values)
  before anything is written; a bad one is refused and the stored label stays as it was.
- Files are written to a temporary file in the same folder and renamed into place, so a
  crash at any moment leaves the old or the new file; the datastore's JSON the same way.
- The label a save replaces (or a delete removes) is kept under
  ``<studies>/.label_history/<tag>/<image id>/<UTC time><ext>``, for a clinician to restore.
- Leftover temporary files of a crashed write are removed when the datastore opens.
- Several server processes (replicas) may share the folder: the records are re-read and
  written under one cross-process lock (``datastore_records.py``).
"""

from __future__ import annotations

import filecmp
import logging
import os
from pathlib import Path
import time
import uuid

from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from medsam2_engine.atomic_files import atomic_copy as _atomic_copy
from medsam2_engine.training.cases import CaseFiles, LabelMismatch, check_label_file
from medsam2_engine.video_io import VIDEO_SUFFIXES
from medsam2_engine.volume_io import ImageReadError, cine_frame_time_ms, load_image

from medsam2_engine.label_structures import structures_path, write_stack

from .records import SharedRecords, check_replaces
from ..options import OptionError, identifier, image_size
from .saved_structures import PreparedLabel, image_grid, prepare_label
from .upload_checks import check_image_upload

logger = logging.getLogger(__name__)

ALLOWED_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# a study may also be a video or one DICOM file (a multi-frame loop, or a single frame: a picture)
IMAGE_EXTENSIONS = ALLOWED_EXTENSIONS + VIDEO_SUFFIXES + (".dcm",)
TEMP_SUFFIX = ".partial"  # matches none of the datastore's patterns, so never listed as data


def atomic_copy(source: str, dest: str) -> None:
    _atomic_copy(source, dest, prefix=".", suffix=TEMP_SUFFIX)


HISTORY_DIR = ".label_history"


def extension_of(filename: str, field: str, allowed=ALLOWED_EXTENSIONS) -> str:
    lowered = os.path.basename(filename or "").lower()
    for ext in allowed:
        if lowered.endswith(ext):
            return ext
    # MONAI Label hands over a temporary copy that keeps only the client's suffixes: name the type
    suffix = "".join(Path(lowered).suffixes)
    kind = repr(suffix) if suffix else "(no extension)"
    raise OptionError(field, f"file type {kind} is not accepted; allowed: {', '.join(allowed)}",
                      status=415)


class SafeLocalDatastore(SharedRecords, LocalDatastore):
    def __init__(self, datastore_path: str, *, max_upload_bytes: int, max_decoded_bytes: int = 4 << 30, forbidden=(),
                 **kwargs):
        self._root = os.path.realpath(datastore_path)
        self._forbidden = [os.path.realpath(p) for p in forbidden]
        self._max_upload_bytes = int(max_upload_bytes)
        self._max_decoded_bytes = int(max_decoded_bytes)
        self._reported_links: set = set()
        if self._root in self._forbidden or any(self._root.startswith(f + os.sep) for f in self._forbidden):
            raise ValueError(f"the studies folder {self._root} lies inside the model folder; choose another")
        removed = remove_leftovers(self._root)
        if removed:
            logger.warning("removed %d temporary file(s) left by an interrupted write: %s", len(removed), removed)
        self._init_shared_records(datastore_path)
        super().__init__(datastore_path, **kwargs)

    # --- checks -------------------------------------------------------------------------
    def _inside(self, path: str, field: str) -> str:
        real = os.path.realpath(path)
        if not real.startswith(self._root + os.sep):
            raise OptionError(field, "resolves outside the studies folder")
        if any(real == f or real.startswith(f + os.sep) for f in self._forbidden):
            raise OptionError(field, "resolves into the model folder")
        return real

    def _check_upload(self, filename: str, field: str) -> None:
        size = os.path.getsize(filename)
        if size == 0:
            raise OptionError(field, "the uploaded file is empty")
        if size > self._max_upload_bytes:
            raise OptionError(field, f"{size} bytes; uploads are limited to {self._max_upload_bytes} bytes "
                                     "(--conf upload_max_mb)", status=413)

    # --- reads and deletes: a link in the studies folder never reaches a file outside it --------
    def _resolved_inside(self, path: str, field: str) -> str:
        if not path:
            return path
        real = os.path.realpath(path)
        if not real.startswith(self._root + os.sep) or \
                any(real == f or real.startswith(f + os.sep) for f in self._forbidden):
            raise OptionError(field, "the stored file resolves outside the studies folder (a link?); refused",
                              status=403)
        return real

    def get_image_uri(self, image_id: str) -> str:
        return self._resolved_inside(super().get_image_uri(image_id), "image")

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return self._resolved_inside(super().get_label_uri(label_id, label_tag), "label")

    def list_images(self):
        """The studies whose files lie inside the studies folder (a link out is not a study here)."""
        inside = []
        for image_id in super().list_images():
            try:
                self.get_image_uri(image_id)
                inside.append(image_id)
            except OptionError:
                if image_id not in self._reported_links:  # once: the list is read every second for open tabs
                    self._reported_links.add(image_id)
                    logger.warning("study %s is a link outside the studies folder: not listed", image_id)
        return inside

    def get_labeled_images(self, label_tag=None, labels=None):
        inside = set(self.list_images())
        return [i for i in super().get_labeled_images(label_tag, labels) if i in inside]

    def get_unlabeled_images(self, label_tag=None, labels=None):
        inside = set(self.list_images())
        return [i for i in super().get_unlabeled_images(label_tag, labels) if i in inside]

    def get_image_info(self, image_id: str) -> dict:
        self.get_image_uri(image_id)
        info = super().get_image_info(image_id)
        info.pop("path", None)  # the server's own paths are never answered
        return info

    def get_label_info(self, label_id: str, label_tag: str) -> dict:
        info = dict(super().get_label_info(label_id, label_tag) or {})
        info.pop("path", None)
        return info

    def _image_entry(self, image_id: str):
        obj = self._datastore.objects.get(identifier(image_id, "image"))
        if obj is None:
            raise OptionError("image", f"image not found: {image_id}", status=404)
        return obj

    # --- images ---------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        ext = extension_of(image_filename, "file", IMAGE_EXTENSIONS)
        if not image_id:
            image_id = os.path.basename(image_filename)[: -len(ext)]
        identifier(image_id, "image")
        self._check_upload(image_filename, "file")
        check_image_upload(image_filename, image_filename, self._max_decoded_bytes, "file")  # whole, within the limit
        try:
            image = load_image(image_filename)
        except ImageReadError as err:
            raise OptionError("file", f"not a readable image: {err}") from err
        image_size(image.array.shape, "file")
        dest = self._inside(os.path.join(self._datastore.image_path(), image_id + ext), "image")
        with self.records_lock():
            existing = self._datastore.objects.get(image_id)
            if existing is not None:
                current = os.path.join(self._datastore.image_path(), image_id + existing.image.ext)
                if existing.image.ext == ext and os.path.exists(current) and filecmp.cmp(current, image_filename,
                                                                                       shallow=False):
                    return image_id  # the same file again
                raise OptionError("image", f"image {image_id} already exists with other content; "
                                           "remove it first (its labels would no longer fit)", status=409)
            atomic_copy(image_filename, dest)
            info = dict(image_info or {})
            info.update({"ts": int(time.time()), "name": image_id + ext})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    # --- labels ---------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict,
                   prepared: "PreparedLabel | None" = None) -> str:
        obj = self._image_entry(image_id)
        tag = identifier(label_tag, "tag")
        self._check_upload(label_filename, "label")
        if prepared is None:
            prepared = prepare_label(label_filename, label_info, self._max_decoded_bytes,
                                     grid=image_grid(self.get_image_uri(image_id)))
            try:
                return self.save_label(image_id, label_filename, label_tag, label_info, prepared)
            finally:
                prepared.cleanup()
        ext = extension_of(prepared.label_file, "label")
        image_path = self.get_image_uri(image_id)
        frame_time = cine_frame_time_ms(image_path)
        if frame_time:  # a loop (video, multi-frame DICOM): a label per frame, and the loop's timing with it
            label_info = {**(label_info or {}), "frame_time_ms": frame_time}
        try:
            values = check_label_file(CaseFiles(image_path, prepared.label_file, image_id))
        except (LabelMismatch, ImageReadError) as err:
            names = {image_path: image_id, prepared.label_file: "the uploaded file", label_filename: "the uploaded file"}
            raise OptionError("label", _without_paths(str(err), names), status=422) from err

        label_dir = self._inside(self._datastore.label_path(tag), "tag")
        dest = self._inside(os.path.join(label_dir, image_id + ext), "label")
        stack_dest = self._inside(structures_path(dest), "label")
        with self.records_lock():  # the records as another replica may just have written them
            obj = self._image_entry(image_id)
            current = obj.labels.get(tag)
            check_replaces(label_info, current.info.get("version") if current else None, tag, image_id)
            os.makedirs(label_dir, exist_ok=True)
            previous = obj.labels.get(tag)
            previous_path = os.path.join(label_dir, image_id + previous.ext) if previous else None
            if previous_path and os.path.exists(previous_path):
                self._keep_history(tag, image_id, previous_path, previous.ext)
            if prepared.stack is not None:  # the structures first: a crash between leaves the old map
                write_stack(stack_dest, prepared.stack, prepared.affine, prepared.values, prefix=".", suffix=TEMP_SUFFIX)
            elif os.path.exists(stack_dest):
                os.unlink(stack_dest)  # a plain label map replaces the structures saved before it
            atomic_copy(prepared.label_file, dest)
            if previous_path and previous_path != dest and os.path.exists(previous_path):
                os.unlink(previous_path)  # saved in another format; the old one is in the history
            info = dict(label_info or {})
            info.update({"ts": int(time.time()), "name": image_id + ext, "label_values": values,
                         "version": uuid.uuid4().hex})  # what a client names to replace exactly this label
            info.update(prepared.summary())
            obj.labels[tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info("saved label %s (tag %s, values %s%s)", image_id, tag, values,
                    f", {len(prepared.structures)} structures, {len(prepared.overlaps)} overlaps"
                    if prepared.stack is not None else "")
        return image_id

    def remove_label(self, label_id: str, label_tag: str) -> None:
        obj = self._image_entry(label_id)
        tag = identifier(label_tag, "tag")
        label = obj.labels.get(tag)
        if label is None:
            raise OptionError("tag", f"image {label_id} has no {tag!r} label", status=404)
        self._inside(self._datastore.label_path(tag), "tag")
        path = self.get_label_uri(label_id, tag)
        with self.records_lock():
            if os.path.exists(path):
                self._keep_history(tag, label_id, path, label.ext)
            super().remove_label(label_id, tag)
            if os.path.exists(structures_path(path)):
                os.unlink(structures_path(path))  # the structures went with their label map

    def remove_image(self, image_id: str) -> None:
        obj = self._image_entry(image_id)
        self.get_image_uri(image_id)  # refuses a link out before any label of it is removed
        for tag in list(obj.labels):
            self._inside(self._datastore.label_path(tag), "tag")
            self.get_label_uri(image_id, tag)
        super().remove_image(image_id)

    def _keep_history(self, tag: str, image_id: str, path: str, ext: str) -> None:
        folder = self._inside(os.path.join(self._root, HISTORY_DIR, tag, image_id), "label")
        os.makedirs(folder, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        n = 1  # numbered within the second, so that names sort in the order of the saves
        while os.path.exists(os.path.join(folder, name := f"{stamp}-{n:03d}{ext}")):
            n += 1
        atomic_copy(path, os.path.join(folder, name))

    def label_history(self, image_id: str, tag: str = "final") -> list:
        folder = os.path.join(self._root, HISTORY_DIR, identifier(tag, "tag"), identifier(image_id, "image"))
        return sorted(os.path.join(folder, f) for f in os.listdir(folder)) if os.path.isdir(folder) else []


def remove_leftovers(root: str) -> list:
    """Delete the temporary files of writes a crash interrupted (ours end in ``.partial``)."""
    removed = []
    if not os.path.isdir(root):
        return removed
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(TEMP_SUFFIX):
                path = os.path.join(folder, name)
                os.unlink(path)
                removed.append(os.path.relpath(path, root))
    return removed


def _without_paths(message: str, names: dict) -> str:
    """Error text for the client: the server's file paths replaced by what they are (``{path: name}``)."""
    for path, name in names.items():
        message = message.replace(path, name)
    return message
