"""VAE training on a tiny config: loss goes down, resume continues the same loss curve, model saves."""

import json
from pathlib import Path

import torch

from moviola.config import load_config
from moviola.models.vae import CausalVAE
from moviola.train.vae import TrainVAEConfig, train_vae

TINY = ["model.latent_channels=4", "model.base_channels=4", "model.channel_mult=[1,2,2,2]",
        "model.num_res_blocks=1", "model.decoder_res_blocks=1", "data.sizes=[[32,32]]", "data.frames=5",
        "optim.batch_size=2", "optim.warmup_steps=2", "eval_every=0", "log_every=1", "stats_batches=1"]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_resume_continues_the_same_loss_curve(tmp_path):
    straight = tmp_path / "a"
    cfg = load_config(TrainVAEConfig, None, TINY + ["optim.steps=6", "ckpt_every=3", f"out='{straight}'"])
    straight_model = train_vae(cfg)
    # Interrupted after 3 steps (the checkpoint then), resumed to 6.
    resumed = tmp_path / "b"
    cfg3 = load_config(TrainVAEConfig, None, TINY + ["optim.steps=6", "ckpt_every=3", f"out='{resumed}'"])
    cfg3.optim.steps = 3
    train_vae(cfg3)
    assert len(losses(resumed)) == 3
    resumed_model = train_vae(load_config(TrainVAEConfig, None, TINY + ["optim.steps=6", "ckpt_every=3",
                                                                        f"out='{resumed}'"]))
    a, b = losses(straight), losses(resumed)
    assert len(a) == len(b) == 6
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)
    # the same saved model too: the EMA weights, which the losses (the live weights') would not show lost
    from safetensors.torch import load_file

    wa, wb = (load_file(m / "vae.safetensors") for m in (straight_model, resumed_model))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_batches_made_by_worker_processes_give_the_same_loss_curve(tmp_path):
    base = TINY + ["optim.steps=4", "ckpt_every=4", "data.world_weight=0.5"]
    train_vae(load_config(TrainVAEConfig, None, base + [f"out='{tmp_path / 'a'}'"]))
    train_vae(load_config(TrainVAEConfig, None, base + ["data_workers=2", f"out='{tmp_path / 'b'}'"]))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == len(b) == 4 and a == b


def test_max_minutes_stops_checkpoints_and_saves(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(TrainVAEConfig, None, TINY + ["optim.steps=1000", "ckpt_every=1000", "max_minutes=1e-9",
                                                   f"out='{out}'"])
    model_dir = train_vae(cfg)
    assert (model_dir / "vae.safetensors").is_file()
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == 1  # stopped after its first step
    assert len(losses(out)) == 1


def test_training_learns_and_saves_a_loadable_model(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(TrainVAEConfig, None, TINY + ["optim.steps=100", "optim.lr=3e-3", "ckpt_every=100",
                                                   "data.world_weight=1.0", f"out='{out}'"])
    model_dir = train_vae(cfg)
    m = CausalVAE.from_pretrained(model_dir)
    # Reconstruction of unseen batches beats the untrained model's by a wide margin.
    from moviola.data.clips import ClipBatches

    torch.manual_seed(0)
    untrained = CausalVAE(cfg.model).eval()
    x = ClipBatches(cfg.data, 4).batch(123_456)
    with torch.no_grad():
        err = (m.decode(m.encode(x).mean) - x).abs().mean()
        err0 = (untrained.decode(untrained.encode(x).mean) - x).abs().mean()
    assert err < 0.6 * err0, (err, err0)
    assert m.latent_std.min() > 0 and not torch.allclose(m.latent_std, torch.ones_like(m.latent_std))
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert m.decode(m.encode(x).mean).shape == x.shape
    saved = json.loads((out / "config.json").read_text())
    assert saved["optim"]["steps"] == 100


def test_decoder_phase_keeps_the_latent_space_and_resumes_exactly(tmp_path):
    # Phase 1 alone, then phase 1 + 4 decoder-only steps, and the same interrupted inside phase 2.
    base = TINY + ["optim.steps=3", "ckpt_every=2"]
    only = train_vae(load_config(TrainVAEConfig, None, base + [f"out='{tmp_path / 'p1'}'"]))
    tuned_cfg = base + ["decoder.steps=4", "decoder.warmup_steps=1", "decoder.lr=3e-3", "decoder.frames=9"]
    tuned = train_vae(load_config(TrainVAEConfig, None, tuned_cfg + [f"out='{tmp_path / 'p2'}'"]))
    a, b = CausalVAE.from_pretrained(only), CausalVAE.from_pretrained(tuned)
    for (name, pa), pb in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values()):
        assert torch.equal(pa, pb), name  # the encoder, hence the latent space, is untouched
    assert torch.equal(a.latent_mean, b.latent_mean) and torch.equal(a.latent_std, b.latent_std)
    assert any(not torch.equal(pa, pb) for pa, pb in zip(a.decoder.parameters(), b.decoder.parameters()))

    cut = tmp_path / "cut"
    cfg = load_config(TrainVAEConfig, None, tuned_cfg + [f"out='{cut}'"])
    cfg.decoder.steps = 1  # interrupted at step 4 (inside phase 2), then resumed to the end
    train_vae(cfg)
    train_vae(load_config(TrainVAEConfig, None, tuned_cfg + [f"out='{cut}'"]))
    assert len(losses(cut)) == 7
    assert torch.allclose(torch.tensor(losses(tmp_path / "p2")), torch.tensor(losses(cut)), rtol=1e-5, atol=1e-6)


def test_a_wider_decoder_trains_on_a_frozen_encoder_from_a_saved_vae(tmp_path):
    """init_from a saved VAE with a wider decoder and decoder-only steps: the encoder and the latent
    statistics are the saved ones bit for bit (a DiT trained in that space still fits), the decoder has
    the new widths and learns; an encoder that differs from the saved one is refused."""
    import pytest

    base = train_vae(load_config(TrainVAEConfig, None, TINY + ["optim.steps=3", f"out='{tmp_path / 'base'}'"]))
    wide = TINY + ["model.decoder_base_channels=8", "optim.steps=0", "decoder.steps=6", "decoder.lr=3e-3",
                   "decoder.warmup_steps=1", f"init_from='{base}'"]
    out = train_vae(load_config(TrainVAEConfig, None, wide + [f"out='{tmp_path / 'wide'}'"]))
    a, b = CausalVAE.from_pretrained(base), CausalVAE.from_pretrained(out)
    assert b.config.decoder_channels == [8, 16, 16, 16] and a.config.decoder_channels == [4, 8, 8, 8]
    for (name, pa), pb in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.latent_mean, b.latent_mean) and torch.equal(a.latent_std, b.latent_std)
    curve = losses(tmp_path / "wide")
    assert len(curve) == 6 and curve[-1] < curve[0]
    with pytest.raises(ValueError, match="encoder differs"):
        train_vae(load_config(TrainVAEConfig, None, TINY + ["model.latent_channels=8", "optim.steps=0",
                                                            "decoder.steps=1", f"init_from='{base}'",
                                                            f"out='{tmp_path / 'bad'}'"]))


def test_a_decoder_grown_to_a_temporal_kernel_at_full_resolution_starts_as_the_saved_one(tmp_path):
    """decoder_full_res_temporal_kernel=3 on a saved spatial-only decoder: init_from puts the old kernels in
    the newest taps, so before any step the grown decoder reconstructs exactly as the saved one; it streams
    like the one-shot decode, and decoder-only steps train it. A kernel cannot shrink."""
    import pytest

    from moviola.train.vae import _init_from, grow_temporal_kernels

    base = train_vae(load_config(TrainVAEConfig, None, TINY + ["optim.steps=3", f"out='{tmp_path / 'base'}'"]))
    a = CausalVAE.from_pretrained(base)
    grown_cfg = load_config(TrainVAEConfig, None, TINY + ["model.decoder_full_res_temporal_kernel=3"]).model
    b = CausalVAE(grown_cfg).eval()
    assert b.decoder.conv_out.conv.weight.shape[2] == 3 and a.decoder.conv_out.conv.weight.shape[2] == 1
    _init_from(b, base)
    z = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(a.decode(z), b.decode(z), atol=1e-6)
        torch.nn.init.normal_(b.decoder.conv_out.conv.weight, std=0.1)  # the past taps now matter
        whole = b.decode(z)
        assert (whole - a.decode(z)).abs().max() > 1e-3
        assert torch.allclose(whole, b.decode_video(z, chunked=True, latents_per_chunk=1), atol=1e-4)
    with pytest.raises(ValueError, match="cannot grow"):
        grow_temporal_kernels(b.decoder.state_dict(), a.decoder.state_dict())
    run = TINY + ["model.decoder_full_res_temporal_kernel=3", "optim.steps=0", "decoder.steps=6",
                  "decoder.lr=3e-3", "decoder.warmup_steps=1", f"init_from='{base}'", f"out='{tmp_path / 'kt3'}'"]
    out = train_vae(load_config(TrainVAEConfig, None, run))
    assert CausalVAE.from_pretrained(out).config.decoder_full_res_temporal_kernel == 3
    curve = losses(tmp_path / "kt3")
    assert len(curve) == 6 and curve[-1] < curve[0]


def test_structural_loss_stays_fp32_inside_bf16_autocast():
    """On a GPU the trainer runs under bf16 autocast; computed there, SSIM's variances on a flat world-like
    frame cancel (loss 0.66 for a near-perfect reconstruction, gradients 80x off). It must not follow."""
    from moviola.train.vae import structural_loss

    x = torch.full((2, 3, 5, 32, 32), 0.8)
    x[..., 10:20, 10:20] = -0.5  # a square on a flat background
    rec = (x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    want = structural_loss(rec, x)
    (g_want,) = torch.autograd.grad(want, rec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = structural_loss(rec, x)
    (g_got,) = torch.autograd.grad(got, rec)
    assert got.dtype == torch.float32 and want.item() < 0.05
    assert torch.allclose(got, want) and torch.allclose(g_got, g_want)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the guard prevents: the same SSIM in bf16
        from moviola.train.vae import frames_of, ssim

        a, b = frames_of(rec).bfloat16(), frames_of(x).bfloat16()
        assert abs((1 - ssim(a, b)).item() - want.item()) > 0.1


def test_scale_equivariance_term_trains_in_the_whole_model_phase_only(tmp_path):
    out = tmp_path / "se"
    cfg = load_config(TrainVAEConfig, None, TINY + ["optim.steps=40", "optim.lr=3e-3", "ckpt_every=50",
                                                   "data.world_weight=1.0", "decoder.steps=3",
                                                   "loss.scale_equiv=1.0", f"out='{out}'"])
    train_vae(cfg)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]
    term = [r["scale_equiv"] for r in logged if "scale_equiv" in r]
    # Logged (so computed and added) at every whole-model step, never in the decoder phase (steps 41..43).
    assert [r["step"] for r in logged if "scale_equiv" in r] == list(range(1, 41))
    assert len(logged) == 43
    # Pooled latents learn to decode to the pooled clip.
    assert sum(term[-10:]) < 0.6 * sum(term[:10])


def test_the_discriminator_warms_up_alone_then_the_adversarial_term_joins_and_resumes_exactly(tmp_path):
    gan = TINY + ["optim.steps=6", "ckpt_every=3", "loss.gan_weight=0.5", "loss.gan_start=3", "loss.gan_warmup=2"]
    straight = tmp_path / "a"
    train_vae(load_config(TrainVAEConfig, None, gan + [f"out='{straight}'"]))
    logged = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines() if "loss" in line]
    # The critic trains from step gan_start - gan_warmup (steps 2..6 logged), the decoder sees it from gan_start.
    assert [r["step"] for r in logged if "d_loss" in r] == [2, 3, 4, 5, 6]
    assert [r["step"] for r in logged if "g_loss" in r] == [4, 5, 6]
    # Interrupted at the checkpoint inside the adversarial phase and resumed: the same curve (critic restored).
    cut = tmp_path / "b"
    cfg = load_config(TrainVAEConfig, None, gan + [f"out='{cut}'"])
    cfg.optim.steps = 3
    train_vae(cfg)
    train_vae(load_config(TrainVAEConfig, None, gan + [f"out='{cut}'"]))
    a, b = losses(straight), losses(cut)
    assert len(a) == len(b) == 6
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)


def test_a_run_killed_before_its_first_checkpoint_starts_over_cleanly(tmp_path):
    """Found by a review: the log kept the killed process's rows (steps twice, out of order), a torn last line
    (a full disk) broke every later run, and a checkpoint's temp file stayed behind forever."""
    import pytest

    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3))
                                   + '{"time": 2.9, "step": 4, "loss": ')  # killed mid-write, no checkpoint yet
    (out / ".ckpt.tmp-0badc0de.pt").write_bytes(b"half a checkpoint")
    train_vae(load_config(TrainVAEConfig, None, TINY + ["optim.steps=2", "log_every=1", f"out='{out}'"]))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]  # every line parses
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)) and 9.0 not in [r["loss"] for r in rows]
    assert not list(out.glob(".*.tmp-*"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="the run folder .--out. is a file"):
        train_vae(load_config(TrainVAEConfig, None, TINY + ["optim.steps=1", f"out='{tmp_path / 'afile'}'"]))


def test_a_vae_trained_on_footage_carries_its_provenance(tmp_path, capsys):
    """A VAE trained on a folder names the files it could draw from (and their hashes, spans and licences) beside
    its weights, and a model trained on its latents carries those records too; skipped files are named."""
    import numpy as np

    from moviola.data.folder import file_sha256
    from moviola.data.provenance import carry, read_manifest
    from moviola.video_io import write_video

    root = tmp_path / "footage"
    root.mkdir()
    write_video(root / "a.mp4", np.full((24, 40, 56, 3), 90, np.uint8), 8)
    (root / "bad.mp4").write_text("not a video")
    whole = write_video(tmp_path / "whole.mkv", np.full((32, 40, 56, 3), 60, np.uint8), 8)
    (root / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # header intact, cut mid-way
    (root / "manifest.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "grey", "licence": "CC0"}) + "\n")
    model = train_vae(load_config(TrainVAEConfig, None, TINY + [
        "optim.steps=1", f"data.folder='{root}'", "data.world_weight=0.0", f"out='{tmp_path / 'vae'}'"]))
    err = capsys.readouterr().err
    assert f"skipping {root / 'bad.mp4'}: not a video" in err, err
    assert f"skipping {root / 'cut.mkv'}: truncated or corrupt video" in err, err  # it had been drawn from
    rows = read_manifest(model)
    assert [(r["path"], r["sha256"], r["licence"]) for r in rows] == [
        (str(root / "a.mp4"), file_sha256(root / "a.mp4"), "CC0")]
    result = tmp_path / "dit"
    result.mkdir()
    summary = carry(None, None, result, vae_dir=model)
    assert summary["clips"] == 1 and read_manifest(result)[0]["stage"] == f"vae: {model}"
    # a fine-tune of it on the world alone still says what its base learned from
    tuned = train_vae(load_config(TrainVAEConfig, None, TINY + ["optim.steps=1", f"init_from='{model}'",
                                                                f"out='{tmp_path / 'vae2'}'"]))
    assert [r["path"] for r in read_manifest(tuned)] == [str(root / "a.mp4")]
    # a whole model folder given as the VAE: its top-level records are its DiT's, not the VAE's
    whole = tmp_path / "whole"
    (whole / "vae").mkdir(parents=True)
    (whole / "vae" / "config.json").write_text("{}")
    (whole / "provenance.jsonl").write_text(json.dumps({"path": "dit_clip.mp4"}) + "\n")
    other = tmp_path / "dit2"
    other.mkdir()
    assert carry(None, None, other, vae_dir=whole) is None


def test_init_from_default_carries_the_shipped_models_records_not_a_local_folders(tmp_path, monkeypatch):
    """``init_from = "default"`` names the shipped model for the weights and for the provenance alike: the
    provenance had been read from a folder called "default" in the working directory."""
    from moviola import DEFAULT_MODEL_DIR
    from moviola.layout import model_dir
    from moviola.train.vae import _carry_provenance

    assert model_dir("default") == DEFAULT_MODEL_DIR and model_dir("runs/x") == Path("runs/x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default" / "vae").mkdir(parents=True)
    (tmp_path / "default" / "vae" / "provenance.jsonl").write_text(json.dumps({"path": "someone_elses.mp4"}) + "\n")
    (tmp_path / "out" / "model").mkdir(parents=True)
    _carry_provenance(None, tmp_path / "out", "default")
    written = tmp_path / "out" / "model" / "provenance.jsonl"
    assert not written.exists() or "someone_elses" not in written.read_text()
