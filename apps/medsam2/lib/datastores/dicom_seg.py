"""A saved label as a DICOM Segmentation that says what it is, written with highdicom.

One segment per label value, named after the app's label (or the client's ``label_info``),
with SNOMED CT category and type codes where one fits the name and a generic "Tissue"
code otherwise (never another structure's code), algorithm type SEMIAUTOMATIC (a person
prompted and accepted it) and this app's name and version. The mask is resampled (nearest
neighbour) onto the source series' own grid, so each frame references its source slice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

ANATOMICAL_STRUCTURE = ("91723000", "SCT", "Anatomical Structure")
# label name -> (category keyword, type keyword) in pydicom's SNOMED CT dictionary
_CODES_BY_NAME = {
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "neoplasm": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "organ": (ANATOMICAL_STRUCTURE, "Organ"),
    "vessel": (ANATOMICAL_STRUCTURE, "BloodVessel"),
    "blood vessel": (ANATOMICAL_STRUCTURE, "BloodVessel"),
    "bone": ("Tissue", "Bone"),
    **{organ: (ANATOMICAL_STRUCTURE, organ.capitalize())
       for organ in ("liver", "spleen", "kidney", "heart", "spine", "lung", "brain", "pancreas", "aorta", "prostate")},
}
GENERIC = ("Tissue", "Tissue")
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "AccessionNumber")


@dataclass(frozen=True)
class SegmentCodes:
    category: object  # highdicom Code
    type: object


def codes_for(name: str) -> SegmentCodes:
    """SNOMED CT category and type for a label name; generic tissue when nothing fits."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    def concept(entry):
        if isinstance(entry, tuple):
            return CodedConcept(*entry)
        code = getattr(codes.SCT, entry)
        return CodedConcept(code.value, code.scheme_designator, code.meaning)

    category, kind = _CODES_BY_NAME.get(name.strip().lower(), GENERIC)
    return SegmentCodes(concept(category), concept(kind))


@dataclass(frozen=True)
class SegAuthor:
    """Who made the segmentation: written into every segment and the series."""

    app_name: str
    app_version: str
    series_description: str


def read_source_series(folder: str):
    """(datasets in slice order, SimpleITK image of the series) for a DICOM series folder."""
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(folder)
    if not files:
        raise ValueError(f"no DICOM series in {folder}")
    reader.SetFileNames(files)
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:  # type 2 attributes a SEG copies: present, if empty, in real files; not in all
        for keyword in TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets, reader.Execute()


def label_on_source_grid(label_file: str, source_image) -> np.ndarray:
    """The label map resampled (nearest neighbour) onto the source series: ``[slice, row, column]``."""
    import SimpleITK as sitk

    label = sitk.ReadImage(label_file)
    if label.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"label {os.path.basename(label_file)} has several components per voxel")
    resampled = sitk.Resample(label, source_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt16)
    return sitk.GetArrayFromImage(resampled)


def stack_on_source_grid(label_file: str, stack: np.ndarray, source_image) -> list:
    """Each channel of ``stack`` (``[i, j, k, n]``, on ``label_file``'s grid) on the source series."""
    import SimpleITK as sitk

    reference = sitk.ReadImage(label_file)
    out = []
    for channel in range(stack.shape[-1]):
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(stack[..., channel], (2, 1, 0)), np.uint8))
        image.CopyInformation(reference)
        resampled = sitk.Resample(image, source_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out.append(sitk.GetArrayFromImage(resampled) > 0)
    return out


def segment_descriptions(values: list, names: dict, author: SegAuthor) -> list:
    """highdicom segment descriptions, numbered from 1 in ``values``' order (label values, named by
    ``names`` or ``label <value>``); raises ValueError when there is none."""
    import highdicom as hd

    if not values:
        raise ValueError("the label is empty: there is nothing to store as DICOM SEG")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=author.app_name, version=author.app_version,
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = names.get(value) or f"label {value}"
        codes = codes_for(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=codes.category,
            segmented_property_type=codes.type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        ))
    return descriptions


def build_segmentation(source_folder: str, label_file: str, names: dict, author: SegAuthor,
                       stack: np.ndarray | None = None, stack_values: list | None = None):
    """A highdicom ``Segmentation`` of ``label_file`` over the series in ``source_folder``.

    ``names`` maps label values to segment names; values in the file without a name are
    named ``label <value>``. With ``stack`` (one binary channel per structure, label value
    ``stack_values[c]``) each segment is its structure's own mask, overlaps included (a
    SEG's segments may overlap), instead of its share of the label map. Raises ValueError
    for an empty label.
    """
    import highdicom as hd

    datasets, source_image = read_source_series(source_folder)
    if stack is not None:
        channels = stack_on_source_grid(label_file, stack, source_image)
        by_value = {int(v): m for v, m in zip(stack_values, channels) if m.any()}
    else:
        label_map = label_on_source_grid(label_file, source_image)
        by_value = {int(v): label_map == v for v in np.unique(label_map) if v != 0}
    values = sorted(by_value)
    descriptions = segment_descriptions(values, names, author)
    first = datasets[0]
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=np.stack([by_value[v] for v in values], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MONAI Label",
        manufacturer_model_name=author.app_name,
        software_versions=author.app_version,
        device_serial_number="0",
        series_description=author.series_description,
        content_label="MEDSAM2",
        content_description=author.series_description[:64],
    )
