"""Reading images and writing masks on exactly the input grid.

Arrays are kept in voxel index order ``[i, j, k]`` (MONAI's convention for both the ITK
and the NiBabel readers), so a client's voxel click ``[i, j, k]`` indexes the array
directly. The affine is MONAI's RAS affine; writing it back through MONAI's ITK writer
restores the file's own (LPS) geometry.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np

from .atomic_files import atomic_write
from .video_io import (BT601_LUMA, VIDEO_SUFFIXES, VideoReadError, frame_time_ms, is_frames_folder,
                       load_frames_folder, load_video)

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """The image file or series could not be read."""


@dataclass
class Volume:
    """An image in voxel index order with its geometry.

    ``array`` is ``[i, j, k]`` for a volume, ``[i, j]`` for a grey 2D image and
    ``[i, j, c]`` with ``is_rgb`` for a colour photograph.
    """

    array: np.ndarray
    affine: np.ndarray
    path: str = ""
    declared_modality: str | None = None
    is_rgb: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def is_3d(self) -> bool:
        return self.array.ndim == 3 and not self.is_rgb

    @property
    def spatial_shape(self) -> tuple:
        return tuple(self.array.shape[:2]) if self.is_rgb else tuple(self.array.shape)

    @property
    def num_slices(self) -> int:
        return self.array.shape[2] if self.is_3d else 1


def _modality_from_meta(meta: dict, header) -> str | None:
    """The Modality tag: from the reader's metadata, else from the series' first header (``header()``)."""
    value = meta.get("0008|0060") or meta.get("modality")
    if value is None:
        value = getattr(header(), "Modality", None)
    return (str(value).strip() or None) if value is not None else None


def _first_dicom_header(folder: str):
    """The header of a series folder's first readable DICOM file (None: there is none)."""
    import pydicom

    for name in sorted(os.listdir(folder)):
        try:
            return pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True)
        except Exception:  # not a DICOM file (a README, a thumbnail): try the next
            continue
    return None


def _first_value(value) -> float | None:
    """A DICOM DS that may hold several values ("40\\400" or a MultiValue): the first, as a number."""
    if value is None:
        return None
    if not isinstance(value, str) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    try:
        return float(str(value).split("\\")[0])
    except (TypeError, ValueError):
        return None


def _dicom_window_from(meta: dict, header) -> dict:
    """The series' WindowCenter/WindowWidth (0028,1050 / 0028,1051), the first value when several."""
    center, width = meta.get("0028|1050"), meta.get("0028|1051")
    if center is None or width is None:
        center, width = getattr(header(), "WindowCenter", None), getattr(header(), "WindowWidth", None)
    center, width = _first_value(center), _first_value(width)
    if center is None or width is None:
        return {}
    return {"dicom_window_center": center, "dicom_window_width": width}


def load_image(path: str | os.PathLike) -> Volume:
    """Load NIfTI, NRRD, MHA, a DICOM series folder, a 2D image file, or a video (video_io.py).

    A plain 3D NIfTI (see :func:`_plain_nifti`) is read with nibabel, which gives ITK's voxels
    and affine (tests/test_volume_io.py) in a quarter of the time (0.9 s instead of 3.9 s for a
    512 x 512 x 220 CT); everything else with MONAI's ITK or PIL reader.
    """
    path = str(path)
    if not os.path.exists(path):
        raise ImageReadError(f"image not found: {path}")
    if path.lower().endswith(VIDEO_SUFFIXES) or is_frames_folder(path):
        try:
            array, affine, meta = load_frames_folder(path) if is_frames_folder(path) else load_video(path)
        except VideoReadError as err:
            raise ImageReadError(str(err)) from err
        return Volume(array=array, affine=affine, path=path, meta=meta)
    plain = _plain_nifti(path) if path.lower().endswith(NIFTI_SUFFIXES) and os.path.isfile(path) else None
    return plain if plain is not None else load_with_readers(path)


def load_with_readers(path: str) -> Volume:
    """MONAI's LoadImage with ITK's reader (PIL's for 2D image files)."""
    from monai.data import ITKReader, PILReader
    from monai.transforms import LoadImage

    is_2d_file = path.lower().endswith(IMAGE_2D_SUFFIXES)
    reader = PILReader() if is_2d_file else ITKReader(affine_lps_to_ras=True)
    try:
        image = LoadImage(reader=reader, image_only=True, dtype=None)(path)  # the file's own pixel type
    except Exception as err:  # the readers raise many types; name the file instead
        # MONAI's LoadImage appends every reader's traceback: the first line says what failed
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ImageReadError(f"could not read {path}: {reason}") from err

    array = np.asarray(image)
    meta = dict(getattr(image, "meta", {}) or {})
    # a series folder's first header, read at most once, only if the reader's metadata lacks a tag
    header = functools.lru_cache(maxsize=1)(lambda: _first_dicom_header(path) if os.path.isdir(path) else None)
    affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
    is_rgb = False
    if is_2d_file and array.ndim == 3:
        if array.shape[2] in (3, 4):
            array, is_rgb = array[..., :3], True
        else:
            raise ImageReadError(f"unexpected 2D image shape {array.shape} in {path}")
    if array.ndim == 4 and array.shape[3] in (3, 4) and not is_2d_file:  # a DICOM with three samples per pixel
        if array.shape[2] == 1:  # one frame (a fundus or dermoscopy photograph): a colour picture
            array, is_rgb = array[:, :, 0, :3], True
        else:  # a colour cine (Doppler): its luma, as a colour video is read (video_io.py)
            array = np.rint(array[..., :3].astype(np.float32) @ np.array(BT601_LUMA, np.float32))
    if array.ndim == 3 and not is_rgb and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and is_rgb and np.allclose(array[..., 0], array[..., 1]) and np.allclose(
        array[..., 0], array[..., 2]
    ):
        array, is_rgb = array[..., 0], False
    if array.ndim not in (2, 3):
        raise ImageReadError(f"expected a 2D or 3D image, got shape {array.shape} from {path}")
    return Volume(
        array=array.astype(np.float32),
        affine=affine,
        path=path,
        declared_modality=_modality_from_meta(meta, header),
        is_rgb=is_rgb,
        meta={**{k: v for k, v in meta.items() if isinstance(v, (str, int, float))}, **_dicom_window_from(meta, header),
              **_cine_timing(meta, array), "source_dtype": str(array.dtype)},  # the reference scales in its precision
    )


def is_picture_file(path: str) -> bool:
    """A study that is one 2D image: a picture file, or a DICOM file of one frame (an X-ray, a
    fundus or dermoscopy photograph, an ultrasound frame), told from its header alone."""
    path = str(path)
    if path.lower().endswith(IMAGE_2D_SUFFIXES):
        return True
    if not (path.lower().endswith(".dcm") and os.path.isfile(path)):
        return False
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames", "Rows"])
    except Exception:  # noqa: BLE001 - not readable here: the reader says why when it is opened
        return False
    return "Rows" in header and int(header.get("NumberOfFrames", 1) or 1) <= 1


def cine_frame_time_ms(path: str) -> float | None:
    """The time between frames of a study that is a loop (a video, or a multi-frame DICOM file with
    FrameTime), read from its header alone; None for anything else."""
    path = str(path)
    if path.lower().endswith(VIDEO_SUFFIXES) or is_frames_folder(path):
        return frame_time_ms(path)
    if path.lower().endswith(".dcm") and os.path.isfile(path):
        import pydicom

        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames", "FrameTime"])
        except Exception:  # noqa: BLE001 - not readable: no timing to keep
            return None
        frame_time = _first_value(header.get("FrameTime"))
        return round(frame_time, 3) if frame_time and int(header.get("NumberOfFrames", 1) or 1) > 1 else None
    return None


def _cine_timing(meta: dict, array: np.ndarray) -> dict:
    """A multi-frame DICOM cine (an ultrasound loop): its frames are the third axis, FrameTime
    (0018,1063) the time between them, as video_io.py's ``frame_time_ms``."""
    frame_time = _first_value(meta.get("0018|1063"))
    if frame_time is None or frame_time <= 0 or array.ndim != 3 or array.shape[2] < 2:
        return {}
    return {"frame_time_ms": round(frame_time, 3), "frames": int(array.shape[2])}


NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _plain_nifti(path: str) -> Volume | None:
    """The NIfTI as ITK reads it, read by nibabel; None (ITK reads it) unless it is 3D, unscaled,
    with an orthogonal affine and, when it has both, sform and qform agreeing: where ITK's and
    nibabel's rules could differ (ITK orthogonalises a sheared affine, prefers the qform on some
    codes, applies scaling in its own type) ITK decides."""
    import nibabel as nib

    try:
        image = nib.load(path)
        header = image.header
        if not isinstance(header, nib.Nifti1Header) or len(image.shape) != 3:
            return None
        proxy = image.dataobj  # holds the file's scaling (nibabel resets the loaded header's)
        if float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0:
            return None
        sform, sform_code = header.get_sform(coded=True)
        qform, qform_code = header.get_qform(coded=True)
        if not (sform_code or qform_code) or (sform_code and qform_code and not np.allclose(sform, qform, atol=1e-4)):
            return None
        affine = np.asarray(image.affine, dtype=np.float64)
        columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        if not np.allclose(columns.T @ columns, np.eye(3), atol=1e-4):
            return None
        array = np.asarray(image.dataobj)
    except Exception:  # noqa: BLE001 - anything odd: ITK reads it and names the problem
        return None
    return Volume(array=array.astype(np.float32), affine=affine, path=path,
                  meta={"source_dtype": np.dtype(header.get_data_dtype()).name})


def load_for_display(path: str | os.PathLike, k: int | None = None) -> Volume:
    """The image as :func:`load_image` reads it (same voxel order and RAS affine), sooner, for showing.

    A NIfTI file is read with nibabel, whose array and affine are load_image's
    (tests/test_volume_io.py), in its stored type (int16 CT stays int16), and only slice ``k``
    of it when ``k`` is given (``[i, j, 1]``, the affine moved to that slice): the first
    image a page shows needs no full decode. Anything else goes through :func:`load_image`.
    """
    path = str(path)
    if not path.lower().endswith(NIFTI_SUFFIXES) or not os.path.isfile(path):
        volume = load_image(path)
        return volume if k is None else _one_slice(volume, k)
    import nibabel as nib

    try:
        image = nib.load(path)
        if len(image.shape) != 3:
            volume = load_image(path)
            return volume if k is None else _one_slice(volume, k)
        if k is not None:
            k = min(max(int(k), 0), image.shape[2] - 1)
            array = np.asanyarray(image.dataobj[:, :, k:k + 1])
        else:
            array = np.asanyarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types; name the file instead
        raise ImageReadError(f"could not read {path}: {err}") from err
    affine = np.asarray(image.affine, dtype=np.float64)
    if k is not None:
        affine = affine @ _shift_k(k)
    return Volume(array, affine, path, meta={"source_dtype": str(image.get_data_dtype())})


def _one_slice(volume: Volume, k: int) -> Volume:
    k = min(max(int(k), 0), volume.array.shape[2] - 1)
    return Volume(volume.array[:, :, k:k + 1], volume.affine @ _shift_k(k), volume.path, volume.declared_modality,
                  volume.is_rgb, volume.meta)


def _shift_k(k: int) -> np.ndarray:
    shift = np.eye(4)
    shift[2, 3] = k
    return shift


def save_mask(path: str | os.PathLike, mask: np.ndarray, like: Volume, dtype=np.uint8) -> str:
    """Write ``mask`` (voxel order, same spatial shape as ``like``) with ``like``'s geometry."""
    from monai.data import ITKWriter

    if tuple(mask.shape) != like.spatial_shape:
        raise ValueError(f"mask shape {mask.shape} does not match image {like.spatial_shape}")

    def write(tmp: str) -> None:
        writer = ITKWriter(output_dtype=dtype, affine_lps_to_ras=True)
        writer.set_data_array(mask.astype(dtype), channel_dim=None)
        writer.set_metadata({"affine": like.affine, "original_affine": like.affine}, resample=False)
        writer.write(tmp, compress=True)

    return atomic_write(path, write)
