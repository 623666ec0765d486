"""What an interactive session is: one per (client, image), what survives between its requests,
and the limits on sessions (number, memory, idle time). The one owner of every session, of the
images read and of their encoded slices is ``study_memory.StudyMemory``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: these modules need nothing from here
    from .frames import SliceFrames
    from .model_source import LoadedModel
    from .feature_cache import FeatureCacheView
    from .volume_io import Volume
    from .windowing import Window

logger = logging.getLogger(__name__)


def image_stamp(image) -> tuple:
    """Identifies an image's content: a path with its file stamp, or an in-memory array."""
    if hasattr(image, "array"):
        return ("array", id(image.array))
    from .atomic_files import file_stamp

    return (str(image), file_stamp(str(image)))


def window_key(window, modality) -> tuple:
    """The request's windowing choice; a different one needs the frames made again."""
    return (tuple(window) if isinstance(window, (list, tuple)) else window, modality)


class MemoryBusy(RuntimeError):
    """No room for one more session within the memory limit, after waiting: try again later."""


@dataclass
class SessionLimits:
    max_sessions: int = 8
    max_memory_mb: float = 4096.0
    idle_timeout_s: float = 1800.0
    # the whole process family (the server and what it started: a fine-tune) within this many MB:
    # sessions get what the rest leaves (0: no such limit); see StudyMemory.session_budget_bytes
    process_limit_mb: float = 0.0
    # sessions being begun at once (their first request: read, encode, both passes); more wait their
    # turn. 0: no cap. Begun all at once they share the cores and each answers last (30 at once on 2
    # cores: every first mask after 730 s), and each holds its working memory meanwhile.
    max_opening: int = 0


def process_memory() -> tuple:
    """(this process, its children) resident bytes (a fine-tune runs as a child process)."""
    import psutil

    me = psutil.Process()
    children = 0
    for child in me.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.Error:  # ended meanwhile
            continue
    return me.memory_info().rss, children


def process_family_bytes() -> int:
    return sum(process_memory())


@dataclass
class Session:
    """What survives between two requests of one user on one image.

    Made by :meth:`.engine.VolumeSegmenter.open`, which holds the session's lock until the
    request's ``segment`` has run.
    """

    key: tuple
    image_stamp: tuple  # (path, mtime_ns, size): a changed file is a new image
    model: LoadedModel  # the weights its slices were encoded with
    window_key: tuple  # the request's window and modality choice
    volume: Volume
    frames: SliceFrames
    window: Window
    feature_cache: FeatureCacheView  # one user's view of the image's encoded slices (feature_cache.py)
    modality: str = ""
    started: str = "new"  # why this session began: "new", "reset by request", "image changed", ...
    load_seconds: float = 0.0  # reading the image when it began
    requests: int = 0  # segment calls it has served
    tracks: dict = field(default_factory=dict)  # label -> LabelTrack
    last_used: float = field(default_factory=time.monotonic)
    image: object = None  # the path (or Volume) it was opened with: encode-ahead opens it the same way

    @property
    def model_version(self) -> int:
        return self.model.version

    def memory_bytes(self) -> int:
        """As if alone: its tracks, its volume and its feature cache."""
        return self.private_bytes() + sum(self.shared_bytes().values())

    def private_bytes(self) -> int:
        # other sessions' requests change their tracks while the store adds up memory: a snapshot
        return sum(track.memory_bytes() for track in list(self.tracks.values()))

    def shared_bytes(self) -> dict:
        """Parts other sessions may hold too, by identity: the volume's array and the feature cache."""
        parts = {id(self.volume.array): self.volume.array.nbytes}
        if self.feature_cache is not None:
            cache = self.feature_cache.shared  # the image's cache itself, which other views share
            parts[id(cache)] = cache.bytes
        return parts
