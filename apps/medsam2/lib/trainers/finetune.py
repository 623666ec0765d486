"""``POST /train/medsam2_finetune``: fine-tune the served SAM 2 on the datastore's final labels.

MONAI Label runs this in a child process, so the server keeps answering infer requests.
The best weights land in ``model_dir/finetuned.pt`` (atomically), which the server's
model source hot-reloads on the next request. Progress goes to the log and to
``model_dir/train_stats.json``, which ``stats()`` serves as ``/info`` ``train_stats``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from medsam2_engine.model_source import ModelSource
from medsam2_engine.training.cases import CaseFiles, load_cases
from medsam2_engine.training.distributed import training_devices
from medsam2_engine.training.finetune import FineTuneConfig, FineTuner
from medsam2_engine.training.validation import volume_of
from medsam2_engine.atomic_files import atomic_write

from ..options import choice, flag, integer, number
from ..priority import yield_to_interactive
from .history import next_number, record

logger = logging.getLogger(__name__)

STATS_NAME = "train_stats.json"
LOCK_NAME = ".finetune.lock"


class TrainingBusy(RuntimeError):
    """Another fine-tune holds the lock on this model folder."""


def _number(request: dict, key: str, default, kind=float):
    value = request.get(key, default)
    if value in (None, ""):
        return default
    if kind is int:
        return integer(value, f"train request: {key}", low=0)
    return number(value, f"train request: {key}", low=0)


def _flag(request: dict, key: str, default: bool) -> bool:
    return flag(request.get(key, default), f"train request: {key}")


def this_process() -> dict:
    """What the stats file records of the fine-tune's process, to tell later whether it still runs."""
    return {"pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def _process_alive(stats: dict) -> bool:
    """Whether the process that wrote ``stats`` still runs. A killed fine-tune whose parent died too
    stays a zombie until init reaps it (some container inits never do), and after a restart its pid
    may belong to another process: neither is the fine-tune."""
    try:
        process = psutil.Process(int(stats.get("pid")))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started = stats.get("pid_started")
        return started is None or abs(process.create_time() - float(started)) < 0.5
    except (TypeError, ValueError, psutil.NoSuchProcess):
        return False
    except psutil.AccessDenied:
        return True


def write_stats(path: Path, stats: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(stats, indent=1, default=str)))


@dataclass
class StatsWriter:
    """Progress callback: the trainer's summary plus ``extra``, to the stats file.

    A plain object rather than a closure: with several GPUs it runs in rank 0's spawned process.
    """

    path: Path
    extra: dict = field(default_factory=dict)

    def __call__(self, summary: dict) -> None:
        write_stats(self.path, {**summary, **self.extra, **this_process()})


class FineTuneTask(TrainTask):
    def __init__(self, models: ModelSource, labels: list, defaults: dict | None = None):
        super().__init__("Fine-tune SAM 2 on the final labels (clips, simulated box/click prompts, SAM 2's loss)")
        self.models = models
        self.labels = list(labels)
        self.defaults = {
            "epochs": FineTuneConfig.epochs, "max_seconds": 0, "steps_per_epoch": 0, "lr": 0, "lr_schedule": "constant",
            "warmup_steps": 0, "clip_length": 8, "max_objects": 3,
            "correction_clicks": 2, "freeze": "auto", "val_fraction": 0.2, "baseline_validation": True,
            "device": models.device, "multi_gpu": False, "gpus": "all", "seed": 0, "log_every": 10,
        }
        self.defaults.update(defaults or {})

    @property
    def stats_path(self) -> Path:
        return self.models.model_dir / STATS_NAME

    def config(self):
        return dict(self.defaults)

    def stats(self):
        try:
            stats = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}
        if stats.get("status") in ("LOADING", "RUNNING") and not _process_alive(stats):
            # the fine-tune was killed; what it published before stays served
            stats["status"] = "INTERRUPTED"
            stats["error"] = ("the fine-tune stopped before it finished (stopped from the page, or the server "
                              "restarted); the weights it had published stay served")
        return stats

    def remove_leftovers(self) -> list:
        """Half-written checkpoints (``.tmp-*``) of a killed fine-tune, unless one is running now."""
        folder = self.models.model_dir
        if not folder.is_dir():
            return []
        with open(folder / LOCK_NAME, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # a fine-tune is writing here
            removed = [p.name for p in folder.glob(".tmp-*") if p.is_file()]
            for name in removed:
                (folder / name).unlink()
        if removed:
            logger.warning("removed %s left in %s by an interrupted fine-tune", removed, folder)
        return removed

    def _write_stats(self, stats: dict) -> None:
        write_stats(self.stats_path, stats)

    def fine_tune_config(self, request: dict) -> FineTuneConfig:
        req = {**self.defaults, **{k: v for k, v in request.items() if k in self.defaults}}
        cfg = FineTuneConfig(
            epochs=_number(req, "epochs", FineTuneConfig.epochs, int),
            max_seconds=_number(req, "max_seconds", 0.0) or None,
            steps_per_epoch=_number(req, "steps_per_epoch", 0, int) or None,
            lr=_number(req, "lr", 0.0) or None,
            lr_schedule=choice(req.get("lr_schedule") or "constant", "train request: lr_schedule",
                               ("constant", "cosine")),
            warmup_steps=_number(req, "warmup_steps", 0, int),
            clip_length=_number(req, "clip_length", 8, int),
            max_objects=_number(req, "max_objects", 3, int),
            freeze=str(req.get("freeze") or "auto"),
            device=str(req.get("device") or self.models.device),
            devices=training_devices(str(req.get("device") or self.models.device), _flag(req, "multi_gpu", False),
                                     str(req.get("gpus") or "all")),
            seed=_number(req, "seed", 0, int),
            log_every=max(1, _number(req, "log_every", 10, int)),
            baseline_validation=_flag(req, "baseline_validation", True),
        )
        cfg.prompts.correction_clicks = _number(req, "correction_clicks", 2, int)
        return cfg

    def split(self, cases: list, fraction: float) -> tuple:
        """Held-out studies: the last ``fraction`` by name, at least one when there are two or more.

        Colour photographs train but are never held out (validation runs the grey-image engine).
        """
        cases = sorted(cases, key=lambda c: c.name)
        if fraction <= 0:
            logger.warning("fine-tune: val_fraction 0, nothing held out; the lowest training loss is published")
            return cases, []
        gradable = [c for c in cases if volume_of(c) is not None]
        if len(cases) < 2 or not gradable:
            logger.warning("fine-tune: %d usable labelled studies; validating on the training studies (NOT held "
                           "out)", len(cases))
            return cases, gradable
        count = min(len(cases) - 1, len(gradable), max(1, round(fraction * len(cases))))
        val = gradable[-count:]
        return [c for c in cases if c not in val], val

    def __call__(self, request, datastore: Datastore):
        yield_to_interactive("fine-tune")
        self.models.model_dir.mkdir(parents=True, exist_ok=True)
        with open(self.models.model_dir / LOCK_NAME, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise TrainingBusy(f"a fine-tune is already running on {self.models.model_dir}") from err
            try:
                return self._run(request, datastore)
            except Exception as err:
                stats = {**self.stats(), "status": "FAILED", "error": f"{type(err).__name__}: {err}"}
                self._write_stats(stats)
                logger.exception("fine-tune failed: %s", err)
                raise

    def _run(self, request: dict, datastore: Datastore) -> dict:
        cfg = self.fine_tune_config(request)
        rejected = []
        pairs = [CaseFiles(d["image"], d["label"], Path(d["image"]).name) for d in datastore.datalist()]
        self._write_stats({"status": "LOADING", "start_ts": time.time(), "studies": len(pairs),
                           **this_process()})
        cases = load_cases(pairs, on_reject=lambda item, why: rejected.append({"image": item.name, "error": why}))
        if not cases:
            raise ValueError(f"nothing to train on: {len(pairs)} final label(s) in the datastore, "
                             f"{len(rejected)} rejected ({rejected})")
        train, val = self.split(cases, _number(request, "val_fraction", self.defaults["val_fraction"]))
        checkpoint = self.models.resolve()
        logger.info("fine-tune from %s: train %s, held out %s", checkpoint, [c.name for c in train],
                    [c.name for c in val])

        progress = StatsWriter(self.stats_path, {"rejected": rejected, "train_studies": [c.name for c in train],
                                                 "val_studies": [c.name for c in val]})
        tuner = FineTuner(self.models.preset, cfg, self.models.extra_overrides)
        tuner.number = next_number(self.models.model_dir)
        summary = tuner.run(train, val, checkpoint, str(self.models.finetuned_path), progress)
        if summary.get("published"):
            summary["finetune"] = record(self.models.model_dir, tuner.number, summary, len(cases), val)
            self._write_stats({**self.stats(), "finetune": summary["finetune"]})
        return summary
