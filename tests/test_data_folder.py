"""`moviola data check`: a folder of real-format videos with planted problems, each named with its file."""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from moviola.cli import main
from moviola.data.folder import DatasetError, check_folder, read_manifest
from moviola.video_io import write_video


def _camera_file(path: Path, t: int, h: int, w: int, rate: Fraction) -> Path:
    """An H.264 file as a camera would write it: odd size (yuv444p), NTSC rate, B-frames."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate, options={"x264-params": "bframes=2:b-adapt=0", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        for i in range(t):
            img = np.full((h, w, 3), 40, np.uint8)
            img[:, (10 * i) % w:(10 * i) % w + 20] = rng.integers(0, 255, 3)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


@pytest.fixture()
def footage(tmp_path):
    root = tmp_path / "footage"
    (root / "sub").mkdir(parents=True)
    _camera_file(root / "wide.mp4", 30, 127, 299, Fraction(30000, 1001))  # 2.35:1 at 29.97 fps
    _camera_file(root / "sub" / "tall.mov", 20, 161, 91, Fraction(24000, 1001))
    write_video(root / "short.mp4", np.zeros((2, 32, 32, 3), np.uint8), 8)  # 0.25 s
    write_video(root / "nocap.webm", np.zeros((8, 32, 32, 3), np.uint8), 8)
    good = (root / "wide.mp4").read_bytes()
    (root / "broken.mp4").write_bytes(good[: len(good) // 3])  # truncated
    (root / "notvideo.mp4").write_text("hello")
    (root / "sub" / "tall.txt").write_text("a bar moves right\n")
    (root / "notvideo.txt").write_text("caption of a file that is not a video")
    (root / "broken.txt").write_text("caption of a truncated file")
    rows = [{"path": "wide.mp4", "caption": "a coloured bar sweeps across", "licence": "CC-BY-4.0",
             "consent": "yes", "start": 0.1},
            {"path": "short.mp4", "caption": "too short"},
            {"path": "gone.mp4", "caption": "listed but missing"}]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_check_names_every_bad_file(footage):
    report = check_folder(footage)
    usable = {Path(c.path).name: c for c in report.clips}
    assert set(usable) == {"wide.mp4", "tall.mov"}
    wide = usable["wide.mp4"]
    assert (wide.width, wide.height) == (299, 127) and abs(wide.fps - 30000 / 1001) < 1e-3
    assert wide.licence == "CC-BY-4.0" and wide.consent == "yes" and wide.start == 0.1
    assert usable["tall.mov"].caption == "a bar moves right"
    problems = {Path(p.path).name: p.problem for p in report.problems}
    assert set(problems) == {"short.mp4", "nocap.webm", "broken.mp4", "notvideo.mp4", "gone.mp4"}
    assert "too short" in problems["short.mp4"]
    assert "no caption" in problems["nocap.webm"]
    assert "missing" in problems["gone.mp4"]
    assert "corrupt" in problems["broken.mp4"] or "truncated" in problems["broken.mp4"]


def test_cli_lists_problems_and_summary(footage, capsys):
    assert main(["data", "check", str(footage)]) == 0
    out = capsys.readouterr().out
    assert "broken.mp4" in out and "notvideo.mp4" in out and "2 usable clips" in out and "5 skipped" in out
    assert main(["data", "check", str(footage / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_csv_manifest_and_bad_rows(tmp_path):
    (tmp_path / "m.csv").write_text("path,caption,end\na.mp4,hello,2.5\n")
    assert read_manifest(tmp_path / "m.csv")[0]["end"] == 2.5
    (tmp_path / "bad.jsonl").write_text('{"path": "a.mp4", "captoin": "typo"}\n')
    with pytest.raises(DatasetError, match="unknown field 'captoin'"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.csv").write_text("path,caption,end\na.mp4,hello,soon\n")
    with pytest.raises(DatasetError, match="end must be a number"):
        read_manifest(tmp_path / "bad2.csv")


def test_autoencoder_batches_skip_bad_files(footage):
    """Training on a user's folder never dies on one bad file: it is skipped, and named."""
    from moviola.data.clips import ClipBatches, ClipDataConfig

    cfg = ClipDataConfig(sizes=[(32, 32)], frames=5, world_weight=0.0, folder=str(footage))
    batches = ClipBatches(cfg, batch_size=3)
    assert {Path(p.path).name for p in batches.skipped} >= {"broken.mp4", "notvideo.mp4"}
    x = batches.batch(0)
    assert x.shape == (3, 3, 5, 32, 32) and x.abs().max() <= 1.0
