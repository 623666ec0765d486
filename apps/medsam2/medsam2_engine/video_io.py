"""Videos as studies: an MP4, AVI or MOV file read as a stack of frames ``[i, j, t]``.

A cine loop (an echocardiogram, an endoscopy) is segmented as a volume whose third axis is
time: SAM 2's memory carries the mask from frame to frame as it carries it from slice to
slice. Frames are decoded with PyAV (FFmpeg's decoders in a wheel). Voxel ``[i, j, t]`` is
column ``i``, row ``j`` of frame ``t``, as MONAI's PIL reader gives a picture's pixels; the
affine makes the page show a frame as a player does (column 0 at the left, row 0 at the top:
tests/test_viewer_cine.py checks it on screen), a pixel 1 unit wide (a video file holds no
spacing), one frame per unit along the third axis. ``meta["frame_time_ms"]`` is the time between two frames (from the stream's
average rate), kept with the label; ``meta["frames"]`` says the third axis is time.

A colour video whose frames are grey (an echo loop stored as RGB) is read as grey; a colour
one (Doppler) as its luma (ITU-R BT.601 weights of the decoded RGB), since the 3D path windows
one channel: the page shows what the model sees.
"""

from __future__ import annotations

import os

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov")
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
    rgb = np.stack(frames)  # [t, row, column, channel]
    colour = not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
    grey = np.rint(rgb.astype(np.float32) @ np.array(BT601_LUMA, np.float32)) if colour else rgb[..., 0]
    # [t, row, column] -> [column i, row j, t]
    array = grey.transpose(2, 1, 0).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # as a player shows it: column 0 left, row 0 top
    meta = {"frames": int(array.shape[2]), "source_dtype": "uint8", "video_colour": colour}
    if rate:
        meta["frame_time_ms"] = _milliseconds(rate)
    return array, affine, meta


def frame_time_ms(path: str | os.PathLike) -> float | None:
    """The time between two frames of the video at ``path`` (its stream's average rate), without decoding."""
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
