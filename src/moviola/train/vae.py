"""Train the causal video autoencoder.

    moviola train vae --config configs/vae/default.toml [--optim.steps=4000] [--out runs/vae]

Loss: L1 + a multi-scale structural (SSIM) term + a small KL, and an optional adversarial term (a
per-frame patch discriminator with a hinge loss) behind ``loss.gan_weight > 0``. AdamW with warm-up and
cosine decay, EMA weights, bf16 autocast on GPU. A checkpoint in ``out/ckpt.pt`` holds everything needed
to resume; rerunning the same command resumes and continues the same loss curve. At the end the EMA
model gets per-channel latent statistics and is saved with ``save_pretrained`` to ``out/model``.

An optional second phase (``decoder.steps > 0``, the recipe of Stable Diffusion's fine-tuned VAE decoders)
continues from the EMA weights with the encoder frozen and trains only the decoder, with its own warm-up
and cosine schedule: the latent space (and any diffusion model trained in it) stays exactly as it was,
while reconstructions get sharper for the cost of decoder-only steps.

On a GPU, rendering batches in the training process starves it: ``data_workers = N`` makes them ahead in N
forked processes (the same batches, so the same loss curve), and ``max_minutes`` stops a run on the clock
(checkpointed and saved as at its last step; a rerun resumes with a fresh budget).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moviola.config import save_config, to_dict
from moviola.data.clips import ClipBatches, ClipDataConfig, eval_clips, psnr
from moviola.data.parallel import ordered_map
from moviola.layout import model_dir, part_weights, staged_writes
from moviola.models.vae import CausalVAE, VAEConfig
from moviola.train.common import (EMA, JsonlLog, OptimConfig, autocast, check_finite, check_run_numbers,
                                  load_checkpoint, lr_at, make_optimizer, pick_device, read_checkpoint,
                                  remove_stale_temps, save_checkpoint)
from moviola.video_io import atomic_path, ensure_dir


@dataclass
class VAELossConfig:
    l1: float = 1.0
    ssim: float = 0.2  # weight of (1 - SSIM), averaged over two scales
    kl: float = 1e-6
    gan_weight: float = 0.0  # > 0 turns the adversarial term on
    gan_start: int = 1000  # step from which the adversarial term is used
    # steps before gan_start in which only the discriminator trains, so the decoder's first adversarial
    # gradients come from a critic that already tells its output from real frames, not from random weights
    gan_warmup: int = 0
    # > 0: scale equivariance (Skorokhodov et al. 2025, "Improving the diffusability of autoencoders"): the
    # latents average-pooled 2x in space must decode to the clip average-pooled 2x, weighted by this (L1 and
    # structural terms as above). It keeps the latents' spectrum image-like, without the high-frequency
    # detail a diffusion model generates worst. Whole-model phase only (it shapes the encoder's latent space).
    scale_equiv: float = 0.0


@dataclass
class DecoderTuneConfig:
    steps: int = 0  # > 0: after optim.steps, this many decoder-only steps (encoder frozen)
    lr: float = 4e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    frames: int = 0  # clip length in this phase (4k + 1); 0 = data.frames. Longer clips teach the decoder
    # the later latent frames of a long clip, whose causal context is deeper than phase 1's short clips
    # > 0: the decoder sees latents with Gaussian noise of std U(0, latent_noise) x each channel's spread
    # added, so it learns to decode the slightly-off latents a diffusion model makes into clean frames
    # instead of amplifying the error into specks (the encoder, hence the latent space, stays frozen).
    latent_noise: float = 0.0


@dataclass
class TrainVAEConfig:
    model: VAEConfig = field(default_factory=VAEConfig)
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    decoder: DecoderTuneConfig = field(default_factory=DecoderTuneConfig)
    # A VAE (or model) folder to start from: its encoder and latent statistics are loaded, and its decoder
    # too when cfg.model's decoder has the same shape (else the decoder starts fresh, e.g. a wider one).
    # With optim.steps = 0 only the decoder trains, the latent space stays bit for bit, and the folder's
    # latent statistics are kept, so a diffusion model trained in that space still fits the new decoder.
    init_from: str = ""
    out: str = "runs/vae"
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    data_workers: int = 0  # > 1: batches made ahead by this many forked processes (the same batches)
    max_minutes: float = 0.0  # > 0: stop, checkpoint and save the model when the wall-clock budget is spent
    log_every: int = 25
    eval_every: int = 500
    ckpt_every: int = 250
    stats_batches: int = 16  # batches used for the latent mean / std

    def __post_init__(self) -> None:
        if self.optim.steps + self.decoder.steps < 1:
            raise ValueError("optim.steps + decoder.steps must be at least 1 (nothing would be trained)")
        if self.decoder.steps < 0 or self.max_minutes < 0:
            raise ValueError(f"decoder.steps and max_minutes must be at least 0, got {self.decoder.steps}, "
                             f"{self.max_minutes}")
        if self.stats_batches < 1:  # 0 had failed after all the training, with nothing saved
            raise ValueError(f"stats_batches must be at least 1 (batches for the latent statistics), got "
                             f"{self.stats_batches}")
        check_run_numbers(self)


# --- losses --------------------------------------------------------------------------------------

def _gauss_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum())


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of image batches (N, C, H, W) in [-1, 1] (data range 2), separable Gaussian window."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    g = _gauss_window().to(a)
    C = a.shape[1]
    kx = g.view(1, 1, 1, -1).repeat(C, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(C, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, kx, groups=C), ky, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a ** 2
    sbb = blur(b * b) - mu_b ** 2
    sab = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return s.mean()


def pool_space(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T, H/2, W/2), averaged over 2x2 pixels (or latents)."""
    return F.avg_pool3d(x, (1, 2, 2))


def frames_of(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def structural_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 - SSIM at full and half resolution, per frame; always in fp32, even inside bf16 autocast, where
    the variances (blur(x * x) - blur(x) ** 2) cancel catastrophically on flat regions (world backgrounds)."""
    with torch.autocast(rec.device.type, enabled=False):
        a, b = frames_of(rec.float()), frames_of(x.float())
        full = 1 - ssim(a, b)
        half = 1 - ssim(F.avg_pool2d(a, 2), F.avg_pool2d(b, 2))
        return 0.5 * (full + half)


def reconstruction_terms(rec: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, 1 - SSIM) of a reconstruction against its clip, both (B, 3, T, H, W) in fp32."""
    return (rec - x).abs().mean(), structural_loss(rec, x)


class PatchDiscriminator(nn.Module):
    """A small per-frame PatchGAN: (N, 3, H, W) -> (N, 1, H/8, W/8) logits."""

    def __init__(self, ch: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 2, ch * 4, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 4, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- training --------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: CausalVAE, device: torch.device, n: int = 4) -> dict:
    """PSNR on small fixed held-out sets (world seeds and photos never used in training)."""
    out = {}
    for kind in ("world", "photo"):
        x = eval_clips(kind, n, frames=9).to(device)
        with autocast(device):
            rec = model.decode(model.encode(x).mean)
        out[f"psnr_{kind}"] = round(psnr(rec.float(), x), 2)
    return out


@torch.no_grad()
def latent_stats(model: CausalVAE, batches: ClipBatches, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of posterior means over ``n`` batches the model never trained on."""
    zs = []
    for i in range(n):
        x = batches.batch(10_000_000 + i).to(device)
        z = model.encode(x).mean.float()  # (B, C, t, h, w)
        zs.append(z.transpose(0, 1).reshape(z.shape[1], -1))
    z = torch.cat(zs, 1)
    return z.mean(1).cpu(), z.std(1).clamp_min(1e-4).cpu()


def _latent_noise(z: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Noise for decoder robustness: (B, C, t, h, w) like z, std U(0, max_sigma) per clip times each
    channel's spread over the batch (the latents are not yet normalised by the stored statistics)."""
    spread = z.detach().std(dim=(0, 2, 3, 4), keepdim=True)  # (1, C, 1, 1, 1)
    sigma = torch.rand(z.shape[0], 1, 1, 1, 1, device=z.device, dtype=z.dtype) * max_sigma
    return torch.randn_like(z) * sigma * spread


def _decoder_optim(cfg: TrainVAEConfig) -> OptimConfig:
    """The decoder phase's schedule, counted from its own first step."""
    return dataclasses.replace(cfg.optim, lr=cfg.decoder.lr, warmup_steps=cfg.decoder.warmup_steps,
                               min_lr_ratio=cfg.decoder.min_lr_ratio, steps=cfg.decoder.steps)


def _start_decoder_phase(model: CausalVAE, ema: EMA, cfg: TrainVAEConfig) -> torch.optim.Optimizer:
    """Continue from the EMA weights with the encoder frozen; returns the decoder's optimiser.

    The encoder is set to the EMA encoder, so the EMA encoder (the one saved) stays fixed from here on.
    """
    model.load_state_dict(ema.model.state_dict())
    model.encoder.requires_grad_(False)
    for p in model.encoder.parameters():
        p.grad = None  # phase 1's last gradients would otherwise count in the clipped norm
    return make_optimizer(model, _decoder_optim(cfg))


def _init_from(model: CausalVAE, folder: Path) -> None:
    """Load a saved VAE's encoder and latent statistics into ``model`` (and its decoder if the shapes match).
    ``default`` names the shipped model folder."""
    folder = model_dir(folder)
    if not part_weights(folder, "vae").is_file():
        raise FileNotFoundError(f"init_from: {folder} has no VAE ({part_weights(folder, 'vae')})")
    base = CausalVAE.from_pretrained(folder)
    if base.config.encoder_fields() != model.config.encoder_fields():
        diff = {k: (v, model.config.encoder_fields()[k]) for k, v in base.config.encoder_fields().items()
                if model.config.encoder_fields()[k] != v}
        raise ValueError(f"init_from: {folder}'s encoder differs from model's (folder, config): {diff}")
    model.encoder.load_state_dict(base.encoder.state_dict())
    model.set_latent_stats(base.latent_mean, base.latent_std)
    if base.config.decoder_channels == model.config.decoder_channels and \
            base.config.decoder_res_blocks == model.config.decoder_res_blocks:
        model.decoder.load_state_dict(grow_temporal_kernels(base.decoder.state_dict(), model.decoder.state_dict()))


def grow_temporal_kernels(source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``source``'s weights shaped for ``target``: a conv kernel (O, I, kt, kh, kw) that is longer in time in
    the target goes into its newest taps (causal convs pad the past, so the last tap is the current frame) with
    zeros before, which leaves the network's output unchanged; every other tensor must match in shape."""
    out = {}
    for k, t in target.items():
        s = source[k]
        if s.shape != t.shape:
            if s.dim() != 5 or s.shape[:2] != t.shape[:2] or s.shape[3:] != t.shape[3:] or s.shape[2] > t.shape[2]:
                raise ValueError(f"cannot grow {k} from {tuple(s.shape)} to {tuple(t.shape)}")
            grown = torch.zeros_like(t)
            grown[:, :, t.shape[2] - s.shape[2]:] = s
            s = grown
        out[k] = s
    return out


def _close(streams: dict) -> None:
    for stream in streams.values():
        stream.close()  # ends its worker processes
    streams.clear()


def _batch_numpy(batches: ClipBatches, index: int):
    return batches.batch(index).numpy()


def train_vae(cfg: TrainVAEConfig, *, on_step=None) -> Path:
    """Train (or resume) and return the saved model folder.

    Args:
        on_step: optional callback ``on_step(step, total, metrics)`` for progress bars.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # 3D convolutions: a few shapes (one per bucket), measured once
    out = ensure_dir(cfg.out, "run folder (--out)")
    save_config(cfg, out / "config.json")
    torch.manual_seed(cfg.data.seed)
    model = CausalVAE(cfg.model)
    if cfg.init_from:
        _init_from(model, Path(cfg.init_from))
    model = model.to(device)
    ema = EMA(model, cfg.optim.ema_decay)
    total = cfg.optim.steps + cfg.decoder.steps
    ckpt = out / "ckpt.pt"
    resume_step = read_checkpoint(ckpt)["step"] if ckpt.exists() else 0
    if cfg.decoder.steps and resume_step > cfg.optim.steps:
        opt = _start_decoder_phase(model, ema, cfg)  # shapes for the optimiser state; reloaded below
    else:
        opt = make_optimizer(model, cfg.optim)
    disc = disc_opt = None
    if cfg.loss.gan_weight > 0:
        disc = PatchDiscriminator().to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.optim.lr, betas=(0.5, 0.9))
    log = JsonlLog(out / "log.jsonl")
    step = 0
    if ckpt.exists():
        state = load_checkpoint(ckpt, model=model, ema=ema, optimizer=opt)
        step = state["step"]
        if disc is not None and "disc" in state["extra"]:
            disc.load_state_dict(state["extra"]["disc"])
            disc_opt.load_state_dict(state["extra"]["disc_opt"])
    log.truncate_after(step)  # a run killed before its first checkpoint starts over at 0: its rows go too
    remove_stale_temps(out)
    batches = ClipBatches(cfg.data, cfg.optim.batch_size)
    for i, problem in enumerate(batches.skipped):  # named once, up front: training goes on without them
        if i == 10:
            print(f"moviola: ... and {len(batches.skipped) - 10} more ('moviola data check {cfg.data.folder}' "
                  "lists them)", file=sys.stderr)
            break
        print(f"moviola: skipping {problem.path}: {problem.problem}", file=sys.stderr)
    dec_batches = (ClipBatches(dataclasses.replace(cfg.data, frames=cfg.decoder.frames), cfg.optim.batch_size,
                               report=batches.report) if cfg.decoder.frames else batches)
    t_last, seen = time.time(), 0
    t_start = time.time()
    made = {}  # phase -> stream of its batches from the current step on (made ahead when data_workers > 1)
    while step < total:
        decoder_phase = step >= cfg.optim.steps
        if decoder_phase and step == cfg.optim.steps:
            opt = _start_decoder_phase(model, ema, cfg)
        lr = lr_at(step - cfg.optim.steps, _decoder_optim(cfg)) if decoder_phase else lr_at(step, cfg.optim)
        for g in opt.param_groups:
            g["lr"] = lr
        if decoder_phase not in made:
            _close(made)  # the first phase's workers end here
            src = dec_batches if decoder_phase else batches
            made[decoder_phase] = ordered_map(partial(_batch_numpy, src), itertools.count(step), cfg.data_workers)
        x = torch.from_numpy(next(made[decoder_phase])).to(device)
        model.train()
        with autocast(device):
            if decoder_phase:
                with torch.no_grad():
                    post = model.encode(x)
            else:
                post = model.encode(x)
            z = post.sample()
            if decoder_phase and cfg.decoder.latent_noise > 0:
                z = z + _latent_noise(z, cfg.decoder.latent_noise)
            rec = model.decode(z)
            use_se = cfg.loss.scale_equiv > 0 and not decoder_phase and min(z.shape[-2:]) >= 2
            rec_half = model.decode(pool_space(z)) if use_se else None
        # The losses in fp32, outside autocast: under it SSIM's blurs ran in bf16, whose variances
        # (blur(x * x) - blur(x) ** 2) cancel catastrophically (`structural_loss` guards itself too).
        rec, xf = rec.float(), x.float()
        l1, st = reconstruction_terms(rec, xf)
        kl = post.kl().mean()
        loss = cfg.loss.l1 * l1 + cfg.loss.ssim * st + cfg.loss.kl * kl
        se = None
        if rec_half is not None:
            se_l1, se_st = reconstruction_terms(rec_half.float(), pool_space(xf))
            se = cfg.loss.l1 * se_l1 + cfg.loss.ssim * se_st
            loss = loss + cfg.loss.scale_equiv * se
        use_gan = disc is not None and step >= cfg.loss.gan_start
        train_disc = disc is not None and step >= cfg.loss.gan_start - cfg.loss.gan_warmup
        if use_gan:
            with autocast(device):
                g_loss = -disc(frames_of(rec)).float().mean()
            loss = loss + cfg.loss.gan_weight * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
        opt.step()
        d_loss = None
        if train_disc:
            with autocast(device):
                d_real = disc(frames_of(xf))
                d_fake = disc(frames_of(rec.detach()))
                d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
        ema.update(model, step)
        step += 1
        seen += x.shape[0]
        metrics = {"loss": loss.item(), "l1": l1.item(), "ssim_term": st.item(), "kl": kl.item(),
                   "grad_norm": float(gnorm), "lr": lr}
        check_finite(metrics["loss"], step)
        if se is not None:
            metrics["scale_equiv"] = se.item()
        if d_loss is not None:
            metrics["d_loss"] = d_loss.item()
            if use_gan:
                metrics["g_loss"] = g_loss.item()
        if step % cfg.log_every == 0 or step == total:
            dt = time.time() - t_last
            log.write(step=step, clips_per_s=round(seen / max(dt, 1e-9), 2), **{k: round(v, 6) for k, v in metrics.items()})
            t_last, seen = time.time(), 0
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
            ev = evaluate(ema.model, device)
            log.write(step=step, **ev)
            metrics.update(ev)
        late = bool(cfg.max_minutes) and (time.time() - t_start) / 60 > cfg.max_minutes
        if late:
            log.write(step=step, stopped="max_minutes")
        if step % cfg.ckpt_every == 0 or step == total or late:
            extra = {"disc": disc.state_dict(), "disc_opt": disc_opt.state_dict()} if disc is not None else {}
            save_checkpoint(ckpt, model=model, ema=ema, optimizer=opt, step=step, config=to_dict(cfg), extra=extra)
        if on_step:
            on_step(step, total, metrics)
        if late:
            break
    _close(made)
    final = ema.model
    if not (cfg.init_from and cfg.optim.steps == 0):  # a frozen encoder keeps the statistics it came with
        mean, std = latent_stats(final, batches, cfg.stats_batches, device)
        final.set_latent_stats(mean, std)
    run = _write_provenance(batches.videos, out)  # in place first: the carry below reads it
    with staged_writes():  # the weights, config and provenance land together
        final.cpu().save_pretrained(out / "model")
        _carry_provenance(run, out, cfg.init_from)
    return out / "model"


def _write_provenance(clips: list, out: Path) -> Path | None:
    """This run's footage clips (path, sha256, caption, span, licence, consent, source) in OUT/provenance.jsonl,
    as a DiT run writes; its path, or None without footage."""
    from moviola.data.folder import file_sha256
    from moviola.data.provenance import MANIFEST

    if not clips:
        return None
    rows = [{"path": c.path, "sha256": file_sha256(c.path), "caption": c.caption, "start": c.start,
             "end": c.end, "licence": c.licence, "consent": c.consent, "source": c.source} for c in clips]
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / MANIFEST


def _carry_provenance(run: Path | None, out: Path, init_from: str | None) -> None:
    """What the saved VAE learned from travels with it (and into the models trained on its latents): this run's
    records, then those of the VAE it was fine-tuned from, in OUT/model/provenance.jsonl."""
    from moviola.data.provenance import carry
    from moviola.layout import part_dir

    carry(run, part_dir(model_dir(init_from), "vae") if init_from else None, out / "model")
