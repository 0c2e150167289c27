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
    _camera_file(root / "wide.mp4", 40, 127, 299, Fraction(30000, 1001))  # 2.35:1 at 29.97 fps
    _camera_file(root / "sub" / "tall.mov", 30, 161, 91, Fraction(24000, 1001))
    write_video(root / "short.mp4", np.zeros((2, 32, 32, 3), np.uint8), 8)  # 0.25 s
    write_video(root / "nocap.webm", np.zeros((8, 32, 32, 3), np.uint8), 8)
    good = (root / "wide.mp4").read_bytes()
    (root / "broken.mp4").write_bytes(good[: len(good) // 3])  # truncated
    (root / "notvideo.mp4").write_text("hello")
    write_video(root / "alien.mkv", np.zeros((9, 32, 32, 3), np.uint8), 8)  # a codec FFmpeg cannot decode:
    alien = (root / "alien.mkv").read_bytes()  # the Matroska codec id renamed, as an exotic camera codec
    assert alien.count(b"V_MPEG4/ISO/AVC") == 1
    (root / "alien.mkv").write_bytes(alien.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC"))
    (root / "alien.txt").write_text("a caption for a file no decoder reads")
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
    assert set(problems) == {"short.mp4", "nocap.webm", "broken.mp4", "notvideo.mp4", "gone.mp4", "alien.mkv"}
    assert "unsupported codec" in problems["alien.mkv"]
    assert "too short" in problems["short.mp4"]
    assert "no caption" in problems["nocap.webm"]
    assert "missing" in problems["gone.mp4"]
    assert "corrupt" in problems["broken.mp4"] or "truncated" in problems["broken.mp4"]


def test_cli_lists_problems_and_summary(footage, capsys):
    assert main(["data", "check", str(footage)]) == 0
    out = capsys.readouterr().out
    assert "broken.mp4" in out and "notvideo.mp4" in out and "2 usable clips" in out and "6 skipped" in out
    assert "alien.mkv: unsupported codec" in out
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


def _frames_file(path: Path, frames: np.ndarray, rate: Fraction) -> Path:
    """(T, H, W, 3) uint8 as H.264 with B-frames, yuv444p so odd sizes and sharp colour edges survive."""
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate, options={"x264-params": "bframes=2:b-adapt=0:qp=4",
                                                        "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        for i in range(t):
            f = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


def test_scope_footage_at_29_97_is_sampled_at_real_speed_and_centre_cropped(tmp_path):
    """235x100 (2.35:1), 30000/1001 fps, B-frames: frame k of the clip is source frame floor(k * 29.97 / 8),
    and a 64x64 crop drops the sides while a 112x48 one keeps them."""
    from moviola.data.folder import load_clip

    src = np.zeros((90, 100, 235, 3), np.uint8)  # 3.003 s
    src[..., 1] = (np.arange(90) * 2)[:, None, None]  # green = 2 x source frame index
    src[:, :, :40, 0] = 255  # red stripe on the far left, outside any centred square
    path = _frames_file(tmp_path / "scope.mp4", src, Fraction(30000, 1001))
    start = 0.5
    clip = load_clip(path, start, frames=17, width=64, height=64, fps=8.0, src_fps=30000 / 1001)
    assert clip.shape == (17, 64, 64, 3) and clip.dtype == np.uint8
    first = round(start * 30000 / 1001)  # read_video starts at the frame shown at `start`
    expected = first + np.floor(np.arange(17) * (30000 / 1001) / 8 + 1e-6)
    got = clip[:, 32, 32, 1] / 2
    assert np.abs(got - expected).max() <= 1.0, (got, expected)
    assert clip[..., 0].max() < 30  # the stripe is cropped away
    wide = load_clip(path, 0.0, frames=9, width=112, height=48, fps=8.0, src_fps=30000 / 1001)
    assert wide.shape == (9, 48, 112, 3)
    assert wide[:, 24, 5, 0].min() > 200 and wide[:, 24, 100, 0].max() < 30  # stripe kept on the left only
    with pytest.raises(Exception, match="only .* frames"):
        load_clip(path, 1.5, frames=17, width=64, height=64, fps=8.0, src_fps=30000 / 1001)


def _texture(seed: int, h: int, w: int, tint: tuple[int, int, int]) -> np.ndarray:
    """Blocky random texture in one colour family (two shots of different scenes differ in palette)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 128, (h // 8 + 1, w // 8 + 1, 1)) + np.array(tint)[None, None]
    return np.kron(base.clip(0, 255).astype(np.uint8), np.ones((8, 8, 1), np.uint8))[:h, :w]


def test_shot_splitting_finds_a_planted_cut_and_not_a_pan(tmp_path):
    from moviola.data.shots import ShotConfig, scan_video, shots

    a, b = _texture(1, 48, 200, (0, 40, 120)), _texture(2, 48, 200, (120, 80, 0))
    # Shot 1 pans fast across texture a (2 px a frame); shot 2 across texture b; the cut is at frame 40.
    frames = np.stack([a[:, 2 * i:2 * i + 80] for i in range(40)] + [b[:, 2 * i:2 * i + 80] for i in range(35)])
    path = _frames_file(tmp_path / "edit.mp4", frames, Fraction(25))
    scan = scan_video(path)
    assert len(scan.times) == 75 and scan.fps == 25.0
    assert int(np.argmax(scan.scores)) == 40
    cfg = ShotConfig(enabled=True)
    assert shots(scan, cfg) == [(0.0, pytest.approx(1.6)), (pytest.approx(1.6), pytest.approx(3.0))]
    assert shots(scan, ShotConfig(enabled=False)) == [(0.0, pytest.approx(3.0))]
    # A manifest span that starts after the cut has one shot; min_shot_seconds drops a sliver before it.
    assert shots(scan, cfg, start=1.7) == [(1.7, pytest.approx(3.0))]
    assert shots(scan, cfg, start=1.4) == [(pytest.approx(1.6), pytest.approx(3.0))]
    # The pan alone (no cut) is one shot, however fast it moves.
    pan = _frames_file(tmp_path / "pan.mp4", frames[:40], Fraction(25))
    assert len(shots(scan_video(pan), cfg)) == 1


def test_deep_check_catches_a_file_cut_off_midway(footage, capsys):
    good = (footage / "wide.mp4")
    _camera_file(footage / "long.mkv", 60, 64, 96, Fraction(25))
    data = (footage / "long.mkv").read_bytes()
    (footage / "long.mkv").write_bytes(data[: int(len(data) * 0.6)])
    (footage / "long.txt").write_text("a bar moves right")
    assert good.exists()
    assert "long.mkv" in {Path(c.path).name for c in check_folder(footage).clips}  # header and first frame fine
    deep = check_folder(footage, deep=True)
    problems = {Path(p.path).name: p.problem for p in deep.problems}
    assert "frames stop at" in problems["long.mkv"]
    assert {Path(c.path).name for c in deep.clips} == {"wide.mp4", "tall.mov"}
    main(["data", "check", str(footage)])  # the command decodes everything unless told --quick
    assert "long.mkv: truncated" in capsys.readouterr().out
    main(["data", "check", str(footage), "--quick"])
    assert "long.mkv" not in capsys.readouterr().out


def test_a_world_dataset_folder_is_a_training_folder(tmp_path):
    """`moviola world dataset` writes clips/ and captions.jsonl; `data check` (and so `data cache` and
    training) reads it like any footage folder, every clip usable, captions from the manifest."""
    out = tmp_path / "world"
    assert main(["world", "dataset", str(out), "--n", "3", "--size", "64x64", "--seed", "1"]) == 0
    report = check_folder(out)
    assert len(report.clips) == 3 and report.problems == []
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert {c.caption for c in report.clips} == {r["caption"] for r in rows}
    assert all(c.licence.startswith("generated") for c in report.clips)


def test_captions_in_the_encodings_spreadsheets_and_editors_save(tmp_path):
    """Excel's "CSV UTF-8" (a byte-order mark, CRLF), Windows-1252 and UTF-16 text all read; a caption file that
    is none of them is named as a problem of its clip, not an error for the whole folder."""
    write_video(tmp_path / "a.mp4", np.zeros((8, 32, 32, 3), np.uint8), 8)
    write_video(tmp_path / "b.mp4", np.zeros((8, 32, 32, 3), np.uint8), 8)
    (tmp_path / "m.csv").write_bytes("\ufeffpath,caption\r\na.mp4,un café\r\n".encode("utf-8"))
    assert read_manifest(tmp_path / "m.csv")[0]["caption"] == "un café"
    (tmp_path / "m.csv").write_bytes("path,caption\r\na.mp4,un café\r\n".encode("cp1252"))
    assert read_manifest(tmp_path / "m.csv")[0]["caption"] == "un café"
    (tmp_path / "m.jsonl").write_bytes('\ufeff{"path": "a.mp4", "caption": "x"}\n'.encode("utf-8"))
    assert read_manifest(tmp_path / "m.jsonl")[0]["path"] == "a.mp4"
    (tmp_path / "a.txt").write_bytes("a red circle".encode("utf-16"))
    (tmp_path / "b.txt").write_bytes(b"\x81\x8d\x8f\x90")  # undefined even in Windows-1252
    report = check_folder(tmp_path, manifest=None)
    assert [c.caption for c in report.clips] == ["a red circle"]
    assert [(Path(p.path).name, "caption file unreadable" in p.problem) for p in report.problems] == [("b.mp4", True)]


@pytest.mark.parametrize("field, value, problem", [
    ("start", -3, "start must be a number of seconds >= 0"),
    ("start", "nan", "start must be a number of seconds >= 0"),
    ("end", "inf", "end must be a number of seconds >= 0"),
    ("end", 0.5, r"end \(0.5 s\) must be after start \(1 s\)"),
])
def test_manifest_times_must_make_sense(tmp_path, field, value, problem):
    row = {"path": "a.mp4", "caption": "x", "start": 1, field: value}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=f"m.jsonl:1: {problem}"):
        read_manifest(tmp_path / "m.jsonl")


def test_camera_containers_are_found(tmp_path):
    """AVCHD (.MTS, .m2ts), MPEG-2 (.mpg) and phone (.3gp) files are checked like any other video."""
    clip = write_video(tmp_path / "src.mp4", np.zeros((8, 32, 32, 3), np.uint8), 8).read_bytes()
    for name in ("a.MTS", "b.m2ts", "c.mpg", "d.3gp"):
        (tmp_path / name).write_bytes(clip)  # FFmpeg goes by the bytes, not the name
        (tmp_path / name).with_suffix(".txt").write_text("a caption")
    (tmp_path / "src.mp4").unlink()
    report = check_folder(tmp_path)
    assert sorted(Path(c.path).name for c in report.clips) == ["a.MTS", "b.m2ts", "c.mpg", "d.3gp"]


def _two_halves(path: Path, rate: Fraction = Fraction(30000, 1001), seconds: float = 3.0) -> Path:
    """A 29.97 fps camera-style file: black for the first half, white for the second."""
    n = round(seconds * rate)
    frames = np.zeros((n, 90, 160, 3), np.uint8)
    frames[n // 2:] = 255
    return _frames_file(path, frames, rate)


def test_autoencoder_folder_batches_keep_to_the_manifest_span(tmp_path):
    """The autoencoder reads footage within its manifest span (licence and consent may cover only part of a
    file), at 4 to 12 fps by timestamps, fitted as it decodes: it had read whole files at full size and
    drawn windows of consecutive frames anywhere in them."""
    from moviola.data.clips import ClipBatches, ClipDataConfig

    root = tmp_path / "f"
    root.mkdir()
    _two_halves(root / "a.mp4")
    (root / "manifest.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "", "start": 1.6, "end": 3.0}) + "\n")
    batches = ClipBatches(ClipDataConfig(sizes=[(32, 32)], frames=5, world_weight=0.0, folder=str(root)), 4)
    for i in range(3):
        x = batches.batch(i)
        assert x.shape == (4, 3, 5, 32, 32) and float(x.min()) > 0.8, i  # white only: the span's half


def test_autoencoder_folder_that_never_decodes_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """Files that pass the quick check but fail to decode (cut off after an intact index) had made the batch
    loop spin forever: after MAX_FOLDER_TRIES failed draws it stops and says what to run."""
    from moviola.data import clips as clips_mod
    from moviola.video_io import VideoError

    root = tmp_path / "f"
    root.mkdir()
    _two_halves(root / "a.mp4")

    def fail(*a, **k):
        raise VideoError(root / "a.mp4", "truncated or corrupt video (decoding failed after 3 frames)")
    monkeypatch.setattr("moviola.data.folder.load_clip", fail)
    batches = clips_mod.ClipBatches(clips_mod.ClipDataConfig(sizes=[(32, 32)], frames=5, world_weight=0.0,
                                                             folder=str(root)), 2)
    with pytest.raises(ValueError, match=r"could not be read \(.*a\.mp4\); run 'moviola data check"):
        batches.batch(0)


def test_check_says_what_is_wrong_with_a_span_and_csv_rows_by_line(tmp_path):
    _two_halves(tmp_path / "a.mp4")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "x", "start": 10}) + "\n")
    problem = check_folder(tmp_path).problems[0].problem
    assert "start 10 s is past the end of the video (3.00 s)" in problem
    (tmp_path / "m.csv").write_text('path,caption,start\na.mp4,"a caption\nover\nthree lines",0\nb.mp4,x,-1\n')
    with pytest.raises(DatasetError, match=r"m.csv:5: start"):
        read_manifest(tmp_path / "m.csv")


def test_anamorphic_footage_is_scanned_at_its_display_size(tmp_path):
    """Shot scanning (what the cache buckets by) widens non-square pixels as reading does: a 16:9 picture
    stored 272x272 had gone to a square bucket, losing 44 % of its width."""
    from moviola.data.shots import scan_video

    path = tmp_path / "ana.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 272, 272, "yuv420p"
        s.codec_context.sample_aspect_ratio = Fraction(16, 9)
        for i in range(9):
            f = av.VideoFrame.from_ndarray(np.zeros((272, 272, 3), np.uint8), format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())
    scan = scan_video(path)
    assert (scan.width, scan.height) == (484, 272)


def test_a_damaged_provenance_file_is_named_with_its_line(tmp_path):
    """A torn provenance.jsonl (a disk that filled while it was written, before it was written atomically) is a
    ValueError naming the file and the line, not json's bare 'Expecting , delimiter' from a fine-tune's save."""
    from moviola.data.provenance import read_manifest

    (tmp_path / "provenance.jsonl").write_text('{"path": "a.mp4"}\n{"path": "b.mp4", "sha')
    with pytest.raises(ValueError, match=r"provenance.jsonl, line 2: not a provenance record"):
        read_manifest(tmp_path)
