"""Videos as studies: frames [i, j, t] as the file holds them, the frame time, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from medsam2_engine.volume_io import ImageReadError, load_image
from tests.support.dicom_series import write_cine_dicom
from tests.test_viewer_cine import write_frames_folder, write_loop_avi

pytest.importorskip("av", reason="PyAV is not installed (pip install av): videos cannot be read")


def _frames(shape=(64, 48, 5), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_a_lossless_video_is_read_frame_for_frame_as_column_row_time(tmp_path):
    frames = _frames()
    frames[3, 40, 2] = 255  # column 3, row 40 of frame 2
    write_loop_avi(tmp_path / "loop.avi", frames, rate=25)
    volume = load_image(tmp_path / "loop.avi")
    assert volume.array.shape == frames.shape and volume.is_3d
    np.testing.assert_array_equal(volume.array, frames)
    assert volume.meta["frame_time_ms"] == 40.0 and volume.meta["frames"] == 5


def test_an_mp4_in_colour_is_read_as_its_luma(tmp_path):
    import av

    rgb = np.zeros((4, 32, 48, 3), np.uint8)  # [t, row, column, channel]
    rgb[..., 0] = 200  # red: a colour loop
    with av.open(str(tmp_path / "doppler.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv444p"
        stream.options = {"qp": "0"}
        for picture in rgb:
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    volume = load_image(tmp_path / "doppler.mp4")
    assert volume.array.shape == (48, 32, 4) and volume.meta["video_colour"] is True
    assert abs(float(volume.array.mean()) - 0.299 * 200) < 8  # BT.601 luma of pure red, not its red channel


def test_a_file_that_is_no_video_is_refused_by_name(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ImageReadError, match="notes.mp4"):
        load_image(bad)


def test_a_multiframe_dicom_cine_is_read_as_its_frames_with_its_frame_time(tmp_path):
    from medsam2_engine.volume_io import cine_frame_time_ms

    frames = _frames((40, 30, 6), seed=1)
    write_cine_dicom(tmp_path / "cine.dcm", frames, 33.3)
    volume = load_image(tmp_path / "cine.dcm")
    np.testing.assert_array_equal(volume.array, frames)
    assert volume.meta["frame_time_ms"] == 33.3 and volume.declared_modality == "US"
    assert cine_frame_time_ms(tmp_path / "cine.dcm") == 33.3
    write_loop_avi(tmp_path / "loop.avi", frames, rate=25)
    assert cine_frame_time_ms(tmp_path / "loop.avi") == 40.0


def test_a_folder_of_frames_is_read_in_natural_order_with_its_declared_timing(tmp_path):
    frames = _frames((30, 20, 12))
    write_frames_folder(tmp_path / "loop.frames", frames, {"fps": 25})
    volume = load_image(tmp_path / "loop.frames")
    np.testing.assert_array_equal(volume.array, frames)  # frame10 after frame9, not after frame1
    assert volume.meta["frame_time_ms"] == 40.0 and volume.meta["frames"] == 12
    write_frames_folder(tmp_path / "untimed.frames", frames)
    assert "frame_time_ms" not in load_image(tmp_path / "untimed.frames").meta  # unknown, not made up


def test_a_folder_of_frames_of_two_sizes_is_refused_naming_the_frame(tmp_path):
    from PIL import Image

    write_frames_folder(tmp_path / "mixed.frames", _frames((30, 20, 3)))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "mixed.frames" / "frame3.png")
    with pytest.raises(ImageReadError, match="frame3.png"):
        load_image(tmp_path / "mixed.frames")


def test_a_loop_of_8bit_frames_is_seen_by_the_model_as_stored_unless_a_window_is_asked_for(tmp_path):
    """As sam2's and MedSAM2's video readers give frames (/255): a percentile window would stretch a
    dark echo loop into something the echo weights never saw."""
    from medsam2_engine.volume_io import Volume
    from medsam2_engine.windowing import AS_STORED, model_window

    frames = (_frames((32, 24, 4)) // 2).astype(np.uint8)  # a dark loop: nothing above 127
    write_loop_avi(tmp_path / "loop.avi", frames, rate=25)
    volume = load_image(tmp_path / "loop.avi")
    window, _ = model_window(volume)
    assert window.source == AS_STORED
    np.testing.assert_allclose(window.apply(volume.array), frames / 255.0, atol=1e-7)
    assert model_window(volume, window="percentile")[0].source != AS_STORED  # still there when asked for
    same_as_a_scan = Volume(volume.array.copy(), volume.affine, "scan.nii.gz")  # no frames: a volume's default
    assert model_window(same_as_a_scan)[0].source != AS_STORED
