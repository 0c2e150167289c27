"""Train the text-to-video diffusion transformer on world clips (flow matching in the VAE's latent space).

    moviola train dit --config configs/dit/default.toml [--optim.steps=6000] [--out runs/dit]

Two phases, both resumable by rerunning the same command:
1. a latent cache: world clips rendered per (size, frames) bucket, encoded once by the VAE, captions
   embedded once by the text encoder (``moviola.data.latent_cache``);
2. training: each step draws one bucket (so a batch has one shape) with a batch size that keeps the
   token count per step constant, captions short or detailed, dropped to "" with ``caption_dropout``
   for classifier-free guidance; flow-matching loss with logit-normal times shifted by token count;
   AdamW with warm-up and cosine decay; EMA. Batches and noise are a pure function of (seed, step), so a
   resumed run continues the same loss curve. Every ``eval_every`` steps the EMA model generates a few
   clips for fixed prompts and the world scorer grades them (the scorer is watched during training).

At the end (or when ``max_minutes`` runs out) the EMA model is saved with the VAE and the text-encoder
settings as a pipeline folder, ``out/model``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from moviola.config import save_config, to_dict
from moviola.data.latent_cache import LatentCache, WorldCacheConfig, build_world_cache, buckets_of
from moviola.flow.path import add_noise, flow_loss, sample_time, shift_for_tokens
from moviola.models.dit import DiT, DiTConfig, PRESETS
from moviola.models.text import load_text_encoder
from moviola.models.vae import CausalVAE
from moviola.train.common import (EMA, JsonlLog, OptimConfig, autocast, load_checkpoint, lr_at, make_optimizer,
                                  pick_device, save_checkpoint)


@dataclass
class TrainDiTConfig:
    model: DiTConfig = field(default_factory=lambda: dataclasses.replace(PRESETS["small"]))
    vae: str = ""  # folder with vae.safetensors; "" = the shipped default model folder
    text_encoder: str = "minilm"
    data: WorldCacheConfig = field(default_factory=WorldCacheConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=300, batch_size=32,
                                                                   steps=6000, ema_decay=0.998, min_lr_ratio=0.1))
    caption_dropout: float = 0.1
    detailed_prob: float = 0.5  # share of steps' captions that are the detailed ones (else short)
    time_mean: float = 0.0  # logit-normal time sampling
    time_std: float = 1.0
    shift: float = 0.0  # 0 = shift_for_tokens
    out: str = "runs/dit"
    device: str = "auto"
    threads: int = 0
    max_minutes: float = 0.0  # > 0: stop (and save) when the wall-clock budget is spent
    log_every: int = 25
    ckpt_every: int = 250
    eval_every: int = 500
    eval_prompts: int = 8
    eval_steps: int = 12
    guidance: float = 4.0


def _resolve_vae_dir(cfg: TrainDiTConfig) -> Path:
    from moviola import DEFAULT_MODEL_DIR

    d = Path(cfg.vae) if cfg.vae else DEFAULT_MODEL_DIR
    if not (d / "vae.safetensors").is_file():
        raise FileNotFoundError(f"{d}: no vae.safetensors (train one with 'moviola train vae' and pass --vae)")
    return d


class Batches:
    """Training batches as a pure function of (seed, step)."""

    def __init__(self, cache: LatentCache, cfg: TrainDiTConfig):
        self.cache, self.cfg = cache, cfg
        w = np.array([b.weight for b in cache.buckets], dtype=np.float64)
        self.weights = w / w.sum()
        p = cfg.model.patch
        self.tokens = [int(np.prod([s // q for s, q in zip(lat.shape[2:], p)])) for lat in cache.latents]
        base = self.tokens[int(np.argmax(self.weights))]  # the main bucket gets optim.batch_size
        self.sizes = [max(1, round(cfg.optim.batch_size * base / t)) for t in self.tokens]
        self.empty = cache.caption_row[""]

    def batch(self, step: int) -> dict:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.data.seed, 7, step])
        b = int(rng.choice(len(self.weights), p=self.weights))
        lat = self.cache.latents[b]
        idx = rng.integers(0, lat.shape[0], size=self.sizes[b])
        x0 = lat[torch.from_numpy(idx)].float()
        rows = []
        for i in idx:
            r = self.cache.rows[b][int(i)]
            if rng.random() < cfg.caption_dropout:
                rows.append(self.empty)
            else:
                text = r["detailed"] if rng.random() < cfg.detailed_prob else r["short"]
                rows.append(self.cache.caption_row[text])
        rows_t = torch.tensor(rows)
        g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        noise = torch.randn(x0.shape, generator=g)
        shift = cfg.shift or shift_for_tokens(self.tokens[b])
        t = sample_time(x0.shape[0], g, mean=cfg.time_mean, std=cfg.time_std, shift=shift)
        return {"x0": x0, "noise": noise, "t": t, "context": self.cache.text_tokens[rows_t].float(),
                "context_mask": self.cache.text_mask[rows_t], "bucket": b}


EVAL_PROMPTS = [
    "a small red circle moves right on a black background",
    "a large blue square spins on a white background",
    "a large green triangle falls on a gray background",
    "a small yellow circle bounces on a navy background",
    "a large cyan circle moves left while a small orange square stays still on a black background",
    "a small purple circle grows on a white background",
    "a large yellow square shrinks on a navy background",
    "a small blue triangle moves down on a gray background",
]


@torch.no_grad()
def watch_scorer(pipe, n: int, steps: int, guidance: float) -> dict:
    """Generate 64x64 2 s clips for fixed prompts and score them with the world scorer."""
    from moviola.world.score import score_clip

    attrs: dict[str, list[float]] = {}
    overall = []
    for i, p in enumerate(EVAL_PROMPTS[:n]):
        frames = pipe(p, width=64, height=64, seconds=2, steps=steps, guidance=guidance, seed=1000 + i)
        rep = score_clip(frames, p, fps=pipe.config.fps)
        overall.append(rep["overall"])
        for k, v in rep["attributes"].items():
            if v is not None:
                attrs.setdefault(k, []).append(v)
    return {"eval_overall": round(100 * float(np.mean(overall)), 1),
            **{f"eval_{k}": round(100 * float(np.mean(v)), 1) for k, v in attrs.items()}}


def train_dit(cfg: TrainDiTConfig, *, on_step=None, on_cache=None) -> Path:
    """Build the cache if needed, train (or resume), and save the pipeline folder; returns its path."""
    from moviola.pipeline import Pipeline, PipelineConfig

    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    vae_dir = _resolve_vae_dir(cfg)
    vae = CausalVAE.from_pretrained(vae_dir, device=device)
    text = load_text_encoder(None if cfg.text_encoder == "minilm" else cfg.text_encoder)
    if cfg.model.text_dim != text.dim:
        raise ValueError(f"model.text_dim {cfg.model.text_dim} does not match the text encoder's {text.dim}")
    if cfg.model.in_channels != vae.config.latent_channels:
        raise ValueError(f"model.in_channels {cfg.model.in_channels} != the VAE's latent channels "
                         f"{vae.config.latent_channels}")
    cache_dir = out / "cache"
    build_world_cache(cache_dir, cfg.data, vae, text, on_progress=on_cache)
    cache = LatentCache(cache_dir, buckets_of(cfg.data))
    batches = Batches(cache, cfg)

    torch.manual_seed(cfg.data.seed)
    model = DiT(cfg.model).to(device)
    ema = EMA(model, cfg.optim.ema_decay)
    opt = make_optimizer(model, cfg.optim)
    log = JsonlLog(out / "log.jsonl")
    ckpt = out / "ckpt.pt"
    step = 0
    if ckpt.exists():
        step = load_checkpoint(ckpt, model=model, ema=ema, optimizer=opt)["step"]
        log.truncate_after(step)
    pcfg = PipelineConfig(text_encoder=cfg.text_encoder, fps=cfg.data.fps, guidance=cfg.guidance)
    t_last, n_tok = time.time(), 0
    while step < cfg.optim.steps:
        if cfg.max_minutes and (time.time() - t_start) / 60 > cfg.max_minutes:
            log.write(step=step, stopped="max_minutes")
            break
        lr = lr_at(step, cfg.optim)
        for g in opt.param_groups:
            g["lr"] = lr
        b = batches.batch(step)
        x0, noise, t = b["x0"].to(device), b["noise"].to(device), b["t"].to(device)
        model.train()
        with autocast(device):
            xt = add_noise(x0, noise, t)
            v = model(xt, t, b["context"].to(device), b["context_mask"].to(device))
            loss = flow_loss(v.float(), x0, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        ema.update(model, step)
        step += 1
        n_tok += x0.shape[0] * batches.tokens[b["bucket"]]
        metrics = {"loss": loss.item(), "grad_norm": float(gnorm), "lr": lr}
        if step % cfg.log_every == 0 or step == cfg.optim.steps:
            dt = time.time() - t_last
            log.write(step=step, tokens_per_s=round(n_tok / max(dt, 1e-9)), **{k: round(x, 6) for k, x in metrics.items()})
            t_last, n_tok = time.time(), 0
        if cfg.eval_every and step % cfg.eval_every == 0:
            ev = watch_scorer(Pipeline(vae, ema.model, text, pcfg, device), cfg.eval_prompts, cfg.eval_steps,
                              cfg.guidance)
            log.write(step=step, **ev)
            metrics.update(ev)
        if step % cfg.ckpt_every == 0 or step == cfg.optim.steps:
            save_checkpoint(ckpt, model=model, ema=ema, optimizer=opt, step=step, config=to_dict(cfg))
        if on_step:
            on_step(step, cfg.optim.steps, metrics)
    save_checkpoint(ckpt, model=model, ema=ema, optimizer=opt, step=step, config=to_dict(cfg))
    pcfg.extra = {"trained_steps": step, "train_minutes": round((time.time() - t_start) / 60, 1),
                  "vae": str(vae_dir), "data": asdict(cfg.data)}
    pipe = Pipeline(vae, ema.model, text, pcfg, device)
    model_dir = out / "model"
    pipe.save_pretrained(model_dir)
    # The captions trained on, so evaluation can use prompts the model never saw verbatim.
    (model_dir / "training_captions.json").write_text(json.dumps(sorted(cache.captions())))
    return model_dir
