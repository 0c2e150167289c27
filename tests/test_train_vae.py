"""VAE training on a tiny config: loss goes down, resume continues the same loss curve, model saves."""

import json

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
    train_vae(cfg)
    # Interrupted after 3 steps (the checkpoint then), resumed to 6.
    resumed = tmp_path / "b"
    cfg3 = load_config(TrainVAEConfig, None, TINY + ["optim.steps=6", "ckpt_every=3", f"out='{resumed}'"])
    cfg3.optim.steps = 3
    train_vae(cfg3)
    assert len(losses(resumed)) == 3
    train_vae(load_config(TrainVAEConfig, None, TINY + ["optim.steps=6", "ckpt_every=3", f"out='{resumed}'"]))
    a, b = losses(straight), losses(resumed)
    assert len(a) == len(b) == 6
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)


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
