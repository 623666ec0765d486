"""An uploaded image or label decoded whole, within a size limit, before anything is stored.

A compressed file can declare far more voxels than it carries bytes (2 MB of gzip that
claims 2048 x 1024 x 1024 voxels), or stop half way (a truncated gzip that some readers
pad with zeros). Both are refused here, by what the file declares before decoding and by
counting bytes while decompressing, and a label must hold finite whole numbers: a label
map with NaN or infinity is not a label. A label's limit is its image's grid: a header that
declares another grid is refused from the header alone (``grid``), before any decompression.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np
from medsam2_engine.video_io import VIDEO_SUFFIXES

from ..options import OptionError

CHUNK = 1 << 20


def _too_large(field: str, shape, nbytes: int, limit: int) -> OptionError:
    return OptionError(field, f"declares {' x '.join(str(int(n)) for n in shape)} voxels ({nbytes / 2**20:.0f} MB "
                              f"decoded), over the server's limit of {limit / 2**20:.0f} MB "
                              "(--conf upload_max_decoded_mb)", status=413)


def check_declared_grid(field: str, declared, grid, extra_dims: int = 0) -> None:
    """Refuse a label whose header declares a grid other than its image's ``grid`` (spatial shape).

    Trailing dimensions of 1 are ignored (a 2D label saved as W x H x 1); ``extra_dims`` more
    dimensions may follow the grid (a structures file: [i, j, k, structure]).
    """
    if grid is None:
        return
    shape = [int(n) for n in declared]
    spatial = shape[:len(grid)]
    rest = shape[len(grid):]
    while len(rest) > extra_dims and rest[-1] == 1:
        rest.pop()
    if tuple(spatial) != tuple(int(n) for n in grid) or len(rest) > extra_dims:
        raise OptionError(field, f"declares a grid of {' x '.join(map(str, shape))} voxels; its image's grid is "
                                 f"{' x '.join(str(int(n)) for n in grid)}: a label is saved on its image's grid "
                                 "(nothing was decoded or saved)", status=422)


def grid_limit(grid, limit: int, structures: int = 1) -> int:
    """The decoded-size cap of a label on ``grid``: at most 8 bytes a voxel per structure."""
    if grid is None:
        return limit
    return min(limit, int(np.prod([int(n) for n in grid], dtype=np.int64)) * max(1, structures) * 8 + CHUNK)


def _gunzip_within(path: str, limit: int, field: str, head: int = 0) -> bytes:
    """The decompressed bytes of ``path`` (its first ``head`` bytes only, if given); refuses a
    truncated stream or one that grows past ``limit``."""
    out = bytearray()
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(head or CHUNK):
                out += chunk
                if head:
                    break
                if len(out) > limit:
                    raise OptionError(field, f"decompresses to over {limit / 2**20:.0f} MB "
                                             "(--conf upload_max_decoded_mb)", status=413)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise OptionError(field, f"the file is truncated or not valid gzip ({err})", status=422) from err
    return bytes(out)


def _nifti_image(data: bytes, field: str):
    import nibabel as nib

    for kind in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return kind.from_bytes(data)
        except Exception:  # noqa: BLE001 - try the other NIfTI version
            continue
    raise OptionError(field, "not a readable NIfTI file", status=422)


def decoded_nifti(path: str, limit: int, field: str, grid=None, extra_dims: int = 0) -> tuple:
    """(array, affine) of an uploaded NIfTI file (gzipped or not, by its content), decoded whole;
    ``grid``: the image's spatial shape the header must declare (:func:`check_declared_grid`)."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # by content: clients name files loosely
    if compressed:
        header = _nifti_image(_gunzip_within(path, limit, field, head=1024) + bytes(1 << 16), field).header
    else:
        with open(path, "rb") as raw:
            header = _nifti_image(raw.read(1024) + bytes(1 << 16), field).header
    shape, dtype = header.get_data_shape(), header.get_data_dtype()
    check_declared_grid(field, shape, grid, extra_dims)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > limit:
        raise _too_large(field, shape, nbytes, limit)
    declared = int(header["vox_offset"]) + nbytes
    if compressed:
        data = _gunzip_within(path, declared + CHUNK, field)
    else:
        with open(path, "rb") as raw:
            data = raw.read(declared + CHUNK)
    if len(data) < declared:
        raise OptionError(field, f"the file holds {len(data)} bytes, its header declares {declared}: truncated",
                          status=422)
    image = _nifti_image(data, field)
    return np.asarray(image.dataobj), image.affine


def _nrrd(path: str, limit: int, field: str, grid=None) -> np.ndarray:
    import nrrd

    try:
        header = nrrd.read_header(path)
        dtype = nrrd.reader._determine_datatype(header)
    except Exception as err:
        raise OptionError(field, f"not a readable NRRD file ({err})", status=422) from err
    shape = [int(n) for n in header.get("sizes", [])]
    check_declared_grid(field, shape, grid)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > limit:
        raise _too_large(field, shape, nbytes, limit)
    try:
        data, _ = nrrd.read(path)
    except Exception as err:
        raise OptionError(field, f"the NRRD data cannot be read whole ({err})", status=422) from err
    return data


def _picture(path: str, limit: int, field: str, grid=None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as picture:
            bands = len(picture.getbands())
            check_declared_grid(field, picture.size, grid)
            nbytes = picture.size[0] * picture.size[1] * bands
            if nbytes > limit:
                raise _too_large(field, picture.size + (bands,), nbytes, limit)
            picture.load()
            return np.asarray(picture)
    except OptionError:
        raise
    except Exception as err:
        raise OptionError(field, f"the picture cannot be decoded whole ({err})", status=422) from err


def _video(path: str, limit: int, field: str) -> None:
    """A video decoded whole (PyAV, as the engine reads it), within ``limit`` bytes of RGB frames."""
    import av

    total = 0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise OptionError(field, "the file holds no video stream", status=422)
            stream = container.streams.video[0]
            declared = int(stream.frames or 0) * int(stream.width) * int(stream.height) * 3
            if declared > limit:
                raise _too_large(field, (stream.width, stream.height, stream.frames), declared, limit)
            for frame in container.decode(stream):
                total += frame.width * frame.height * 3
                if total > limit:
                    raise OptionError(field, f"decodes to over {limit / 2**20:.0f} MB (--conf upload_max_decoded_mb)",
                                      status=413)
    except OptionError:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV raises many types: say what, not where (a temporary file)
        raise OptionError(field, f"the video cannot be decoded whole ({getattr(err, 'strerror', None) or err})",
                          status=422) from err
    if not total:
        raise OptionError(field, "the video holds no frame", status=422)


def _dicom_file(path: str, limit: int, field: str) -> None:
    """A DICOM file's image (one frame, or a multi-frame loop) decoded whole, within ``limit``."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001 - pydicom's words name its own options: say what the file is not
        raise OptionError(field, "not a DICOM file (no DICOM header)", status=422) from err
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if k not in header]
    if missing:  # a structured report, a key object
        raise OptionError(field, f"a DICOM file without an image (no {', '.join(missing)})", status=422)
    shape = (int(header.Columns), int(header.Rows), int(header.get("NumberOfFrames", 1) or 1))
    nbytes = int(np.prod(shape, dtype=np.int64)) * int(header.get("SamplesPerPixel", 1) or 1) \
        * max(1, int(header.BitsAllocated) // 8)
    if nbytes > limit:
        raise _too_large(field, shape, nbytes, limit)
    try:
        pydicom.dcmread(path).pixel_array
    except Exception as err:  # noqa: BLE001 - truncated, or compressed in a way no decoder here reads
        raise OptionError(field, f"the DICOM image cannot be decoded whole ({err})", status=422) from err


def check_image_upload(path: str, filename: str, limit: int, field: str) -> None:
    """An uploaded study decodes whole within ``limit``: a volume or picture (:func:`decoded`), a
    video, or a DICOM file (``filename``: the client's name, for its type)."""
    name = filename.lower()
    if name.endswith(VIDEO_SUFFIXES):
        _video(path, limit, field)
    elif name.endswith(".dcm"):
        _dicom_file(path, limit, field)
    else:
        decoded(path, filename, limit, field)


def decoded(path: str, filename: str, limit: int, field: str, grid=None) -> np.ndarray:
    """The whole array of an uploaded file (``filename``: the client's name, for its type);
    ``grid``: the spatial shape its header must declare (a label: its image's)."""
    name = filename.lower()
    if name.endswith((".nii", ".nii.gz")):
        return decoded_nifti(path, limit, field, grid)[0]
    if name.endswith(".nrrd"):
        return _nrrd(path, limit, field, grid)
    if name.endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
        return _picture(path, limit, field, grid)
    raise OptionError(field, f"file type of {filename!r} is not accepted", status=415)


def check_label_values(array: np.ndarray, field: str = "label") -> None:
    """A label holds finite, whole, non-negative values."""
    if array.size == 0:
        raise OptionError(field, "the label has no voxels", status=422)
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise OptionError(field, f"{bad} voxel(s) are NaN or infinite; a label holds whole numbers", status=422)
        if not np.array_equal(array, np.round(array)):
            raise OptionError(field, "holds fractional values; a label holds whole numbers", status=422)
    if np.issubdtype(array.dtype, np.number) and array.min() < 0:
        raise OptionError(field, "holds negative values; a label holds 0 and structure values", status=422)
