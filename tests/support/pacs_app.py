"""The app on a PACS, shared by the DICOMweb, OHIF and Slicer-protocol tests.

``pacs_studies`` fills the session's Orthanc with real DICOM from ../shared/data (when
present) and with series written from the project's own phantoms; ``pacs_server`` starts
``monailabel start_server --studies <Orthanc DICOMweb URL>`` with the small model
fine-tuned on phantoms (``fine_tuned`` fixture), so its masks of a bright ellipsoid are not
empty. Import both fixtures (and ``orthanc``) into a test module to use them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.support.dicom_series import write_series, write_undecodable_series
from tests.support.orthanc import orthanc  # noqa: F401  (fixture used below)
from tests.support.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
TCIA_STUDY = SHARED_DATA / "mr_brain_tumor_tcia" / "dicom" / "PGBM-001_11-19-1991"
CT_3SLICE = SHARED_DATA / "ct_3slice_dcmqi"
CAMUS_LOOP = SHARED_DATA / "us_echo_cine_camus" / "patient0001"
LOOP_FRAME_TIME_MS = 1000 / 48
PHANTOM_SHAPE = (64, 56, 12)
LABELS = "lesion,organ,vessel,bone,other"


@dataclass
class PhantomSeries:
    uids: dict  # study, series, frame_of_reference
    array: np.ndarray  # [i, j, k] as written
    mask: np.ndarray  # the ellipsoid, [i, j, k]
    affine: np.ndarray


@dataclass
class PacsStudies:
    phantoms: dict = field(default_factory=dict)  # name -> PhantomSeries
    sample_ct: dict = field(default_factory=dict)  # uids of sample-data's CT phantom
    sample_mr: dict = field(default_factory=dict)  # uids of sample-data's MR phantom
    undecodable: dict = field(default_factory=dict)  # uids of a JPEG 2000 series nobody can decode
    tcia: dict = field(default_factory=dict)  # SeriesDescription -> SeriesInstanceUID (real MR), if present
    tcia_study: str = ""
    loop: dict = field(default_factory=dict)  # a real echo loop (CAMUS) as ultrasound multi-frame DICOM, if present
    still: dict = field(default_factory=dict)  # a real echo frame (CAMUS) as a colour ultrasound still, if present

    def patient_ids(self) -> list:
        """The phantoms' PatientID values, which the app must never return."""
        return ([f"PHANTOM-{name.upper()}" for name in self.phantoms] + (["ECHO-7"] if self.loop else [])
                + (["ECHO-8"] if self.still else []))


def _phantom_series(folder: Path, seed: int, name: str) -> PhantomSeries:
    from tests.support.trained_small_model import AFFINE, phantom

    array, mask = phantom(seed, shape=PHANTOM_SHAPE)
    uids = write_series(array, AFFINE, folder / name, description=f"ellipsoid phantom {name}",
                        patient_id=f"PHANTOM-{name.upper()}")
    return PhantomSeries(uids, np.round(array).astype(np.int16), mask, AFFINE)


@pytest.fixture(scope="session")
def pacs_studies(orthanc, tmp_path_factory):  # noqa: F811
    import nibabel as nib
    import pydicom

    folder = tmp_path_factory.mktemp("pacs_dicom")
    studies = PacsStudies()
    for seed, name in ((3, "ohif"), (4, "api"), (5, "slicer")):
        studies.phantoms[name] = _phantom_series(folder, seed, name)
        orthanc.upload(folder / name)
    sample = sorted((ROOT / "sample-data" / "studies").glob("ct_phantom_*.nii.gz"))
    if sample:
        image = nib.load(str(sample[0]))
        studies.sample_ct = write_series(np.asarray(image.dataobj), image.affine, folder / "sample_ct",
                                         description="sample-data CT phantom")
        orthanc.upload(folder / "sample_ct")
    sample_mr = sorted((ROOT / "sample-data" / "studies").glob("mr_phantom_*.nii.gz"))
    if sample_mr:
        image = nib.load(str(sample_mr[0]))
        studies.sample_mr = write_series(np.asarray(image.dataobj), image.affine, folder / "sample_mr", modality="MR",
                                         description="sample-data MR phantom")
        orthanc.upload(folder / "sample_mr")
    studies.undecodable = write_undecodable_series(folder / "j2k")
    orthanc.upload(folder / "j2k")
    if TCIA_STUDY.is_dir():
        orthanc.upload(TCIA_STUDY)
        for series_dir in sorted(p for p in TCIA_STUDY.iterdir() if p.is_dir()):
            first = next(p for p in sorted(series_dir.iterdir()) if p.is_file())
            header = pydicom.dcmread(first, stop_before_pixels=True)
            studies.tcia[str(header.SeriesDescription)] = str(header.SeriesInstanceUID)
            studies.tcia_study = str(header.StudyInstanceUID)
    if CT_3SLICE.is_dir():
        orthanc.upload([p for p in CT_3SLICE.rglob("*.dcm")])
    if CAMUS_LOOP.is_dir():
        studies.loop = _echo_loop(folder / "echo.dcm")
        studies.still = _echo_still(folder / "still.dcm")
        orthanc.upload([folder / "echo.dcm", folder / "still.dcm"])
    return studies


def _echo_loop(path: Path) -> dict:
    """CAMUS patient 1's two-chamber loop as a scanner stores it: {uid, frames [i, j, t], truth, dataset}."""
    import nibabel as nib
    import pydicom

    from tests.support.dicom_series import write_cine_dicom

    loop = np.asarray(nib.load(CAMUS_LOOP / "patient0001_2CH_half_sequence.nii.gz").dataobj)
    truth = np.asarray(nib.load(CAMUS_LOOP / "patient0001_2CH_half_sequence_gt.nii.gz").dataobj) == 1  # LV cavity
    frames = np.clip(np.rint(loop), 0, 255).astype(np.uint8)
    write_cine_dicom(path, frames, LOOP_FRAME_TIME_MS, PatientID="ECHO-7", PatientName="Echo^Seven",
                     StudyDate="20260312", StudyTime="101500", SeriesDescription="apical two chamber",
                     SeriesNumber=4, PatientOrientation="")
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return {"uid": str(dataset.SOPInstanceUID), "frames": frames, "truth": truth, "dataset": dataset}


def _echo_still(path: Path) -> dict:
    """CAMUS patient 1's four-chamber end-diastole frame as a scanner stores a still: colour, with a yellow
    depth scale along the left edge: {uid, rgb [i, j, 3], truth [i, j], dataset}."""
    import nibabel as nib
    import pydicom

    from tests.support.dicom_series import write_still_dicom

    frame = np.asarray(nib.load(CAMUS_LOOP / "patient0001_4CH_ED.nii.gz").dataobj)  # [i, j]
    truth = np.asarray(nib.load(CAMUS_LOOP / "patient0001_4CH_ED_gt.nii.gz").dataobj) == 1  # LV cavity
    grey = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rgb[2:6, ::40] = (230, 210, 40)
    write_still_dicom(path, rgb, PatientID="ECHO-8", PatientName="Echo^Eight", StudyDate="20260313",
                      StudyTime="091500", SeriesDescription="apical four chamber stills", SeriesNumber=5,
                      PatientOrientation="")
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return {"uid": str(dataset.SOPInstanceUID), "rgb": rgb, "truth": truth, "dataset": dataset}


@pytest.fixture(scope="session")
def pacs_server(orthanc, pacs_studies, fine_tuned, small_model_files, tmp_path_factory):  # noqa: F811
    """The app on Orthanc's DICOMweb URL with the phantom-trained small model."""
    config, _ = small_model_files
    folder = tmp_path_factory.mktemp("pacs_server")
    model_dir = folder / "model"
    model_dir.mkdir()
    shutil.copy(fine_tuned[0].models.explicit, model_dir / "finetuned.pt")
    server = RunningServer(orthanc.dicomweb, {"model_config": config, "checkpoint": model_dir / "finetuned.pt",
                                              "model_dir": model_dir, "labels": LABELS},
                           folder / "server.log", env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(folder / "cache")})
    try:
        yield server
    finally:
        server.stop()
