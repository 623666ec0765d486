"""MONAI Label app serving Medical SAM 2: interactive 3D and 2D segmentation.

    monailabel start_server --app apps/medsam2 --studies sample-data/studies \\
        [--conf model medsam2] [--conf checkpoint PATH|random] [--conf labels liver,spleen]

Settings (all ``--conf``): model (a preset, default medsam2), model_config (a yaml of
one's own instead), checkpoint, model_dir, device (auto/cpu/cuda), labels, download,
early_stop, early_stop_patience, early_stop_score, exact_stop, feature_cache_mb, max_sessions,
session_memory_mb, session_timeout_s, auto_finetune_after (fine-tune after N new final
labels), finetune_<option> (defaults of POST /train/medsam2_finetune, e.g. finetune_epochs).
See the README for what each does.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

# MONAI Label takes the app folder off sys.path once main.py is loaded; hydra builds the
# model by importing medsam2_engine later, so the folder has to stay importable.
_APP_DIR = os.path.dirname(os.path.abspath(__file__))
if _APP_DIR not in sys.path:
    sys.path.insert(0, _APP_DIR)

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402

from lib.activelearning.scoring import UncertaintyScoring  # noqa: E402
from lib.activelearning.strategies import First, Random, Uncertainty  # noqa: E402
from lib.app_config import AppConfig  # noqa: E402
from lib.datastores.local import SafeLocalDatastore  # noqa: E402
from lib.auth import install as install_auth  # noqa: E402
from lib.privacy import install as install_privacy  # noqa: E402
from lib.replicas import ReplicaHeader, annotate_result  # noqa: E402
from lib.http.inventory import install as install_routes  # noqa: E402
from lib.shutdown import install as watch_stop_signals  # noqa: E402
from lib.infers.interactive_2d import Interactive2D  # noqa: E402
from lib.infers.interactive_3d import Interactive3D  # noqa: E402
from lib.infers.scribbles_3d import Scribbles3D  # noqa: E402
from lib.trainers.auto import AutoFineTune, check_saved_label  # noqa: E402
from lib.trainers.finetune import FineTuneTask  # noqa: E402
from lib.infers.one_prompt import OnePrompt, one_prompt_settings  # noqa: E402
from lib.one_prompt_runs import OnePromptRuns  # noqa: E402
from lib.shown_volumes import picture_or_volume_affine  # noqa: E402
from medsam2_engine.video_io import FRAMES_SUFFIX, VIDEO_SUFFIXES  # noqa: E402
from medsam2_engine.volume_io import IMAGE_2D_SUFFIXES  # noqa: E402
from medsam2_engine.encode_ahead import EncodeAhead  # noqa: E402
from medsam2_engine.volume_segmenter import VolumeSegmenter  # noqa: E402
from medsam2_engine.image_segmenter import ImageSegmenter  # noqa: E402
from medsam2_engine.model_source import ModelSource  # noqa: E402
from medsam2_engine.one_prompt import OnePromptSegmenter  # noqa: E402
from medsam2_engine.study_memory import StudyMemory  # noqa: E402

logger = logging.getLogger(__name__)

# MONAI Label runs each fine-tune (and scoring off the request) in a process of its own,
# ``python -m monailabel.interfaces.utils.app``, that builds this app again: there the served
# model is read only when the task asks for it, and nobody watches for new weights.
TASK_PROCESS = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None) \
    == "monailabel.interfaces.utils.app"

FINETUNE = "medsam2_finetune"


class MedSam2App(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        install_privacy()  # before anything logs a datastore record
        self.settings = AppConfig.from_conf(app_dir, conf)
        self.models = ModelSource(
            self.settings.preset,
            self.settings.model_dir,
            checkpoint=self.settings.checkpoint,
            device=self.settings.device,
            cpu_int8=self.settings.cpu_int8,
            cpu_runtime=self.settings.cpu_runtime,
            cuda_numerics=self.settings.cuda_numerics,
            # new weights are loaded, compiled and checked in the background; clicks meanwhile get the old ones
            prepare_in_background=True,
            # per replica: OpenVINO's compiled blobs are not written for several processes at once
            runtime_cache_dir=((self.settings.runtime_cache_dir or self.settings.model_dir / "runtime-cache")
                               / (self.settings.replica.name or "server") if self.settings.runtime_cache else None),
        )
        self.models.ensure_available(allow_download=self.settings.allow_download, load=not TASK_PROCESS)
        if not TASK_PROCESS:
            self.models.watch()  # published weights are prepared before the next click needs them
        # the one owner of what the server keeps in memory: images read, their encoded slices, every
        # session, one budget; the segmenters below are services over it and the model source
        self.memory = StudyMemory.from_settings(self.settings.engine)
        self.volume_segmenter = VolumeSegmenter(self.models, self.settings.engine, memory=self.memory)
        # slices encoded while the clinician looks at a study (see encode_study_ahead)
        self.encode_ahead = EncodeAhead(self.volume_segmenter) if self.settings.encode_ahead else None
        if self.encode_ahead is not None:  # after a session's first request, the slices it left
            self.volume_segmenter.after_first_request = self.encode_ahead.follow_request
        self.image_segmenter = ImageSegmenter(self.models, memory=self.memory,
                                              cpu_bf16=self.settings.engine.cpu_bf16)
        # one-prompt over the same memory, its slices made as the 3D service makes them (its protocol)
        self.one_prompt_segmenter = OnePromptSegmenter(self.models, one_prompt_settings(self.settings.engine),
                                                       memory=self.memory, protocol=self.volume_segmenter.protocol)
        # only the trainer replica fine-tunes (docs/deployment.md); the others serve what it publishes
        self._auto_finetune = AutoFineTune(
            self.settings.auto_finetune_after if self.settings.replica.trainer else 0,
            lambda: self.async_training(FINETUNE, enqueue=True),
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MedSAM-2",
            description="Medical SAM 2: interactive 3D and 2D segmentation with SAM 2's memory bank",
            version="0.1.0",
            labels=self.settings.labels,
        )
        # scoring re-reads every study with the model: only when asked for, so it never competes
        # with clinicians' clicks by default (POST /scoring/medsam2_uncertainty runs it on demand)
        self._auto_update_scoring = self._auto_update_scoring and self.settings.auto_scoring
        # one-prompt runs for the page and scripts (lib/one_prompt_runs.py), through the task's own path
        one_prompt = self._infers["medsam2_one_prompt"]
        self.one_prompt_runs = OnePromptRuns(one_prompt.segment, lambda image: self.datastore().get_image_uri(image),
                                             one_prompt.study_kind, picture_or_volume_affine)
        if TASK_PROCESS:
            # the task's process ends with the task: what was built so far lives until then, and its
            # exit then skips a final collection of ~700k objects (2.5 s measured on a 2-core EPYC)
            gc.freeze()

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        from monailabel.config import settings

        return SafeLocalDatastore(
            self.studies,
            max_upload_bytes=int(self.settings.upload_max_mb * 2**20),
            max_decoded_bytes=int(self.settings.upload_max_decoded_mb * 2**20),
            forbidden=[self.settings.model_dir],
            # videos and folders of frames, single DICOM files (a multi-frame cine, or one frame: a picture)
            # and every picture type beside MONAI Label's own patterns
            extensions=list(dict.fromkeys([*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *(f"*{e}" for e in VIDEO_SUFFIXES),
                                           "*.dcm", *(f"*{e}" for e in IMAGE_2D_SUFFIXES), f"*{FRAMES_SUFFIX}"])),
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_remote_datastore(self):
        """DICOMweb: every CT and MR series, one cached file per series, DICOM SEG by highdicom."""
        from monailabel.config import settings

        if settings.MONAI_LABEL_DATASTORE.lower() not in ("", "dicomweb") or "googleapis.com" in self.studies:
            return super().init_remote_datastore()
        from lib.datastores.dicomweb import open_dicomweb_datastore
        from lib.datastores.dicom_seg import SegAuthor

        author = SegAuthor(app_name="MedSAM-2 MONAI Label app", app_version=self.version,
                           series_description=f"MedSAM-2 (MONAI Label app medsam2 {self.version}) segmentation")
        store = open_dicomweb_datastore(self.studies, self.settings.dicomweb_modalities, author, self.settings.labels)
        store.max_decoded_bytes = int(self.settings.upload_max_decoded_mb * 2**20)
        store.on_series_ready = lambda series_uid, path: self.prefetch_study(path)  # fetched: encode the rest
        return store

    def on_init_complete(self):
        super().on_init_complete()
        server = sys.modules.get("monailabel.app")  # absent when the app runs outside the server
        if server is not None:
            install_auth()
            watch_stop_signals()  # open event streams end when the server is told to stop
            # last: the page at /medsam2/viewer/ and every route the server exposes, as lib/http/inventory.py
            # lists them; the rest removed
            install_routes(server.app, max_body_bytes=int(self.settings.upload_max_mb * 2**20))
            stack = server.app.middleware_stack
            if stack is not None and not isinstance(stack, ReplicaHeader):
                server.app.middleware_stack = ReplicaHeader(stack, self.settings.replica.display_name)

    def prefetch_study(self, image_path: str, request: dict | None = None, focus: int | None = None,
                       window=None, modality: str | None = None, open_only: bool = False) -> None:
        """A study is about to be segmented: encode its slices ahead (every trigger calls this).

        ``request``: the client's request fields, so the slices go to the session its first
        click will use (else the image's cache, for any session); ``focus``: the slice shown,
        encoded first and outward from it; ``open_only``: open that session, encode nothing yet.
        """
        if self.encode_ahead is None:
            return
        from lib.infers.request import session_key_for

        key = None if request is None else session_key_for(request)
        if open_only:
            self.encode_ahead.open_session(key, image_path, window, modality)
            return
        if focus is not None:
            self.encode_ahead.focus(key, image_path, focus)
        self.encode_ahead.request(key, image_path, window, modality)

    def init_infers(self):
        return {
            "medsam2_3d": Interactive3D(self.volume_segmenter, self.settings.labels, self.datastore),
            "medsam2_scribbles": Scribbles3D(self.volume_segmenter, self.settings.labels, self.datastore),
            "medsam2_2d": Interactive2D(self.image_segmenter, self.settings.labels, self.prefetch_study),
            "medsam2_one_prompt": OnePrompt(self.one_prompt_segmenter, self.settings.labels, self.datastore,
                                            interactive=self.volume_segmenter),
        }

    def init_trainers(self):
        task = FineTuneTask(self.models, self.settings.labels, self.settings.finetune)
        task.remove_leftovers()  # a checkpoint half-written when a fine-tune was killed
        return {FINETUNE: task}

    def init_strategies(self):
        return {"uncertainty": Uncertainty(), "random": Random(), "first": First()}

    def init_scoring_methods(self):
        return {"medsam2_uncertainty": UncertaintyScoring(self.volume_segmenter)}

    def on_save_label(self, image_id, label_id):
        """Labels are already saved; one that cannot be trained on is reported, never dropped."""
        result = super().on_save_label(image_id, label_id) or {}
        problem = check_saved_label(self.datastore(), image_id)
        if problem:
            logger.error("saved label %s kept but left out of training: %s", label_id, problem)
            result["warning"] = f"label saved but it will not be used for training: {problem}"
        elif self._auto_finetune is not None:
            result.update(self._auto_finetune.label_saved())
        return result

    def infer(self, request, datastore=None):
        result = super().infer(request, datastore)
        if isinstance(result, dict):
            annotate_result(result.get("params"), request, self.settings.replica)
        return result

    def info(self):
        info = super().info()
        info["medsam2"] = {**self.models.status(), "protocol": self.volume_segmenter.protocol,
                           "replica": self.settings.replica.status()}
        info["medsam2"]["encode_ahead"] = self.encode_ahead.status() if self.encode_ahead else None
        # what sessions hold against their budget; the server's and its fine-tune's memory against the limit
        info["medsam2"]["memory"] = self.memory.memory_report()
        return info
