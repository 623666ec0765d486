"""Which checkpoint to serve, whether it is ready, and switching to new weights when the file changes.

A server never makes a click wait for new weights (``prepare_in_background``): when the
served file changes (a fine-tune published), the new weights are loaded, compiled for the
CPU runtime and checked in a background thread while the old ones keep answering; the
switch happens between two requests (each request holds the model it started with), and
only then do ``status()`` and results name the new version. ``status()["preparing"]`` says
what is being prepared meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoints import (
    read_checkpoint,
    CHECKPOINT_ENV,
    FINETUNED_NAME,
    RANDOM_WEIGHTS,
    RANDOM_WEIGHTS_SEED,
    CheckpointError,
    CheckpointFacts,
    ModelPreset,
    download,
    load_model,
)
from . import cuda_numerics
from .atomic_files import file_stamp
from .precision import INT8_MODULES, quantize_int8
from .runtime import attach_cpu_runtime, resolve_cpu_runtime, runtime_stages
from .runtime.prepare import compile_in_child

logger = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """No usable checkpoint: the message says which file to place where."""


def pick_device(requested: str = "auto") -> str:
    if requested in ("", "auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    return requested


@dataclass
class LoadedModel:
    model: torch.nn.Module
    checkpoint: str
    version: int
    stamp: tuple | None
    facts: CheckpointFacts = field(default_factory=CheckpointFacts)  # what the file said besides its weights

    @property
    def random_weights(self) -> bool:
        """Random weights, or weights fine-tuned from random ones: either way no trained model."""
        return self.checkpoint == RANDOM_WEIGHTS or self.facts.untrained_origin

    @property
    def model_version(self) -> dict:
        return version_of(self.checkpoint, self.facts.finetune)


def version_of(checkpoint: str, finetune_meta: dict | None) -> dict:
    """Which weights these are, in a clinician's words: the base checkpoint, or fine-tune N."""
    meta = finetune_meta or {}
    if checkpoint == RANDOM_WEIGHTS:
        return {"name": f"random weights (seed {RANDOM_WEIGHTS_SEED})", "finetune": None, "published": None}
    if meta.get("number"):
        return {"name": f"fine-tune {meta['number']}", "finetune": int(meta["number"]),
                "published": meta.get("published_ts"), "metric": meta.get("metric"), "value": meta.get("value")}
    # the file the server was given (official, or trained elsewhere): this folder's fine-tunes are numbered
    return {"name": "base checkpoint", "finetune": None, "published": None, "file": os.path.basename(checkpoint)}


@dataclass
class Preparation:
    """New weights being loaded, compiled and checked while the old ones serve."""

    checkpoint: str
    version: dict | None
    started: float
    stage: str = "loading the weights"

    @property
    def version_name(self) -> str:
        return (self.version or {}).get("name") or os.path.basename(self.checkpoint)

    def as_json(self) -> dict:
        return {"version": self.version, "name": self.version_name, "stage": self.stage,
                "since": self.started, "seconds": round(time.time() - self.started, 1)}


def check_prepared(model) -> None:
    """New weights must give finite image features through what will serve them (the CPU runtime
    included) on a CT-like slice; otherwise they are refused and the old ones stay served."""
    from .runtime import calibration_slices

    device = next(model.parameters()).device
    slice_ = calibration_slices(model.image_size, count=1)[0].to(device)
    with torch.inference_mode():
        features = model.forward_image(slice_)
    if not all(torch.isfinite(t).all() for t in features["backbone_fpn"]):
        raise CheckpointError("the new weights give non-finite image features (NaN or infinity): not served")


class ModelSource:
    """Resolves the checkpoint on every request and rebuilds the model when it changed.

    Order: a fine-tuned ``model/finetuned.pt``, then an explicit checkpoint (``--conf
    checkpoint`` or ``$MEDSAM2_CHECKPOINT``), then the preset's official file in ``model/``.
    """

    def __init__(
        self,
        preset: ModelPreset,
        model_dir: str | os.PathLike,
        checkpoint: str | None = None,
        device: str = "auto",
        extra_overrides: dict | None = None,
        cpu_int8: bool = False,
        cpu_runtime: str = "torch",
        cuda_numerics: str = "reference",
        prepare_in_background: bool = False,
        runtime_cache_dir: str | os.PathLike | None = None,
    ):
        self.preset = preset
        self.model_dir = Path(model_dir)
        self.explicit = checkpoint or os.environ.get(CHECKPOINT_ENV) or None
        self.device = pick_device(device)
        self.extra_overrides = extra_overrides or {}
        self.cpu_int8 = bool(cpu_int8) and self.device == "cpu"  # see precision.quantize_int8
        cpu_runtime = resolve_cpu_runtime(cpu_runtime)  # "auto": bf16 where the CPU has bf16 units
        self.cpu_runtime = cpu_runtime if self.device == "cpu" else "torch"  # CUDA: PyTorch with bf16 autocast
        self.runtime_in_use = "torch"  # what runs the image encoder of the served model (see runtime/)
        self.cuda_numerics = cuda_numerics  # MedSAM2's TF32 / Flash / bf16 prompt embeddings on CUDA (cuda_numerics.py)
        self._loaded: LoadedModel | None = None
        self._versions = 0
        self._meta_cache: dict = {}  # (path, file stamp) -> (untrained origin, fine-tune record)
        self._lock = threading.RLock()
        self.last_error: str | None = None
        # a server: new weights are prepared off the request path (module docstring); a script: inline
        self.prepare_in_background = bool(prepare_in_background)
        self.runtime_cache_dir = Path(runtime_cache_dir) if runtime_cache_dir else None  # compiled graphs on disk
        self._preparing: Preparation | None = None
        self._failed_file: tuple | None = None  # a file that failed to prepare is tried again once it changes

    @property
    def finetuned_path(self) -> Path:
        return self.model_dir / FINETUNED_NAME

    @property
    def official_path(self) -> Path:
        return self.model_dir / self.preset.filename

    def resolve(self) -> str:
        """The checkpoint to use now, or raise ModelNotReady saying what to place where.

        A fine-tuned file wins once it exists: the app's own training starts from whatever
        is served (an explicit file, or even ``random``) and publishes there.
        """
        if self.finetuned_path.is_file():
            return str(self.finetuned_path)
        if self.explicit:
            if self.explicit == RANDOM_WEIGHTS or os.path.isfile(self.explicit):
                return self.explicit
            raise ModelNotReady(f"checkpoint {self.explicit} (from --conf checkpoint / ${CHECKPOINT_ENV}) not found")
        if self.official_path.is_file():
            return str(self.official_path)
        raise ModelNotReady(
            f"no checkpoint for model {self.preset.name}: download {self.preset.url} and place it at "
            f"{self.official_path}, or start with --conf checkpoint PATH (or 'random' for untrained weights)"
        )

    def ensure_available(self, allow_download: bool = True, load: bool = True) -> None:
        """At start-up: fetch the official file if nothing usable is there, then load it (unless
        ``load`` is False: then the first ``get`` does).

        Never raises: a server without a usable model still starts and says why in /info.
        """
        try:
            self.resolve()
        except ModelNotReady as err:
            if self.explicit or not allow_download:
                self.last_error = str(err)
                logger.error("model not ready: %s", err)
                return
            try:
                download(self.preset, self.model_dir)
            except CheckpointError as download_err:
                self.last_error = str(download_err)
                logger.error("model not ready: %s", download_err)
                return
        if not load:
            return
        try:
            self.get()
        except (ModelNotReady, CheckpointError) as err:
            self.last_error = str(err)
            logger.error("model not ready: %s", err)

    def get(self) -> LoadedModel:
        """The model for this request, reloaded if the checkpoint file changed."""
        with self._lock:
            try:
                path = self.resolve()
            except ModelNotReady as err:
                self.last_error = str(err)
                if self._loaded is None:
                    raise
                logger.warning("%s; still serving %s", err, self._loaded.checkpoint)
                return self._loaded
            stamp = None if path == RANDOM_WEIGHTS else file_stamp(path)
            if self._loaded is not None and self._loaded.checkpoint == path and self._loaded.stamp == stamp:
                return self._loaded
            if self._loaded is not None and self.prepare_in_background:
                self._prepare_in_background(path, stamp)
                return self._loaded  # the old weights answer until the new ones are ready
            try:
                self._load(path, stamp)
            except CheckpointError as err:
                self.last_error = str(err)
                if self._loaded is None:
                    raise
                logger.error("checkpoint %s changed but cannot be loaded (%s); still serving %s", path, err,
                             self._loaded.checkpoint)
            return self._loaded

    def watch(self, interval_s: float = 1.0) -> threading.Thread:
        """Reload in the background when the served file changes (a fine-tune published new
        weights), so the model is rebuilt and its CPU runtime compiled before the next click
        rather than during it. Requests still check on their own (``get``)."""

        tried = {"file": None}  # a file that failed to load is tried again only once it changes

        def changed():
            loaded = self._loaded
            try:
                path = self.resolve()
            except ModelNotReady:
                return None
            file = (path, None if path == RANDOM_WEIGHTS else file_stamp(path))
            if file == tried["file"] or (loaded is not None and (loaded.checkpoint, loaded.stamp) == file):
                return None
            return file

        def poll() -> None:
            while not self._stop_watching.wait(interval_s):
                try:
                    file = changed()
                    if file is not None:
                        tried["file"] = file
                        self.get()
                except Exception:  # noqa: BLE001 - the next request reports it; the watcher keeps going
                    logger.exception("background model reload failed")

        self._stop_watching = threading.Event()
        thread = threading.Thread(target=poll, name="medsam2-model-watch", daemon=True)
        thread.start()
        return thread

    def stop_watching(self) -> None:
        event = getattr(self, "_stop_watching", None)
        if event is not None:
            event.set()

    def _load(self, path: str, stamp) -> None:
        self._switch(*self._build(path, stamp))

    def _build(self, path: str, stamp, preparation: "Preparation | None" = None) -> tuple:
        """(model, runtime, path, stamp): the network built, compiled for its CPU runtime and checked."""
        replacing = self._loaded is not None
        logger.info("%s model %s from %s on %s", "preparing" if replacing else "loading", self.preset.name, path,
                    self.device)

        def stage(text: str) -> None:
            if preparation is not None:
                preparation.stage = text

        if preparation is not None and self.runtime_cache_dir and self.device == "cpu" and self.cpu_runtime != "torch":
            # the compile at the lowest priority in a child process, into the cache read below (runtime/prepare.py)
            stage("compiling for the CPU runtime (at low priority)")
            compile_in_child(self.preset, path, self.cpu_runtime, self.runtime_cache_dir, self.extra_overrides,
                             self.cpu_int8)
        model, facts = load_model(self.preset, path, self.device, self.extra_overrides)
        if cuda_numerics.install(model, self.device, self.cuda_numerics):
            logger.info("CUDA numerics as MedSAM2's: TF32, Flash attention, bf16 point embeddings")
        if self.cpu_int8:
            quantize_int8(model)
            logger.info("int8 linear layers in %s (cpu_int8)", ", ".join(INT8_MODULES))
        stage("loading the compiled runtime")
        # compiled (or read from the cache) for these weights and warmed up now, before the model is served
        runtime = attach_cpu_runtime(model, self.cpu_runtime, [model.image_size], cache_dir=self.runtime_cache_dir)
        if replacing:  # new weights must prove usable before they replace served ones
            stage("checking")
            check_prepared(model)
        return model, facts, runtime, path, stamp

    def _switch(self, model, facts: CheckpointFacts, runtime: str, path: str, stamp) -> None:
        with self._lock:
            self.runtime_in_use = runtime
            self._versions += 1
            self._loaded = LoadedModel(model, path, self._versions, stamp, facts)
            self.last_error = None

    def _prepare_in_background(self, path: str, stamp) -> None:
        """Start preparing ``path`` unless it is being prepared, or failed as it is now. Under the lock."""
        if self._preparing is not None or self._failed_file == (path, stamp):
            return
        preparation = Preparation(path, self._version(path), time.time())
        self._preparing = preparation

        def run() -> None:
            try:
                built = self._build(path, stamp, preparation)
            except Exception as err:  # noqa: BLE001 - the old weights stay served; status() says why
                with self._lock:
                    self._preparing, self._failed_file = None, (path, stamp)
                    self.last_error = str(err) if isinstance(err, CheckpointError) else f"{type(err).__name__}: {err}"
                logger.error("new weights %s could not be prepared (%s); still serving %s", path, err,
                             self._loaded.checkpoint if self._loaded else None)
                return
            with self._lock:
                self._switch(*built)
                self._preparing = None
            logger.info("now serving %s (%s), prepared in %.1f s", path, preparation.version_name,
                        time.time() - preparation.started)

        threading.Thread(target=run, name="medsam2-prepare-weights", daemon=True).start()

    def wait_prepared(self, timeout: float | None = None) -> bool:
        """Block until no new weights are being prepared (tests, scripts); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._preparing is not None:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _untrained_origin(self, path) -> bool:
        """From the served model, or for a file not loaded yet its metadata (read once per version)."""
        if not path or path == RANDOM_WEIGHTS:
            return path == RANDOM_WEIGHTS
        return self._file_meta(path).untrained_origin

    def _version(self, path) -> dict | None:
        """The version the next request is served with (the file's record when not loaded yet)."""
        if not path:
            return None
        if path == RANDOM_WEIGHTS:
            return version_of(path, None)
        return version_of(path, self._file_meta(path).finetune)

    def _file_meta(self, path) -> CheckpointFacts:
        """What a checkpoint file says besides its weights, read once per version of it."""
        stamp = file_stamp(path)
        loaded = self._loaded
        if loaded is not None and loaded.checkpoint == path and loaded.stamp == stamp:
            return loaded.facts
        key = (path, stamp)
        cache = self._meta_cache
        if key not in cache:
            try:
                payload = read_checkpoint(path)
            except CheckpointError:
                return CheckpointFacts()
            cache.clear()
            cache[key] = CheckpointFacts.of(path, payload)
        return cache[key]

    def status(self) -> dict:
        """For /info: is the model ready, which file, and if not, why."""
        loaded, preparing = self._loaded, self._preparing
        try:
            path = self.resolve()
            ready, reason = loaded is not None or self.last_error is None, self.last_error
            if loaded is not None:
                path = loaded.checkpoint  # what answers requests now, not what is being prepared
        except ModelNotReady as err:
            path, ready, reason = None, False, str(err)
            if self.last_error and self.last_error != reason:
                reason = f"{reason} ({self.last_error})"
        return {
            "ready": bool(ready),
            "model": self.preset.name,
            "image_size": self.preset.image_size,
            "checkpoint": path,
            "random_weights": loaded.random_weights if loaded is not None else self._untrained_origin(path),
            "untrained_origin": loaded.random_weights if loaded is not None else self._untrained_origin(path),
            "random_seed": RANDOM_WEIGHTS_SEED if path == RANDOM_WEIGHTS else None,
            "device": self.device,
            "cpu_int8": self.cpu_int8,
            "cpu_runtime": self.runtime_in_use,
            "cpu_runtime_stages": runtime_stages(self._loaded.model) if self._loaded else None,
            "version": loaded.model_version if loaded is not None else self._version(path),
            "preparing": preparing.as_json() if preparing is not None else None,
            "reason": reason,
        }
