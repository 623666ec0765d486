"""The fine-tuning loop: clips in, SAM 2's loss, per-epoch validation, best weights published.

The only file it writes to the served path is the best checkpoint so far, through
``save_checkpoint`` (temporary file, then rename): the server hot-reloads it, and a crash
at any point leaves the previous checkpoint whole. With ``baseline_validation`` the
starting weights are validated first, so weights that do worse than what is served are
never published.

With several devices (``devices``, or the task's ``multi_gpu``) one process per device
trains in lock-step through torch's distributed data parallel (``distributed.py``); rank 0
validates and publishes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from ..checkpoints import RANDOM_WEIGHTS, UNTRAINED_ORIGIN, ModelPreset, save_checkpoint, untrained_origin
from ..precision import autocast_for
from ..model_source import pick_device
from .clips import ClipSampler
from .distributed import Ranks, launch
from .loss import sam2_loss, total
from .model import PromptSimulation, apply_freezing, build_train_model, frozen_modules
from .schedule import warmup_cosine
from .validation import evaluate, make_validator

logger = logging.getLogger(__name__)


@dataclass
class FineTuneConfig:
    epochs: int = 5  # the train request's default too (lib/trainers/finetune.py)
    max_seconds: float | None = None  # time budget: the epoch running out stops early, then validates
    steps_per_epoch: int | None = None  # default: every clip once
    lr: float | None = None  # default: 1e-5 from a pretrained checkpoint, 1e-4 from random weights
    lr_schedule: str = "constant"  # or "cosine": linear warmup, then cosine decay (sam2's recipe)
    warmup_steps: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 0.1  # as sam2's fine-tuning configs
    clip_length: int = 8
    max_objects: int = 3
    freeze: str = "auto"
    device: str = "auto"
    devices: list | None = None  # one training process per entry (DDP); overrides ``device``
    seed: int = 0
    log_every: int = 10
    baseline_validation: bool = True
    loss_weights: dict = field(default_factory=dict)  # overrides of sam2's weights, e.g. {"loss_mask": 1.0}
    prompts: PromptSimulation = field(default_factory=PromptSimulation)

    def learning_rate(self, pretrained: bool) -> float:
        return self.lr if self.lr else (1e-5 if pretrained else 1e-4)


@dataclass
class EpochReport:
    epoch: int
    steps: int
    train_loss: float
    loss_parts: dict
    val_mean_dice: float
    val_per_label: dict
    val_per_study: dict
    seconds: float
    published: bool


class FineTuner:
    def __init__(self, preset: ModelPreset, config: FineTuneConfig, extra_overrides: dict | None = None):
        self.preset = preset
        self.config = config
        self.extra_overrides = extra_overrides or {}
        self.number = None  # which fine-tune of this model folder this is (set by the caller; in the file it writes)
        self.devices = [pick_device(d) for d in config.devices] if config.devices else [pick_device(config.device)]
        self.device = self.devices[0]

    def run(self, train_cases: list, val_cases: list, checkpoint: str, output: str, on_progress=None,
            label_names: dict | None = None) -> dict:
        """Train from ``checkpoint`` (a path or "random"); publish the best weights to ``output``.

        With several devices, ``on_progress`` runs in rank 0's process and must pickle.
        """
        return launch(self._run_rank, self.devices, train_cases, val_cases, checkpoint, output, on_progress,
                      label_names)

    def _run_rank(self, ranks: Ranks, train_cases: list, val_cases: list, checkpoint: str, output: str,
                  on_progress=None, label_names: dict | None = None) -> dict:
        cfg, started, device = self.config, time.monotonic(), ranks.device
        pretrained = checkpoint != RANDOM_WEIGHTS
        untrained = untrained_origin(checkpoint)  # a fine-tune of a fine-tune of random weights too
        model = build_train_model(self.preset, checkpoint, device, cfg.prompts, cfg.clip_length,
                                  self.extra_overrides, seed=cfg.seed, prompt_seed=cfg.seed + ranks.rank)
        params = apply_freezing(model, frozen_modules(cfg.freeze, pretrained))
        lr = cfg.learning_rate(pretrained)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        loss_fn = sam2_loss(cfg.loss_weights)
        sampler = ClipSampler(train_cases, model.image_size, cfg.clip_length, max_objects=cfg.max_objects,
                              seed=cfg.seed, sample_seed=cfg.seed + ranks.rank)
        scheduler = self._scheduler(optimizer, len(sampler.refs), ranks)
        trained = ranks.wrap(model)
        validator, source = make_validator(self.preset, device, self.extra_overrides) if ranks.is_main else (None, None)
        summary = {
            "status": "RUNNING", "start_checkpoint": checkpoint, "output": str(output), "device": device,
            "devices": self.devices,
            "train_cases": len(train_cases), "val_cases": len(val_cases), "clips_per_epoch": len(sampler.refs),
            "lr": lr, "config": asdict(cfg), "history": [], "best_metric": None, "best_metric_epoch": None,
            "baseline_dice": None, "published": False, "start_ts": time.time(), UNTRAINED_ORIGIN: untrained,
        }
        logger.info("fine-tune: %d training studies (%d clips of %d slices), %d held out, lr %.2g, device %s",
                    len(train_cases), len(sampler.refs), cfg.clip_length, len(val_cases), lr, self.device)

        def report():
            summary["total_time"] = round(time.monotonic() - started, 1)
            if on_progress and ranks.is_main:
                on_progress(dict(summary))

        best = -math.inf
        if cfg.baseline_validation and val_cases and ranks.is_main:
            baseline = self._validate(model, source, validator, val_cases, label_names)
            if baseline["count"]:
                best = summary["baseline_dice"] = baseline["mean_dice"]
            logger.info("fine-tune: starting weights score held-out Dice %.4f %s", best, baseline["per_label"])
        ranks.barrier()
        report()

        for epoch in range(1, cfg.epochs + 1):
            if ranks.any(self._out_of_time(started)):
                break
            epoch_started = time.monotonic()
            steps, loss_sum, parts = self._train_epoch(ranks, trained, optimizer, loss_fn, sampler, epoch, started,
                                                       scheduler)
            if not ranks.is_main:
                ranks.barrier()  # rank 0 validates and publishes
                continue
            val = self._validate(model, source, validator, val_cases, label_names) if val_cases else None
            graded = val is not None and val["count"] > 0
            score = val["mean_dice"] if graded else -loss_sum / max(steps, 1)  # nothing graded: lowest loss wins
            published = bool(steps) and score > best
            if published:
                best = score
                metric = "val_mean_dice" if graded else "negative_train_loss"
                save_checkpoint(model, output, extra={
                    "finetune": {"epoch": epoch, "metric": metric, "value": score, "start_checkpoint": checkpoint,
                                 "number": self.number, "published_ts": time.time()},
                    UNTRAINED_ORIGIN: untrained})
                summary.update(best_metric=round(score, 4), best_metric_name=metric, best_metric_epoch=epoch,
                               published=True)
            entry = EpochReport(epoch, steps, round(loss_sum / max(steps, 1), 4), parts,
                                round(val["mean_dice"], 4) if graded else None, val["per_label"] if val else {},
                                val["per_study"] if val else {},
                                round(time.monotonic() - epoch_started, 1), published)
            summary["history"].append(asdict(entry))
            summary["epoch"] = epoch
            logger.info("fine-tune epoch %d/%d: loss %.4f, held-out Dice %s %s, %.0fs%s", epoch, cfg.epochs,
                        entry.train_loss, entry.val_mean_dice, entry.val_per_label, entry.seconds,
                        f", published to {output}" if published else "")
            report()
            ranks.barrier()
        summary["status"] = "DONE"
        report()
        return summary

    def _scheduler(self, optimizer, clips: int, ranks: Ranks):
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return None
        if cfg.lr_schedule != "cosine":
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
        per_epoch = cfg.steps_per_epoch or max(1, clips // ranks.world_size)
        total = cfg.epochs * per_epoch  # with a time budget, whichever of steps and time is further along
        # time progress differs by milliseconds between processes; with DDP only steps count,
        # or the ranks' learning rates and then their weights would drift apart
        budget = None if ranks.distributed else cfg.max_seconds
        return warmup_cosine(optimizer, cfg.warmup_steps, total, max_seconds=budget)

    def _out_of_time(self, started: float) -> bool:
        return self.config.max_seconds is not None and time.monotonic() - started >= self.config.max_seconds

    def _train_epoch(self, ranks: Ranks, model, optimizer, loss_fn, sampler: ClipSampler, epoch: int,
                     started: float, scheduler=None):
        """One pass over this rank's share of the clips; ``model`` may be DDP-wrapped."""
        cfg = self.config
        model.train()
        refs = sampler.epoch()
        if cfg.steps_per_epoch:
            wanted = cfg.steps_per_epoch * ranks.world_size
            refs = (refs * math.ceil(wanted / len(refs)))[:wanted]
        refs = ranks.shard(refs)
        steps, loss_sum, parts = 0, 0.0, {}
        step_started = time.monotonic()
        for ref in refs:
            if ranks.any(self._out_of_time(started)):
                logger.info("fine-tune: time budget of %ss reached in epoch %d", cfg.max_seconds, epoch)
                break
            batch = sampler.batch(ref)
            if not ranks.all(batch is not None):  # every rank steps, or none does
                continue
            batch = batch.to(ranks.device)
            with autocast_for(ranks.device):
                outputs = model(batch)
                losses = loss_fn(outputs, batch.masks)
            loss = total(losses)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                               cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            steps += 1
            loss_sum += ranks.mean(float(loss.detach()))
            for key, value in losses.items():
                parts[key] = parts.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
            if steps % cfg.log_every == 0:
                logger.info("fine-tune epoch %d step %d/%d: loss %.4f (%.2fs/step)", epoch, steps, len(refs),
                            loss_sum / steps, (time.monotonic() - step_started) / steps)
        return steps, loss_sum, {k: round(v / max(steps, 1), 4) for k, v in parts.items()}

    @staticmethod
    def _validate(model, source, validator, val_cases: list, label_names) -> dict:
        source.update({k: v.detach() for k, v in model.state_dict().items()})
        with torch.no_grad():
            result = evaluate(validator, val_cases, label_names)
        model.train()
        return result
