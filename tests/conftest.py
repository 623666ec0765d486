"""Shared fixtures: a small SAM 2 model, phantom volumes.

The engine packages are installed (``pip install -e .``); pyproject.toml puts the app folder
(its ``lib``) and the repository root (``tests.support``) on pytest's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# MEDSAM2_TEST_THREADS=1 when something else is busy on the CPU: two threads sharing one core spin-wait
torch.set_num_threads(int(os.environ.get("MEDSAM2_TEST_THREADS", min(2, os.cpu_count() or 1))))

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real scans not available: {SHARED_DATA} is absent (only on developer/CI machines)"
)


@contextlib.contextmanager
def made_once(tmp_path_factory, name: str):
    """(folder, to_make): on several test processes (pytest-xdist) one folder for the run, whose content
    the first process makes while the others wait for it; on one process, a new folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield tmp_path_factory.mktemp(name), True
        return
    folder = tmp_path_factory.getbasetemp().parent / name  # the run's folder, above each process's own
    folder.mkdir(exist_ok=True)
    with open(folder.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = folder / ".made"
        yield folder, not made.exists()
        made.touch()


@pytest.fixture(scope="session")
def small_model_files(tmp_path_factory):
    """(config yaml, checkpoint) of the small untrained test model, in the official format."""
    from tests.support.small_model import write_small_checkpoint, write_small_config

    folder = tmp_path_factory.mktemp("small_model")
    return write_small_config(folder / "small.yaml"), write_small_checkpoint(folder / "small.pt")


@pytest.fixture(scope="session")
def small_source(small_model_files):
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.model_source import ModelSource

    config, checkpoint = small_model_files
    return ModelSource(preset_for_config_file(config), config.parent, checkpoint=str(checkpoint), device="cpu")


@pytest.fixture
def segmenter(small_source):
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.propagation import EarlyStop

    return VolumeSegmenter(small_source, EngineSettings(early_stop=EarlyStop(enabled=False)))


@pytest.fixture(scope="session")
def graph_cache(tmp_path_factory):
    """One runtime graph cache (``runtime.graph.GraphCache``, keyed by the exact weights) for the session's
    runtime tests: a graph converted, compiled or quantized for some weights once is read by the next test."""
    return tmp_path_factory.mktemp("graph_cache")


def make_volume(shape=(40, 28, 12), seed=0, ct=True):
    """A non-square, non-cubic phantom: a bright ellipsoid in a body, HU-like if ``ct``."""
    from medsam2_engine.volume_io import Volume
    from medsam2_engine.phantoms import bright_ellipsoid

    return Volume(array=bright_ellipsoid(shape, seed, ct), affine=np.diag([0.8, 0.7, 2.5, 1.0]), path="")


@pytest.fixture
def phantom():
    return make_volume()


@pytest.fixture(scope="session")
def fine_tuned(small_model_files, tmp_path_factory):
    """(segmenter, training cases): the small model fine-tuned ~30 s on bright-ellipsoid phantoms."""
    from medsam2_engine.checkpoints import preset_for_config_file
    from medsam2_engine.volume_segmenter import EngineSettings, VolumeSegmenter
    from medsam2_engine.model_source import ModelSource
    from medsam2_engine.propagation import EarlyStop
    from tests.support.trained_small_model import fine_tune_small_model, training_cases

    pytest.importorskip("training.model.sam2", reason="sam2's training package (needs tensordict) is not installed")
    config, checkpoint = small_model_files
    with made_once(tmp_path_factory, "fine_tuned") as (folder, to_make):  # its own model dir: hijacks nothing
        if to_make:
            fine_tune_small_model(checkpoint, folder / "finetuned.pt")  # seeded: the same weights on any process
    source = ModelSource(preset_for_config_file(config), folder, checkpoint=str(folder / "finetuned.pt"),
                         device="cpu")
    return VolumeSegmenter(source, EngineSettings(early_stop=EarlyStop(enabled=False))), training_cases()


# The PACS, the app on it and the browser, once for the whole session: a session fixture imported into
# each test module would be a fixture of that module, started again for every module that imports it.
from tests.support.browser import chromium_browser  # noqa: E402,F401
from tests.support.orthanc import orthanc  # noqa: E402,F401
from tests.support.pacs_app import pacs_server, pacs_studies  # noqa: E402,F401
