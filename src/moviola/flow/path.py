"""The flow-matching objective: the noising path, time sampling, the target and the loss.

Convention (rectified flow), used by the trainer and the samplers alike:

    x_t = (1 - t) * x0 + t * noise        t in [0, 1]; t = 0 is data, t = 1 is pure noise
    v   = d x_t / d t = noise - x0         the velocity the model learns to predict

Sampling integrates dx/dt = v(x, t) backwards, from t = 1 (noise) to t = 0 (data), on the grid of
`timesteps`. Given a prediction v at (x_t, t), the implied data and noise are
x0 = x_t - t * v and noise = x_t + (1 - t) * v (see `moviola.flow.samplers`).

A time *shift* s > 1 (SD3, Flux, Wan) moves both the training times and the sampling grid towards
t = 1: with more latent tokens a signal survives more noise, so larger or longer videos need more
of their steps spent at high noise. `shift_for_tokens` picks s from the token count.

    t = sample_time(B, gen, shift=shift_for_tokens(n_tokens))          # (B,)
    x_t = add_noise(x0, noise, t)                                       # like x0
    loss = flow_loss(model(x_t, t, **cond), x0, noise)                  # scalar
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Training times are kept this far from the ends, so a sampled t is in the open interval (0, 1).
TIME_EPS = 1e-5

TIME_KINDS = ("logit_normal", "uniform")


def shift_time(t: Tensor | float, shift: float) -> Tensor | float:
    """The SD3/Wan time shift t' = s t / (1 + (s - 1) t): monotone, fixes 0 and 1, identity at s = 1,
    and s > 1 pushes every t towards 1 (noisier). Works on floats and tensors of any shape."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def shift_for_tokens(num_tokens: int, *, base_tokens: int = 256, max_tokens: int = 4096,
                     base_shift: float = 1.0, max_shift: float = 3.0) -> float:
    """A time shift that grows with the number of latent tokens a sample has (frames x h x w patches).

    As in SD3/Flux, mu = log(shift) is linear in the token count between two anchors and the shift is
    exp(mu). The default anchors are SD3's: 256 tokens (a 256^2 image) at shift 1 and 4096 tokens
    (1024^2, where SD3 samples with shift 3) at shift 3. Outside the anchors the shift is clamped, so it
    stays 1 for Moviola's tiny CPU default (~80 tokens) and never runs away for long videos; inside it
    is strictly increasing, so the function is monotone (non-decreasing) everywhere.
    """
    if not (0 < base_tokens < max_tokens):
        raise ValueError(f"need 0 < base_tokens < max_tokens, got {base_tokens}, {max_tokens}")
    if not (0 < base_shift <= max_shift):
        raise ValueError(f"need 0 < base_shift <= max_shift, got {base_shift}, {max_shift}")
    frac = (num_tokens - base_tokens) / (max_tokens - base_tokens)
    frac = min(max(frac, 0.0), 1.0)
    mu = math.log(base_shift) + frac * (math.log(max_shift) - math.log(base_shift))
    return math.exp(mu)


def sample_time(batch: int, generator: torch.Generator | None = None, *, kind: str = "logit_normal",
                mean: float = 0.0, std: float = 1.0, shift: float = 1.0, uniform_share: float = 0.0,
                device: torch.device | str | None = None) -> Tensor:
    """Training times (batch,) float32 in (0, 1), drawn on the generator's device.

    "logit_normal" is sigmoid(N(mean, std^2)) (SD3): it spends the training signal on the middle of
    the path, where velocity is hardest to predict; "uniform" is U(0, 1). ``uniform_share``: that share of
    the batch (rounded) drawn uniformly instead, so the ends of the path are trained too (at shift 1 only
    1.4 % of logit-normal times are above 0.9, where a shift-2 sampler spends 5 of its 24 steps). The shift
    is applied last.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    if kind == "logit_normal":
        z = torch.randn(batch, generator=generator, device=device)
        t = torch.sigmoid(mean + std * z)
    elif kind == "uniform":
        t = torch.rand(batch, generator=generator, device=device)
    else:
        raise ValueError(f"unknown time sampling {kind!r}; choose one of {', '.join(TIME_KINDS)}")
    if not 0.0 <= uniform_share <= 1.0:
        raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share}")
    n = round(batch * uniform_share)
    if n:
        t = torch.cat([t[:batch - n], torch.rand(n, generator=generator, device=device)])
    return shift_time(t, shift).clamp(TIME_EPS, 1 - TIME_EPS)


def _expand_time(t: Tensor | float, like: Tensor) -> Tensor | float:
    """t as a scalar, or (B,) reshaped to (B, 1, ..., 1) so it broadcasts against `like` of any rank."""
    if not isinstance(t, Tensor):
        return t
    if t.ndim == 0:
        return t.to(like.dtype)
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or (B,) with B = {like.shape[0]}, got {tuple(t.shape)}")
    return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def correlate_frames(noise: Tensor, shared: Tensor, corr: float) -> Tensor:
    """Noise whose latent frames share a component (the mixed prior of PYoCo, Ge et al. 2023): every frame is
    (noise + a shared draw * sqrt(a)) / sqrt(1 + a), a = corr / (1 - corr), so each element stays N(0, 1) and
    two frames correlate by `corr`. A video's frames are alike, so a prior whose frames are alike starts them
    from one layout, instead of leaving the network to pull independent noise frames into one scene.

    noise: (B, C, T, H, W) standard normal; shared: (B, C, 1, H, W) standard normal; corr in [0, 1).
    """
    if not 0 <= corr < 1:
        raise ValueError(f"frame noise correlation must be in [0, 1), got {corr}")
    a = corr / (1 - corr)
    return (noise + shared * math.sqrt(a)) / math.sqrt(1 + a)


def frame_noise(shape: tuple[int, ...], generator: torch.Generator, frame_corr: float = 0.0) -> Tensor:
    """Standard normal float32 noise of `shape` drawn from `generator`; with `frame_corr` > 0 the latent frames
    of the (B, C, T, H, W) shape correlate by it (`correlate_frames`, the shared draw taken next from the same
    generator). The one draw the trainer and the samplers both make, so they sample the same prior."""
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if frame_corr:
        B, C, _, H, W = shape
        noise = correlate_frames(noise, torch.randn((B, C, 1, H, W), generator=generator), frame_corr)
    return noise


def add_noise(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """x_t = (1 - t) x0 + t noise. x0, noise: (B, ...); t: a scalar or (B,). Returns (B, ...)."""
    t = _expand_time(t, x0)
    return (1 - t) * x0 + t * noise


# `velocity_from_sample` divides by t no smaller than this, so near-clean times don't blow an error in x0 up
# without bound (JiT clips the same denominator at 0.05).
SAMPLE_T_MIN = 0.05


def velocity_from_sample(x_t: Tensor, x0: Tensor, t: Tensor | float, t_min: float = SAMPLE_T_MIN) -> Tensor:
    """The velocity that takes x_t to a predicted x0 in time t: v = (x_t - x0) / max(t, t_min), in float32.
    x_t, x0: (B, ...); t: a scalar or (B,). For a network that predicts clean latents (JiT, Li & He 2025)."""
    x_t = x_t.float()  # before expanding t, which takes x_t's dtype: t in float32 even under bf16 autocast
    t = _expand_time(t, x_t)
    t = t.clamp_min(t_min) if isinstance(t, Tensor) else max(float(t), t_min)
    return (x_t - x0.float()) / t


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The regression target v = noise - x0 (the path's constant velocity), like x0."""
    return noise - x0


def flow_loss(model_out: Tensor, x0: Tensor, noise: Tensor, weights: Tensor | None = None,
              mask: Tensor | None = None, target: Tensor | None = None) -> Tensor:
    """Mean squared error between predicted and target velocity, computed in float32.

    weights: optional (B,) per-sample weights (e.g. a loss weighting in t), or anything broadcastable
    to x0. mask: optional boolean/0-1 tensor broadcastable to x0, e.g. (B, 1, T, 1, 1) to leave
    conditioning frames out; the loss is the weighted mean over the elements the mask keeps (0 when it
    keeps none, still attached to the graph). target: a velocity to match instead of the path's (like x0;
    distillation: a frozen teacher's prediction).
    """
    if target is None:
        target = velocity_target(x0, noise)
    err = (model_out.float() - target.float()).square()  # (B, ...)
    if weights is not None:
        weights = weights.float()
        if weights.ndim == 1 and err.ndim > 1:
            weights = _expand_time(weights, err)  # (B,) -> (B, 1, ..., 1)
        err = err * weights
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype).expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def temporal_loss(model_out: Tensor, x0: Tensor, noise: Tensor, mask: Tensor | None = None,
                  target: Tensor | None = None) -> Tensor:
    """Mean squared frame-to-frame change of the velocity error, in float32 (a motion term for video).

    The plain loss weighs an error that is the same in every frame (where a thing is) like one that differs
    from frame to frame (how it moves); this term sees only the second kind, so adding it to ``flow_loss``
    (VideoJAM's argument, Chefer et al. 2025, without its optical-flow head) puts more of the gradient on
    motion. model_out, x0, noise: (B, C, T, H, W); mask as in ``flow_loss`` with its time axis at dim 2: a
    pair of frames counts when both are kept. A clip of one latent frame gives 0 (still in the graph).
    """
    if target is None:
        target = velocity_target(x0, noise)
    err = model_out.float() - target.float()  # (B, C, T, H, W)
    d = (err[:, :, 1:] - err[:, :, :-1]).square()  # (B, C, T - 1, H, W)
    if mask is None:
        return d.mean() if d.numel() else err.sum() * 0.0
    mask = mask.to(d.dtype)
    pair = (mask[:, :, 1:] * mask[:, :, :-1]).expand_as(d)
    return (d * pair).sum() / pair.sum().clamp_min(1.0)


def timesteps(steps: int, *, shift: float = 1.0, device: torch.device | str | None = None) -> Tensor:
    """The sampling grid (steps + 1,) float32: evenly spaced from 1 to 0, then shifted.
    Strictly decreasing, first entry exactly 1 (pure noise), last exactly 0 (data)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift_time(t, shift).to(torch.float32).to(device)
