"""The shipped default model: within its size limits, loads from the package, and follows a prompt."""

import subprocess
import sys

import numpy as np
import pytest

from moviola import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "dit" / "dit.safetensors").is_file(),
                                reason="no default model shipped")


def test_weights_within_size_limits():
    vae = (DEFAULT_MODEL_DIR / "vae" / "vae.safetensors").stat().st_size
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*.safetensors"))
    assert total > vae > 0
    assert vae <= 8 * 10 ** 6, vae
    assert total <= 20 * 10 ** 6, total
    assert (DEFAULT_MODEL_DIR / "MODEL_CARD.md").is_file()


@pytest.fixture(scope="module")
def pipe():
    from moviola.pipeline import Pipeline

    return Pipeline.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.mark.parametrize("background,rgb", [("white", (255, 255, 255)), ("black", (0, 0, 0))])
def test_background_follows_the_prompt(pipe, background, rgb):
    """The most basic adherence: the frame is mostly the background colour the prompt names (a model
    with random weights makes noise, which fails this)."""
    frames = pipe(f"a large red square moves right on a {background} background", width=64, height=64,
                  seconds=1, steps=8, seed=0)
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    near = np.abs(frames.astype(int) - np.array(rgb)).max(-1) < 48
    assert near.mean() > 0.6, near.mean()


def test_generate_cli_writes_a_video(tmp_path):
    from moviola.video_io import read_video

    out = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-m", "moviola.cli", "generate", "a small blue circle falls on a gray background",
                        "-o", str(out), "--seconds", "1", "--steps", "4", "--seed", "3"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    vid = read_video(out)
    assert vid.frames.shape[1:] == (64, 64, 3) and vid.num_frames == 8


def test_training_captions_are_read_plain_or_gzipped(tmp_path):
    """The shipped model keeps its caption list gzipped; a training run writes it plain. Either is read, and
    eval world keeps every one of them out of its prompts."""
    import gzip
    import json

    from moviola import DEFAULT_MODEL_DIR
    from moviola.pipeline import training_captions

    shipped = training_captions(DEFAULT_MODEL_DIR)
    assert len(shipped) > 100_000
    (tmp_path / "training_captions.json.gz").write_bytes(gzip.compress(json.dumps(["a", "b"]).encode()))
    assert training_captions(tmp_path) == {"a", "b"}
    (tmp_path / "training_captions.json").write_text(json.dumps(["c"]))  # a plain list wins
    assert training_captions(tmp_path) == {"c"}
    assert training_captions(tmp_path / "nowhere") == set()


def _ship_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "ship_default.py"
    spec = importlib.util.spec_from_file_location("ship_default", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _digest(folder, tensors: bool = False):
    """sha256 of each file; with ``tensors``, of each safetensors file's tensors (its header's metadata is a
    map whose order safetensors does not fix, so two saves of the same weights may differ in bytes)."""
    import hashlib

    from safetensors.torch import load_file

    def content(p):
        if tensors and p.suffix == ".safetensors":
            return b"".join(k.encode() + v.numpy().tobytes() for k, v in sorted(load_file(p).items()))
        return p.read_bytes()

    return {str(p.relative_to(folder)): hashlib.sha256(content(p)).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ship_default_replaces_the_folder_all_or_nothing(tmp_path, monkeypatch):
    """scripts/ship_default.py checks its source and the 20 MB limit before anything is replaced; a refused
    ship leaves the old folder byte for byte (it had written configs and the VAE before failing)."""
    import gzip
    import shutil

    ship = _ship_module()
    dst = tmp_path / "default"
    shutil.copytree(DEFAULT_MODEL_DIR, dst)
    src = tmp_path / "run" / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, src)
    (src / "training_captions.json.gz").unlink()
    before = _digest(dst)
    with pytest.raises(SystemExit, match="no training_captions.json"):
        ship.main([str(src), "--dest", str(dst)])
    assert _digest(dst) == before
    (src / "training_captions.json").write_bytes(gzip.decompress((dst / "training_captions.json.gz").read_bytes()))
    monkeypatch.setattr(ship, "MAX_WEIGHT_BYTES", 10_000_000)
    with pytest.raises(SystemExit, match="over the 10 MB limit"):
        ship.main([str(src), "--dest", str(dst)])
    assert _digest(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["default", "run"]
    monkeypatch.setattr(ship, "MAX_WEIGHT_BYTES", 20_000_000)
    ship.main([str(src), "--dest", str(dst)])  # the shipped model shipped again: the same folder
    assert _digest(dst, tensors=True) == _digest(DEFAULT_MODEL_DIR, tensors=True) and sorted(p.name for p in tmp_path.iterdir()) == ["default", "run"]


def test_save_pretrained_carries_the_card_provenance_and_captions(tmp_path):
    """A saved model says what it is and what it learned from, as the folder it was loaded from did; with a
    LoRA merged, the adapter's captions (its run's and its base's) and both cards, saying what was merged."""
    import copy
    import json

    from moviola.models.lora import LoRAConfig, inject_lora, save_lora
    from moviola.pipeline import Pipeline, training_captions

    pipe = Pipeline.from_pretrained(DEFAULT_MODEL_DIR)
    pipe.save_pretrained(tmp_path / "plain")
    for name in ("MODEL_CARD.md", "provenance.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (DEFAULT_MODEL_DIR / name).read_bytes()
    assert training_captions(tmp_path / "plain") == training_captions(DEFAULT_MODEL_DIR)
    (tmp_path / "plain" / "training_captions.json").write_text(json.dumps(["an older save's caption"]))
    pipe.save_pretrained(tmp_path / "plain")  # again, over it: the stale plain list must not win
    assert training_captions(tmp_path / "plain") == training_captions(DEFAULT_MODEL_DIR)

    lcfg = LoRAConfig(rank=2, targets=["mlp.fc2"])
    src = copy.deepcopy(pipe.dit)
    inject_lora(src, lcfg)
    adapter = tmp_path / "adapter"
    save_lora(src, adapter, lcfg)
    (adapter / "MODEL_CARD.md").write_text("# LoRA adapter: pink\n")
    (adapter / "training_captions.json").write_text(json.dumps(["a pink circle falls"]))
    pipe.load_lora(adapter, scale=0.5)
    pipe.save_pretrained(tmp_path / "merged")
    card = (tmp_path / "merged" / "MODEL_CARD.md").read_text()
    assert card.startswith("# Moviola default model") and "# LoRA adapter: pink" in card
    assert f"the adapter {adapter} merged into its DiT at scale 0.5" in card
    assert training_captions(tmp_path / "merged") == {"a pink circle falls"}
    assert not (tmp_path / "merged" / "training_captions.json.gz").exists()


def test_from_pretrained_defaults_to_the_shipped_model():
    from moviola.pipeline import Pipeline

    assert Pipeline.from_pretrained().source_dir == DEFAULT_MODEL_DIR


def test_the_renderer_takes_no_part_in_generation():
    """The house rule: a generated clip comes from the learned model alone. Loading the shipped model, making a
    clip and extending it, and importing the server's job runner and the CLI load no moviola.world module."""
    import textwrap

    script = textwrap.dedent("""
        import sys
        from moviola.pipeline import Pipeline
        import moviola.cli, moviola.server.generate, moviola.server.worker
        pipe = Pipeline.from_pretrained()
        clip = pipe("a red circle moves right", width=64, height=64, seconds=1, steps=1, seed=0)
        pipe.extend(clip, "it keeps moving", seconds=1, steps=1, seed=0)
        print(sorted(m for m in sys.modules if m.startswith("moviola.world")))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"
