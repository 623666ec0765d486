"""The one owner of what the server keeps in memory (:class:`StudyMemory`): images read once,
their encoded slices, every kind of session, one budget, one lock.

Every user of the image encoder (sessions, encode-ahead, one-prompt) reads an image and gets its
encoded slices here, so an image read or encoded for one of them (say encode-ahead, before the
first click) is neither read nor encoded again for the others, and the budget counts it once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .feature_cache import FeatureCacheView, FeatureKey, FeatureStore
from .frames import SliceFrames
from .runtime import image_runtime
from .sessions import MemoryBusy, SessionLimits, image_stamp, process_family_bytes, process_memory
from .volume_io import Volume, load_image
from .windowing import Window, model_window

if TYPE_CHECKING:
    from .model_source import LoadedModel
    from .sessions import Session

logger = logging.getLogger(__name__)


@dataclass
class EncodedImage:
    """A volume as the model sees it: windowed slices at its input size, and their shared cache."""

    volume: Volume
    window: Window
    modality: str
    frames: SliceFrames
    cache: FeatureCacheView  # the image's shared cache, this user's count of encoder runs


class StudyMemory:
    """The one owner of what the server keeps in memory: the images read (each once), their encoded
    slices (``feature_cache.py``: they belong to the image, not to a session), and every kind of
    session (3D ``Session``, 2D ``ImageSession``); one memory budget over all of it, its eviction
    (encoded slices no session holds first, then the least recently used sessions) and one lock.

    Every session kind offers the same: ``key``, ``last_used``, ``feature_cache`` (the image's
    encoded slices, or None), ``private_bytes()`` (its own memory) and ``shared_bytes()`` (parts
    other sessions may hold too, by identity, so they count once). ``locked(key)`` serialises the
    requests of one session; different sessions run at once. The segmenters (volume, image,
    one-prompt, encode-ahead) are services over one StudyMemory, built once in the app's main.py.
    """

    def __init__(self, limits: SessionLimits | None = None, clock: Callable[[], float] = time.monotonic,
                 process_bytes: Callable[[], int] = process_family_bytes, *, feature_cache_mb: float = 2048.0,
                 share_features: bool = True, cpu_bf16: str = "off"):
        self.limits = limits or SessionLimits()
        self.feature_cache_mb = feature_cache_mb  # the bound of one image's encoded slices
        self.share_features = share_features  # sessions on one image share its encoded slices
        self.cpu_bf16 = str(cpu_bf16)  # the encoder's precision on CPU: part of what the slices depend on
        self._clock = clock
        self._process_bytes = process_bytes
        self._sessions: OrderedDict = OrderedDict()
        self._lock = threading.RLock()
        self._key_locks: dict = {}  # session key -> [Lock, requests holding or waiting for it]
        self.features = FeatureStore()  # the images' encoded slices, guarded by self._lock
        self.evictions = 0
        self._room = threading.Condition(self._lock)  # new sessions wait here for memory (reserve)
        self._reserved: dict = {}  # reservation id -> bytes promised to a session being begun
        self.waited = 0  # new sessions that had to wait for memory

    @contextmanager
    def locked(self, key: tuple):
        """Hold the lock of one session key: two requests of one session run one after the other."""
        with self._lock:
            entry = self._key_locks.get(key)
            if entry is None:
                entry = self._key_locks[key] = [threading.Lock(), 0]
            entry[1] += 1  # requests holding or waiting for it
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._key_locks[key]

    def get(self, key: tuple) -> Session | None:
        with self._lock:
            self.expire()
            session = self._sessions.get(key)
            if session is not None:
                session.last_used = self._clock()
                self._sessions.move_to_end(key)
            return session

    def peek(self, key: tuple) -> Session | None:
        """The session without touching its idle time (encode-ahead checks it is still held)."""
        with self._lock:
            return self._sessions.get(key)

    def put(self, session: Session) -> None:
        with self._lock:
            session.last_used = self._clock()
            feature_key = session.feature_cache.key if session.feature_cache is not None else None
            if feature_key is not None:  # its image's slices idle from the session's last request on
                self.features.touch(feature_key, session.last_used)
            self._sessions[session.key] = session
            self._sessions.move_to_end(session.key)
            self.enforce_limits(keep=session.key)

    def drop(self, key: tuple) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()
            self.features.clear()

    def read(self, image) -> Volume:
        """An in-memory image as it is; a file as already read for its encoded slices, else read now."""
        if isinstance(image, Volume):
            return image
        kept = self.kept_volume(image_stamp(image))
        return kept if kept is not None else load_image(image)

    def encoded(self, image, loaded: LoadedModel, window=None, modality: str | None = None,
                owner: tuple = ("shared",), volume: Volume | None = None, private: bool = False,
                resampling: str = "medsam2") -> EncodedImage:
        """``image`` (a path, or a Volume the caller keeps alive) windowed for ``loaded``'s model.

        ``owner`` names the user when features are not shared (``share_features`` off) or when the
        caller wants a cache of its own (``private``: one it may :meth:`release` when done);
        ``resampling``: how slices become model inputs (``protocols.input_resampling``).
        """
        volume = volume if volume is not None else self.read(image)
        chosen, resolved = model_window(volume, modality, window)
        frames = SliceFrames(volume.array, chosen, loaded.model.image_size, resampling=resampling)
        key = FeatureKey(image_stamp(image), (float(chosen.low), float(chosen.high)), loaded.version,
                         frames.image_size, frames.resampling, str(self.cpu_bf16),
                         encoder_runtime=self._encoder_runtime(loaded),
                         owner=None if self.share_features and not private else tuple(owner))
        in_memory = isinstance(image, Volume)  # keyed by its array, which the caller holds
        cache = self.feature_cache(key, self._max_bytes(), array=volume.array if in_memory else None,
                                         volume=None if in_memory else volume)
        return EncodedImage(volume, chosen, resolved, frames, FeatureCacheView(cache, key))

    def call_cache(self, loaded: LoadedModel, anchor) -> FeatureCacheView:
        """A cache for images that live only during one call (2D one-prompt's support and queries),
        counted in the budget until :meth:`release` (or until ``anchor``, an object the call holds, is freed)."""
        key = FeatureKey(("call", id(anchor)), (0.0, 1.0), loaded.version, loaded.model.image_size, "float",
                         str(self.cpu_bf16), encoder_runtime=self._encoder_runtime(loaded),
                         owner=("call",))
        return FeatureCacheView(self.feature_cache(key, self._max_bytes(), array=anchor), key)

    def release(self, cache: FeatureCacheView) -> None:
        """Free the encoded slices of an image nobody will ask for again (a call's own, an in-memory support)."""
        self.drop_features(cache.key)

    def _max_bytes(self) -> int:
        return int(self.feature_cache_mb * 2**20)

    @staticmethod
    def _encoder_runtime(loaded: LoadedModel) -> str:
        return getattr(image_runtime(loaded.model), "name", "torch")

    # -- the images' encoded slices -----------------------------------------------------
    def feature_cache(self, key: FeatureKey, max_bytes: int, array=None, volume=None):
        """The shared cache of ``key`` (made when missing), marked as just used (``array``, ``volume``: see
        FeatureStore.cache_for)."""
        with self._lock:
            return self.features.cache_for(key, max_bytes, self._clock(), array, volume)

    def kept_volume(self, image: tuple):
        """The volume already read from the file of ``image`` (an image_stamp), or None."""
        with self._lock:
            return self.features.kept_volume(image)

    def holds_features(self, key: FeatureKey, cache) -> bool:
        """Whether ``cache`` is still the store's for ``key`` (encode-ahead stops once it is evicted)."""
        with self._lock:
            return self.features.holds(key, cache)

    def drop_features(self, key: FeatureKey) -> None:
        with self._lock:
            self.features.drop(key)

    def touch_features(self, key: FeatureKey) -> None:
        with self._lock:
            self.features.touch(key, self._clock())

    def _held_cache_ids(self) -> set:
        return {id(s.feature_cache.shared)
                for s in self._sessions.values() if s.feature_cache is not None}

    # -- limits -------------------------------------------------------------------------
    def expire(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if now - s.last_used > self.limits.idle_timeout_s]:
            logger.info("session %s expired after %.0f s idle", key, now - self._sessions[key].last_used)
            del self._sessions[key]
            self.evictions += 1
        held = self._held_cache_ids()
        while (old := self.features.least_recent_unheld(held, idle_before=now - self.limits.idle_timeout_s)):
            logger.info("encoded slices of %s expired (no session on them)", old.image)
            self.features.drop(old)

    def enforce_limits(self, keep: tuple | None = None) -> None:
        """Evict until within the limits: feature caches no session holds first, then the least
        recently used sessions (never ``keep``)."""
        with self._lock:
            limit_bytes = self.session_budget_bytes()
            self._drop_unheld_caches(limit_bytes)
            while len(self._sessions) > 1:
                too_many = len(self._sessions) > self.limits.max_sessions
                too_big = self.memory_bytes() > limit_bytes
                if not (too_many or too_big):
                    break
                victim = next((k for k in self._sessions if k != keep), None)
                if victim is None:
                    break
                reason = "too many sessions" if too_many else "session memory limit"
                logger.info("evicting session %s (%s)", victim, reason)
                del self._sessions[victim]
                self.evictions += 1
                if too_big:  # its cache may be held by no one now: it goes before the next session
                    self._drop_unheld_caches(limit_bytes)

    @contextmanager
    def reserve(self, nbytes: int, timeout_s: float = 600.0):
        """Room for a session about to begin (its study read and encoded: ``nbytes``, an estimate).

        With ``process_limit_mb`` a new session waits while the sessions, the reservations of
        those being begun and it would not fit what the process family leaves; idle sessions and
        unheld caches are evicted first. One always proceeds when nothing else is being begun
        (else a study larger than the budget would never open). Raises MemoryBusy after
        ``timeout_s``. Held until the block ends (the session's first request answered)."""
        token = object()
        with self._room:
            started = time.monotonic()
            waited = False
            while True:
                self.enforce_limits()
                fits = (self.limits.process_limit_mb <= 0
                        or self.memory_bytes() + sum(self._reserved.values()) + nbytes <= self.session_budget_bytes())
                turn = self.limits.max_opening <= 0 or len(self._reserved) < self.limits.max_opening
                if (fits and turn) or not self._reserved:
                    break
                left = timeout_s - (time.monotonic() - started)
                if left <= 0:
                    raise MemoryBusy(f"the server is busy opening {len(self._reserved)} other studies within its "
                                     f"memory limit ({self.limits.process_limit_mb:.0f} MB, a running fine-tune "
                                     "included): try again in a minute")
                if not waited:
                    waited = True
                    self.waited += 1
                    logger.info("a new session waits its turn (%d being begun, %.0f MB asked, %s)", len(self._reserved),
                                nbytes / 2**20, "memory" if not fits else "opening cap")
                self._room.wait(min(left, 1.0))  # also re-checks as the fine-tune's memory changes
            self._reserved[token] = int(nbytes)
        try:
            yield
        finally:
            with self._room:
                self._reserved.pop(token, None)
                self.enforce_limits()
                self._room.notify_all()

    def session_budget_bytes(self) -> float:
        """What sessions may hold now: ``max_memory_mb``, and with ``process_limit_mb`` no more than
        the limit leaves after everything else the process family holds (the network, its
        runtimes, a running fine-tune): when a fine-tune starts, sessions make room for it."""
        budget = self.limits.max_memory_mb * 1024 * 1024
        if self.limits.process_limit_mb > 0:
            held = self.memory_bytes()
            others = max(0, self._process_bytes() - held)
            budget = min(budget, max(0.0, self.limits.process_limit_mb * 1024 * 1024 - others))
        return budget

    def memory_report(self) -> dict:
        """For /info: what sessions hold against their budget, and the process family's memory."""
        with self._lock:
            held = self.memory_bytes()
            sessions = list(self._sessions.values())
            report = {"sessions": len(sessions), "sessions_mb": round(held / 2**20),
                      # what the held memory is: each session's own, and the parts they share once
                      "holds_mb": {"sessions_own": round(sum(s.private_bytes() for s in sessions) / 2**20),
                                   "encoded_slices": round(sum(c.bytes for c in self.features.caches()) / 2**20),
                                   "images_read": round(sum(v.array.nbytes for v in self.features.volumes()) / 2**20)},
                      "sessions_by_kind": dict(Counter(type(s).__name__ for s in sessions)),
                      "session_budget_mb": round(self.session_budget_bytes() / 2**20),
                      "max_sessions_mb": self.limits.max_memory_mb,
                      "process_limit_mb": self.limits.process_limit_mb or None, "evictions": self.evictions,
                      "being_opened": len(self._reserved), "waited_for_memory": self.waited}
        try:
            own, children = process_memory()
            report["server_mb"], report["children_mb"] = round(own / 2**20), round(children / 2**20)
        except Exception:  # noqa: BLE001 - a report, never a failure
            pass
        return report

    def _drop_unheld_caches(self, limit_bytes: float) -> None:
        """Drop feature caches no session holds, least recently used first, until within ``limit_bytes``."""
        while self.memory_bytes() > limit_bytes:
            unheld = self.features.least_recent_unheld(self._held_cache_ids())
            if unheld is None:
                return
            logger.info("dropping encoded slices of %s (session memory limit; no session on them)", unheld.image)
            self.features.drop(unheld)

    def memory_bytes(self) -> int:
        """Every session's own memory, plus each volume and feature cache once however many share it."""
        with self._lock:
            total, shared = 0, {}
            for session in self._sessions.values():  # every kind (Session, ImageSession) counts the same way
                total += session.private_bytes()
                shared.update(session.shared_bytes())
            shared.update({id(cache): cache.bytes for cache in self.features.caches()})
            shared.update({id(volume.array): volume.array.nbytes for volume in self.features.volumes()})
            return total + sum(shared.values())

    def keys(self) -> list:
        with self._lock:
            return list(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    @classmethod
    def from_settings(cls, settings) -> "StudyMemory":
        """For an engine's settings (``limits``, ``feature_cache_mb``, ``share_features``, ``cpu_bf16``)."""
        return cls(settings.limits, feature_cache_mb=settings.feature_cache_mb,
                   share_features=settings.share_features, cpu_bf16=settings.cpu_bf16)
