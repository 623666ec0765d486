"""One-prompt runs (lib/one_prompt_runs.py) and patient grouping (lib/patients.py), without a
server: each user's runs are theirs, one runs at a time per user, cancel stops at the next slice,
results wait for a decision and are listed least sure first, and accepting records what the
person changed. The page drives the same objects in tests/test_viewer_one_prompt.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lib.one_prompt_runs import OnePromptRuns, unpack_mask_bytes
from lib.options import OptionError
from medsam2_engine.propagation import Cancelled
from medsam2_engine.volume_io import Volume

SHAPE = (6, 5, 4)
CONFIDENCE = {"b": 0.9, "c": 0.2, "d": 0.6}


class FakeTask:
    """The one-prompt task's ``segment``: a mask per target, its confidence from CONFIDENCE."""

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.calls = []

    def segment(self, request, cancelled):
        self.calls.append(request)
        if self.gate is not None:  # hold until the test lets it go, stopping if cancelled meanwhile
            while not self.gate.wait(0.01):
                if cancelled.is_set():
                    raise Cancelled("stopped")
        image = request["_image_id"]
        if image == "broken":
            raise ValueError("broken: not a readable image")
        mask = np.zeros(SHAPE, bool)
        mask[1:4, 1:3, 1:3] = True
        return Volume(np.zeros(SHAPE, np.float32), np.diag([2.0, 2.0, 3.0, 1.0]), image), mask, \
            {"confidence": CONFIDENCE.get(image, 0.5), "found": True}


def runs_with(task, kinds=None):
    kinds = kinds or {}
    return OnePromptRuns(task.segment, lambda image: f"/studies/{image}.nii.gz",
                         lambda image: kinds.get(image, (True, "CT")), lambda volume: volume.affine)


def wait_done(runs, user, run_id):
    deadline = time.time() + 10
    while runs.get(user, run_id).state == "running":
        assert time.time() < deadline, "the run never ended"
        time.sleep(0.01)
    return runs.get(user, run_id)


def test_results_wait_for_review_least_sure_first_and_other_kinds_are_skipped_saying_why():
    task = FakeTask()
    runs = runs_with(task, {"mr": (True, "MR")})
    run = runs.start("ana", "review", "a", "lesion", None, ["b", "a", "c", "mr", "d", "broken"])
    done = wait_done(runs, "ana", run.id).json()
    assert done["state"] == "done" and done["progress"]["done"] == done["progress"]["total"] == 5  # "a" is the prompt
    states = {t["image"]: t["state"] for t in done["targets"]}
    assert states == {"b": "ready", "c": "ready", "d": "ready", "mr": "skipped", "broken": "failed"}
    assert [t["image"] for t in done["targets"][:3]] == ["c", "d", "b"]  # least sure first
    skipped = next(t for t in done["targets"] if t["image"] == "mr")
    assert "MR" in skipped["note"] and "CT" in skipped["note"]
    assert "not a readable image" in next(t for t in done["targets"] if t["image"] == "broken")["note"]
    assert [c["support"] for c in task.calls] == ["a"] * 4 and all(c["label"] == "lesion" for c in task.calls)
    shown = unpack_mask_bytes(runs.mask("ana", run.id, "c"))
    assert shown.shape == SHAPE and shown.sum() == 3 * 2 * 2


def test_a_run_is_its_users_alone_one_at_a_time_and_cancel_stops_it():
    gate = threading.Event()
    runs = runs_with(FakeTask(gate))
    run = runs.start("ana", "review", "a", "lesion", None, ["b", "c", "d"])
    with pytest.raises(OptionError) as busy:
        runs.start("ana", "review", "a", "lesion", None, ["c"])
    assert busy.value.status == 409
    with pytest.raises(OptionError) as hidden:
        runs.get("ben", run.id)
    assert hidden.value.status == 404
    other = runs.start("ben", "review", "a", "lesion", None, ["b"])  # another user is not held up
    runs.cancel("ana", run.id)
    ended = wait_done(runs, "ana", run.id)
    assert ended.state == "cancelled"
    assert {t.state for t in ended.targets} == {"cancelled"}
    gate.set()
    assert wait_done(runs, "ben", other.id).state == "done"
    with pytest.raises(OptionError) as nothing:
        runs.mask("ana", run.id, "b")
    assert nothing.value.status == 409


def test_accepting_records_what_the_person_changed_and_reject_drops_the_result():
    runs = runs_with(FakeTask())
    run = wait_done(runs, "ana", runs.start("ana", "review", "a", "lesion", None, ["b", "c"]).id)

    request = {"one_prompt_run": run.id, "label_info": []}
    accepting = runs.accepting(request, "b", "final", "ana")
    assert "one_prompt_run" not in request  # never stored as the client's own field
    edited = accepting[1].mask().copy()
    edited[0, 0, 0] = True
    record = runs._accepted(*accepting, edited, "v1")
    assert record["changed_voxels"] == 1 and record["from_study"] == "a" and record["made_by"] == "one-prompt"
    with pytest.raises(OptionError) as twice:
        runs.accepting({"one_prompt_run": run.id}, "b", "final", "ana")
    assert twice.value.status == 409
    with pytest.raises(OptionError):
        runs.accepting({"one_prompt_run": run.id}, "c", "original", "ana")  # final labels only
    runs.reject("ana", run.id, "c")
    states = {t["image"]: (t["state"], t["corrected"]) for t in runs.get("ana", run.id).json()["targets"]}
    assert states == {"b": ("accepted", True), "c": ("rejected", None)}
    assert runs.accepting({"label_info": []}, "b", "final", "ana") is None  # an ordinary save


def test_studies_of_one_patient_are_ordered_by_date_from_image_info_or_the_dicom_header(tmp_path):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from lib.patients import later_studies

    def dicom(name, patient, date):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.6.1", generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.PatientID, ds.StudyDate, ds.StudyTime, ds.StudyInstanceUID = patient, date, "101500", generate_uid()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(tmp_path / name), ds)
        return str(tmp_path / name)

    uris = {"us_late": dicom("us_late.dcm", "P1", "20250301"), "us_early": dicom("us_early.dcm", "P1", "20240101"),
            "other": dicom("other.dcm", "P2", "20250101"), "ct_b": str(tmp_path / "ct_b.nii.gz"),
            "ct_a": str(tmp_path / "ct_a.nii.gz"), "lone": str(tmp_path / "lone.nii.gz")}
    infos = {"ct_a": {"patient_id": "P9", "study_date": "20230105"}, "ct_b": {"patient_id": "P9", "study_date": "20231201"}}

    class Store:
        def list_images(self):
            return list(uris)

        def get_image_uri(self, image):
            return uris[image]

        def get_image_info(self, image):
            return infos.get(image, {})

    this, later = later_studies(Store(), "us_early")
    assert this.date == "20240101" and [t.image for t in later] == ["us_late"]
    assert [t.image for t in later_studies(Store(), "ct_a")[1]] == ["ct_b"]
    assert later_studies(Store(), "ct_b")[1] == []
    assert later_studies(Store(), "lone") == (None, [])


def test_a_support_maps_structure_is_found_as_the_page_names_it():
    """A saved map without names (the sample data's: values 1, 2, 3) is read as the page shows it,
    value n the app's n-th label; named values, an explicit label_value and binary maps as before."""
    from lib.infers.support_studies import structure_value

    labels = ["liver", "spleen", "kidney"]
    three = np.array([0, 1, 2, 3])
    assert structure_value(three, {}, "spleen", None, labels) == 2
    assert structure_value(three, {"label_info": [{"name": "spleen", "idx": 3}]}, "spleen", None, labels) == 3
    assert structure_value(three, {}, "spleen", 1, labels) == 1
    assert structure_value(np.array([0, 1]), {}, "kidney", None, labels) == 1  # binary: its one value
    with pytest.raises(ValueError, match="label_value"):
        structure_value(three, {}, "lesion", None, labels)  # not one of the app's: say which
