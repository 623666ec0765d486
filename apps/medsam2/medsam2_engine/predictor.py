"""sam2's video predictor, adapted to in-memory slices and a per-session feature cache.

Three small changes, each by extending sam2 rather than rewriting it:

- ``init_state_from_frames`` lets sam2 build its own inference state from a
  :class:`~medsam2_engine.frames.SliceFrames` (sam2 itself only reads JPEG folders/MP4);
- ``_get_image_feature`` consults the frames' :class:`~.feature_cache.FeatureCache` first
  (under ``frames.key(index)``), so a correction never re-runs the image encoder on a slice
  it has already seen;
- the mask decoder's predicted IoU, which sam2 computes and then drops, is kept in each
  frame's output as ``predicted_iou`` so results can say how sure the model was.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
import types
from contextlib import contextmanager
from typing import TYPE_CHECKING
from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from sam2.sam2_video_predictor import SAM2VideoPredictor
from sam2.utils.misc import load_video_frames

from .frames import SliceFrames

if TYPE_CHECKING:
    from .feature_cache import FeatureCache

_stage_runs = threading.local()  # what ran each stage in this thread's recording (runtimes_used)


@contextmanager
def runtimes_used():
    """What ran the image encoder and memory attention on this thread within the block:
    ``{"image_encoder": {"openvino"}, "memory_attention": {"torch"}}``, a stage absent when it
    never ran (every slice was encoded already, say)."""
    used: dict = {}
    outer = getattr(_stage_runs, "used", None)
    _stage_runs.used = used
    try:
        yield used
    finally:
        _stage_runs.used = outer


def _ran(stage: str, runtime: str) -> None:
    used = getattr(_stage_runs, "used", None)
    if used is not None:
        used.setdefault(stage, set()).add(runtime)


def _load_frames(video_path, *args, **kwargs):
    """sam2's frame loader, taking in-memory frames as they are: any sequence of ``(3, S, S)``
    tensors with ``video_height``, ``video_width`` and ``in_memory_frames = True`` (see
    :class:`SliceFrames`); anything else goes to sam2's own loader."""
    if getattr(video_path, "in_memory_frames", False):
        return video_path, video_path.video_height, video_path.video_width
    return load_video_frames(video_path, *args, **kwargs)


def _with_globals(method, **names):
    """sam2's ``method`` itself (its code, under its inference-mode decorator), seeing ``names`` in
    place of its module's globals of those names. Only the class that takes the result sees them:
    sam2's module and every other caller of sam2 are left as they are (no patching)."""
    original = inspect.unwrap(method)
    clone = types.FunctionType(original.__code__, {**original.__globals__, **names}, original.__name__,
                               original.__defaults__, original.__closure__)
    clone.__kwdefaults__ = original.__kwdefaults__
    clone.__doc__, clone.__qualname__ = original.__doc__, original.__qualname__
    return torch.inference_mode()(clone)


class _CachedFrames:
    """One state's frames with the cache they are encoded through, keyed by ``frames.key(index)``
    (per call, never shared): sam2 keeps the frames as the state's "images", where _get_image_feature finds the cache."""

    in_memory_frames = True

    def __init__(self, frames, feature_cache):
        self.frames = frames
        self.feature_cache = feature_cache
        self.video_height, self.video_width = frames.video_height, frames.video_width
        self.image_size = frames.image_size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):
        return self.frames[index]

    def __getattr__(self, name):  # anything else the frames offer (keys, sources)
        return getattr(self.__dict__["frames"], name)


class FairLock:
    """A re-entrant lock granted in arrival order (a ticket lock).

    ``threading.Lock`` has no order: a propagation that releases and re-takes it between
    two slices would usually win again, and another user's click would wait for the whole
    pass. In arrival order, each waiting request gets the next step.
    """

    def __init__(self):
        self._condition = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0
        self._owner = None
        self._depth = 0

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._condition:
            if self._owner == me:
                self._depth += 1
                return True
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                self._condition.wait()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._condition:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FairLock not held by this thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._serving += 1
                self._condition.notify_all()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


STAGES = ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder")


@dataclass
class Serving:
    """What serving adds to one network, shared by the network and its input-size views.

    A declared attribute of :class:`VolumePredictor` (``predictor.serving``), set by the
    runtime package and read by the steps: nothing else of the server is kept on the model.
    """

    lock: FairLock = field(default_factory=FairLock)  # see network_lock
    image_encoder: object = None  # runtime.image_encoder's compiled encoder, or None: PyTorch
    memory_attention: object = None  # runtime.memory_attention's compiled graph, or None: PyTorch
    mask_decoder: object = None  # runtime.heads' compiled decoder, or None: PyTorch
    memory_encoder: object = None  # runtime.heads' compiled memory encoder, or None: PyTorch
    stages: dict = field(default_factory=lambda: dict.fromkeys(STAGES, "torch"))
    graph_cache: object = None  # runtime.GraphCache the stages were compiled through (hits: read from disk)
    views: dict = field(default_factory=dict)  # input size -> view (at_input_size)
    views_lock: threading.Lock = field(default_factory=threading.Lock)


def network_lock(predictor) -> FairLock:
    """The one lock of a network (shared by its input-size views): held per slice step.

    Sessions run concurrently; each step of the network (encoding a slice, adding a
    prompt, propagating one slice) holds it, so requests of different users interleave
    slice by slice rather than one waiting for another's whole propagation, and the CPU
    threads or GPU memory are never split between two forward passes at once.
    """
    return predictor.serving.lock


class _MemoryAttentionCall:
    """sam2's memory-attention call, through the runtime for the inputs it takes, else the module."""

    def __init__(self, module, runtime=None):
        self.module = module
        self.runtime = runtime

    def __call__(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens: int = 0):
        one_curr = curr[0] if isinstance(curr, list) and len(curr) == 1 else curr
        one_pos = curr_pos[0] if isinstance(curr_pos, list) and len(curr_pos) == 1 else curr_pos
        if (self.runtime is not None and isinstance(one_curr, torch.Tensor) and one_pos is not None
                and memory_pos is not None and self.runtime.accepts(one_curr, memory, num_obj_ptr_tokens)):
            _ran("memory_attention", self.runtime.name)
            return self.runtime(one_curr, memory, one_pos, memory_pos, num_obj_ptr_tokens)
        _ran("memory_attention", "torch")
        return self.module(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                           num_obj_ptr_tokens=num_obj_ptr_tokens)

    def __getattr__(self, name):  # anything else (parameters, layers) is the module's
        return getattr(self.module, name)


class _HeadCall:
    """sam2's call of a head (mask decoder, memory encoder): through the runtime when it takes the
    inputs (runtime/heads.py), else the module; the same arguments either way."""

    def __init__(self, stage: str, module, runtime=None):
        self.stage, self.module, self.runtime = stage, module, runtime

    def __call__(self, *args, **kwargs):
        if self.runtime is not None and self.runtime.accepts(*args, **kwargs):
            _ran(self.stage, self.runtime.name)
            return self.runtime(*args, **kwargs)
        _ran(self.stage, "torch")
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


class VolumePredictor(SAM2VideoPredictor):
    """A SAM2VideoPredictor over in-memory slices with cached features.

    Nothing of one call is kept on the predictor: several sessions use it at once. The
    per-step predicted IoU travels in a thread-local (a step runs on one thread).
    """

    # sam2's own init_state, with in-memory frames; its propagate_in_video without the progress bar
    # it draws per pass on stderr (a server's log got hundreds a day; propagation.py logs long passes)
    init_state = _with_globals(SAM2VideoPredictor.init_state, load_video_frames=_load_frames)
    propagate_in_video = _with_globals(SAM2VideoPredictor.propagate_in_video,
                                       tqdm=functools.partial(tqdm, disable=True))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.serving = Serving()
        self._step_local = threading.local()

    def init_state_from_frames(self, frames: SliceFrames, feature_cache: FeatureCache | None = None) -> dict:
        # sam2's init_state ends by encoding frame 0 to "warm up" the backbone: a slice no prompt
        # may ever reach (0.7 s at 512 px on a 2-core CPU). Its only effect is sam2's one-entry
        # cache of the latest frame, which the next frame replaces, so it is skipped.
        self._step_local.warming_up = True
        try:
            with network_lock(self):
                state = self.init_state(video_path=_CachedFrames(frames, feature_cache), offload_video_to_cpu=True)
        finally:
            self._step_local.warming_up = False
        state["feature_cache"] = feature_cache
        return state

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        if getattr(self._step_local, "warming_up", False):
            return None  # init_state's warm-up (see init_state_from_frames); sam2 drops its result
        frames = inference_state["images"]
        cache = getattr(frames, "feature_cache", None)
        if cache is not None and frame_idx not in inference_state["cached_features"]:
            backbone_out = cache.get(frames.key(frame_idx))
            if backbone_out is not None:
                # sam2 keeps (image, features); it never reads the image back, so a
                # one-pixel stand-in avoids holding a full-resolution frame per slice.
                placeholder = torch.zeros(1, 3, 1, 1, device=backbone_out["backbone_fpn"][0].device)
                inference_state["cached_features"] = {frame_idx: (placeholder, backbone_out)}
        features = super()._get_image_feature(inference_state, frame_idx, batch_size)
        if cache is not None:
            cache.put(frames.key(frame_idx), inference_state["cached_features"][frame_idx][1])
        return features

    def forward_image(self, img_batch):
        # the CPU runtime (runtime/image_encoder.py) when one is attached and takes this input
        runtime = self.serving.image_encoder
        if runtime is not None and runtime.accepts(img_batch):
            _ran("image_encoder", runtime.name)
            return runtime(img_batch)
        _ran("image_encoder", "torch")
        return super().forward_image(img_batch)

    @property
    def memory_attention(self):
        # sam2 calls ``self.memory_attention(...)``; with a CPU runtime attached
        # (runtime/memory_attention.py) the call goes through it when it takes the inputs.
        # The module itself stays in ``_modules``: state_dict, training and .to() see it alone.
        module = self._modules["memory_attention"]
        runtime = self.serving.memory_attention
        if runtime is None and getattr(_stage_runs, "used", None) is None:
            return module  # nothing to choose or record (training, tools)
        return _MemoryAttentionCall(module, runtime)

    @property
    def sam_mask_decoder(self):
        return self._head("sam_mask_decoder", "mask_decoder")

    @property
    def memory_encoder(self):
        return self._head("memory_encoder", "memory_encoder")

    def _head(self, name: str, stage: str):
        # as memory_attention: the module stays in ``_modules``; calls go through the runtime
        module = self._modules[name]
        runtime = getattr(self.serving, stage)
        if runtime is None and getattr(_stage_runs, "used", None) is None:
            return module
        return _HeadCall(stage, module, runtime)

    def _track_step(self, *args, **kwargs):
        current_out, sam_outputs, high_res_features, pix_feat = super()._track_step(*args, **kwargs)
        ious = sam_outputs[2]
        # the decoder picks the best of several masks by IoU when it outputs several
        self._step_local.predicted_iou = ious.max(dim=-1).values.float()
        return current_out, sam_outputs, high_res_features, pix_feat

    def _run_single_frame_inference(self, *args, **kwargs):
        self._step_local.predicted_iou = None
        compact_out, pred_masks = super()._run_single_frame_inference(*args, **kwargs)
        compact_out["predicted_iou"] = self._step_local.predicted_iou
        return compact_out, pred_masks


def at_input_size(predictor: VolumePredictor, size: int) -> VolumePredictor:
    """The same network, sharing every parameter, run on square inputs of ``size`` pixels.

    SAM 2 is size-agnostic except for a few numbers fixed at construction (the input and
    embedding sizes of the model and its prompt encoder): Hiera interpolates its position
    embedding, memory attention recomputes its rotary encoding. A shallow copy with those
    numbers changed runs a window of a slice at the scale the model was trained at.
    """
    size = int(size)
    if size == predictor.image_size:
        return predictor
    if size % 32:
        raise ValueError(f"model input size must be a multiple of 32, got {size}")
    with predictor.serving.views_lock:
        return _view(predictor, size)


def _view(predictor: VolumePredictor, size: int) -> VolumePredictor:
    views = predictor.serving.views
    view = views.get(size)
    if view is None:
        embedding = size // predictor.backbone_stride
        prompt_encoder = copy.copy(predictor.sam_prompt_encoder)
        prompt_encoder.image_embedding_size = (embedding, embedding)
        prompt_encoder.input_image_size = (size, size)
        prompt_encoder.mask_input_size = (4 * embedding, 4 * embedding)
        view = copy.copy(predictor)
        view._modules = dict(predictor._modules)  # copy.copy shares the dict; the prompt encoder differs
        view._modules["sam_prompt_encoder"] = prompt_encoder
        view.image_size = size
        view.sam_image_embedding_size = embedding
        views[size] = view
    return view
