"""The command line: world render, score, dataset (resumable), clear errors with exit status 2."""

import json
from pathlib import Path

import numpy as np

import pytest

from moviola.cli import main
from moviola.video_io import read_video
from moviola.world.dataset import read_manifest


def test_render_then_score_roundtrip(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    truth = tmp_path / "truth.json"
    prompt = "a large blue square spins while a small yellow triangle falls on a white background"
    assert main(["world", "render", prompt, "-o", str(out), "--size", "96x64", "--seconds", "3",
                 "--seed", "3", "--truth", str(truth)]) == 0
    vid = read_video(out)
    assert vid.frames.shape == (24, 64, 96, 3) and abs(vid.fps - 8) < 1e-6
    t = json.loads(truth.read_text())
    assert len(t["tracks"]) == 2 and len(t["tracks"][0]["x"]) == 24 and t["events"]
    capsys.readouterr()
    assert main(["score", str(out), prompt]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"] == 1.0
    assert all(v == 1.0 for v in report["attributes"].values())
    # The same clip against a different prompt scores lower on exactly the changed attribute.
    assert main(["score", str(out), prompt.replace("yellow triangle", "green triangle")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attributes"]["color"] < 1.0 and report["attributes"]["background"] == 1.0


def test_render_png_single_frame(tmp_path):
    out = tmp_path / "still.png"
    assert main(["world", "render", "a red circle stays still", "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["world", "render", "a red hexagon falls", "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "hexagon" in err and "Traceback" not in err
    huge = ["world", "render", "a red circle moves right", "-o", str(tmp_path / "x.mp4"), "--seconds", "600",
            "--fps", "240", "--size", "512x512"]
    assert main(huge) == 2  # said before 105 GiB are asked for (a MemoryError traceback)
    assert "105.5 GiB of frames" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    assert main(["score", str(bad), "a red circle falls"]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    assert main(["world", "render", "a red circle falls", "-o", str(tmp_path / "y.mp4"), "--size", "60x64"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["world", "render", "a red circle falls", "-o", str(tmp_path / "y.xyz")]) == 2
    assert not (tmp_path / "y.xyz").exists()


def test_dataset_streams_and_resumes(tmp_path):
    d = tmp_path / "ds"
    assert main(["world", "dataset", str(d), "--n", "3", "--seed", "5", "--holdout", "purple+triangle"]) == 0
    first = read_manifest(d)
    assert [r["index"] for r in first] == [0, 1, 2]
    # A crash mid-line leaves a torn last line: the resume drops it and continues.
    with open(d / "captions.jsonl", "a") as f:
        f.write('{"index": 3, "pa')
    assert main(["world", "dataset", str(d), "--n", "5", "--seed", "5", "--holdout", "purple+triangle"]) == 0
    rows = read_manifest(d)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and rows[:3] == first
    for r in rows:
        assert (d / r["path"]).is_file() and r["caption"] and r["detailed_caption"]
        assert not any(o["color"] == "purple" and o["shape"] == "triangle" for o in r["spec"]["objects"])
    # Clip i depends only on (seed, i): a fresh build gives the same manifest.
    d2 = tmp_path / "ds2"
    assert main(["world", "dataset", str(d2), "--n", "5", "--seed", "5", "--holdout", "purple+triangle"]) == 0
    assert read_manifest(d2) == rows
    a = read_video(d / rows[4]["path"]).frames
    b = read_video(d2 / rows[4]["path"]).frames
    assert np.array_equal(a, b)


def test_unknown_holdout_word(tmp_path, capsys):
    assert main(["world", "dataset", str(tmp_path / "d"), "--n", "1", "--holdout", "pink+circle"]) == 2
    assert "pink" in capsys.readouterr().err


def test_a_dataset_folder_is_continued_only_with_its_own_settings(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["world", "dataset", str(out), "--n", "2", "--size", "32x32", "--max-seconds", "1"]) == 0
    assert main(["world", "dataset", str(out), "--n", "3", "--size", "64x64", "--max-seconds", "1"]) == 2
    assert "a dataset made with sizes = [[32, 32]]" in capsys.readouterr().err
    assert main(["world", "dataset", str(out), "--n", "3", "--size", "32x32", "--max-seconds", "1"]) == 0
    assert len((out / "captions.jsonl").read_text().splitlines()) == 3
    # a folder begun with another default shortest clip (1.0 s before 1.125) goes on with its own, asked for none
    settings = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**settings, "seconds_range": [0.75, 1.0]}))
    assert main(["world", "dataset", str(out), "--n", "4", "--size", "32x32", "--max-seconds", "1"]) == 0


@pytest.mark.parametrize("argv, needle", [
    (["generate", "x", "-o", "o.mp4", "--steps", "0"], "--steps: must be at least 1"),
    (["generate", "x", "-o", "o.mp4", "--fps", "0"], "--fps: must be more than 0"),
    (["generate", "x", "-o", "o.mp4", "--fps", "nan"], "--fps: expected a finite number"),
    (["generate", "x", "-o", "o.mp4", "--frames", "0"], "--frames: must be at least 1"),
    (["generate", "x", "-o", "o.mp4", "--lora-scale", "1e30"], "--lora-scale: must be"),
    (["generate", "x", "-o", "o.mp4", "--seed", "99999999999999999999"], "--seed: must be"),
    (["generate", "x", "-o", "o.mp4", "--threads", "-1"], "--threads: must be at least 0"),
    (["eval", "world", "--n", "0"], "--n: must be at least 1"),
    (["world", "dataset", "d", "--n", "-2"], "--n: must be at least 1"),
    (["world", "render", "a red circle falls", "-o", "r.mp4", "--seconds", "100000"], "--seconds: must be"),
])
def test_out_of_range_numbers_are_refused_by_name(argv, needle, capsys):
    """0, NaN and huge values are refused up front, not taken as the default or left to fail later (a review
    found --steps 0 quietly using the model's steps, --fps 1000 making clips of any length)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_generate_refuses_contradictions_and_too_many_frames(tmp_path, capsys):
    out = str(tmp_path / "o.mp4")
    assert main(["generate", "x", "-o", out, "--frames", "3", "--seconds", "7"]) == 2
    assert "--seconds or --frames, not both" in capsys.readouterr().err
    assert main(["generate", "a red circle falls", "-o", out, "--seconds", "120", "--fps", "100"]) == 2
    assert "at most 960 frames" in capsys.readouterr().err


def test_interrupt_during_start_up_is_one_line(monkeypatch, capsys):
    """Ctrl-C while the command is still importing its libraries: 'interrupted' and status 130, no traceback."""
    import builtins

    real_import = builtins.__import__

    def slow_import(name, *args, **kwargs):
        if name == "moviola.video_io":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", slow_import)
    assert main(["generate", "a red circle", "-o", "x.mp4"]) == 130
    assert capsys.readouterr().err == "moviola: interrupted\n"


def test_train_vae_progress_counts_both_phases(monkeypatch, tmp_path):
    """The bar's total is the encoder-and-decoder steps plus the decoder-only ones (it had read '4/1')."""
    import contextlib

    import moviola.cli as cli
    import moviola.train.vae as tv

    totals = []

    class Bar:
        def add_task(self, name, total=None, **kw):
            totals.append(total)
            return 0

        def update(self, task, total=None, **kw):
            if total is not None:
                totals.append(total)

    monkeypatch.setattr(cli, "progress", lambda: contextlib.nullcontext(Bar()))

    def fake_train(cfg, on_step=None):
        on_step(cfg.optim.steps + cfg.decoder.steps, cfg.optim.steps + cfg.decoder.steps, {"loss": 0.1})
        return tmp_path

    monkeypatch.setattr(tv, "train_vae", fake_train)
    assert main(["train", "vae", "--out", str(tmp_path / "r"), "--optim.steps=1", "--decoder.steps=3"]) == 0
    assert totals == [4, 4]


def test_signals_are_interrupts_unless_ignored(monkeypatch, capsys):
    """SIGTERM stops a command as Ctrl-C does; a SIGHUP that `nohup` ignores stays ignored (closing the
    terminal must not stop it); both handlers are as they were afterwards; --seconds inf is refused by name."""
    import os
    import signal

    import moviola.cli as cli

    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    term_before = signal.getsignal(signal.SIGTERM)
    try:
        def hup_then_term(argv):
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the command goes on
            os.kill(os.getpid(), signal.SIGTERM)
            return 0

        monkeypatch.setattr(cli, "_main", hup_then_term)
        assert main([]) == 130 and "interrupted" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == term_before
    finally:
        signal.signal(signal.SIGHUP, old_hup)
    monkeypatch.undo()
    with pytest.raises(SystemExit) as e:  # argparse's exit: before any work
        main(["generate", "x", "--seconds", "inf", "-o", "x.mp4"])
    assert e.value.code == 2 and "--seconds: expected a finite number" in capsys.readouterr().err


def test_a_refused_world_dataset_leaves_the_folder_free_for_the_corrected_run(tmp_path, capsys):
    """A size the world refuses made no clip, so its settings must not bind the rerun (they had); a killed
    run's half-written clip is removed when it resumes."""
    out = tmp_path / "d"
    assert main(["world", "dataset", str(out), "--n", "1", "--size", "30x30"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "clips" / ".000000.tmp-dead.mp4").write_bytes(b"\0" * 48)
    assert main(["world", "dataset", str(out), "--n", "1", "--size", "32x32"]) == 0
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["000000.mp4"]


def test_the_command_lines_own_output_goes_where_it_belongs(tmp_path, capsys, monkeypatch):
    """From a review of the CLI: the progress bar is drawn on stderr (rich's default console is stdout: a terminal's
    bar had gone into `eval world > report.json`); `train vae` prints plain step lines when stderr is a log (none
    had come for the whole run); `world render --truth` is checked before anything is written; `keys` with --db
    makes no storage folder, and `keys list` of a storage without a database says so; data cache's numbers are
    range-checked."""
    from moviola.cli import progress

    assert progress().console.stderr
    root = Path(__file__).resolve().parents[1]
    capsys.readouterr()
    assert main(["train", "vae", "--config", str(root / "configs" / "vae" / "tiny.toml"), "--out", str(tmp_path / "v"),
                 "--optim.steps=2", "--decoder.steps=0", "--log_every=1", "--eval_every=0", "--stats_batches=1"]) == 0
    err = capsys.readouterr().err
    assert "step 1/2  loss" in err and "step 2/2  loss" in err, err
    (tmp_path / "folder.json").mkdir()
    out = tmp_path / "r.mp4"
    assert main(["world", "render", "a red circle falls", "-o", str(out), "--truth", str(tmp_path / "folder.json")]) == 2
    assert "output is a directory" in capsys.readouterr().err and not out.exists()
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'k.db'}"
    assert main(["keys", "create", "--name", "a", "--db", db]) == 0
    assert main(["keys", "list", "--db", db]) == 0 and not (tmp_path / "moviola-data").exists()
    assert main(["keys", "list", "--storage", str(tmp_path / "none")]) == 2
    assert "no server database there yet" in capsys.readouterr().err and not (tmp_path / "none").exists()
    with pytest.raises(SystemExit) as e:
        main(["data", "cache", str(tmp_path), "--shot-threshold", "5"])
    assert e.value.code == 2 and "--shot-threshold: must be at least 0 and at most 1" in capsys.readouterr().err
