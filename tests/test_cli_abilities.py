"""The prompting abilities from the command line, on the shipped default model (few steps): images in,
real-footage videos in (29.97 fps, 2.35:1, odd sizes, B-frames), long clips written as they are made, and a
clear one-line error (exit 2) for each kind of bad input, before any work starts."""

from __future__ import annotations

import numpy as np
import pytest

from moviola.cli import main
from moviola.video_io import VideoWriter, read_image, read_video, write_image, write_video

FAST = ["--steps", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """A 2 s camera-like clip: 29.97 fps, 2.35:1 at an odd size (235x100), H.264 with B-frames."""
    d = tmp_path_factory.mktemp("footage")
    t = np.arange(60)[:, None, None]
    y, x = np.mgrid[0:100, 0:235]
    r = (128 + 100 * np.sin(x[None] / 20 + t / 9)).astype(np.uint8)
    g = np.broadcast_to((y * 2.5).astype(np.uint8), r.shape)
    b = np.broadcast_to(((x + y) % 256).astype(np.uint8), r.shape)
    frames = np.stack([r, g, b], axis=-1)
    path = d / "camera.mp4"
    write_video(path, frames, 30000 / 1001, quality="default")
    return path


def test_image_output_and_image_to_video(tmp_path, capsys):
    png = tmp_path / "still.png"
    assert main(["generate", "a large red circle on a black background", "--seconds", "0", "-o", str(png), *FAST]) == 0
    image = read_image(png)
    assert image.shape == (64, 64, 3)
    out = tmp_path / "animated.mp4"
    assert main(["generate", "a large red circle falls on a black background", "--image", str(png),
                 "--seconds", "2", "-o", str(out), *FAST]) == 0
    v = read_video(out)
    assert v.frames.shape == (16, 64, 64, 3)
    mse = np.mean((v.frames[0].astype(float) - image.astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) >= 30  # frame 0 is the image (through H.264)
    assert v.metadata.get("moviola_image") == str(png)


def test_extend_and_remix_real_footage(tmp_path, footage):
    ext = tmp_path / "ext.mp4"
    assert main(["extend", str(footage), "a red circle moves right", "--seconds", "1", "-o", str(ext), *FAST]) == 0
    v = read_video(ext)
    # 2.002 s at 8 fps = 16 source frames, cropped to the trained size nearest 2.35:1 (96x64), + 8 new
    assert v.frames.shape == (24, 64, 96, 3)
    back = tmp_path / "back.mp4"
    assert main(["extend", str(footage), "x", "--seconds", "1", "--backward", "-o", str(back), *FAST]) == 0
    vb = read_video(back)
    assert vb.frames.shape == (24, 64, 96, 3)
    # The source comes after the new part (its first 3 frames cross-faded in from the model's decoding).
    assert np.abs(vb.frames[11:].astype(int) - v.frames[3:16].astype(int)).mean() < 3
    rem = tmp_path / "remix.mp4"
    assert main(["remix", str(footage), "a blue square", "--strength", "0.5", "--size", "64x64", "-o", str(rem), *FAST]) == 0
    assert read_video(rem).frames.shape == (16, 64, 64, 3)


def test_loop_connect_storyboard_and_long(tmp_path, footage):
    loop = tmp_path / "loop.mp4"
    assert main(["generate", "a small yellow circle bounces", "--loop", "--seconds", "3", "-o", str(loop), *FAST]) == 0
    assert read_video(loop).num_frames == 24
    conn = tmp_path / "conn.mp4"
    assert main(["connect", str(footage), str(loop), "a circle", "--seconds", "1", "-o", str(conn), *FAST]) == 0
    vc = read_video(conn)
    assert vc.frames.shape == (16 + 8 + 24, 64, 96, 3)
    assert vc.metadata["moviola_guidance"] == "1.0"  # connect's transition guidance, not the model's 5
    board = tmp_path / "board.toml"
    write_image(tmp_path / "card.png", np.full((40, 70, 3), 200, np.uint8))
    board.write_text('seconds = 3\ntransition = "continue"\n'
                     '[[card]]\nstart = 0\nprompt = "a red circle moves right"\n'
                     '[[card]]\nstart = 1.5\nprompt = "a blue square falls"\nimage = "card.png"\n')
    sb = tmp_path / "board.mp4"
    assert main(["storyboard", str(board), "-o", str(sb), *FAST]) == 0
    v = read_video(sb)
    assert v.num_frames == 24
    assert np.abs(v.frames[12].astype(int) - 200).mean() < 6  # the image card's first frame
    long = tmp_path / "long.mp4"
    assert main(["generate", "a green triangle spins", "--seconds", "9", "-o", str(long), *FAST]) == 0
    assert read_video(long).num_frames == 72  # three windows, written as they came


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, footage):
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(footage.read_bytes()[: 3000])
    png = tmp_path / "tiny.png"
    write_image(png, np.zeros((4, 4, 3), np.uint8))
    board = tmp_path / "b.toml"
    board.write_text('[[card]]\nstart = 0\nprompt = "a"\n[[card]]\nstart = 2\nprompt = "b"\n'
                     '[[card]]\nstart = 1\nprompt = "c"\n')
    cut = tmp_path / "cut.mp4"  # a download cut off mid-way: faststart, so its first half decodes cleanly
    cut.write_bytes(footage.read_bytes()[: footage.stat().st_size // 2])
    (tmp_path / "adir.mp4").mkdir()
    (tmp_path / "afile").write_text("x")
    boards = {"b1.toml": 'size = 64\n[[card]]\nstart = 0\nprompt = "a"\n',
              "b2.toml": '[card]\nstart = 0\nprompt = "a"\n',
              "b3.toml": 'seed = "abc"\n[[card]]\nstart = 0\nprompt = "a"\n',
              "b4.toml": '[[card]]\nstart = "zero"\nprompt = "a"\n'}
    for name, text in boards.items():
        (tmp_path / name).write_text(text)
    cases = [
        (["remix", str(footage), "x", "--strength", "1.5", "-o", str(tmp_path / "r.mp4")], "strength"),
        (["extend", str(corrupt), "x", "-o", str(tmp_path / "e.mp4")], "corrupt"),
        (["extend", str(tmp_path / "missing.mp4"), "x", "-o", str(tmp_path / "e.mp4")], "missing.mp4"),
        (["extend", str(cut), "x", "-o", str(tmp_path / "e.mp4")], "frames stop at"),
        (["remix", str(cut), "x", "-o", str(tmp_path / "r.mp4")], "frames stop at"),
        (["generate", "x", "-o", str(tmp_path / "adir.mp4")], "is a directory"),
        (["generate", "x", "-o", str(tmp_path / "afile" / "g.mp4")], "is a file, not a directory"),
        (["generate", "x", "--image", str(png), "-o", str(tmp_path / "g.mp4")], "too small"),
        (["generate", "x", "--seconds", "500", "-o", str(tmp_path / "g.mp4")], "at most"),
        (["generate", "x", "--seconds", "0", "-o", str(tmp_path / "g.mp4")], ".png"),
        (["storyboard", str(board), "-o", str(tmp_path / "s.mp4")], "order"),
        (["storyboard", str(tmp_path / "b1.toml"), "-o", str(tmp_path / "s.mp4")], "size must be a string"),
        (["storyboard", str(tmp_path / "b2.toml"), "-o", str(tmp_path / "s.mp4")], "[[card]] tables (double"),
        (["storyboard", str(tmp_path / "b3.toml"), "-o", str(tmp_path / "s.mp4")], "seed must be a whole number"),
        (["storyboard", str(tmp_path / "b4.toml"), "-o", str(tmp_path / "s.mp4")], "start must be a number"),
        (["connect", str(footage), str(footage), "x", "--seconds", "30", "-o", str(tmp_path / "c.mp4")], "transition"),
        (["connect", str(footage), str(footage), "x", "--strength", "0", "-o", str(tmp_path / "c.mp4")], "--strength"),
    ]
    for argv, needle in cases:
        assert main(argv + FAST) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moviola: error:") and needle in err[0], (argv, err)
        assert not any(p.name.endswith((".mp4",)) and p.stem in "rgecs" for p in tmp_path.iterdir())


def test_interrupted_stream_keeps_a_playable_file(tmp_path):
    path = tmp_path / "partial.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, 8) as w:
            w.write(np.full((12, 32, 48, 3), 90, np.uint8))
            raise KeyboardInterrupt
    v = read_video(path)
    assert v.frames.shape == (12, 32, 48, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "gone.mp4", 8, keep_partial=False) as w:
            w.write(np.zeros((3, 32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_or_second_interrupted_run_keeps_every_earlier_file(tmp_path, capsys):
    """An error mid-stream (not only Ctrl-C) keeps the existing output and puts what was made beside it; a
    second interrupted run does not overwrite the first one's partial clip."""
    from moviola.cli import _run

    def failing(_callback):
        yield np.full((8, 32, 32, 3), 200, np.uint8)
        raise RuntimeError("out of memory in window 2")

    out = tmp_path / "clip.mp4"
    write_video(out, np.zeros((20, 32, 32, 3), np.uint8), 8)
    with pytest.raises(RuntimeError):
        _run("generating", failing, out, 8.0, {})
    assert read_video(out).num_frames == 20  # it had been replaced by the 8-frame partial clip
    assert "stopped by an error; kept 8 frames in" in capsys.readouterr().err

    def interrupted(_callback):
        yield np.full((4, 32, 32, 3), 100, np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run("generating", interrupted, out, 8.0, {})
    assert read_video(tmp_path / "clip.partial.mp4").num_frames == 8  # the first partial, untouched
    assert read_video(tmp_path / "clip.partial-2.mp4").num_frames == 4


def test_sigterm_keeps_a_playable_partial_clip(tmp_path):
    """`kill`, `timeout` or a closed terminal stop a long generate as Ctrl-C does: what was made is kept,
    playable, and no hidden temp file is left (it had been a 48-byte unplayable one)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "long.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "moviola.cli", "generate", "a red circle falls", "--seconds", "60",
                             "--steps", "2", "-o", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120

    def written() -> bool:  # the first window is in the hidden temp file
        for p in tmp_path.iterdir():
            try:
                if p.name.startswith(".long.tmp") and p.stat().st_size > 1000:
                    return True
            except FileNotFoundError:  # renamed into place a moment ago
                pass
        return False

    while time.time() < deadline and proc.poll() is None and not written():
        time.sleep(0.2)
    assert proc.poll() is None, f"generate ended before it was stopped: {proc.communicate()[1][-2000:]}"
    assert written(), "no window written in 120 s"
    os.kill(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "interrupted; kept" in err and read_video(out).num_frames >= 8
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]


def test_generate_refuses_what_it_would_not_make_as_asked(tmp_path, capsys):
    """A last image with one frame (it had written a generated frame, not the image), a duration that rounds
    to one frame as a video (a 1-frame MP4 where one frame is a PNG), and connect's real limit (3 s, not 120)."""
    img = tmp_path / "last.png"
    write_image(img, np.full((64, 64, 3), 90, np.uint8))
    clip = tmp_path / "a.mp4"
    write_video(clip, np.zeros((16, 64, 64, 3), np.uint8), 8)
    for argv, words in [(["generate", "x", "--last-image", str(img), "--frames", "1", "-o", str(tmp_path / "s.png")],
                         "--last-image needs a clip"),
                        (["generate", "x", "--seconds", "0.01", "-o", str(tmp_path / "n.mp4")], "use a .png output"),
                        (["connect", str(clip), str(clip), "x", "--seconds", "10", "-o", str(tmp_path / "c.mp4")],
                         "at most 3 s")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "last.png"]


def test_a_text_file_named_png_is_not_called_an_image(tmp_path):
    from moviola.video_io import VideoError

    fake = tmp_path / "fake.png"
    fake.write_text("not an image at all\n" * 20)
    with pytest.raises(VideoError, match="not a video or an image"):
        read_video(fake)


def test_interrupted_generate_never_replaces_an_existing_file(tmp_path, capsys):
    """Ctrl-C keeps what was made, but beside an output that was there before (NAME.partial.mp4), not over it."""
    from moviola.cli import _run

    def chunks(_callback):
        yield np.full((8, 32, 32, 3), 200, np.uint8)
        raise KeyboardInterrupt

    out = tmp_path / "clip.mp4"
    write_video(out, np.zeros((20, 32, 32, 3), np.uint8), 8)
    with pytest.raises(KeyboardInterrupt):
        _run("generating", chunks, out, 8.0, {})
    assert read_video(out).num_frames == 20  # the earlier file, untouched
    partial = read_video(tmp_path / "clip.partial.mp4")
    assert partial.num_frames == 8 and partial.frames.mean() > 150
    assert "kept 8 frames in" in capsys.readouterr().err
    fresh = tmp_path / "new.mp4"
    with pytest.raises(KeyboardInterrupt):
        _run("generating", chunks, fresh, 8.0, {})
    assert read_video(fresh).num_frames == 8  # no earlier file: the partial clip takes the name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.partial.mp4", "new.mp4"]
