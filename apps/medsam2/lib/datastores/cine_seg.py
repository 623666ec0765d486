"""A cine loop's label as DICOM SEG: the frames of a multi-frame image with no frame of reference.

An ultrasound loop has no frame of reference: its frames are moments, not places. highdicom
(0.22, and its newest release) writes a SEG of such a source for one frame only ("Only a single
frame is supported when the source image has no Frame of Reference UID"; open upstream as
ImagingDataCommons/highdicom#284). This module writes the same Segmentation IOD for every frame,
from highdicom's parts (the SOP base with the patient and study of the source, the segment
descriptions and their codes: ``dicom_seg.segment_descriptions``) and pydicom:

- each SEG frame names its source frame (Derivation Image Sequence, ``ReferencedFrameNumber``)
  and its moment (Frame Content, ``TemporalPositionIndex``, a dimension beside the segment number);
- frames where a segment is empty are left out, as highdicom leaves them out;
- no Frame of Reference, plane position or pixel spacing: the source has none.

highdicom reads it back (:func:`read_cine_segmentation`) and dciodvfy checks it in the tests.
"""

from __future__ import annotations

import copy
import datetime

import numpy as np

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SEGMENT_NUMBER, _SEGMENT_IDENTIFICATION = 0x0062000B, 0x0062000A
_TEMPORAL_POSITION_INDEX, _FRAME_CONTENT = 0x00209128, 0x00209111
_PATIENT_AND_STUDY = {"patient_id": "PatientID", "patient_name": "PatientName", "patient_birth_date": "PatientBirthDate",
                      "patient_sex": "PatientSex", "accession_number": "AccessionNumber", "study_id": "StudyID",
                      "study_date": "StudyDate", "study_time": "StudyTime",
                      "referring_physician_name": "ReferringPhysicianName"}


def build_cine_segmentation(source, masks: dict, names: dict, author):
    """A SEG of ``source`` (a pydicom dataset of the loop) from ``masks``: label value -> bool
    ``[frame, row, column]`` on the source's frames. ``names``: label value -> segment name.
    Raises ValueError for an empty label or a mask off the source's grid."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.pixel_data_handlers.numpy_handler import pack_bits
    from pydicom.uid import ExplicitVRLittleEndian

    from .dicom_seg import segment_descriptions

    grid = (int(source.NumberOfFrames), int(source.Rows), int(source.Columns))
    for value, mask in masks.items():
        if mask.shape != grid:
            raise ValueError(f"label value {value}: {mask.shape} (frames, rows, columns) is not the loop's {grid}")
    values = sorted(v for v, m in masks.items() if m.any())
    descriptions = segment_descriptions(values, names, author)
    seg = hd.base.SOPClass(
        study_instance_uid=str(source.StudyInstanceUID), series_instance_uid=hd.UID(),
        series_number=int(getattr(source, "SeriesNumber", 0) or 0) + 300, sop_instance_uid=hd.UID(),
        sop_class_uid=SEGMENTATION_STORAGE, instance_number=1, modality="SEG", manufacturer="MONAI Label",
        transfer_syntax_uid=ExplicitVRLittleEndian, series_description=author.series_description,
        manufacturer_model_name=author.app_name, software_versions=author.app_version, device_serial_number="0",
        **{arg: getattr(source, keyword, None) or None for arg, keyword in _PATIENT_AND_STUDY.items()})
    now = datetime.datetime.now()
    seg.ImageType = ["DERIVED", "PRIMARY"]
    seg.PatientOrientation = getattr(source, "PatientOrientation", None)  # 2C: there is no plane orientation
    seg.ContentDate, seg.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    seg.ContentLabel, seg.ContentDescription = "MEDSAM2", author.series_description[:64]
    seg.ContentCreatorName = None
    seg.SamplesPerPixel, seg.PhotometricInterpretation = 1, "MONOCHROME2"
    seg.Rows, seg.Columns = grid[1], grid[2]
    seg.BitsAllocated, seg.BitsStored, seg.HighBit, seg.PixelRepresentation = 1, 1, 0, 0
    seg.LossyImageCompression = "00"
    seg.SegmentationType = "BINARY"
    seg.SegmentSequence = descriptions
    covered = sum(masks[v].astype(np.uint16) for v in values)
    seg.SegmentsOverlap = "YES" if covered.max() > 1 else "NO"
    seg.ReferencedSeriesSequence = [_dataset(SeriesInstanceUID=str(source.SeriesInstanceUID),
                                             ReferencedInstanceSequence=[_reference(source)])]
    organisation = hd.UID()
    seg.DimensionOrganizationSequence = [_dataset(DimensionOrganizationUID=organisation)]
    seg.DimensionIndexSequence = [
        _dataset(DimensionOrganizationUID=organisation, DimensionIndexPointer=_SEGMENT_NUMBER,
                 FunctionalGroupPointer=_SEGMENT_IDENTIFICATION, DimensionDescriptionLabel="Segment Number"),
        _dataset(DimensionOrganizationUID=organisation, DimensionIndexPointer=_TEMPORAL_POSITION_INDEX,
                 FunctionalGroupPointer=_FRAME_CONTENT, DimensionDescriptionLabel="Source Frame"),
    ]
    seg.SharedFunctionalGroupsSequence = [Dataset()]
    per_frame, pixels = [], []
    for number, value in enumerate(values, start=1):
        for frame in np.flatnonzero(masks[value].any(axis=(1, 2))):
            per_frame.append(_frame_groups(source, number, int(frame) + 1))
            pixels.append(masks[value][frame])
    seg.PerFrameFunctionalGroupsSequence = per_frame
    seg.NumberOfFrames = len(pixels)
    seg.PixelData = pack_bits(np.stack(pixels).astype(np.uint8).ravel())  # frames' bits end to end (PS3.5 8.1.1)
    return seg


def instance_masks(prepared) -> dict:
    """Label value -> bool ``[frame, row, column]`` of a saved label of a loop or a still
    (``PreparedLabel``: each structure whole when it has them, else the label map's values), from
    the engine's ``[column, row, frame]`` (a still: one frame)."""
    import nibabel as nib

    if prepared.stack is not None:
        by_value = {s.value: prepared.stack[..., c] > 0 for c, s in enumerate(prepared.structures)}
    else:
        label = np.asarray(nib.load(prepared.label_file).dataobj)
        by_value = {int(v): label == v for v in np.unique(label) if v != 0}
    return {value: np.transpose(mask.reshape(mask.shape[:2] + (-1,)), (2, 1, 0)) for value, mask in by_value.items()}


def build_still_segmentation(source, masks: dict, names: dict, author):
    """A SEG of ``source``, a single-frame image with no frame of reference (an ultrasound still),
    from ``masks`` (label value -> bool ``[1, row, column]``), written by highdicom. Raises
    ValueError for an empty label or a mask off the source's grid."""
    import highdicom as hd

    from .dicom_seg import segment_descriptions

    grid = (1, int(source.Rows), int(source.Columns))
    for value, mask in masks.items():
        if mask.shape != grid:
            raise ValueError(f"label value {value}: {mask.shape} (frames, rows, columns) is not the still's {grid}")
    values = sorted(v for v, m in masks.items() if m.any())
    descriptions = segment_descriptions(values, names, author)
    source = copy.deepcopy(source)  # highdicom reads the patient and study from it: type 2, present if empty
    for keyword in _PATIENT_AND_STUDY.values():
        if keyword not in source:
            setattr(source, keyword, None)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=np.stack([masks[v] for v in values], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=int(getattr(source, "SeriesNumber", 0) or 0) + 300,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MONAI Label",
        manufacturer_model_name=author.app_name, software_versions=author.app_version, device_serial_number="0",
        series_description=author.series_description, content_label="MEDSAM2",
        content_description=author.series_description[:64])
    seg.PatientOrientation = getattr(source, "PatientOrientation", None)  # 2C: there is no plane orientation
    return seg


def read_instance_segmentation(instance, source_uid: str, frames: int) -> tuple:
    """(masks ``[frame, row, column, segment]`` bool, segment names) of a SEG of the loop or still
    ``source_uid`` with ``frames`` frames (a still: 1), read by highdicom; frames the SEG leaves out
    are empty."""
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(instance)
    numbers = list(seg.segment_numbers)
    names = [str(seg.get_segment_description(n).segment_label) for n in numbers]
    if frames == 1:
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source_uid], segment_numbers=numbers,
                                                   combine_segments=False, assert_missing_frames_are_empty=True)
    else:
        pixels = seg.get_pixels_by_source_frame(source_sop_instance_uid=source_uid,
                                                source_frame_numbers=list(range(1, frames + 1)),
                                                segment_numbers=numbers, combine_segments=False,
                                                assert_missing_frames_are_empty=True)
    return pixels > 0, names


def _frame_groups(source, segment_number: int, frame_number: int):
    import highdicom as hd

    reference = _reference(source)
    reference.ReferencedFrameNumber = frame_number
    reference.SpatialLocationsPreserved = "YES"
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")]
    derivation = _dataset(SourceImageSequence=[reference],
                          DerivationCodeSequence=[hd.sr.CodedConcept("113076", "DCM", "Segmentation")])
    content = _dataset(DimensionIndexValues=[segment_number, frame_number], TemporalPositionIndex=frame_number)
    return _dataset(DerivationImageSequence=[derivation], FrameContentSequence=[content],
                    SegmentIdentificationSequence=[_dataset(ReferencedSegmentNumber=segment_number)])


def _reference(source):
    return _dataset(ReferencedSOPClassUID=str(source.SOPClassUID), ReferencedSOPInstanceUID=str(source.SOPInstanceUID))


def _dataset(**elements):
    from pydicom.dataset import Dataset

    out = Dataset()
    for keyword, value in elements.items():
        setattr(out, keyword, value)
    return out
