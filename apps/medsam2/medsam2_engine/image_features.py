"""Images as the model sees them, each with its shared cache of encoded slices.

The one way every user of the image encoder gets slices and their cache: interactive
sessions, encode-ahead and one-prompt runs. Each cache lives in the session store's
:class:`~.feature_cache.FeatureStore`, so the store's memory budget counts it once, and an
image read for one of them (say encode-ahead, before the first click) is neither read nor
encoded again for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .feature_cache import FeatureCacheView, FeatureKey
from .frames import SliceFrames
from .protocols import input_resampling
from .runtime import image_runtime
from .sessions import SessionStore, image_stamp
from .volume_io import Volume, load_image
from .windowing import Window, model_window

if TYPE_CHECKING:
    from .model_source import LoadedModel


@dataclass
class EncodedImage:
    """A volume as the model sees it: windowed slices at its input size, and their shared cache."""

    volume: Volume
    window: Window
    modality: str
    frames: SliceFrames
    cache: FeatureCacheView  # the image's shared cache, this user's count of encoder runs


class ImageFeatures:
    """Reads images and gives each its shared cache of encoded slices.

    ``settings`` is the engine's (``feature_cache_mb``, ``cpu_bf16``, ``share_features``);
    ``protocol`` sets how slices are resampled to the model's input.
    """

    def __init__(self, store: SessionStore, settings, protocol: str):
        self.store = store
        self.settings = settings
        self.protocol = protocol

    def read(self, image) -> Volume:
        """An in-memory image as it is; a file as already read for its encoded slices, else read now."""
        if isinstance(image, Volume):
            return image
        kept = self.store.kept_volume(image_stamp(image))
        return kept if kept is not None else load_image(image)

    def encoded(self, image, loaded: LoadedModel, window=None, modality: str | None = None,
                owner: tuple = ("shared",), volume: Volume | None = None, private: bool = False) -> EncodedImage:
        """``image`` (a path, or a Volume the caller keeps alive) windowed for ``loaded``'s model.

        ``owner`` names the user when features are not shared (``share_features`` off) or when the
        caller wants a cache of its own (``private``: one it may :meth:`release` when done).
        """
        volume = volume if volume is not None else self.read(image)
        chosen, resolved = model_window(volume, modality, window)
        frames = SliceFrames(volume.array, chosen, loaded.model.image_size, resampling=input_resampling(self.protocol))
        key = FeatureKey(image_stamp(image), (float(chosen.low), float(chosen.high)), loaded.version,
                         frames.image_size, frames.resampling, str(self.settings.cpu_bf16),
                         encoder_runtime=self._encoder_runtime(loaded),
                         owner=None if self.settings.share_features and not private else tuple(owner))
        in_memory = isinstance(image, Volume)  # keyed by its array, which the caller holds
        cache = self.store.feature_cache(key, self._max_bytes(), array=volume.array if in_memory else None,
                                         volume=None if in_memory else volume)
        return EncodedImage(volume, chosen, resolved, frames, FeatureCacheView(cache, key))

    def call_cache(self, loaded: LoadedModel, anchor) -> FeatureCacheView:
        """A cache for images that live only during one call (2D one-prompt's support and queries),
        counted in the budget until :meth:`release` (or until ``anchor``, an object the call holds, is freed)."""
        key = FeatureKey(("call", id(anchor)), (0.0, 1.0), loaded.version, loaded.model.image_size, "float",
                         str(self.settings.cpu_bf16), encoder_runtime=self._encoder_runtime(loaded),
                         owner=("call",))
        return FeatureCacheView(self.store.feature_cache(key, self._max_bytes(), array=anchor), key)

    def release(self, cache: FeatureCacheView) -> None:
        """Free the encoded slices of an image nobody will ask for again (a call's own, an in-memory support)."""
        self.store.drop_features(cache.key)

    def _max_bytes(self) -> int:
        return int(self.settings.feature_cache_mb * 2**20)

    @staticmethod
    def _encoder_runtime(loaded: LoadedModel) -> str:
        return getattr(image_runtime(loaded.model), "name", "torch")

