"""Write a volume as a DICOM series with pydicom, for the PACS tests.

The volume is in the engine's convention: ``array[i, j, k]`` with MONAI's RAS affine.
DICOM geometry is LPS and a slice's pixel ``(row, column)`` is ``(j, i)``, so reading the
series back with ``medsam2_engine.volume_io.load_image`` gives the same array and affine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def write_series(array: np.ndarray, affine: np.ndarray, folder: Path, modality: str = "CT",
                 patient_id: str = "MEDSAM2-PHANTOM", description: str = "phantom",
                 study_uid: str | None = None) -> dict:
    """One file per slice ``k`` in ``folder``; returns the study, series and frame-of-reference UIDs
    and ``instances``, the SOPInstanceUID of each slice ``k``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = np.round(np.asarray(array)).astype(np.int16)
    axes = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    directions = axes / spacing
    uids = {"study": study_uid or generate_uid(), "series": generate_uid(), "frame_of_reference": generate_uid()}
    sop_class = SOP_CLASSES[modality]
    uids["instances"] = []
    for k in range(values.shape[2]):
        position = RAS_TO_LPS @ (np.asarray(affine, dtype=np.float64) @ [0.0, 0.0, k, 1.0])[:3]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        uids["instances"].append(str(ds.SOPInstanceUID))
        ds.PatientID, ds.PatientName = patient_id, f"{patient_id}^"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.FrameOfReferenceUID = uids["frame_of_reference"]
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.StudyDate, ds.StudyTime = "20260101", "120000"
        ds.Modality, ds.SeriesDescription = modality, description
        ds.ImageOrientationPatient = [float(v) for v in (*directions[:, 0], *directions[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows (j), between columns (i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1
            ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window, as a scanner would store
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.PixelData = np.ascontiguousarray(values[:, :, k].T).tobytes()
        ds.save_as(folder / f"slice{k:04d}.dcm", write_like_original=False)
    return uids


def write_undecodable_series(folder: Path, rows: int = 16, columns: int = 16, slices: int = 3) -> dict:
    """A series that says JPEG 2000 but holds bytes no decoder accepts (a PACS cannot transcode it)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    uids = write_series(np.zeros((columns, rows, slices), np.int16), np.eye(4), folder, description="broken j2k")
    for path in sorted(Path(folder).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])  # a J2K start marker, then nothing
        ds["PixelData"].is_undefined_length = True
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return uids


def _ultrasound(path, sop_class_uid: str, patient_id: str, columns: int, rows: int) -> FileDataset:
    """An ultrasound instance as a scanner stores one: its own study and series, no frame of reference."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def _saved(ds: FileDataset, pixels: np.ndarray, attributes: dict, path) -> Path:
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(str(path))
    return Path(path)


def write_cine_dicom(path, frames: np.ndarray, frame_time_ms: float, **attributes) -> Path:
    """``frames`` [i, j, t] (uint8) as an Ultrasound Multi-frame Image (one file, NumberOfFrames, FrameTime,
    no frame of reference, as a scanner writes a loop); ``attributes``: more DICOM keywords and values."""
    from pydicom.tag import Tag

    ds = _ultrasound(path, "1.2.840.10008.5.1.4.1.1.3.1", "CINE1", frames.shape[0], frames.shape[1])
    ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = frames.shape[2], frame_time_ms, Tag(0x0018, 0x1063)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return _saved(ds, frames.transpose(2, 1, 0), attributes, path)


def write_still_dicom(path, rgb: np.ndarray, **attributes) -> Path:
    """``rgb`` [i, j, 3] (uint8) as an Ultrasound Image (one frame, RGB, no frame of reference, as a scanner
    stores a still); ``attributes``: more DICOM keywords and values."""
    ds = _ultrasound(path, "1.2.840.10008.5.1.4.1.1.6.1", "STILL1", rgb.shape[0], rgb.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    return _saved(ds, rgb.transpose(1, 0, 2), attributes, path)
