"""What the page is sent to show a study: the whole study, or one slice of it first.

A NIfTI study stored gzipped, little-endian, 3D, in a voxel type the page reads and with an
sform or qform goes as its own file (the browser inflates it; the page reads it as nibabel
does, tests/test_viewer_nifti.py): no decode and re-encode on the server, which cost 3 s for a
220-slice CT. Anything else (a DICOM series, a PACS series, other formats) is read with the
engine's reader and written on the engine's grid (voxel order ``[i, j, k]`` and RAS affine),
so a voxel the page clicks is exactly the voxel the app's request fields mean.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException

from medsam2_engine.sessions import image_stamp
from medsam2_engine.volume_io import NIFTI_SUFFIXES, ImageReadError, Volume, load_for_display
from medsam2_engine.windowing import model_window

logger = logging.getLogger(__name__)

# NIfTI voxel types the page reads (viewer/page/nifti.js)
PAGE_TYPES = {"uint8", "int8", "int16", "uint16", "int32", "uint32", "float32", "float64"}
# a picture's voxel [i, j] (column, row, as MONAI's PIL reader gives it) on the page as the file shows it:
# column 0 at the left, row 0 at the top (checked on the screenshot: tests/test_viewer_pictures.py)
PICTURE_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])  # NIfTI's RGB24 (datatype 128)


def picture_or_volume_affine(volume: Volume) -> np.ndarray:
    """The affine a mask of ``volume`` is shown with: its own (a study), or a picture's."""
    return volume.affine if volume.is_3d else PICTURE_AFFINE


def picture_as_study(volume: Volume) -> Volume:
    """A picture (grey ``[i, j]`` or colour ``[i, j, 3]``) as the one-slice study the page shows:
    ``[i, j, 1]``, colour as RGB24 voxels, row 0 drawn at the top."""
    if volume.is_rgb:
        rgb = np.clip(np.rint(volume.array), 0, 255).astype(np.uint8)
        array = np.ascontiguousarray(rgb).view(RGB24)[..., 0][:, :, None]
    else:
        array = volume.array[:, :, None]
    return Volume(array, PICTURE_AFFINE, volume.path, volume.declared_modality, False,
                  {**volume.meta, "picture": True, "colour": volume.is_rgb})


def volume_as_nifti(volume: Volume) -> bytes:
    """``volume`` as gzipped NIfTI-1 bytes, voxel for voxel on the engine's grid.

    Whole-number images (CT in HU, most MR) travel as int16 when they fit: half the bytes
    of float32, same values.
    """
    import nibabel as nib

    array = volume.array
    if array.dtype.names is None and np.issubdtype(array.dtype, np.floating) and array.size \
            and np.all(np.isfinite(array)):
        low, high = float(array.min()), float(array.max())
        if -32768 <= low and high <= 32767 and np.array_equal(array, np.round(array)):
            array = array.astype(np.int16)
    image = nib.Nifti1Image(np.asarray(array), np.asarray(volume.affine, dtype=np.float64))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1)


@dataclass(frozen=True)
class ShownVolume:
    """What the page is sent for a study, or for one slice of it: gzipped NIfTI and what to show it with."""

    body: bytes | None  # the gzipped NIfTI, or None: the stored file is sent as it is
    dims: tuple  # the study's voxels [ni, nj, nk] (the whole study's, for one slice too)
    window: tuple | None  # the display window the model's default uses, (low, high)
    k: int | None  # the slice sent alone (None: the whole study)
    stored: str | None = None  # the study's own .nii.gz, sent as it is (body None)
    frame_time_ms: float | None = None  # a video's time between frames (None: unknown, or not a video)
    frames: int | None = None  # a video's frame count: its third axis is time

    def headers(self, image: str) -> dict:
        # the browser inflates the body itself (no script work): the page reads the .nii
        out = {"Content-Encoding": "gzip", "Cache-Control": "no-store", "X-Volume-Dims": ",".join(map(str, self.dims)),
               "Content-Disposition": f'attachment; filename="{image}.nii"'}
        if self.window is not None:
            out["X-Model-Window"] = f"{self.window[0]:g},{self.window[1]:g}"
        if self.k is not None:
            out["X-Slice"] = str(self.k)
        if self.frame_time_ms:
            out["X-Frame-Time-Ms"] = f"{self.frame_time_ms:g}"
        if self.frames:
            out["X-Video-Frames"] = str(self.frames)
        return out


class ShownVolumes:
    """The last studies sent whole (a few), so the page's second open of a study is not a second read."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._sent: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def whole(self, uri: str) -> ShownVolume:
        stamp = image_stamp(uri)
        with self._lock:
            if stamp in self._sent:
                self._sent.move_to_end(stamp)
                return self._sent[stamp]
        volume = _read(uri)
        if sendable_as_stored(uri):
            shown = ShownVolume(None, tuple(volume.array.shape), _window(volume), None, stored=uri)
        else:
            shown = ShownVolume(volume_as_nifti(volume), tuple(volume.array.shape), _window(volume), None,
                                frame_time_ms=volume.meta.get("frame_time_ms"), frames=volume.meta.get("frames"))
        with self._lock:
            self._sent[stamp] = shown
            while len(self._sent) > self.keep:
                self._sent.popitem(last=False)
        return shown

    @staticmethod
    def one_slice(uri: str, k: int | None) -> ShownVolume | None:
        """Slice ``k`` alone (None: the middle one) of a NIfTI study, read without decoding the rest;
        None for other formats (the page waits for the whole study)."""
        if not uri.lower().endswith(NIFTI_SUFFIXES) or not os.path.isfile(uri):
            return None
        import nibabel as nib

        try:
            dims = tuple(int(n) for n in nib.load(uri).shape)  # the header only
        except Exception as err:  # noqa: BLE001 - nibabel raises many types
            raise HTTPException(status_code=422, detail=f"image: it cannot be read: {err}") from err
        if len(dims) != 3:
            return None
        k = dims[2] // 2 if k is None else min(int(k), dims[2] - 1)
        volume = _read(uri, k)
        return ShownVolume(volume_as_nifti(volume), dims, _window(volume), k)


def _read(uri: str, k: int | None = None) -> Volume:
    try:
        volume = load_for_display(uri, k)
    except ImageReadError as err:
        raise HTTPException(status_code=422, detail=f"image: it cannot be read: {err}") from err
    if volume.array.ndim == 2 or volume.is_rgb:
        return picture_as_study(volume)
    return volume


def _window(volume: Volume) -> tuple | None:
    """The window the model's default (no window in the request) puts on the study (None for a
    colour picture: the model takes its 0-255 as they are)."""
    if volume.meta.get("colour"):
        return None
    try:
        chosen, _ = model_window(volume)
    except Exception:  # noqa: BLE001 - the page then shows its own range; the result's window follows
        logger.warning("no display window for %s", volume.path, exc_info=True)
        return None
    return (float(chosen.low), float(chosen.high))




def sendable_as_stored(uri: str) -> bool:
    """Whether the page can read the study's own file as the engine does: a .nii.gz of one gzip
    member (browsers inflate one), NIfTI-1, little-endian, 3D, a type the page reads, an affine."""
    if not uri.lower().endswith(".nii.gz") or not os.path.isfile(uri):
        return False
    import nibabel as nib

    try:
        image = nib.load(uri)
        header = image.header
        if type(header) is not nib.Nifti1Header or header.endianness != "<" or len(image.shape) != 3:
            return False
        if str(header.get_data_dtype()) not in PAGE_TYPES:
            return False
        if not (int(header["sform_code"]) or int(header["qform_code"])):
            return False
    except Exception:  # noqa: BLE001 - the engine's reader will say what is wrong
        return False
    return _one_gzip_member(uri)


def _one_gzip_member(path: str) -> bool:
    inflate = zlib.decompressobj(wbits=31)  # gzip
    try:
        with open(path, "rb") as stored:
            while chunk := stored.read(1 << 20):
                inflate.decompress(chunk)
                if inflate.eof:
                    return not inflate.unused_data and not stored.read(1)
    except (OSError, zlib.error):
        return False
    return False
