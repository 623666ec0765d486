"""Encoded slices: the image encoder's output per slice, kept so no slice is encoded twice.

They belong to the image, not to a session: every session on the same image, window,
weights, input size and input resampling (and one-prompt runs and encode-ahead) reads and
fills one :class:`FeatureCache`.

The image encoder's output depends only on the model input tensor and the weights, so two
clinicians on one study (or encode-ahead before anyone has a session) compute the same
features: keeping one copy halves the work and the memory, and the masks are unchanged.

- :class:`FeatureCache`: one image's encoded slices by frame key (``frames.key(index)``:
  a whole slice and a crop region of it are different frames), least recently used evicted.
- :class:`FeatureKey` says what the features depend on. New weights are a new model
  version, so they never find features encoded with the old ones.
- :class:`FeatureStore` holds the caches by key (guarded by the session store's lock, see
  ``study_memory.StudyMemory``), which counts each one once in its memory budget and evicts
  those no session holds, least recently used first. A cache of a file also keeps the
  volume read from it, so the file is read once: encode-ahead's read is the first click's,
  and a second clinician on the study reads nothing.
- :class:`FeatureCacheView` is one user's view of a shared cache, with its own count of
  encoder runs.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass


class FeatureCache:
    """Image-encoder outputs per frame, least recently used evicted beyond ``max_bytes``.

    Only the FPN features differ between frames; the positional encodings depend on the
    feature map's size alone, so one copy per size is shared (it is larger than the features).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._frames: OrderedDict = OrderedDict()
        self._pos_enc: dict = {}  # feature map size -> positional encodings
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _map_size(fpn) -> tuple:
        return tuple(fpn[-1].shape[-2:])

    @staticmethod
    def _size(fpn) -> int:
        return sum(t.numel() * t.element_size() for t in fpn)

    def get(self, frame_idx: int):
        with self._lock:
            fpn = self._frames.get(frame_idx)
            if fpn is None:
                self.misses += 1
                return None
            self.hits += 1
            self._frames.move_to_end(frame_idx)
            return {"backbone_fpn": list(fpn), "vision_pos_enc": list(self._pos_enc[self._map_size(fpn)])}

    def __contains__(self, frame_idx) -> bool:
        """Whether the frame is encoded (counts neither a hit nor a miss: for encode-ahead)."""
        with self._lock:
            return frame_idx in self._frames

    def put(self, frame_idx: int, backbone_out: dict) -> None:
        with self._lock:  # encode-ahead's worker puts while a request reads
            if frame_idx in self._frames or self.max_bytes <= 0:
                return
            fpn = tuple(backbone_out["backbone_fpn"])
            self._pos_enc.setdefault(self._map_size(fpn), tuple(backbone_out["vision_pos_enc"]))
            self._frames[frame_idx] = fpn
            self.bytes += self._size(fpn)
            while self.bytes > self.max_bytes and len(self._frames) > 1:
                _, evicted = self._frames.popitem(last=False)
                self.bytes -= self._size(evicted)

    def __len__(self) -> int:
        return len(self._frames)



@dataclass(frozen=True)
class FeatureKey:
    """What an image encoder output depends on (besides the slice index and region, the cache's own key)."""

    image: tuple  # sessions.image_stamp: the file and its stamp, or an in-memory array
    window: tuple  # (low, high) the slices are windowed with (not how the request named it)
    model_version: int
    image_size: int
    resampling: str
    precision: str = "off"  # cpu_bf16 setting: bf16 autocast gives other features
    encoder_runtime: str = "torch"  # what runs the encoder (runtime.image_runtime): int8 differs
    owner: tuple | None = None  # None: shared; a session key: that session's own (sharing off)


class FeatureStore:
    """Feature caches by :class:`FeatureKey`, least recently used first.

    Not locked on its own: the session store calls it under its lock (one lock orders
    sessions and caches, so a cache cannot be evicted while a session is being given it).
    """

    def __init__(self):
        self._caches: OrderedDict = OrderedDict()  # FeatureKey -> [FeatureCache, last used, anchor, volume]

    def cache_for(self, key: FeatureKey, max_bytes: int, now: float, array=None, volume=None) -> FeatureCache:
        """The cache of ``key``, made when missing; caches of other weights are dropped.

        ``array``: an in-memory image's pixels (its key is the array's ``id``, which Python
        reuses once the array is freed): the cache is only found while that array lives.
        ``volume``: the volume read from the key's file, kept with the cache (see :meth:`kept_volume`).
        """
        self._drop_orphaned_arrays()
        stale = [k for k in self._caches if k.model_version != key.model_version]
        for old in stale:  # sessions still holding one keep it until they are begun anew
            del self._caches[old]
        entry = self._caches.get(key)
        if entry is not None and array is not None and entry[2] is not None and entry[2]() is not array:
            entry = None  # another array at the same address
        if entry is None:
            anchor = weakref.ref(array) if array is not None else None
            entry = self._caches[key] = [FeatureCache(max_bytes), now, anchor, None]
        if entry[3] is None:
            entry[3] = volume
        entry[1] = now
        self._caches.move_to_end(key)
        return entry[0]

    def _drop_orphaned_arrays(self) -> None:
        for key in [k for k, entry in self._caches.items() if entry[2] is not None and entry[2]() is None]:
            del self._caches[key]

    def holds(self, key: FeatureKey, cache: FeatureCache) -> bool:
        entry = self._caches.get(key)
        return entry is not None and entry[0] is cache

    def touch(self, key: FeatureKey, now: float) -> None:
        entry = self._caches.get(key)
        if entry is not None:
            entry[1] = now
            self._caches.move_to_end(key)

    def caches(self) -> list:
        return [entry[0] for entry in self._caches.values()]

    def kept_volume(self, image: tuple):
        """The volume read from the file of ``image`` (a ``sessions.image_stamp``: a rewritten file
        has another) and kept with some cache of it, or None."""
        for key, entry in reversed(self._caches.items()):
            if key.image == image and entry[3] is not None:
                return entry[3]
        return None

    def volumes(self) -> list:
        return [entry[3] for entry in self._caches.values() if entry[3] is not None]

    def least_recent_unheld(self, held_ids: set, idle_before: float | None = None):
        """The least recently used key whose cache no session holds (idle before ``idle_before``, if given)."""
        for key, (cache, last_used, _, _) in self._caches.items():
            if id(cache) in held_ids:
                continue
            if idle_before is None or last_used < idle_before:
                return key
        return None

    def drop(self, key: FeatureKey) -> None:
        self._caches.pop(key, None)

    def clear(self) -> None:
        self._caches.clear()

    def __len__(self) -> int:
        return len(self._caches)


class FeatureCacheView:
    """One user's view of a shared cache (a session's, encode-ahead's, a one-prompt run's): the same
    slices, its own count of encoder runs (``misses``), so a result says what *its* request encoded."""

    def __init__(self, cache: FeatureCache, key: FeatureKey):
        self.shared = cache
        self.key = key
        self._lock = threading.Lock()
        self.misses = 0

    def get(self, frame_key):
        found = self.shared.get(frame_key)
        if found is None:
            with self._lock:
                self.misses += 1
        return found

    def put(self, frame_key, backbone_out: dict) -> None:
        self.shared.put(frame_key, backbone_out)

    def __contains__(self, frame_key) -> bool:
        return frame_key in self.shared

    @property
    def bytes(self) -> int:
        return self.shared.bytes

    @property
    def max_bytes(self) -> int:
        return self.shared.max_bytes

    def __len__(self) -> int:
        return len(self.shared)
