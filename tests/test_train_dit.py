"""End to end on tiny configs: VAE -> latent cache -> DiT training (resumable) -> pipeline -> generate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moviola.cli import main
from moviola.config import load_config
from moviola.pipeline import GenerationError, Pipeline
from moviola.train.dit import TrainDiTConfig, train_dit
from moviola.train.vae import TrainVAEConfig, train_vae

TINY_VAE = ["model.latent_channels=4", "model.base_channels=4", "model.channel_mult=[1,2,2,2]",
            "model.num_res_blocks=1", "model.decoder_res_blocks=1", "data.sizes=[[32,32]]", "data.frames=5",
            "optim.batch_size=2", "optim.warmup_steps=1", "optim.steps=2", "eval_every=0", "stats_batches=1"]
TINY_DIT = ["model.dim=32", "model.depth=2", "model.heads=2", "model.in_channels=4", "model.freq_dim=64",
            "data.n_clips=12", "data.buckets=[[32,32,1.0,0.5],[32,32,2.0,0.5]]", "optim.batch_size=4",
            "optim.warmup_steps=2", "eval_every=0", "log_every=1", "ckpt_every=3"]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    return train_vae(load_config(TrainVAEConfig, None, TINY_VAE + [f"out='{out}'"]))


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_dit_resume_continues_the_loss_curve_and_pipeline_generates(tmp_path, vae_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    common = TINY_DIT + [f"vae='{vae_dir}'", "optim.lr=0.01"]  # a rate that moves the EMA visibly in 6 steps
    straight = train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=6", f"out='{a}'"]))
    cfg = load_config(TrainDiTConfig, None, common + ["optim.steps=3", f"out='{b}'"])
    train_dit(cfg)
    # the second run reuses its cache and resumes from the step-3 checkpoint
    model_dir = train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=6", f"out='{b}'"]))
    la, lb = _losses(a), _losses(b)
    assert len(la) == len(lb) == 6
    assert np.allclose(la, lb, rtol=1e-5, atol=1e-7)
    # and it saves the same model: the EMA weights (the losses come from the live ones, so an EMA lost on
    # resume would not show in them)
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "dit" / "dit.safetensors"), load_file(model_dir / "dit" / "dit.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6

    pipe = Pipeline.from_pretrained(model_dir)
    frames = pipe("a small red circle moves right", width=32, height=32, seconds=1, steps=2, seed=3)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    again = pipe("a small red circle moves right", width=32, height=32, seconds=1, steps=2, seed=3)
    assert np.array_equal(frames, again)  # a seed makes a run reproducible
    other = pipe("a small red circle moves right", width=32, height=32, seconds=1, steps=2, seed=4)
    assert not np.array_equal(frames, other)
    with pytest.raises(GenerationError, match="multiples of 16 from 32 to 128"):
        pipe("a red circle falls", width=40, height=32)
    with pytest.raises(GenerationError, match="at most 4"):
        pipe("a red circle falls", width=32, height=32, seconds=9)
    # save/load round trip gives identical outputs
    pipe.save_pretrained(tmp_path / "copy")
    copy = Pipeline.from_pretrained(tmp_path / "copy")
    assert np.array_equal(copy("a small red circle moves right", width=32, height=32, seconds=1, steps=2, seed=3),
                          frames)

    out = tmp_path / "gen.mp4"
    assert main(["generate", "a small red circle moves right", "-o", str(out), "--size", "32x32",
                 "--seconds", "1", "--steps", "2", "--model", str(model_dir)]) == 0
    from moviola.video_io import read_video

    vid = read_video(out)
    assert vid.frames.shape[0] == 8 and vid.metadata.get("moviola_prompt") == "a small red circle moves right"
    assert main(["generate", "a red circle falls", "-o", str(out), "--size", "1000x32", "--model", str(model_dir)]) == 2


def test_random_weights_give_noise_not_the_world(vae_dir, tmp_path):
    """WORLD.md's rule: with random weights the pipeline's output is noise (nothing renders the world)."""
    from moviola.models.dit import DiT, DiTConfig
    from moviola.models.text import load_text_encoder
    from moviola.models.vae import CausalVAE
    from moviola.world.score import score_clip

    torch.manual_seed(0)
    dit = DiT(DiTConfig(dim=32, depth=2, heads=2, in_channels=4, freq_dim=64))
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.02)
    pipe = Pipeline(CausalVAE.from_pretrained(vae_dir), dit, load_text_encoder(None))
    frames = pipe("a large red circle stays still on a white background", width=32, height=32, seconds=1, steps=2)
    rep = score_clip(frames, "a large red circle stays still on a white background")
    assert rep["overall"] < 0.5


def test_lora_fine_tune_adapter_merge_samples_and_generate_lora(tmp_path, vae_dir, capsys):
    """Fine-tune a trained tiny model with LoRA: adapter files, sample clips, provenance, the adapter applied
    by Pipeline.load_lora and `generate --lora`, and merge = the same model in one folder."""
    import shutil

    from moviola.models.lora import LoRAError

    common = TINY_DIT + [f"vae='{vae_dir}'"]
    base_dir = train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=2", f"out='{tmp_path / 'base'}'"]))
    tune = TINY_DIT + [f"init_from='{base_dir}'", "lora.rank=2", "lora.targets=['attn.qkv','cross.kv']",
                       "optim.steps=4", "optim.lr=0.05", "sample_every=4", "sample_prompts=['a red circle falls']",
                       "sample_steps=2", "sampling.guidance=2.5"]
    for name in ("adapter", "merged"):  # the same data: reuse the base run's cache
        shutil.copytree(tmp_path / "base" / "cache", tmp_path / name / "cache")
    adapter = train_dit(load_config(TrainDiTConfig, None, tune + [f"out='{tmp_path / 'adapter'}'"]))
    assert adapter.name == "lora" and (adapter / "lora.safetensors").is_file()
    meta = json.loads((adapter / "lora.json").read_text())
    assert meta["rank"] == 2 and meta["base_model"] == str(base_dir) and len(meta["modules"]) == 4
    assert meta["sampling"] == {"guidance": 2.5}  # the run's [sampling] travels with the adapter
    assert (tmp_path / "adapter" / "samples" / "step_000004_0.mp4").is_file()
    assert json.loads((adapter / "training_captions.json").read_text())  # eval world holds these out
    # the clips it learned from travel with it, its base model's after its own, and a model card says so
    rows = [json.loads(line) for line in (adapter / "provenance.jsonl").read_text().splitlines()]
    base_rows = (base_dir / "provenance.jsonl").read_text().splitlines()
    assert len(rows) == 2 * len(base_rows) and {r["stage"] for r in rows} == {"this run", f"base: {base_dir}"}
    card = (adapter / "MODEL_CARD.md").read_text()
    assert "LoRA adapter" in card and f"{len(rows)} clips" in card and "procedural: moviola.world" in card

    pipe = Pipeline.from_pretrained(base_dir)
    kw = dict(width=32, height=32, seconds=1, steps=2, seed=3)
    plain = pipe("a small red circle moves right", **kw)
    base_guidance = pipe.config.guidance
    tuned = pipe.load_lora(adapter)("a small red circle moves right", **kw)
    assert pipe.config.guidance == 2.5 != base_guidance  # the adapter's sampler default, while it is applied
    assert not np.array_equal(plain, tuned)
    assert np.array_equal(pipe.load_lora(adapter, scale=0.0)("a small red circle moves right", **kw), plain)
    assert pipe.config.guidance == base_guidance
    bad = tmp_path / "bad-adapter"
    shutil.copytree(adapter, bad)
    (bad / "lora.json").write_text(json.dumps({**meta, "sampling": {"guidanse": 2}}))
    with pytest.raises(LoRAError, match="unknown sampling setting 'guidanse'"):
        pipe.load_lora(bad)
    other = Pipeline.from_pretrained(base_dir)  # the same architecture, other weights: refused, left as it was
    with torch.no_grad():
        other.dit.blocks[0].mlp.fc1.weight[0, 0] += 0.01
    with pytest.raises(LoRAError, match=f"trained on other weights \\({base_dir}\\)"):
        other.load_lora(adapter)
    assert not any("lora" in n for n, _ in other.dit.named_parameters())

    tc = base_dir / "training_captions.json"  # a caption only the base saw: the merged model lists it too
    tc.write_text(json.dumps(json.loads(tc.read_text()) + ["a caption only the base model saw"]))
    merged = train_dit(load_config(TrainDiTConfig, None, tune + ["lora.merge=true", f"out='{tmp_path / 'merged'}'"]))
    assert merged.name == "model" and not (merged / "lora.safetensors").exists()
    assert "a caption only the base model saw" in json.loads((merged / "training_captions.json").read_text())
    got = Pipeline.from_pretrained(merged)("a small red circle moves right", **kw)
    assert np.abs(got.astype(int) - tuned.astype(int)).max() <= 2  # merge = adapter, up to rounding

    out = tmp_path / "gen.mp4"
    assert main(["generate", "a small red circle moves right", "-o", str(out), "--size", "32x32", "--seconds", "1",
                 "--steps", "2", "--model", str(base_dir), "--lora", str(adapter)]) == 0
    # eval world on the base with the adapter applied: scores the adapted model, names the adapter, and puts
    # the renderer's own clips (near 100), the same clips through the autoencoder and random weights (near
    # chance) beside it
    capsys.readouterr()
    assert main(["eval", "world", "--model", str(base_dir), "--lora", str(adapter), "--n", "2", "--steps", "2",
                 "--seed", "5"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["lora"] == str(adapter) and rep["held_in"]["model"]["clips"] == 2 and rep["seed"] == 5
    for rows in (rep["held_in"], rep["held_out"]):
        assert set(rows) == {"model", "renderer", "autoencoder", "random_weights"}
        assert rows["renderer"]["overall"] >= 80 > rows["random_weights"]["overall"]
        assert rows["autoencoder"]["clips"] == rows["renderer"]["clips"] and 0 <= rows["autoencoder"]["overall"] <= 100
    # captions passed in `exclude` (benchmarks/lora_pink.py: the adapter's, for the base too) leave the lists
    from moviola.eval.world import evaluate_world

    first = rep["prompts"]["held_in"][0]
    again = evaluate_world(base_dir, 2, steps=2, baselines=False, lora=adapter, exclude={first})
    assert first not in again["prompts"]["held_in"] and again["held_in"]["model"]["clips"] == 2
    assert again["prompts"]["held_in"][0] == rep["prompts"]["held_in"][1]  # the next prompt moves up
    # an adapter for another base: a LoRAError naming the difference; in the CLI one line and exit 2
    from moviola.models.dit import DiT, DiTConfig
    from moviola.models.lora import load_lora

    with pytest.raises(LoRAError, match="different base model \\(dim 32, this model has 64\\)"):
        load_lora(DiT(DiTConfig(dim=64, depth=2, heads=2, in_channels=4, freq_dim=64)), adapter)
    assert main(["generate", "a red circle falls", "-o", str(out), "--lora", str(adapter)]) == 2  # shipped base


def test_prior_preservation_learns_the_base_where_captions_name_nothing_new(tmp_path, vae_dir):
    """preserve_except: a clip whose caption names none of its words learns the base model's own prediction.
    A word no clip names leaves the base as the answer everywhere (loss 0 from the first step, the adapter
    still the identity, and a full fine-tune's frozen copy the same); a word every clip names is a plain
    fine-tune, loss for loss."""
    import shutil

    from safetensors.torch import load_file

    from moviola.train.dit import names_any

    assert names_any({"canonical": "A Pink circle, on gray."}, ["pink"])
    assert not names_any({"canonical": "a pinkish circle"}, ["pink"]) and not names_any({"caption": ""}, ["pink"])
    common = TINY_DIT + [f"vae='{vae_dir}'"]
    base_dir = train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=2", f"out='{tmp_path / 'base'}'"]))
    tune = TINY_DIT + [f"init_from='{base_dir}'", "lora.rank=2", "lora.targets=['attn.qkv','cross.kv']",
                       "optim.steps=3", "optim.lr=0.05", "cond_prob=0.5"]
    runs = {"kept": ["preserve_except=['pink']"], "all": ["preserve_except=['background']"], "plain": [],
            "full": ["preserve_except=['pink']", "lora.rank=0"]}
    for name, extra in runs.items():
        shutil.copytree(tmp_path / "base" / "cache", tmp_path / name / "cache")
        train_dit(load_config(TrainDiTConfig, None, tune + extra + [f"out='{tmp_path / name}'"]))
    assert _losses(tmp_path / "kept") == [0.0, 0.0, 0.0]
    def moved(name):  # the largest entry of the adapters' B (zero when they were made)
        return max(v.abs().max().item() for k, v in load_file(tmp_path / name / "lora" / "lora.safetensors").items()
                   if k.endswith("lora_B"))

    # the adapter still changes nothing (up to float noise: the teacher's no-grad pass may take other kernels)
    assert moved("kept") < 1e-6 and moved("plain") > 1e-2
    assert _losses(tmp_path / "full")[0] == 0.0
    plain = _losses(tmp_path / "plain")
    assert min(plain) > 0 and np.allclose(_losses(tmp_path / "all"), plain, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="preserve_except needs init_from"):
        train_dit(load_config(TrainDiTConfig, None, common + ["preserve_except=['pink']", f"out='{tmp_path / 'x'}'"]))


def test_tensorboard_scalars_or_a_clear_error(tmp_path, vae_dir, monkeypatch):
    import builtins

    cfg = TINY_DIT + [f"vae='{vae_dir}'", "optim.steps=1", "log_tensorboard=true", f"out='{tmp_path / 'tb'}'"]
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        train_dit(load_config(TrainDiTConfig, None, cfg))
    monkeypatch.undo()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pytest.skip("tensorboard not installed (optional: pip install 'moviola[tensorboard]')")
    train_dit(load_config(TrainDiTConfig, None, cfg))
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_the_training_config_sets_the_saved_models_sampler_defaults(tmp_path, vae_dir):
    """[sampling] in a training config is written to the model's config.json, so one command makes the
    model `generate` runs as shipped; keys left at their "keep" values keep the defaults."""
    common = TINY_DIT + [f"vae='{vae_dir}'", "optim.steps=1"]
    model_dir = train_dit(load_config(TrainDiTConfig, None, common + [
        "sampling.steps=7", "sampling.guidance=3.5", "sampling.shift=2.0", f"out='{tmp_path / 'a'}'"]))
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["_class_name"] == "Pipeline" and sorted(p.name for p in (model_dir / "dit").iterdir()) == [
        "config.json", "dit.safetensors"]  # moviola.layout: a folder per part
    assert (saved["steps"], saved["guidance"], saved["shift"], saved["sampler"]) == (7, 3.5, 2.0, "euler")
    assert Pipeline.from_pretrained(model_dir).config.steps == 7
    with pytest.raises(ValueError, match="sampling.sampler 'nope'"):
        train_dit(load_config(TrainDiTConfig, None, common + ["sampling.sampler='nope'", f"out='{tmp_path / 'b'}'"]))
    # A model trained on frame-correlated noise samples from it (the prior travels in config.json), and a
    # fine-tune of it that names no prior of its own keeps its base's
    corr = train_dit(load_config(TrainDiTConfig, None, common + ["noise_frame_corr=0.5", f"out='{tmp_path / 'c'}'"]))
    assert json.loads((corr / "config.json").read_text())["noise_frame_corr"] == 0.5
    tuned = train_dit(load_config(TrainDiTConfig, None, TINY_DIT + ["optim.steps=1", f"init_from='{corr}'",
                                                                     f"out='{tmp_path / 'd'}'"]))
    assert Pipeline.from_pretrained(tuned).config.noise_frame_corr == 0.5
    assert Pipeline.from_pretrained(model_dir).config.noise_frame_corr == 0.0
    with pytest.raises(ValueError, match=r"noise_frame_corr must be in \[0, 1\), got 1.0"):
        train_dit(load_config(TrainDiTConfig, None, common + ["noise_frame_corr=1.0", f"out='{tmp_path / 'e'}'"]))


def test_gpu_script_learning_rate_follows_the_clock_after_warm_up(monkeypatch):
    """scripts/train_gpu.py: warm-up by steps, then the cosine over the wall-clock time left, reaching
    lr * min_lr_ratio at the end and staying there."""
    import importlib.util
    from pathlib import Path

    from moviola.train.common import OptimConfig

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_gpu.py"
    spec = importlib.util.spec_from_file_location("train_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    now = [1000.0]
    monkeypatch.setattr(mod.time, "time", lambda: now[0])
    cfg = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, steps=10 ** 6)
    lr_at = mod.wall_clock_cosine(end=1100.0)
    assert lr_at(0, cfg) == 1e-4 and lr_at(9, cfg) == 1e-3  # warm-up: steps, not time
    now[0] = 1020.0
    assert lr_at(10, cfg) == 1e-3  # the cosine starts where warm-up ends (t = 1020, 80 s left)
    lrs = []
    for t in (1040.0, 1060.0, 1080.0, 1100.0, 1200.0):
        now[0] = t
        lrs.append(lr_at(500, cfg))
    assert abs(lrs[1] - 0.55e-3) < 1e-12  # halfway through the 80 s: the cosine's midpoint
    assert all(a > b for a, b in zip(lrs[:4], lrs[1:4])) and lrs[3] == lrs[4] == 1e-4


def test_gpu_script_vae_stage_folder_is_the_base_with_the_new_vae(tmp_path):
    """scripts/train_gpu.py's `with_vae`: the DiT stage's init folder holds the base folder's files, its
    VAE replaced by the new one, written whole (no half-copied folder under the final name)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_gpu.py"
    spec = importlib.util.spec_from_file_location("train_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base, vae = tmp_path / "base", tmp_path / "vae"
    for d in (base / "vae", base / "dit", vae):
        d.mkdir(parents=True)
    for name, text in [("dit/dit.safetensors", "dit"), ("config.json", "{}"), ("vae/vae.safetensors", "old"),
                       ("vae/config.json", '{"base_channels": 1}')]:
        (base / name).write_text(text)
    (vae / "vae.safetensors").write_text("new")  # a VAE's own folder, as `moviola train vae` saves it
    (vae / "config.json").write_text('{"_class_name": "CausalVAE", "base_channels": 2}')
    (tmp_path / "run").mkdir()
    out = mod.with_vae(base, vae, tmp_path / "run" / "init")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in base.iterdir())
    assert (out / "vae" / "vae.safetensors").read_text() == "new"
    assert json.loads((out / "vae" / "config.json").read_text())["base_channels"] == 2
    assert (out / "dit" / "dit.safetensors").read_text() == "dit" and (base / "vae" / "vae.safetensors").read_text() == "old"
    (vae / "vae.safetensors").write_text("newer")
    mod.with_vae(base, vae, out)  # again over an existing folder
    assert (out / "vae" / "vae.safetensors").read_text() == "newer" and not (tmp_path / "run" / "init.tmp").exists()
    flat = tmp_path / "flat"  # a model folder of the old flat layout: its VAE files give way to vae/
    flat.mkdir()
    for name in ("dit.safetensors", "dit.json", "pipeline.json", "vae.safetensors", "vae.json"):
        (flat / name).write_text("{}")
    out = mod.with_vae(flat, vae, tmp_path / "run" / "flat")
    assert not (out / "vae.safetensors").exists() and not (out / "vae.json").exists()
    assert (out / "vae" / "vae.safetensors").read_text() == "newer" and (out / "dit.safetensors").exists()


def test_fine_tune_adds_abs_pos_and_text_refiner_to_a_base_without_them(tmp_path):
    """With init_from, model.abs_pos and model.text_refiner widen the base; the widened model starts as the base."""
    import dataclasses

    from moviola.models.dit import PRESETS, DiT
    from moviola.train.dit import _build_model

    torch.manual_seed(0)
    base = DiT(PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(tmp_path / "dit")
    cfg = TrainDiTConfig(model=dataclasses.replace(PRESETS["tiny"], abs_pos=True, text_refiner=1))
    model = _build_model(cfg, tmp_path / "dit", torch.device("cpu")).eval()
    assert model.config.abs_pos and model.config.text_refiner == 1 and model.config.dim == base.config.dim
    x, t = torch.randn(2, 16, 3, 4, 4), torch.rand(2)
    ctx, mask = torch.randn(2, 5, base.config.text_dim), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx, mask), base(x, t, ctx, mask), rtol=0, atol=0)
    plain = _build_model(TrainDiTConfig(), tmp_path / "dit", torch.device("cpu"))
    assert not plain.config.abs_pos and plain.config.text_refiner == 0


def test_damaged_or_foreign_checkpoints_and_weights_are_one_line_errors(tmp_path, vae_dir, capsys):
    """A truncated ckpt.pt, a run folder resumed with another architecture, and a model folder whose weights are
    damaged or disagree with its config each say so in one line naming the file (found by a review: each had
    given a traceback)."""
    out = tmp_path / "run"
    common = TINY_DIT + [f"vae='{vae_dir}'", f"out='{out}'"]
    model_dir = train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=3"]))
    ckpt = out / "ckpt.pt"
    good = ckpt.read_bytes()
    saved = (out / "config.json").read_text()
    with pytest.raises(ValueError, match=r"run holds a run with other settings \(model.depth 2 -> 3\): train into a new"):
        train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=4", "model.depth=3"]))
    # other data, or other adapters, are refused the same way, and the run's config.json is left as it was (a
    # folder reused with another dataset had trained nothing while its card and provenance named the new data)
    for change in ("data.seed=5", "data.n_clips=9", "cond_prob=0.5"):
        with pytest.raises(ValueError, match="holds a run with other settings"):
            train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=4", change]))
    assert (out / "config.json").read_text() == saved
    state = torch.load(ckpt, weights_only=False)  # a checkpoint whose config is another architecture's
    state["config"]["model"]["depth"] = 3
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="ckpt.pt .model.: the weights do not fit .*trained with another model config"):
        train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=4", "model.depth=3"]))
    ckpt.write_bytes(good)
    ckpt.write_bytes(good[: len(good) // 3])
    with pytest.raises(ValueError, match="ckpt.pt: unreadable checkpoint .*delete it"):
        train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=4"]))
    weights = model_dir / "dit" / "dit.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["generate", "a red circle falls", "-o", str(tmp_path / "x.mp4"), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dit.safetensors: unreadable weights" in err[0]
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        from moviola.train.common import pick_device
        pick_device("tpu")


def test_train_dit_refuses_a_bad_device_or_vae_before_making_anything(tmp_path, capsys):
    """`--device=gpu` (or cuda on a machine without one) and a --vae that is not there: one line, status 2,
    and no run folder left behind."""
    from moviola.cli import main

    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / "dit" / "default.toml"
    base = ["train", "dit", "--config", str(config), "--out", str(out)]
    bad_device = "--device=cuda" if not torch.cuda.is_available() else "--device=gpu"
    for extra, words in [([bad_device], "device"), (["--device=gpu"], "unknown device 'gpu'"),
                         (["--vae", str(tmp_path / "nowhere")], "no VAE here"),
                         (["--lora.rank=4"], "lora.rank > 0 needs init_from")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert not out.exists()


def test_a_lora_run_is_reproducible(tmp_path, vae_dir):
    """The adapters' random halves come from the run's seed: the same command twice, the same adapter (they had
    come from the unseeded global generator)."""
    import shutil

    from safetensors.torch import load_file

    common = TINY_DIT + [f"vae='{vae_dir}'"]
    base_dir = train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=1", f"out='{tmp_path / 'base'}'"]))
    tune = TINY_DIT + [f"init_from='{base_dir}'", "lora.rank=2", "optim.steps=1", "eval_every=0"]
    made = []
    for name in ("a", "b"):
        shutil.copytree(tmp_path / "base" / "cache", tmp_path / name / "cache")
        torch.manual_seed(len(made))  # whatever the global generator holds
        made.append(load_file(str(train_dit(load_config(TrainDiTConfig, None, tune + [f"out='{tmp_path / name}'"]))
                                  / "lora.safetensors")))
    assert made[0].keys() == made[1].keys() and all(torch.equal(made[0][k], made[1][k]) for k in made[0])


def test_settings_out_of_range_and_a_diverged_run_are_refused(tmp_path, vae_dir, monkeypatch):
    """log_every / ckpt_every 0 (a ZeroDivisionError after the cache and a first step), shares outside [0, 1], a
    non-finite lora.alpha and transition_prob on a cache without scene changes are refused by name before any work;
    a run whose loss turns NaN stops with a one-line error at that step and saves no model (it had saved one that
    generated black frames)."""
    import moviola.train.dit as T
    from moviola.config import ConfigError
    from moviola.train.common import TrainingDiverged

    common = TINY_DIT + [f"vae='{vae_dir}'", f"out='{tmp_path / 'run'}'"]
    for bad, says in [("log_every=0", "log_every must be at least 1"), ("ckpt_every=0", "ckpt_every must be"),
                      ("threads=-1", "threads must be at least 0"), ("caption_dropout=2", "caption_dropout is a share"),
                      ("detailed_prob=-1", "detailed_prob is a share"), ("cond_prob=5", "cond_prob is a share"),
                      ("lora.alpha=nan", "lora.rank and lora.alpha must be finite")]:
        with pytest.raises((ValueError, ConfigError), match=says):
            train_dit(load_config(TrainDiTConfig, None, common + [bad]))
    base = train_dit(load_config(TrainDiTConfig, None, TINY_DIT + [f"vae='{vae_dir}'", f"out='{tmp_path / 'base'}'",
                                                                  "optim.steps=1"]))
    tune = TINY_DIT + [f"init_from='{base}'", f"out='{tmp_path / 'tune'}'", "optim.steps=1"]
    with pytest.raises(ValueError, match=r"model.depth = 3, but init_from's model .* has 2"):
        train_dit(load_config(TrainDiTConfig, None, tune + ["model.depth=3"]))
    assert train_dit(load_config(TrainDiTConfig, None, tune)).is_dir()  # the base's own settings repeated: fine
    with pytest.raises(ValueError, match="a cache of your own footage"):
        train_dit(load_config(TrainDiTConfig, None, common + ["cond_prob=0.5", "transition_prob=0.5",
                                                            f"data.cache_dir='{tmp_path}'"]))
    real = T.flow_loss
    monkeypatch.setattr(T, "flow_loss", lambda v, *a, **k: real(v, *a, **k) * float("nan"))
    with pytest.raises(TrainingDiverged, match="became nan at step 1"):
        train_dit(load_config(TrainDiTConfig, None, common + ["optim.steps=3"]))
    assert not (tmp_path / "run" / "model").exists()
