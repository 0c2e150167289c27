"""Tests for moviola.video_io: round trips through every container, the awkward files real data has
(29.97 fps, B-frames, odd sizes, rotation, truncation), atomic writes, and the clip reshaping helpers.

All footage is made on the fly in tmp_path; clips are tiny so the whole file runs in seconds.
"""

from __future__ import annotations

import os
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from moviola import video_io
from moviola.video_io import (
    Video,
    VideoError,
    atomic_path,
    atomic_write_bytes,
    encode_image,
    fit_frames,
    probe_video,
    read_image,
    read_video,
    resample_fps,
    sprite_sheet,
    thumbnail,
    write_frames_png,
    write_image,
    write_video,
)

NTSC = 30000 / 1001


# --- footage ----------------------------------------------------------------------------------------

def gradient_clip(t: int = 16, h: int = 48, w: int = 64) -> np.ndarray:
    """(t, h, w, 3) uint8: a smooth gradient with a red square moving left to right (easy to encode
    almost losslessly, and the square's position tells frames apart)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), np.full_like(xx, 96.0)], -1)
    frames = np.repeat(base[None], t, axis=0)
    side = max(4, min(h, w) // 4)
    for k in range(t):
        x0 = k * (w - side) // max(t - 1, 1)
        frames[k, h // 4 : h // 4 + side, x0 : x0 + side] = (230, 30, 30)
    return frames.round().astype(np.uint8)


def square_x(frame: np.ndarray) -> float:
    """Column centre of the red square (red high, blue low: the background's blue is a flat 96)."""
    mask = (frame[..., 0].astype(int) > 180) & (frame[..., 2].astype(int) < 60)
    return float(np.nonzero(mask)[1].mean())


def write_raw(path: Path, frames: np.ndarray, rate: Fraction | int, *, codec: str = "libx264",
              pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
              rotation: int | None = None, hflip: bool = False, vflip: bool = False) -> Path:
    """Write with plain PyAV, independently of write_video (moov at the end of mp4s, any codec); a display
    matrix when ``rotation`` or a flip is given."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def sine(seconds: float = 1.0, rate: int = 16000, hz: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


# --- round trips ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fps, expected", [
    (8, 8.0), (29.97, NTSC), (Fraction(30000, 1001), NTSC), (12.5, 12.5), (23.976, 24000 / 1001),
])
def test_mp4_round_trip_keeps_count_fps_and_pixels(tmp_path, fps, expected):
    clip = gradient_clip()
    path = write_video(tmp_path / "clip.mp4", clip, fps)
    video = read_video(path)
    assert isinstance(video, Video)
    assert video.frames.shape == clip.shape and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(expected, abs=1e-6)
    assert video.duration == pytest.approx(len(clip) / expected)
    assert mean_abs_diff(video.frames, clip) < 3.0
    assert [square_x(f) for f in video.frames] == sorted(square_x(f) for f in video.frames)


def test_default_quality_is_smaller_but_close(tmp_path):
    clip = gradient_clip(t=8, h=64, w=96)
    high = write_video(tmp_path / "high.mp4", clip, 8)
    default = write_video(tmp_path / "default.mp4", clip, 8, quality="default")
    assert default.stat().st_size < high.stat().st_size
    assert mean_abs_diff(read_video(default).frames, clip) < 6.0
    with pytest.raises(ValueError, match="quality"):
        write_video(tmp_path / "x.mp4", clip, 8, quality="ultra")


def test_webm_round_trip(tmp_path):
    clip = gradient_clip(t=12)
    video = read_video(write_video(tmp_path / "clip.webm", clip, 29.97, metadata={"prompt": "a ball"}))
    assert video.frames.shape == clip.shape
    assert video.fps == pytest.approx(NTSC, abs=1e-6)
    assert mean_abs_diff(video.frames, clip) < 4.0
    assert video.metadata["prompt"] == "a ball"  # matroska upper-cases tag names; we lower them
    assert probe_video(tmp_path / "clip.webm")["codec"] in ("vp9", "vp8")


def test_gif_round_trip_keeps_every_frame(tmp_path):
    clip = gradient_clip(t=12)
    clip[5] = clip[4]  # identical neighbours must stay two frames (some GIF writers merge them)
    video = read_video(write_video(tmp_path / "clip.gif", clip, 8))
    assert video.frames.shape == clip.shape
    assert video.fps == pytest.approx(8.0, abs=0.05)
    assert mean_abs_diff(video.frames, clip) < 8.0
    assert abs(square_x(video.frames[7]) - square_x(clip[7])) < 1.0


@pytest.mark.parametrize("ext", [".mov", ".mkv"])
def test_mov_and_mkv_round_trip(tmp_path, ext):
    clip = gradient_clip(t=10)
    video = read_video(write_video(tmp_path / f"clip{ext}", clip, 24))
    assert video.frames.shape == clip.shape
    assert video.fps == pytest.approx(24.0)
    assert mean_abs_diff(video.frames, clip) < 3.0


def test_reads_files_from_other_writers(tmp_path):
    """mkv and avi with MPEG-4 part 2: a different codec, container and timestamp scheme."""
    clip = gradient_clip(t=10)
    for name in ("other.mkv", "other.avi"):
        path = write_raw(tmp_path / name, clip, 10, codec="mpeg4", options={"qscale": "2"})
        video = read_video(path)
        assert video.frames.shape == clip.shape
        assert video.fps == pytest.approx(10.0)
        assert mean_abs_diff(video.frames, clip) < 8.0


def test_png_single_frame_and_multi_frame_refused(tmp_path):
    clip = gradient_clip(t=2)
    path = write_video(tmp_path / "still.png", clip[:1], 8)
    assert np.array_equal(read_image(path), clip[0])  # PNG is lossless
    with pytest.raises(VideoError, match="one frame"):
        write_video(tmp_path / "two.png", clip, 8)
    assert not (tmp_path / "two.png").exists()


def test_accepts_torch_and_float_frames(tmp_path):
    clip = gradient_clip(t=6)
    from_torch = read_video(write_video(tmp_path / "t.mp4", torch.from_numpy(clip), 8)).frames
    from_float = read_video(write_video(tmp_path / "f.mp4", clip / 255.0, 8)).frames
    assert mean_abs_diff(from_torch, clip) < 3.0
    assert mean_abs_diff(from_float, from_torch) < 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # a [-1, 1] tensor passed by mistake
        write_video(tmp_path / "bad.mp4", clip / 127.5 - 1.0, 8)
    for bad in (clip[0], clip[..., :2], clip.astype(np.complex64), clip[:0]):
        with pytest.raises(ValueError):
            write_video(tmp_path / "bad.mp4", bad, 8)
    assert list(tmp_path.glob("bad*")) == [] and list(tmp_path.glob(".bad*")) == []


# --- real-world awkwardness -------------------------------------------------------------------------

def test_camera_style_clip_with_b_frames_reads_in_presentation_order(tmp_path):
    """853x363 (2.35:1, odd sizes) at 30000/1001 fps with B-frames: frame k draws a bar at x=20+30k."""
    t, h, w = 24, 363, 853
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([(xx // 4) % 64, (yy // 4) % 64, np.full_like(xx, 40)], -1).astype(np.uint8)
    clip = np.repeat(background[None], t, axis=0)
    for k in range(t):
        clip[k, :, 20 + 30 * k : 28 + 30 * k] = 255
    # yuv444p because H.264 4:2:0 cannot store odd sizes. b-adapt=0 forces the two B-frames per
    # group: left to choose, x264 sees jumping bars and uses none.
    path = write_raw(tmp_path / "camera.mp4", clip, Fraction(30000, 1001), pix_fmt="yuv444p",
                     options={"crf": "18", "preset": "veryfast", "x264-params": "bframes=2:b-adapt=0"})
    with av.open(str(path)) as container:  # decode order really differs from presentation order
        stored_pts = [p.pts for p in container.demux(video=0) if p.pts is not None]
    assert stored_pts != sorted(stored_pts)

    video = read_video(path)
    assert video.frames.shape == (t, h, w, 3)
    assert video.fps == pytest.approx(NTSC, abs=1e-6)
    bars = [int(np.argmax(frame.astype(int).sum(axis=(0, 2)))) for frame in video.frames]
    assert bars == sorted(bars) and len(set(bars)) == t
    assert all(20 + 30 * k <= x < 28 + 30 * k for k, x in enumerate(bars))

    info = probe_video(path)
    assert (info["width"], info["height"], info["num_frames"]) == (w, h, t)
    assert info["fps"] == pytest.approx(NTSC) and info["duration"] == pytest.approx(t / NTSC, abs=1e-3)
    for mode in ("crop", "pad", "stretch"):
        assert fit_frames(video.frames, 64, 64, mode=mode).shape == (t, 64, 64, 3)
        assert fit_frames(video.frames, 96, 64, mode=mode).shape == (t, 64, 96, 3)


def test_odd_size_write_pads_to_even_by_repeating_edges(tmp_path):
    clip = gradient_clip(t=6, h=37, w=63)
    video = read_video(write_video(tmp_path / "odd.mp4", clip, 8))
    assert video.frames.shape == (6, 38, 64, 3)
    assert mean_abs_diff(video.frames[:, :37, :63], clip) < 3.0
    assert mean_abs_diff(video.frames[:, 37, :63], clip[:, 36]) < 4.0  # padded row = last row
    assert mean_abs_diff(video.frames[:, :37, 63], clip[:, :, 62]) < 4.0


def test_display_rotation_is_applied(tmp_path):
    clip = np.zeros((3, 32, 48, 3), np.uint8)
    clip[:, :16, :24] = 255  # white top-left quadrant of a landscape frame
    path = write_raw(tmp_path / "phone.mp4", clip, 8, rotation=90)
    video = read_video(path)
    assert video.frames.shape == (3, 48, 32, 3)  # 90 degrees counter-clockwise: portrait
    assert video.frames[0, 40, 8].mean() > 200 and video.frames[0, 8, 8].mean() < 50  # now bottom-left
    info = probe_video(path)
    assert (info["width"], info["height"], info["rotation"]) == (32, 48, 90)


@pytest.mark.parametrize("rotation", [None, 90])
def test_large_frames_are_scaled_down_while_decoding(tmp_path, monkeypatch, rotation):
    """read_video_fitted asks FFmpeg's scaler for the size that covers the target, so no full-size frame (or
    its float copy) reaches the resize: a 10 s 1080p file read for a 64x64 model had peaked at 4 GB. The
    picture is the one scaling the decoded frame gives, rotation and centre crop included."""
    clip = np.zeros((4, 240, 400, 3), np.uint8)
    clip[:, :120, :200] = 255  # white top-left quadrant
    clip[:, 100:140, 180:220, 0] = 200  # a red mark in the middle, which the crop keeps
    path = write_raw(tmp_path / "big.mp4", clip, 8, rotation=rotation)
    expected = fit_frames(read_video(path).frames, 48, 32)
    seen = []
    real = video_io._resize
    monkeypatch.setattr(video_io, "_resize", lambda f, h, w: seen.append(f.shape) or real(f, h, w))
    got = video_io.read_video_fitted(path, 48, 32, 8)
    assert got.shape == expected.shape == (4, 32, 48, 3)
    assert all(shape[1] * shape[2] <= 2 * 48 * 32 for shape in seen), seen  # nothing near 400x240 resized
    assert mean_abs_diff(got, expected) < 4.0


def test_time_range_and_max_frames(tmp_path):
    clip = gradient_clip(t=16)
    path = write_video(tmp_path / "clip.mp4", clip, 8)
    full = read_video(path).frames
    part = read_video(path, start=0.5, end=1.5).frames  # frames 4..11
    assert part.shape[0] == 8 and np.array_equal(part, full[4:12])
    assert np.array_equal(read_video(path, max_frames=5).frames, full[:5])
    assert np.array_equal(read_video(path, start=1.0, max_frames=3).frames, full[8:11])
    with pytest.raises(VideoError, match="no frames in the requested time range"):
        read_video(path, start=5.0)
    with pytest.raises(ValueError):
        read_video(path, start=1.0, end=0.5)


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_audio_round_trip(tmp_path, ext):
    path = write_video(tmp_path / f"talk{ext}", gradient_clip(t=8), 8, audio=sine(), sample_rate=16000)
    video = read_video(path, with_audio=True)
    assert video.audio is not None and video.audio.dtype == np.float32 and video.audio.ndim == 1
    assert len(video.audio) / video.sample_rate == pytest.approx(1.0, rel=0.05)
    assert dominant_hz(video.audio, video.sample_rate) == pytest.approx(440.0, abs=5.0)
    assert np.abs(video.audio).max() <= 1.0
    assert read_video(path).audio is None  # audio only on request
    assert probe_video(path)["has_audio"] is True
    half = read_video(path, end=0.5, with_audio=True)  # audio is cut to the requested window
    assert len(half.audio) / half.sample_rate == pytest.approx(0.5, rel=0.05)


def test_audio_follows_the_requested_time_window(tmp_path):
    rate = 16000
    track = np.concatenate([sine(1.0, rate, 440.0), sine(1.0, rate, 880.0)])  # 440 Hz, then 880 Hz
    path = write_video(tmp_path / "two_tones.mp4", gradient_clip(t=16), 8, audio=track, sample_rate=rate)
    second = read_video(path, start=1.0, with_audio=True)
    assert second.num_frames == 8
    assert dominant_hz(second.audio, second.sample_rate) == pytest.approx(880.0, abs=5.0)
    first = read_video(path, end=1.0, with_audio=True)
    assert len(first.audio) == pytest.approx(rate, rel=0.02)
    assert dominant_hz(first.audio, first.sample_rate) == pytest.approx(440.0, abs=5.0)


def test_audio_refused_for_gif(tmp_path):
    with pytest.raises(VideoError, match="audio"):
        write_video(tmp_path / "a.gif", gradient_clip(t=2), 8, audio=sine(0.1))


def test_mp4_metadata_round_trip(tmp_path):
    tags = {"prompt": "a red ball bounces", "seed": 42, "model": "moviola-tiny"}
    video = read_video(write_video(tmp_path / "clip.mp4", gradient_clip(t=4), 8, metadata=tags))
    assert {k: video.metadata.get(k) for k in tags} == {k: str(v) for k, v in tags.items()}


# --- atomic writes ----------------------------------------------------------------------------------

def test_failed_write_leaves_no_target_and_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous good file")
    calls = {"n": 0}
    real = video_io._rgb_frame

    def flaky(rgb):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("encoder exploded")
        return real(rgb)

    monkeypatch.setattr(video_io, "_rgb_frame", flaky)
    with pytest.raises(RuntimeError, match="exploded"):
        write_video(target, gradient_clip(t=8), 8)
    assert calls["n"] == 4  # it failed midway, after some frames were written
    assert target.read_bytes() == b"previous good file"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]

    monkeypatch.undo()
    fresh = tmp_path / "fresh.mp4"
    with pytest.raises(ValueError):  # wrong shape: nothing written at all
        write_video(fresh, np.zeros((4, 16, 16), np.uint8), 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_atomic_helpers(tmp_path):
    path = atomic_write_bytes(tmp_path / "sub" / "ckpt.bin", b"abc", fsync=True)
    assert path.read_bytes() == b"abc"
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "sub" / "ckpt.bin") as tmp:
            assert tmp.parent == path.parent and tmp.suffix == ".bin" and tmp.name.startswith(".ckpt.")
            tmp.write_bytes(b"half")
            raise KeyError("crash")
    assert path.read_bytes() == b"abc"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.bin"]


# --- errors -----------------------------------------------------------------------------------------

def make_bad_file(kind: str, folder: Path) -> Path:
    """A file (or non-file) that read_video must refuse, named after what is wrong with it."""
    path = folder / {"png": "photo.png", "jpeg": "photo.jpg"}.get(kind, f"{kind}.mp4")
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("just some text\n" * 50)
    elif kind == "truncated":  # PyAV puts the mp4 index (moov) at the end, so 40% has none
        whole = write_raw(folder / "whole.mp4", gradient_clip(t=24), 8)
        path.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.4)])
    elif kind in ("png", "jpeg"):
        Image.new("RGB", (32, 24), "red").save(path)
    return path  # "missing": nothing is created


@pytest.mark.parametrize("kind, problem", [
    ("missing", "no such file"),
    ("directory", "is a directory"),
    ("empty", "empty file"),
    ("text", "not a video"),
    ("truncated", "truncated or corrupt video"),
    ("png", "not a video: no video stream"),
    ("jpeg", "not a video: no video stream"),
])
def test_bad_inputs_raise_video_error_naming_the_file(tmp_path, kind, problem):
    path = make_bad_file(kind, tmp_path)
    for reader in (read_video, probe_video):
        with pytest.raises(VideoError) as info:
            reader(path)
        assert problem in str(info.value)
        assert path.name in str(info.value) and info.value.path == str(path)


@pytest.mark.parametrize("ext", [".webm", ".mkv", ".mp4"])
def test_cut_off_file_is_reported_not_silently_shortened(tmp_path, ext):
    """Matroska, and mp4 with its index in front (write_video's faststart), decode without error up
    to a cut; the stream duration in the header gives it away."""
    whole = write_video(tmp_path / f"whole{ext}", gradient_clip(t=32), 8)
    assert read_video(whole).num_frames == 32
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(VideoError, match=f"cut{ext}: truncated or corrupt video"):
        read_video(cut)
    assert read_video(cut, max_frames=4).num_frames == 4  # the intact part is still readable


@pytest.mark.parametrize("ext", [".webm", ".mkv", ".mp4"])
def test_a_file_cut_near_its_end_is_refused_too(tmp_path, ext):
    """Cut anywhere past 80 % (an interrupted download), a clip is refused, or read for a model (by its frames'
    timestamps) it keeps its length but for at most two frames: a margin of max(0.5 s, 10 %) had let a 4 s clip
    come back up to half a second short. (A cut can lose the B-frames before the last anchor frame and keep
    that frame: the clip then holds a frame over the hole, its length whole.)"""
    whole = write_video(tmp_path / f"whole{ext}", gradient_clip(t=32), 8)
    data = whole.read_bytes()
    for k in range(80, 100, 2):
        cut = tmp_path / f"cut{k}{ext}"
        cut.write_bytes(data[: len(data) * k // 100])
        try:
            n = len(video_io.read_video_fitted(cut, 64, 64, 8.0))
        except VideoError as e:
            assert "truncated or corrupt video" in str(e)
            continue
        assert n >= 30, f"cut at {k} %: {n} of 32 frames read without an error"


def test_a_gif_that_holds_its_last_frame_is_whole(tmp_path):
    """A GIF whose last frame shows for a second after three of 0.1 s (a title card, a reaction GIF's pause) is
    1.3 s long, read as such: it had been refused as cut off ("frames stop at 0.40 s of 1.30 s")."""
    from PIL import Image

    images = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(4)]
    images[0].save(tmp_path / "hold.gif", save_all=True, append_images=images[1:], duration=[100, 100, 100, 1000])
    assert read_video(tmp_path / "hold.gif").num_frames == 4
    fitted = video_io.read_video_fitted(tmp_path / "hold.gif", 16, 16, 10.0)
    assert len(fitted) == 13 and (fitted[3:] == fitted[3]).all()  # the last frame held for its second


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(VideoError, match=r"\.mp4.*\.webm"):
        write_video(tmp_path / "clip.avi", gradient_clip(t=2), 8)
    with pytest.raises(VideoError, match="jpg"):
        write_image(tmp_path / "x.tiff", gradient_clip(t=1)[0])
    assert list(tmp_path.iterdir()) == []


def test_video_error_shape_and_pickling():
    err = VideoError("clip.mp4", "truncated or corrupt video (no decodable frames)")
    assert str(err) == "clip.mp4: truncated or corrupt video (no decodable frames)"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.problem) == (err.path, err.problem)


# --- images -----------------------------------------------------------------------------------------

def test_images_read_write_encode(tmp_path, monkeypatch):
    image = gradient_clip(t=1, h=24, w=40)[0]
    assert np.array_equal(read_image(write_image(tmp_path / "a.png", image)), image)
    assert mean_abs_diff(read_image(write_image(tmp_path / "a.jpg", image)), image) < 4.0
    for fmt, pil_name in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        with Image.open(__import__("io").BytesIO(encode_image(image, fmt))) as im:
            assert (im.format, im.size) == (pil_name, (40, 24))
    for mode in ("RGBA", "L", "P", "LA"):
        Image.new(mode, (10, 6)).save(tmp_path / f"{mode}.png")
        out = read_image(tmp_path / f"{mode}.png")
        assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(VideoError, match="text.png: not an image"):
        read_image(tmp_path / "text.png")
    # PostScript is a program (Pillow would run it through Ghostscript, where installed): never opened
    Image.new("RGB", (10, 6)).save(tmp_path / "ps.png", format="EPS")
    with pytest.raises(VideoError, match="ps.png: not an image: unrecognised file format"):
        read_image(tmp_path / "ps.png")
    for fmt in ("BMP", "TIFF", "GIF", "PPM", "TGA"):  # the rest of what editors and cameras write: read
        Image.new("RGB", (10, 6), (200, 30, 30)).save(tmp_path / f"c.{fmt.lower()}", format=fmt)
        assert read_image(tmp_path / f"c.{fmt.lower()}")[0, 0].tolist() == [200, 30, 30]
    # a Pillow without one of the formats (AVIF came with 11.2): the others still read (it had been a KeyError)
    from moviola import images

    monkeypatch.delitem(Image.OPEN, "AVIF", raising=False)
    monkeypatch.setattr(images, "_FORMATS", None)
    assert read_image(tmp_path / "c.ppm")[0, 0].tolist() == [200, 30, 30]
    monkeypatch.setattr(images, "_FORMATS", None)
    with pytest.raises(VideoError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_write_frames_png(tmp_path):
    clip = gradient_clip(t=3, h=16, w=16)
    paths = write_frames_png(tmp_path / "frames", clip)
    assert [p.name for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert all(np.array_equal(read_image(p), f) for p, f in zip(paths, clip))


# --- reshaping clips --------------------------------------------------------------------------------

def test_fit_frames_modes_keep_the_right_content():
    # A 2.35:1 frame in three vertical bands, red | green | blue; green covers the centre 363x363.
    clip = np.zeros((2, 363, 853, 3), np.uint8)
    clip[:, :, :200, 0] = 255
    clip[:, :, 200:653, 1] = 255
    clip[:, :, 653:, 2] = 255
    crop = fit_frames(clip, 64, 64)  # centre crop of a wide frame: all green
    assert crop.shape == (2, 64, 64, 3) and crop[..., 1].min() > 200 and crop[..., 0].max() < 30
    pad = fit_frames(clip, 64, 64, mode="pad")  # letterbox: black bars above and below
    assert pad[:, :10].max() == 0 and pad[:, -10:].max() == 0
    assert pad[0, 32, 2, 0] > 200 and pad[0, 32, 32, 1] > 200 and pad[0, 32, 61, 2] > 200
    stretch = fit_frames(clip, 96, 64, mode="stretch")  # all three bands survive, squeezed
    assert stretch.shape == (2, 64, 96, 3)
    assert stretch[0, 32, 5, 0] > 200 and stretch[0, 32, 48, 1] > 200 and stretch[0, 32, 90, 2] > 200
    tall = fit_frames(clip[:, :, 300:500], 16, 64)  # narrow source into a tall target
    assert tall.shape == (2, 64, 16, 3)
    up = fit_frames(gradient_clip(t=1, h=9, w=7), 70, 90)  # upscaling tiny sources works too
    assert up.shape == (1, 90, 70, 3)
    with pytest.raises(ValueError):
        fit_frames(clip, 64, 64, mode="zoom")


def test_resample_fps_picks_frames_by_time():
    clip = np.arange(60, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    out = resample_fps(clip, NTSC, 8)
    assert len(out) == round(60 / NTSC * 8) == 16
    picked = out[:, 0, 0, 0].astype(int)
    assert picked[0] == 0 and np.all(np.diff(picked) > 0)
    assert list(picked) == [int(np.floor(k * NTSC / 8)) for k in range(16)]
    assert list(resample_fps(clip[:4], 8, 24)[:, 0, 0, 0]) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    as_tensor = resample_fps(torch.from_numpy(clip), 24, 8)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor[:, 0, 0, 0].tolist() == list(range(0, 60, 3))


def test_thumbnail_and_sprite_sheet():
    clip = gradient_clip(t=10, h=48, w=64)
    assert np.array_equal(thumbnail(clip), clip[5])
    assert np.array_equal(thumbnail(clip, index=-1), clip[9])
    small = thumbnail(torch.from_numpy(clip), max_side=32)
    assert small.shape == (24, 32, 3) and small.dtype == np.uint8
    assert thumbnail(clip, max_side=500).shape == (48, 64, 3)  # never enlarged
    with pytest.raises(IndexError):
        thumbnail(clip, index=10)

    sheet = sprite_sheet(clip)  # 10 frames -> 4x3 grid of full-size tiles, first and last included
    assert sheet.shape == (3 * 48, 4 * 64, 3)
    assert np.array_equal(sheet[:48, :64], clip[0]) and np.array_equal(sheet[96:, 64:128], clip[9])
    assert sheet[96:, 128:].max() == 0  # unused cells are black
    sheet = sprite_sheet(clip, columns=2, count=4, tile_width=32)
    assert sheet.shape == (2 * 24, 2 * 32, 3)


def test_probe_video_fields(tmp_path):
    path = write_video(tmp_path / "clip.mp4", gradient_clip(t=20), 29.97, audio=sine(0.5))
    info = probe_video(path)
    assert (info["width"], info["height"], info["num_frames"]) == (64, 48, 20)
    assert info["fps"] == pytest.approx(NTSC) and info["duration"] == pytest.approx(20 / NTSC, abs=1e-3)
    assert info["codec"] == "h264" and info["has_audio"] is True and info["rotation"] == 0
    webm = probe_video(write_video(tmp_path / "clip.webm", gradient_clip(t=20), 10, audio=sine(3.0)))
    assert webm["num_frames"] == 20 and webm["duration"] == pytest.approx(2.0, abs=0.01)  # not 3 s


# --- the files real footage brings (found by a review, 2026-12-07) -----------------------------------

def test_fitted_read_refuses_a_cut_off_file_and_a_too_long_one_before_decoding(tmp_path, monkeypatch):
    """read_video_fitted (what extend, remix, connect and the server read sources with) catches a cut-off
    faststart mp4 as read_video does, and refuses a file longer than max_seconds from its header."""
    whole = write_video(tmp_path / "whole.mp4", gradient_clip(t=64), 8)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(VideoError, match="cut.mp4: truncated or corrupt video"):
        video_io.read_video_fitted(cut, 32, 32, 8)
    assert len(video_io.read_video_fitted(cut, 32, 32, 8, end=1.0)) == 8  # a window inside the intact part
    decoded = []
    monkeypatch.setattr(video_io, "_decode_frames", lambda *a, **k: decoded.append(1))
    with pytest.raises(VideoError, match="whole.mp4: video is 8.00 s long; at most 4 s"):
        video_io.read_video_fitted(whole, 32, 32, 8, max_seconds=4)
    assert not decoded


def test_non_square_pixels_are_shown_at_their_display_aspect(tmp_path):
    """Anamorphic footage (4:3 pixels, as HDV stores 16:9 in 1440x1080) is widened to its display size, so
    a circle that is round on screen stays round when cropped for a model."""
    h, w, sar = 60, 80, Fraction(4, 3)
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + ((xx - w / 2) * float(sar)) ** 2) < (0.35 * h) ** 2  # round once widened
    frames = np.repeat(np.where(disc[..., None], 255, 0).astype(np.uint8)[None].repeat(3, -1), 8, axis=0)
    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.sample_aspect_ratio = sar
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert probe_video(path)["width"] == round(w * sar) and read_video(path).width == round(w * sar)
    fitted = video_io.read_video_fitted(path, 48, 48, 8)
    ys, xs = np.nonzero(fitted[0, ..., 0] > 128)
    assert abs((np.ptp(xs) + 1) / (np.ptp(ys) + 1) - 1) < 0.1  # round, not squeezed to 0.75


def test_deep_grayscale_images_keep_their_tones(tmp_path):
    """16-bit grayscale PNGs (scanners, depth maps) are scaled to 8 bits, not clipped to white."""
    ramp = np.linspace(0, 65535, 64)[None].repeat(8, 0).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    assert image.shape == (8, 64, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image[0, :, 0], ramp[0] / 257, atol=1)
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "f.tiff")
    np.testing.assert_allclose(read_image(tmp_path / "f.tiff")[0, :, 1], ramp[0] / 257, atol=1)


def test_variable_frame_rate_is_read_by_timestamps(tmp_path):
    """A phone-style file (30 fps for 1 s, then 10 fps, millisecond timestamps): the frame picked for time
    k / fps is the one on screen then, so a clip keeps its real speed."""
    times = [i / 30 for i in range(30)] + [1 + i / 10 for i in range(10)]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv444p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):  # brightness = index of the source frame
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 5 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    got = video_io.read_video_fitted(path, 32, 32, 8, start=0.45, num_frames=9)
    want = [max(i for i, t in enumerate(times) if t <= 0.45 + k / 8 + 1e-6) for k in range(9)]
    np.testing.assert_allclose(got[:, 16, 16, 0] / 5, want, atol=0.5)
    with pytest.raises(VideoError, match="only .* of video from 1.5 s"):
        video_io.read_video_fitted(path, 32, 32, 8, start=1.5, num_frames=8)


def test_streaming_writer_errors_are_video_errors_and_leave_nothing(tmp_path):
    (tmp_path / "isdir.mp4").mkdir()
    with pytest.raises(VideoError, match="isdir.mp4: could not write video"):
        video_io.VideoWriter(tmp_path / "isdir.mp4", 8)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VideoError, match="could not write video"):
        video_io.VideoWriter(tmp_path / "file" / "x.mp4", 8)
    with video_io.VideoWriter(tmp_path / "out.mp4", 8) as writer:
        writer.write(gradient_clip(t=4))
        kept = writer.close(keep=True, path=tmp_path / "elsewhere.mp4")
    assert kept == tmp_path / "elsewhere.mp4" and read_video(kept).num_frames == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.mp4", "file", "isdir.mp4"]


def test_the_same_frames_always_make_the_same_h264_file(tmp_path):
    """x264's macroblock tree read uninitialised memory: the same frames made different files depending on what
    the process's heap held (after running a model, one run in three differed). glibc's MALLOC_PERTURB_ fills
    fresh allocations with a chosen byte, which makes that dependence show every time."""
    import os
    import subprocess
    import sys

    frames = tmp_path / "frames.npy"
    np.save(frames, gradient_clip(t=24, h=64, w=64))
    code = ("import sys, numpy as np; from moviola.video_io import write_video; "
            "write_video(sys.argv[2], np.load(sys.argv[1]), 8)")
    outs = []
    for perturb in ("0", "165", "77"):
        out = tmp_path / f"p{perturb}.mp4"
        subprocess.run([sys.executable, "-c", code, str(frames), str(out)], check=True,
                       env={**os.environ, "MALLOC_PERTURB_": perturb})
        outs.append(read_video(out).frames)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_time_windows_are_start_inclusive_end_exclusive_to_the_millisecond(tmp_path):
    """[start, end) as documented: with a quarter-frame tolerance the frame at 1.0 s fell out of [0, 1.02) and a
    window around it was empty (found by a review)."""
    path = write_video(tmp_path / "c.mp4", gradient_clip(t=24), 8)
    assert read_video(path, end=1.02).num_frames == 9  # frames at 0, 0.125 ... 1.0
    assert read_video(path, start=1.02).num_frames == 15  # 1.125 ...
    assert read_video(path, start=0.99, end=1.01).num_frames == 1
    assert read_video(path, start=0.5, end=1.0).num_frames == 4  # the frame at 1.0 is the end, excluded
    with video_io.VideoWriter(tmp_path / "w.mp4", 8) as w:
        w.write(gradient_clip(t=2))
    with pytest.raises(ValueError, match="this VideoWriter is closed"):
        w.write(gradient_clip(t=2))
    with pytest.raises(ValueError, match="positive and finite"):
        resample_fps(gradient_clip(t=4), float("inf"), 8)


def test_a_window_of_mpeg_ts_footage_starts_where_asked(tmp_path):
    """AVCHD-style MPEG-TS (.MTS: a start offset, B-frames, a keyframe at a cut): a seek there landed on the
    keyframe after the requested time, and the clip began on that later frame, held (found by a review)."""
    frames = gradient_clip(t=90, h=48, w=64)
    frames[60:] = 255 - frames[60:]  # a hard cut at 2 s: the encoder puts a keyframe there
    path = tmp_path / "00001.MTS"
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=30, options={"x264-params": "bframes=2:keyint=300"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i + 42  # the stream starts at 1.4 s, as camera files do
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    whole = read_video(path).frames
    got = video_io.read_video_fitted(path, 64, 48, 10, start=1.0, num_frames=6)  # 1.0 to 1.5 s: before the cut
    for k in range(6):
        assert mean_abs_diff(got[k], whole[30 + 3 * k]) < 3, k


def test_fitted_windows_of_gifs_and_long_frame_gaps(tmp_path):
    """Found by reviewing the day's change: GIF timestamps are hundredths (0.13 s for 0.125 s), and a clip read at
    8 fps from one held every other frame; a variable-frame-rate gap longer than two frames lost the frame on
    screen at the window's start."""
    clip = np.zeros((17, 16, 32, 3), np.uint8)
    for k in range(17):
        clip[k, :, k:k + 2] = 255  # frame k: a white bar at column k
    gif = write_video(tmp_path / "c.gif", clip, 8)
    got = video_io.read_video_fitted(gif, 32, 16, 8, start=0, num_frames=9)
    assert [int(np.argmax(g[8, :, 0] > 128)) for g in got] == list(range(9))
    times = [0.0, 0.1, 0.2, 0.6, 1.0, 1.1]  # a 0.4 s gap: the frame at 0.2 s is on screen from 0.2 to 0.6
    path = tmp_path / "gap.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    got = video_io.read_video_fitted(path, 16, 16, 10, start=0.45, num_frames=3)  # 0.45, 0.55, 0.65
    np.testing.assert_allclose(got[:, 8, 8, 0] / 40, [2, 2, 3], atol=0.1)


def test_fast_gifs_read_back_at_their_rate_and_bad_rates_are_refused(tmp_path):
    """FFmpeg guesses 100 fps for GIFs at 40 to 75 fps (delays of 2.5 to 1.3 cs): the timestamps decide; a GIF
    cannot hold more than 100 fps; read rates and start times must be numbers that make sense."""
    clip = gradient_clip(t=16)
    for fps in (8, 40, 60):
        path = write_video(tmp_path / f"g{fps}.gif", clip, fps)
        assert abs(read_video(path).fps / fps - 1) < 0.05, (fps, read_video(path).fps)
        assert abs(probe_video(path)["fps"] / fps - 1) < 0.05, (fps, probe_video(path))
    from PIL import Image

    held = [Image.fromarray(f) for f in clip[:8]]  # 10 fps whose first frame is held for 1 s: uneven, not fast
    held[0].save(tmp_path / "held.gif", save_all=True, append_images=held[1:], duration=[1000] + [100] * 7)
    assert read_video(tmp_path / "held.gif").fps == 10.0
    with pytest.raises(ValueError, match="too high for a GIF"):
        write_video(tmp_path / "fast.gif", clip, 150)
    assert not (tmp_path / "fast.gif").exists()
    path = write_video(tmp_path / "c.mp4", clip, 8)
    for fps in (-8, 0, float("nan"), "8"):
        with pytest.raises(ValueError, match="fps must be a finite number above 0"):
            video_io.read_video_fitted(path, 16, 16, fps)
    with pytest.raises(ValueError, match="need 0 <= start < end"):
        read_video(path, start=float("nan"))


def test_a_long_file_read_at_a_low_rate_keeps_only_the_frames_it_gives(tmp_path, monkeypatch):
    """read_video_fitted converts and keeps only the source frames a sample time shows (plus the first and
    last): a 5 min clip scored at 7.5 fps had kept all 9,000 frames (5 GB). The frames are the same ones."""
    t = 60
    clip = np.zeros((t, 32, 32, 3), np.uint8)
    clip[:] = (np.arange(t) * 4)[:, None, None, None]  # frame i has level 4 i
    path = write_raw(tmp_path / "c30.mp4", clip, Fraction(30, 1), options={"crf": "0"})
    calls = []
    real = video_io.fit_frames
    monkeypatch.setattr(video_io, "fit_frames", lambda f, *a, **k: calls.append(1) or real(f, *a, **k))
    got = video_io.read_video_fitted(path, 16, 16, 8)
    levels = got[:, 8, 8, 0].astype(int)
    expected = [4 * int(k * 30 / 8 + 1e-9) for k in range(len(got))]  # the latest source frame at or before k / 8
    assert len(got) == 16 and np.abs(levels - expected).max() <= 2, (levels, expected)
    assert len(calls) <= len(got) + 2, len(calls)


def test_transparent_gifs_and_resolution_changes_read_as_pictures(tmp_path):
    """A transparent GIF's clear pixels come out black as a video, as they do as an image (FFmpeg's fill had
    made them white); frames after a mid-stream resolution change are cover-cropped, not stretched."""
    from PIL import Image

    rgba = np.zeros((4, 16, 16, 4), np.uint8)
    rgba[:, 4:12, 4:12] = (255, 0, 0, 255)  # an opaque red square on a transparent field
    images = [Image.fromarray(f, "RGBA") for f in rgba]
    images[0].save(tmp_path / "s.gif", save_all=True, append_images=images[1:], duration=125, loop=0,
                   disposal=2, transparency=0)
    video = read_video(tmp_path / "s.gif").frames
    image = video_io.read_image(tmp_path / "s.gif")
    assert video[0, 1, 1].tolist() == image[1, 1].tolist() == [0, 0, 0]
    assert video[0, 8, 8, 0] > 200

    def part(name: str, w: int, h: int, first: int) -> bytes:  # 8 frames of a centred disc
        with av.open(str(tmp_path / name), "w", format="mpegts") as c:
            s = c.add_stream("mpeg2video", rate=8)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.where((((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < 20 ** 2)[..., None], 255, 0).astype(np.uint8)
            for i in range(8):
                f = av.VideoFrame.from_ndarray(np.repeat(img, 3, -1), format="rgb24")
                f.pts = first + i
                c.mux(s.encode(f))
            c.mux(s.encode())
        return (tmp_path / name).read_bytes()

    path = tmp_path / "res.ts"  # joined as a broadcast or a camera's split recording is: 96x64, then 64x96
    path.write_bytes(part("a.ts", 96, 64, 0) + part("b.ts", 64, 96, 8))
    frames = read_video(path).frames
    for k in (2, 12):
        ys, xs = np.nonzero(frames[k, ..., 0] > 128)
        assert abs((np.ptp(xs) + 1) / (np.ptp(ys) + 1) - 1) < 0.15, k  # round in both halves


def test_odd_file_names_and_huge_images_are_said_plainly(tmp_path, monkeypatch):
    from PIL import Image

    weird = tmp_path / "caf\udce9.mp4"  # a Latin-1 name on a UTF-8 system: undecodable bytes as surrogates
    write_video(weird, gradient_clip(t=4), 8, metadata={"moviola_source": str(weird)})
    assert read_video(weird).metadata["moviola_source"].endswith("caf\\xe9.mp4")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(VideoError, match="image is too large to open"):
        video_io.read_image(tmp_path / "big.png")


def test_camera_names_with_colons_are_files_not_protocols(tmp_path, monkeypatch):
    """A camera's ISO-timestamp name reads and writes as a file, also given relative ("./..."), and "http:x.mp4"
    is the file of that name: FFmpeg had taken the text before the colon for a protocol ("Protocol not found")."""
    monkeypatch.chdir(tmp_path)
    clip = gradient_clip(t=5)
    for name in ("2024-01-01T10:30:00.mp4", "http:clip.mp4", "2024-01-01T10:30:00.gif"):
        write_video(f"./{name}", clip, 8)
        assert (tmp_path / name).is_file()
        assert read_video(f"./{name}").frames.shape == clip.shape
        assert probe_video(name)["num_frames"] == 5
    with video_io.VideoWriter("./2024-01-01T12:00:00.webm", fps=8) as w:
        w.write(clip)
    assert read_video(tmp_path / "2024-01-01T12:00:00.webm").frames.shape == clip.shape


def test_a_jpeg_is_checked_for_size_as_it_decodes(tmp_path, monkeypatch):
    """A phone photo past Pillow's decompression-bomb limit by its header, decoded reduced (JPEG's 1/2 to 1/8) for
    a clip, opens without refusal or warning; one that is still too large at 1/8, and other formats past twice
    the limit, are refused; other formats between the limit and twice it open without the warning."""
    import warnings

    from PIL import Image

    from moviola.images import open_image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (2000, 3000, 3), dtype=np.uint8)).save(tmp_path / "big.jpg", quality=80)
    Image.fromarray(rng.integers(0, 255, (500, 800, 3), dtype=np.uint8)).save(tmp_path / "mid.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250_000)  # so that a 6-megapixel JPEG is a "200 MP" one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        img = video_io.read_image(tmp_path / "big.jpg", max_side=256)  # decoded at 1/4: 750x500
        assert img.shape == (500, 750, 3)
        with open(tmp_path / "big.jpg", "rb") as f, open_image(f, max_side=256) as im:
            assert im.size == (750, 500)
        assert video_io.read_image(tmp_path / "mid.png").shape == (500, 800, 3)  # 0.4 MP: between 1x and 2x
    with pytest.raises(VideoError, match="too large"):
        video_io.read_image(tmp_path / "big.jpg", max_side=1024)  # 1/1: 6 MP
    # a progressive JPEG's decoder holds the whole picture's coefficients however reduced: its header is the bound
    Image.fromarray(rng.integers(0, 255, (2000, 3000, 3), dtype=np.uint8)).save(tmp_path / "prog.jpg",
                                                                                 progressive=True, quality=50)
    with pytest.raises(VideoError, match="too large"):
        video_io.read_image(tmp_path / "prog.jpg", max_side=256)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))  # a JPEG's first bytes, then nothing
    with pytest.raises(Exception) as e:
        open_image(tmp_path / "junk.jpg", max_side=256)
    assert type(e.value).__name__ == "UnidentifiedImageError"  # as Image.open says it (a server's 400, not a 500)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(VideoError, match="too large"):
        video_io.read_image(tmp_path / "big.jpg", max_side=256)  # 0.375 MP at 1/4, past twice the limit


@pytest.mark.parametrize("flip, rotation, corner", [({"hflip": True}, 0, (8, 56)), ({"vflip": True}, 0, (40, 8)),
                                                    ({}, 180, (40, 56))])
def test_mirrored_footage_is_shown_mirrored_not_turned(tmp_path, flip, rotation, corner):
    """A display matrix with a flip (mirrored front-camera clips) is applied as FFmpeg applies it: a left-right
    mirror had been shown turned 180 degrees (the rotation FFmpeg reports for it)."""
    clip = np.zeros((3, 48, 64, 3), np.uint8)
    clip[:, :16, :16] = 255  # white top-left corner
    path = write_raw(tmp_path / "m.mp4", clip, 8, rotation=rotation, **flip)
    frame = read_video(path).frames[0]
    y, x = corner
    assert frame[y, x].mean() > 200 and frame[8, 8].mean() < 50, (frame[8, 8], frame[y, x])



@pytest.mark.parametrize("flip, rotation, white, black", [
    ({"vflip": True}, 90, (8, 8), (8, 40)),   # FFmpeg's "cclock_flip": a transpose, the corner stays put
    ({"hflip": True}, 90, (56, 40), (56, 8)),  # "clock_flip": the corner goes to the bottom right
    ({}, 90, (56, 8), (56, 40)),               # unmirrored, for contrast: a quarter turn left ("cclock")
])
def test_mirrored_portrait_footage_is_transposed_as_ffmpeg_shows_it(tmp_path, flip, rotation, white, black):
    """A mirrored display matrix at 90 or 270 degrees (a front camera held upright) is FFmpeg's transpose
    ("cclock_flip" / "clock_flip"); it had been given the unmirrored quarter turn, the clip shown mirrored."""
    clip = np.zeros((3, 48, 64, 3), np.uint8)
    clip[:, :16, :16] = 255  # white top-left corner
    frame = read_video(write_raw(tmp_path / "m.mp4", clip, 8, rotation=rotation, **flip)).frames[0]
    assert frame.shape == (64, 48, 3)
    assert frame[white].mean() > 200 and frame[black].mean() < 50, (frame[white], frame[black])


def test_playlists_and_concat_lists_are_not_followed(tmp_path):
    """A file that names other files (an FFmpeg concat list, an HLS playlist) is refused, not read through: a
    list in an upload folder had read the clip beside it, and one naming itself had opened itself until the
    process had no file handle left."""
    import resource

    secret = write_video(tmp_path / "secret.mp4", gradient_clip(t=4), 8)
    lists = {"list.mp4": "ffconcat version 1.0\nfile 'secret.mp4'\n",
             "self.mp4": "ffconcat version 1.0\nfile 'self.mp4'\n",
             "play.m3u8": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nsecret.mp4\n#EXT-X-ENDLIST\n"}
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    for name, text in lists.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(VideoError, match=f"{name}: not a video: a playlist or a list of other files"):
            read_video(tmp_path / name)
        with pytest.raises(VideoError, match="a playlist"):
            probe_video(tmp_path / name)
    assert read_video(secret).frames.shape[0] == 4  # the clip itself still reads
    assert len(os.listdir("/proc/self/fd")) < soft // 2  # no handles left open behind

def test_a_large_jpeg_is_decoded_no_larger_than_needed(tmp_path):
    """read_image(max_side=N) lets the JPEG decoder reduce by 1/2 to 1/8 while both sides stay >= N, so a
    phone photo conditioning a small clip is never decoded whole; other formats and no max_side: full size."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1700, 3), dtype=np.uint8)).save(tmp_path / "p.jpg")
    assert read_image(tmp_path / "p.jpg").shape == (1200, 1700, 3)
    small = read_image(tmp_path / "p.jpg", max_side=256)
    assert small.shape == (300, 425, 3)  # 1/4: the largest reduction keeping both sides >= 256
    assert read_image(tmp_path / "p.jpg", max_side=1024).shape == (1200, 1700, 3)


def test_forked_data_workers_after_reading_video_do_not_hang(tmp_path):
    """FFmpeg scalers made with slice threads in the parent, freed in a forked data worker, waited there for
    threads the fork does not have: a CI run hung in a cache test. Reading uses single-threaded scalers, and
    ordered_map collects the parent's garbage before it forks."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import gc
        import numpy as np
        from moviola.video_io import read_video_fitted, write_video
        from moviola.data.parallel import ordered_map
        path = {str(tmp_path / "c.mp4")!r}
        write_video(path, np.random.default_rng(0).integers(0, 255, (24, 480, 640, 3), dtype=np.uint8), 8)
        for _ in range(3):
            read_video_fitted(path, 64, 64, 8)
        def f(i):
            gc.collect()
            return i
        print(sum(ordered_map(f, range(8), 2)))
    """)
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a forked worker hung freeing the parent's FFmpeg scaler")
    assert out.returncode == 0 and out.stdout.strip() == "28", out.stderr[-2000:]


def test_a_stream_whose_write_fails_is_dropped_cleanly(tmp_path):
    """A write that fails (a full disk; here the file-size limit) leaves the writer unfinishable: close() drops
    the temp file and returns None instead of flushing the encoder into the failed muxer, which on a full disk
    crashed the process inside FFmpeg (a segfault: the server's workers died and the job ended worker_lost)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource, signal
        import numpy as np
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
        from moviola.video_io import VideoError, VideoWriter
        w = VideoWriter({str(tmp_path / "a.mp4")!r}, 8)
        try:
            for i in range(20):
                w.write(np.random.default_rng(i).integers(0, 255, (8, 128, 128, 3), dtype=np.uint8))
        except VideoError as e:
            print("write failed:", e)
        print("kept:", w.close(keep=True))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "write failed" in run.stdout and "could not write video" in run.stdout
    assert run.stdout.strip().endswith("kept: None")
    assert list(tmp_path.iterdir()) == []  # no temp file, no partial file
