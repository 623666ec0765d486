"""Videos as studies: an MP4, AVI or MOV file, or a folder of frames, read as a stack ``[i, j, t]``.

A cine loop (an echocardiogram, an endoscopy) is segmented as a volume whose third axis is
time: SAM 2's memory carries the mask from frame to frame as it carries it from slice to
slice. Frames are decoded with PyAV (FFmpeg's decoders in a wheel). Voxel ``[i, j, t]`` is
column ``i``, row ``j`` of frame ``t``, as MONAI's PIL reader gives a picture's pixels; the
affine makes the page show a frame as a player does (column 0 at the left, row 0 at the top:
tests/test_viewer_cine.py checks it on screen), a pixel 1 unit wide (a video file holds no
spacing), one frame per unit along the third axis. ``meta["frame_time_ms"]`` is the time between two frames (from the stream's
average rate), kept with the label; ``meta["frames"]`` says the third axis is time.

A folder named ``<study>.frames`` holds one picture per frame (PNG, JPEG, BMP or TIFF, all one
size), in the natural order of their names (``frame2`` before ``frame10``); its ``frames.json``
may give the timing (``{"frame_time_ms": 33.3}`` or ``{"fps": 30}``). Without it the frame time
is unknown, and said so, never made up.

A colour video whose frames are grey (an echo loop stored as RGB) is read as grey; a colour
one (Doppler) as its luma (ITU-R BT.601 weights of the decoded RGB), since the 3D path windows
one channel: the page shows what the model sees.
"""

from __future__ import annotations

import os

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov")
FRAMES_SUFFIX = ".frames"  # a folder of frames
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIMING_FILE = "frames.json"
MAX_FRAMES = 5000
BT601_LUMA = (0.299, 0.587, 0.114)


class VideoReadError(ValueError):
    """The file is not a video PyAV can decode, or holds no frame."""


def load_video(path: str | os.PathLike, max_frames: int = MAX_FRAMES) -> tuple:
    """``(array [i, j, t] float32 0-255, affine, meta)`` of the video at ``path``
    (``volume_io.load_image`` makes it a Volume)."""
    try:
        import av
    except ImportError as err:  # pragma: no cover - av is in requirements.txt
        raise VideoReadError("reading videos needs PyAV (pip install av)") from err
    path = str(path)
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{os.path.basename(path)} holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate
            for frame in container.decode(stream):
                if len(frames) >= max_frames:
                    raise VideoReadError(f"{os.path.basename(path)} has more than {max_frames} frames")
                frames.append(frame.to_ndarray(format="rgb24"))
    except VideoReadError:
        raise
    except Exception as err:  # noqa: BLE001 - PyAV raises many types; name the file instead
        raise VideoReadError(f"could not read {os.path.basename(path)} as a video: {err}") from err
    if not frames:
        raise VideoReadError(f"{os.path.basename(path)} holds no frame")
    return _as_study(np.stack(frames), _milliseconds(rate) if rate else None)


def _as_study(rgb: np.ndarray, frame_time: float | None) -> tuple:
    """``[t, row, column, channel]`` (or ``[t, row, column]`` grey) frames as ``(array [i, j, t], affine, meta)``."""
    if rgb.ndim == 4:
        colour = not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
        grey = np.rint(rgb[..., :3].astype(np.float32) @ np.array(BT601_LUMA, np.float32)) if colour else rgb[..., 0]
    else:
        colour, grey = False, rgb
    # [t, row, column] -> [column i, row j, t]
    array = grey.transpose(2, 1, 0).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # as a player shows it: column 0 left, row 0 top
    meta = {"frames": int(array.shape[2]), "source_dtype": str(rgb.dtype), "video_colour": colour}
    if frame_time:
        meta["frame_time_ms"] = frame_time
    return array, affine, meta


def is_frames_folder(path: str | os.PathLike) -> bool:
    return str(path).rstrip("/\\").lower().endswith(FRAMES_SUFFIX) and os.path.isdir(path)


def _natural(name: str) -> list:
    import re

    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def load_frames_folder(path: str | os.PathLike, max_frames: int = MAX_FRAMES) -> tuple:
    """``(array [i, j, t], affine, meta)`` of a folder of frames (see the module's docstring)."""
    from PIL import Image

    path = str(path)
    names = sorted((n for n in os.listdir(path) if n.lower().endswith(FRAME_SUFFIXES) and not n.startswith(".")),
                   key=_natural)
    if not names:
        raise VideoReadError(f"{os.path.basename(path)} holds no frame (pictures named in frame order)")
    if len(names) > max_frames:
        raise VideoReadError(f"{os.path.basename(path)} has more than {max_frames} frames")
    frames = []
    for name in names:
        try:
            with Image.open(os.path.join(path, name)) as picture:
                frame = np.asarray(picture.convert("RGB") if picture.mode in ("P", "RGBA", "CMYK", "YCbCr")
                                   else picture)
        except Exception as err:  # noqa: BLE001 - PIL raises many types; name the frame instead
            raise VideoReadError(f"{os.path.basename(path)}/{name} is not a readable picture: {err}") from err
        if frames and frame.shape != frames[0].shape:
            raise VideoReadError(f"{os.path.basename(path)}/{name} is {list(frame.shape)}, the first frame "
                                 f"{list(frames[0].shape)}: every frame must be one size")
        frames.append(frame)
    return _as_study(np.stack(frames), frames_folder_time_ms(path))


def frames_folder_time_ms(path: str | os.PathLike) -> float | None:
    """The frame time a folder of frames declares in its frames.json (None: unknown)."""
    import json

    timing = os.path.join(str(path), TIMING_FILE)
    if not os.path.isfile(timing):
        return None
    try:
        with open(timing) as f:
            declared = json.load(f)
        if declared.get("frame_time_ms"):
            return round(float(declared["frame_time_ms"]), 3)
        if declared.get("fps"):
            return _milliseconds(float(declared["fps"]))
    except (ValueError, TypeError, AttributeError, OSError) as err:
        raise VideoReadError(f"{os.path.basename(str(path))}/{TIMING_FILE}: not a timing "
                             f'({{"frame_time_ms": 33.3}} or {{"fps": 30}}): {err}') from err
    return None


def frame_time_ms(path: str | os.PathLike) -> float | None:
    """The time between two frames of the video at ``path`` (its stream's average rate), without decoding."""
    if is_frames_folder(path):
        return frames_folder_time_ms(path)
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate
    except Exception:  # noqa: BLE001 - not readable as a video: no timing to keep
        return None
    return _milliseconds(rate) if rate else None


def _milliseconds(rate) -> float:
    return round(1000.0 / float(rate), 3)
