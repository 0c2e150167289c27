"""Model folders (moviola.layout): config.json + a folder per part; the old flat layout still loads."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from moviola.layout import is_model_folder, missing_parts, read_config
from moviola.models.dit import DiT, PRESETS
from moviola.models.vae import PRESETS as VAE_PRESETS, CausalVAE
from moviola.pipeline import Pipeline, PipelineConfig


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pipeline saved in the current layout (random weights; MiniLM as its text encoder)."""
    from moviola.models.text import load_text_encoder

    torch.manual_seed(0)
    dit = DiT(dataclasses.replace(PRESETS["tiny"], in_channels=4))
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    pipe = Pipeline(CausalVAE(VAE_PRESETS["tiny"]), dit.eval(), load_text_encoder(None), PipelineConfig(steps=2))
    d = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(d)
    return d


def _frames(folder):
    return Pipeline.from_pretrained(folder)("a red circle falls", width=32, height=32, num_frames=1, seed=1)


def test_a_model_folder_keeps_config_json_and_a_folder_per_part(saved):
    assert sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*")) == [
        "config.json", "dit", "dit/config.json", "dit/dit.safetensors", "vae", "vae/config.json", "vae/vae.safetensors"]
    for rel, cls in [("config.json", "Pipeline"), ("vae/config.json", "CausalVAE"), ("dit/config.json", "DiT")]:
        assert json.loads((saved / rel).read_text())["_class_name"] == cls
    assert is_model_folder(saved) and missing_parts(saved) == []
    assert read_config(saved, "pipeline")["steps"] == 2 and "_class_name" not in read_config(saved, "pipeline")
    # each part's folder stands alone (what --vae and eval vae --model take), and the model folder loads it too
    assert CausalVAE.from_pretrained(saved / "vae").config == CausalVAE.from_pretrained(saved).config


def test_the_old_flat_layout_still_loads_the_same_model(saved, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for part, legacy in [("vae", "vae.json"), ("dit", "dit.json")]:
        shutil.copyfile(saved / part / f"{part}.safetensors", flat / f"{part}.safetensors")
        cfg = json.loads((saved / part / "config.json").read_text())
        del cfg["_class_name"]
        (flat / legacy).write_text(json.dumps(cfg))
    pipeline = json.loads((saved / "config.json").read_text())
    del pipeline["_class_name"]
    (flat / "pipeline.json").write_text(json.dumps(pipeline))
    assert is_model_folder(flat)
    assert np.array_equal(_frames(flat), _frames(saved))


def test_missing_and_misplaced_files_are_named(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "dit" / "dit.safetensors").unlink()
    assert missing_parts(broken) == ["dit/dit.safetensors"]
    with pytest.raises(FileNotFoundError, match="missing dit/dit.safetensors"):
        Pipeline.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match="no DiT here"):
        DiT.from_pretrained(broken / "vae")
    # a part is never saved over the model folder's own config.json
    with pytest.raises(ValueError, match="Pipeline's config"):
        CausalVAE(VAE_PRESETS["tiny"]).save_pretrained(broken)
    assert json.loads((broken / "config.json").read_text())["_class_name"] == "Pipeline"
    # a config.json of the wrong part is named as such
    (broken / "dit" / "config.json").write_text(json.dumps({"_class_name": "CausalVAE"}))
    (broken / "dit" / "dit.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config of a CausalVAE, not of a DiT"):
        DiT.from_pretrained(broken)


def test_loading_on_a_missing_gpu_blames_the_device_not_the_file():
    """train_gpu.py's default --device cuda on a CPU machine had said the shipped weights were damaged."""
    import torch

    from moviola import DEFAULT_MODEL_DIR
    from moviola.layout import load_part

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device 'cuda': this machine has no CUDA GPU") as e:
        load_part(DEFAULT_MODEL_DIR, "vae", device="cuda")
    assert "damaged" not in str(e.value)


def test_a_safetensors_write_that_fails_is_an_oserror_naming_the_file(tmp_path):
    """safetensors' own error (no OSError) had ended `data cache` or a model save on a full disk in a traceback;
    save_tensors says which file could not be written, as the CLI's one-line errors need."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource, signal
        import torch
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        from moviola.layout import save_tensors
        try:
            save_tensors({{"x": torch.zeros(100_000)}}, {str(tmp_path / "big.safetensors")!r})
        except OSError as e:
            print("OSError:", e.strerror)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("OSError: could not write big.safetensors"), run.stdout


def test_weights_get_the_users_file_mode_and_safetensors_temps_are_swept(tmp_path):
    """safetensors writes 0600 files through a ".tmpXXXXXX" temp of its own: saved weights get the mode any new file
    of the user gets (another user serving the folder could not read them), and a run's or a cache's cleanup
    removes such a temp a kill left (21 MB beside dit.safetensors had outlived the rerun)."""
    import os
    import stat

    from moviola.layout import save_tensors
    from moviola.train.common import remove_stale_temps

    umask = os.umask(0o022)
    try:
        save_tensors({"x": torch.zeros(4)}, tmp_path / "w.safetensors")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    run = tmp_path / "run"
    (run / "model" / "dit").mkdir(parents=True)
    (run / "lora").mkdir()
    left = [run / "model" / "dit" / ".tmpOhnavf", run / "lora" / ".tmpA1b2C3"]
    keep = run / "model" / "dit" / "dit.safetensors"
    for f in [*left, keep]:
        f.write_bytes(b"x")
    assert remove_stale_temps(run) == 2 and keep.exists() and not any(f.exists() for f in left)
