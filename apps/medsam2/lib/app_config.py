"""The app's settings, parsed once from ``--conf`` strings into typed values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lib import options
from lib.replicas import ReplicaSettings
from medsam2_engine.checkpoints import DEFAULT_PRESET, ModelPreset, get_preset, preset_for_config_file
from medsam2_engine.volume_segmenter import EngineSettings
from medsam2_engine.propagation import CorrectionStop, EarlyStop
from medsam2_engine.protocols import PROTOCOLS, default_protocol
from medsam2_engine.runtime import CPU_RUNTIME_CHOICES
from medsam2_engine.crop_region import CropRegionSettings
from medsam2_engine.sessions import SessionLimits

DEFAULT_LABELS = ("lesion", "organ", "vessel", "bone", "other")


ConfError = options.OptionError  # a ``--conf`` value could not be understood


def _flag(conf: dict, key: str, default: bool) -> bool:
    return options.flag(conf.get(key, default), f"--conf {key}")


def _number(conf: dict, key: str, default, kind=float):
    reader = options.integer if kind is int else options.number
    return reader(conf.get(key, default), f"--conf {key}")


def _choice(conf: dict, key: str, default: str, choices: tuple) -> str:
    value = str(conf.get(key, default)).strip().lower()
    if value not in choices:
        raise ConfError(f"--conf {key}", f"must be one of {', '.join(choices)}, got {conf[key]!r}")
    return value


def default_memory_limit_mb() -> float:
    """Three quarters of this machine's memory: the server and its fine-tune together stay within it."""
    import psutil

    return float(round(psutil.virtual_memory().total * 0.75 / 2**20))


@dataclass
class AppConfig:
    preset: ModelPreset
    model_dir: Path
    checkpoint: str | None
    device: str
    labels: list
    cpu_int8: bool
    allow_download: bool
    runtime_cache: bool = True  # compiled CPU runtimes kept on disk by their weights (model_dir/runtime-cache)
    runtime_cache_dir: Path | None = None  # where, instead of model_dir/runtime-cache
    cpu_runtime: str = "auto"  # per-slice stages on CPU: auto (bf16 where the CPU has bf16 units, else float32)
    cuda_numerics: str = "reference"  # on CUDA: MedSAM2's TF32 / Flash / bf16 prompt embeddings, or sam2's
    encode_ahead: bool = True  # encode a study's slices when the viewer opens it (medsam2_engine/encode_ahead.py)
    engine: EngineSettings = field(default_factory=EngineSettings)
    auto_finetune_after: int = 0  # fine-tune after this many new final labels (0: only on request)
    finetune: dict = field(default_factory=dict)  # train request defaults from --conf finetune_<name>
    dicomweb_modalities: list = field(default_factory=lambda: ["CT", "MR", "US"])  # listed from a PACS (US: its loops)
    upload_max_mb: float = 1024.0  # largest request body / uploaded file the server accepts
    upload_max_decoded_mb: float = 4096.0  # largest uploaded image or label once decompressed
    next_study_strategy: str = "uncertainty"  # what the viewer's "Next study" asks
    auto_scoring: bool = False  # MONAI Label's scoring of the whole datastore at start and after each sample
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)  # several replicas: docs/deployment.md

    @classmethod
    def from_conf(cls, app_dir: str, conf: dict) -> "AppConfig":
        config_file = conf.get("model_config")
        preset = preset_for_config_file(config_file) if config_file else get_preset(conf.get("model", DEFAULT_PRESET))
        labels = [name.strip() for name in str(conf.get("labels", ",".join(DEFAULT_LABELS))).split(",")]
        labels = [options.label_name(name, "--conf labels") for name in labels if name]
        if not labels:
            raise ConfError("--conf labels", "needs at least one label name")
        engine = EngineSettings(
            # the protocol the preset's weights were validated with unless named (protocols.py)
            protocol=_choice(conf, "protocol", default_protocol(preset), PROTOCOLS),
            # departures from the protocol: off until measured with the real weights
            early_stop=EarlyStop(
                enabled=_flag(conf, "early_stop", False),
                patience=_number(conf, "early_stop_patience", 3, int),
                score_threshold=_number(conf, "early_stop_score", 0.0),
                # exact (propagation.py), so on: off runs both passes to the volume's ends
                exact_stop=_flag(conf, "exact_stop", True),
            ),
            correction_stop=CorrectionStop(
                enabled=_flag(conf, "correction_stop", False),
                iou=_number(conf, "correction_stop_iou", 0.95),
                patience=_number(conf, "correction_stop_patience", 3, int),
            ),
            crop_region=CropRegionSettings(
                enabled=_flag(conf, "crop_region", False),
                context=_number(conf, "crop_region_context", 2.0),
                min_input=_number(conf, "crop_region_min_input", 256, int),
            ),
            feature_cache_mb=_number(conf, "feature_cache_mb", 2048.0),
            cpu_bf16=_choice(conf, "cpu_bf16", "off", ("off", "on", "auto")),
            limits=SessionLimits(
                max_sessions=_number(conf, "max_sessions", 8, int),
                max_memory_mb=_number(conf, "session_memory_mb", 4096.0),
                idle_timeout_s=_number(conf, "session_timeout_s", 1800.0),
                process_limit_mb=_number(conf, "memory_limit_mb", default_memory_limit_mb()),
                max_opening=_number(conf, "max_opening_sessions", max(2, os.cpu_count() or 2), int),
            ),
        )
        return cls(
            preset=preset,
            model_dir=Path(conf.get("model_dir", os.path.join(app_dir, "model"))),
            checkpoint=conf.get("checkpoint") or None,
            device=conf.get("device", "auto"),
            labels=labels,
            cpu_int8=_flag(conf, "cpu_int8", False),
            cpu_runtime=_choice(conf, "cpu_runtime", "auto", CPU_RUNTIME_CHOICES),
            runtime_cache=_flag(conf, "runtime_cache", True),
            runtime_cache_dir=Path(conf["runtime_cache_dir"]) if conf.get("runtime_cache_dir") else None,
            cuda_numerics=_choice(conf, "cuda_numerics", "reference", ("reference", "sam2")),
            encode_ahead=_flag(conf, "encode_ahead", True),
            allow_download=_flag(conf, "download", True),
            engine=engine,
            auto_finetune_after=_number(conf, "auto_finetune_after", 0, int),
            finetune={key[len("finetune_"):]: value for key, value in conf.items() if key.startswith("finetune_")},
            dicomweb_modalities=[m.strip().upper() for m in str(conf.get("dicomweb_modalities", "CT,MR,US")).split(",")
                                 if m.strip()],
            upload_max_mb=_number(conf, "upload_max_mb", 1024.0),
            upload_max_decoded_mb=_number(conf, "upload_max_decoded_mb", 4096.0),
            next_study_strategy=options.choice(conf.get("next_study_strategy", "uncertainty"),
                                               "--conf next_study_strategy", ("uncertainty", "random", "first")),
            auto_scoring=_flag(conf, "auto_scoring", False),
            replica=ReplicaSettings(
                name=str(conf.get("replica_name", os.environ.get("MEDSAM2_REPLICA", ""))).strip(),
                trainer=_flag(conf, "trainer", True),
                trainer_name=str(conf.get("trainer_name", "")).strip(),
            ),
        )
