"""Samplers for the flow in `moviola.flow.path`: pure functions of a velocity field.

Every sampler takes `model_fn(x, t) -> v` with x (B, ...) and t (B,) float32 in [0, 1], the starting
noise (B, ...) and a decreasing time grid from 1 to 0 (`path.timesteps`), and integrates dx/dt = v from
t = 1 (noise) to t = 0 (data). They know nothing about the network; classifier-free guidance is a
wrapper that makes a model_fn (`cfg_model_fn`).

    noise = make_noise((1, 16, 3, 8, 8), seed=0, device="cuda")
    fn = cfg_model_fn(dit, cond={"context": c, "context_mask": m}, uncond={...}, guidance=5.0)
    video_latents = sample(fn, noise, steps=30, sampler="dpm++", shift=3.0)

Solvers (model evaluations for N steps):
  euler   N        first order.
  heun    2N - 1   second order (trapezoid predictor-corrector); the last step is plain Euler.
  dpm++   N        DPM-Solver++(2M): second-order multistep exponential integrator on the data
                   prediction, after Lu et al. 2022.
  unipc   N        UniPC (B(h) = expm1(h), order 2): the dpm++ predictor plus a corrector that reuses
                   the next evaluation at no extra cost, after Zhao et al. 2023.

For the multistep solvers the flow is a diffusion with alpha_t = 1 - t, sigma_t = t: the data
prediction is x0 = x_t - t v and lambda_t = log((1 - t) / t) is the half-log-SNR, -inf at t = 1 and
+inf at t = 0. Their first-order update from t to s,
    x_s = (s / t) x_t + ((1 - s) - s (1 - t) / t) x0,
equals the Euler step exactly and never needs lambda, so it is used wherever lambda is infinite:
the first step, the step after it (its history point sits at lambda = -inf) and the last (to t = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from moviola.flow.path import frame_noise
from moviola.flow.path import timesteps as make_timesteps

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int], None] | None

def make_noise(shape: tuple[int, ...], seed: int, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, frame_corr: float = 0.0) -> Tensor:
    """Standard normal noise drawn by a CPU generator, then moved to `device`: the same seed gives the
    same noise, hence the same video, on any device. With `frame_corr` > 0 (a model trained on that prior),
    the latent frames of a (B, C, T, H, W) shape correlate by it (`path.frame_noise`)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return frame_noise(shape, g, frame_corr).to(device=device, dtype=dtype)


def _t(value: Tensor | float, x: Tensor) -> Tensor:
    """A grid time as the (B,) float32 tensor a model_fn receives."""
    return torch.full((x.shape[0],), float(value), dtype=torch.float32, device=x.device)


def _grid(ts: Tensor) -> list[float]:
    ts = [float(v) for v in ts]
    if len(ts) < 2 or any(b >= a for a, b in zip(ts, ts[1:])):
        raise ValueError("timesteps must be strictly decreasing with at least 2 entries (1 ... 0)")
    return ts


# --- single-step solvers -------------------------------------------------------------------------

def euler(model_fn: ModelFn, noise: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """First-order Euler: x <- x + (t_next - t) v(x, t). noise, result: (B, ...)."""
    ts = _grid(timesteps)
    x = noise
    for i, (t, t_next) in enumerate(zip(ts, ts[1:])):
        x = x + (t_next - t) * model_fn(x, _t(t, x))
        if callback is not None:
            callback(i + 1, len(ts) - 1)
    return x


def heun(model_fn: ModelFn, noise: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """Heun's second-order method: an Euler predictor, then the mean of the velocities at both ends.
    The last step is plain Euler (as in EDM), so N steps cost 2N - 1 evaluations."""
    ts = _grid(timesteps)
    n = len(ts) - 1
    x = noise
    for i, (t, t_next) in enumerate(zip(ts, ts[1:])):
        dt = t_next - t
        v = model_fn(x, _t(t, x))
        x_euler = x + dt * v
        if i == n - 1:
            x = x_euler
        else:
            x = x + dt * 0.5 * (v + model_fn(x_euler, _t(t_next, x)))
        if callback is not None:
            callback(i + 1, n)
    return x


# --- multistep solvers on the data prediction ----------------------------------------------------

def _lam(t: float) -> float:
    """Half-log-SNR log((1 - t) / t) of the flow, with its infinite ends."""
    if t >= 1.0:
        return -math.inf
    if t <= 0.0:
        return math.inf
    return math.log1p(-t) - math.log(t)


def _first_order(x: Tensor, x0: Tensor, t: float, s: float) -> Tensor:
    """DPM-Solver++(1) from t to s < t, i.e. DDIM on the data prediction (== Euler for this flow):
    x_s = (sigma_s / sigma_t) x_t + (alpha_s - sigma_s alpha_t / sigma_t) x0 with alpha = 1 - t, sigma = t."""
    return (s / t) * x + ((1 - s) - s * (1 - t) / t) * x0


def dpmpp_2m(model_fn: ModelFn, noise: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """DPM-Solver++(2M) for the flow: one evaluation per step; second order where the previous point
    and the next are at finite lambda, first order (== Euler) otherwise."""
    ts = _grid(timesteps)
    n = len(ts) - 1
    x = noise
    prev_x0, h_prev = None, math.inf
    for i, (t, s) in enumerate(zip(ts, ts[1:])):
        x0 = x - t * model_fn(x, _t(t, x))  # data prediction, (B, ...)
        h = _lam(s) - _lam(t)
        if prev_x0 is not None and math.isfinite(h) and math.isfinite(h_prev):
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0  # linear extrapolation in lambda
        else:
            d = x0
        x = _first_order(x, d, t, s)
        prev_x0, h_prev = x0, h
        if callback is not None:
            callback(i + 1, n)
    return x


def _unipc_coeffs(h: float, rks: list[float]) -> tuple[float, list[float]]:
    """UniPC-bh2 with data prediction: B(h) = expm1(-h) and the corrector weights rho solving
    sum_k rho_k r_k^(j-1) = phi_j(h) j! / B(h) for j = 1..p, with r = [r_1 .. r_{p-1}, 1]. Solved for
    p = 1 too (diffusers uses 1/2 there, the small-h limit; the solve is also right at h = inf)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for j in range(1, len(rks) + 1):
        rows.append([r ** (j - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rho = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    return b_h, rho.tolist()


def unipc(model_fn: ModelFn, noise: Tensor, timesteps: Tensor, callback: Callback = None) -> Tensor:
    """UniPC, order 2 (bh2): the DPM-Solver++(2M) predictor, then at each new point a corrector that
    re-integrates the step just taken with the new evaluation (no extra model calls). The corrected
    sample is kept and the evaluation made at the uncorrected one is reused, as in the paper."""
    ts = _grid(timesteps)
    n = len(ts) - 1
    lams = [_lam(t) for t in ts]
    x = noise
    x0s: list[Tensor] = []  # data predictions at ts[0..i]
    last: tuple[Tensor, int] | None = None  # (sample the previous step started from, its order)
    for i, t in enumerate(ts[:-1]):
        x0 = x - t * model_fn(x, _t(t, x))
        if last is not None:  # UniC: correct the step ts[i-1] -> ts[i] with this evaluation
            x_prev, order = last
            h = lams[i] - lams[i - 1]
            rks = [(lams[i - 2] - lams[i - 1]) / h] if order == 2 else []
            b_h, rho = _unipc_coeffs(h, rks + [1.0])
            x = _first_order(x_prev, x0s[-1], ts[i - 1], t)
            corr = rho[-1] * (x0 - x0s[-1])
            if order == 2:
                corr = corr + rho[0] * (x0s[-2] - x0s[-1]) / rks[0]
            x = x - (1 - t) * b_h * corr
        x0s = (x0s + [x0])[-2:]
        # UniP: second order where all three lambdas involved are finite
        s = ts[i + 1]
        order = 2 if i >= 1 and all(map(math.isfinite, lams[i - 1:i + 2])) else 1
        x_start = x
        x = _first_order(x, x0, t, s)
        if order == 2:
            h = lams[i + 1] - lams[i]
            r = (lams[i - 1] - lams[i]) / h
            # rho_p = 1/2 makes this predictor exactly DPM-Solver++(2M)
            x = x - (1 - s) * math.expm1(-h) * 0.5 * (x0s[-2] - x0) / r
        last = (x_start, order)
        if callback is not None:
            callback(i + 1, n)
    return x


SOLVERS: dict[str, Callable[..., Tensor]] = {"euler": euler, "heun": heun, "dpm++": dpmpp_2m, "unipc": unipc}
SAMPLERS = tuple(SOLVERS)  # their names, one list (it had been written twice)


@torch.no_grad()
def sample(model_fn: ModelFn, noise: Tensor, steps: int, *, sampler: str = "euler", shift: float = 1.0,
           callback: Callback = None) -> Tensor:
    """Integrate from noise (B, ...) at t = 1 to data at t = 0 in `steps` steps of the shifted grid
    (`path.timesteps`). callback(i, total) is called after step i = 1..total, for progress bars.
    Runs under no_grad."""
    if sampler not in SOLVERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    ts = make_timesteps(steps, shift=shift)
    return SOLVERS[sampler](model_fn, noise, ts, callback=callback)


# --- classifier-free guidance --------------------------------------------------------------------

def _split_kwargs(cond: Mapping[str, Any], uncond: Mapping[str, Any]
                  ) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, Any]]:
    """Pair up two kwargs dicts for one batched call: tensors to be concatenated along the batch
    (cond first), and everything else (None, flags), which must be the same in both."""
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}")
    pairs, fixed = {}, {}
    for k, c in cond.items():
        u = uncond[k]
        if isinstance(c, Tensor) and isinstance(u, Tensor):
            if c.shape[1:] != u.shape[1:]:
                raise ValueError(f"cond[{k!r}] {tuple(c.shape)} and uncond[{k!r}] {tuple(u.shape)} "
                                 "differ beyond the batch dimension (pad them to the same length)")
            pairs[k] = (c, u)
        elif isinstance(c, Tensor) or isinstance(u, Tensor):
            raise ValueError(f"cond[{k!r}] and uncond[{k!r}] must both be tensors or both not")
        elif c is not u and c != u:
            raise ValueError(f"non-tensor kwarg {k!r} differs between cond and uncond")
        else:
            fixed[k] = c
    return pairs, fixed


def _fit_batch(v: Tensor, batch: int) -> Tensor:
    """Broadcast a batch-1 conditioning tensor to `batch` (one prompt, several seeds)."""
    if v.shape[0] == batch:
        return v
    if v.shape[0] == 1:
        return v.expand(batch, *v.shape[1:])
    raise ValueError(f"conditioning batch {v.shape[0]} does not match the sample batch {batch}")


def cfg_model_fn(model: Callable[..., Tensor], cond: Mapping[str, Any], uncond: Mapping[str, Any],
                 guidance: float | Tensor, interval: tuple[float, float] = (0.0, 1.0)) -> ModelFn:
    """A model_fn for classifier-free guidance: v = v_u + g (v_c - v_u), on all channels.

    `model(x, t, **kwargs)` is the interface; cond and uncond are its kwargs for the conditional and
    unconditional pass (a negative prompt is just another uncond). Both passes run as one batch of 2B
    (x and t repeated, tensor kwargs concatenated, cond first), and the output is split in two. With
    guidance == 1 the result is the conditional pass alone and the unconditional one is never run.
    Conditioning tensors with batch 1 are broadcast to the batch of x.

    guidance: a number, or a tensor that broadcasts against x (e.g. (1, 1, T, 1, 1): a scale per latent
    frame, so frames next to known ones can be guided less than the rest).
    interval: guidance applies only at times lo <= t <= hi; elsewhere the conditional pass alone runs
    (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval"). Strong guidance at the
    noisiest times mostly pushes samples towards a few modes, and at the last, nearly clean times it
    sharpens the fine detail into artefacts; the default (0, 1) guides everywhere.
    """
    lo, hi = float(interval[0]), float(interval[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got {interval}")

    def conditional(x: Tensor, t: Tensor) -> Tensor:
        kw = {k: _fit_batch(v, x.shape[0]) if isinstance(v, Tensor) else v for k, v in cond.items()}
        return model(x, t, **kw)

    if not isinstance(guidance, Tensor) and guidance == 1.0:
        return conditional

    pairs, fixed = _split_kwargs(cond, uncond)
    stacked: dict[int, dict[str, Tensor]] = {}  # batch size -> concatenated kwargs, built once

    def guided(x: Tensor, t: Tensor) -> Tensor:
        inside = (t >= lo) & (t <= hi)  # (B,)
        if not bool(inside.any()):
            return conditional(x, t)
        b = x.shape[0]
        if b not in stacked:
            stacked[b] = {k: torch.cat([_fit_batch(c, b), _fit_batch(u, b)]) for k, (c, u) in pairs.items()}
        kw = {**fixed, **stacked[b]}
        out = model(torch.cat([x, x]), torch.cat([t, t]), **kw)  # (2B, ...)
        v_c, v_u = out[:b], out[b:]
        v = v_u + guidance * (v_c - v_u)
        if not bool(inside.all()):  # a batch that straddles the interval's edge
            v = torch.where(inside.reshape(-1, *([1] * (v.ndim - 1))), v, v_c)
        return v

    return guided


# --- known frames ----------------------------------------------------------------------------------

def known_frames_fn(model_fn: ModelFn, known: Tensor, mask: Tensor, noise: Tensor) -> ModelFn:
    """A model_fn that keeps some latent frames on their exact path (image-to-video, extension...).

    known: (B, C, T, H, W) clean latents (only the frames in the mask are read); mask: (B, T) or (T,),
    1 for known frames; noise: the sampler's starting noise (B, C, T, H, W). The wrapped model is called
    with the known frames clean (as it was trained) and its velocity there is replaced by the path's own,
    noise - known, so every solver above (they are all exact on a constant velocity) carries them along
    x_t = (1 - t) known + t noise and lands on them exactly at t = 0.
    """
    T = known.shape[2]
    m = mask.to(known.dtype).reshape(-1, 1, T, 1, 1).bool()  # (B or 1, 1, T, 1, 1)
    v_known = noise - known  # (B, C, T, H, W)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        v = model_fn(torch.where(m, known, x), t)
        return torch.where(m, v_known, v)

    return fn
