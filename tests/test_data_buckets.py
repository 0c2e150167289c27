"""Buckets: parsing a bucket config, and which bucket each clip goes to (aspect first, then duration)."""

import json
from pathlib import Path

import pytest

from moviola.cli import main
from moviola.data.buckets import assign_bucket, default_footage_buckets, parse_buckets, seconds_needed
from moviola.data.latent_cache import Bucket

BUCKETS = [Bucket(64, 64, 17, 0.4, 8), Bucket(96, 64, 17, 0.2), Bucket(64, 96, 17, 0.1), Bucket(112, 48, 17, 0.1),
           Bucket(64, 64, 9, 0.1, 16), Bucket(112, 48, 9, 0.1)]


def test_inline_file_and_table_forms_agree(tmp_path):
    inline = parse_buckets("64x64x17:8:0.4, 112x48x9::0.1 ,96x64x17")
    assert inline == [Bucket(64, 64, 17, 0.4, 8), Bucket(112, 48, 9, 0.1, 0), Bucket(96, 64, 17, 1.0, 0)]
    (tmp_path / "b.toml").write_text('[[buckets]]\nwidth = 64\nheight = 64\nframes = 17\nbatch_size = 8\nweight = 0.4\n'
                                     '[[buckets]]\nwidth = 112\nheight = 48\nframes = 9\nweight = 0.1\n'
                                     '[[buckets]]\nwidth = 96\nheight = 64\nframes = 17\n')
    assert parse_buckets(str(tmp_path / "b.toml")) == inline
    (tmp_path / "b.json").write_text(json.dumps([[64, 64, 17, 8, 0.4], {"width": 112, "height": 48, "frames": 9,
                                                                         "weight": 0.1}, [96, 64, 17]]))
    assert parse_buckets(str(tmp_path / "b.json")) == inline
    assert inline[0].name == "64x64x17"


@pytest.mark.parametrize("text, message", [
    ("64x64x16", "4k \\+ 1"), ("60x64x17", "multiples of 16"), ("64x64", "must look like"),
    ("64x64x17:8:0", "weight must be positive"), ("64x64x17,64x64x17", "listed twice"),
    ("64x64x17:a", "must look like"), ("missing.toml", "no such bucket file")])
def test_bad_buckets_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_buckets(text)


def test_unknown_key_in_a_bucket_table(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"buckets": [{"width": 64, "height": 64, "frames": 17, "wieght": 1}]}))
    with pytest.raises(ValueError, match="unknown key 'wieght'"):
        parse_buckets(str(tmp_path / "b.json"))


@pytest.mark.parametrize("w, h, seconds, fps, expected", [
    (1920, 1080, 5.0, 30000 / 1001, "96x64x17"),  # 16:9 is nearest 3:2
    (235, 100, 3.0, 24.0, "112x48x17"),  # 2.35:1 scope
    (94, 40, 3.0, 30000 / 1001, "112x48x17"),  # small scope footage: no other bucket is as close in shape
    (1080, 1920, 3.0, 30.0, "64x96x17"),  # portrait phone video
    (480, 480, 10.0, 25.0, "64x64x17"),
    (480, 480, 1.5, 25.0, "64x64x9"),  # too short for 17 frames at 8 fps (2.04 s): the 9-frame bucket
    (235, 100, 1.5, 24.0, "112x48x9"),
])
def test_assignment_prefers_aspect_then_frames(w, h, seconds, fps, expected):
    assert BUCKETS[assign_bucket(w, h, seconds, fps, BUCKETS, 8.0)].name == expected


def test_frames_fit_the_duration_exactly_at_the_boundary():
    need = seconds_needed(17, 8.0, 30000 / 1001)  # last frame shown at 2.0 s, and one source frame at it
    assert need == pytest.approx(2.0 + 1001 / 30000)
    assert BUCKETS[assign_bucket(640, 640, need, 30000 / 1001, BUCKETS, 8.0)].frames == 17
    assert BUCKETS[assign_bucket(640, 640, need - 0.01, 30000 / 1001, BUCKETS, 8.0)].frames == 9
    assert assign_bucket(640, 640, 0.9, 30.0, BUCKETS, 8.0) is None  # shorter than any bucket


def test_ties_in_shape_prefer_no_upscaling():
    square = [Bucket(32, 32, 9, 1.0), Bucket(64, 64, 9, 1.0), Bucket(128, 128, 9, 1.0)]
    assert square[assign_bucket(100, 100, 2.0, 25.0, square, 8.0)].width == 64  # largest not above the source
    assert square[assign_bucket(20, 20, 2.0, 25.0, square, 8.0)].width == 32  # all upscale: the smallest
    assert square[assign_bucket(4000, 4000, 2.0, 25.0, square, 8.0)].width == 128


def test_default_buckets_are_valid_for_the_shipped_model():
    bs = default_footage_buckets()
    assert parse_buckets(",".join(f"{b.name}:{b.batch_size}:{b.weight}" for b in bs)) == bs
    assert all(48 <= min(b.width, b.height) and max(b.width, b.height) <= 128 for b in bs)


def test_cli_rejects_bad_buckets_before_loading_models(tmp_path, capsys):
    assert main(["data", "cache", str(tmp_path), "--buckets", "64x64x16"]) == 2
    err = capsys.readouterr().err
    assert "4k + 1" in err and "Traceback" not in err
    assert main(["data", "cache", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["data", "cache", str(tmp_path), "--shots.treshold=0.2"]) == 2
    assert "unknown config key 'shots.treshold'" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text("[[buckets]]\nwidth = 64\nheight = 64\nframes = 18\n")
    assert main(["data", "cache", str(tmp_path), "--config", str(tmp_path / "c.toml")]) == 2
    assert "frames must be 4k + 1" in capsys.readouterr().err


def test_shipped_footage_config_is_the_default():
    from moviola.config import load_config
    from moviola.data.folder_cache import FolderCacheConfig

    config = Path(__file__).resolve().parent.parent / "configs" / "data" / "footage.toml"
    assert load_config(FolderCacheConfig, config) == FolderCacheConfig()
