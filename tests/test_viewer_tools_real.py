"""Every drawing tool of the page on real scans (tests/support/tool_tour.py): a TotalSegmentator
CT from a studies folder, and the oblique TCIA brain MR series through Orthanc (DICOMweb).
The weights are the phantom-trained small model: the masks prove plumbing (each tool reaches
the voxels under the pointer, and the saved label is what is on screen), never accuracy.
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from tests.support.browser import chromium_page, needs_chromium  # noqa: F401  (fixture)
from tests.support.orthanc import needs_orthanc
from tests.support.pacs_app import SHARED_DATA, TCIA_STUDY
from tests.support.tool_tour import tour
from tests.support.viewer_page import small_model_server

TOTALSEG = SHARED_DATA / "ct_mr_organs_totalseg"


@pytest.fixture(scope="module")
def real_ct_server(fine_tuned, small_model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer-tools-real")
    with small_model_server(fine_tuned, small_model_files, folder,
                            lambda studies: shutil.copy(TOTALSEG / "example_ct_sm.nii.gz",
                                                        studies / "totalseg_ct.nii.gz")) as (server, _):
        yield server


@needs_chromium
@pytest.mark.skipif(not (TOTALSEG / "example_ct_sm.nii.gz").is_file(),
                    reason=f"the real CT is not here ({TOTALSEG}): only on developer and CI machines")
def test_every_tool_on_a_real_ct(real_ct_server, chromium_page, tmp_path):
    reference = np.asarray(nib.load(str(TOTALSEG / "example_seg.nii.gz")).dataobj)
    values, counts = np.unique(reference[reference > 0], return_counts=True)
    organ = reference == values[np.argmax(counts)]  # the largest structure (the liver)
    k = int(np.argmax(organ.sum(axis=(0, 1))))
    ii, jj = np.nonzero(organ[:, :, k])
    seen = tour(chromium_page, real_ct_server.url, "totalseg_ct", k, (int(np.median(ii)), int(np.median(jj))),
                tmp_path, "viewer-tools-real-ct")
    assert seen["shape"] == reference.shape and seen["k"] == k
    check_saved(seen)


def check_saved(seen: dict) -> None:
    """The saved label's record names both structures with the voxels the page showed."""
    saved = {entry["name"]: entry["voxels"] for entry in seen["label_info"]["label_info"]}
    assert saved == {"lesion": int(seen["saved"][1].sum()), "organ": int(seen["saved"][2].sum())}
    assert saved["lesion"] > 0 and saved["organ"] > 0
    assert seen["requests"] >= 7  # scribble, redo, lasso, eraser, two clicks, start from saved


@needs_chromium
@needs_orthanc
@pytest.mark.skipif(not TCIA_STUDY.is_dir(), reason=f"the real oblique MR series is not here ({TCIA_STUDY})")
def test_every_tool_on_the_oblique_tcia_series_from_the_pacs(pacs_server, pacs_studies, chromium_page,  # noqa: F811
                                                             tmp_path):
    # FLAIR_reg: T1post's grid (oblique, 25 slices); T1post itself gets a label from the Slicer test
    # on the session's one PACS, and the tour starts from a study with none
    seen = tour(chromium_page, pacs_server.url, pacs_studies.tcia["FLAIR_reg"], None, None, tmp_path,
                "viewer-tools-real-tcia")
    assert seen["shape"][2] == 25 and seen["k"] == 12  # the series' 25 slices, the middle one
    check_saved(seen)
