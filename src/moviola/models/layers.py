"""Small building blocks shared by Moviola's transformers: RMSNorm, an MLP, sinusoidal timestep
embeddings and 3D rotary position embeddings (RoPE) over (time, height, width) patch coordinates.

RoPE is stored as complex rotations, one per pair of channels: rotating a (..., d) real vector by a
(..., d/2) complex table is a single complex multiply, and <rope(q, i), rope(k, j)> depends only on
the offset i - j along each axis, so one model handles any duration, size and aspect ratio.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension with a learned gain (no mean, no bias), computed
    in float32 (free for float32 inputs) and returned in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., dim) -> (..., dim), same dtype."""
        return F.rms_norm(x.float(), self.weight.shape, self.weight, self.eps).type_as(x)


class QKNorm(nn.Module):
    """RMSNorm of queries and keys stacked as (..., 2, heads, head_dim), each with its own gain: one
    normalisation for both (they come out of one fused qkv projection) instead of two."""

    def __init__(self, head_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(2, 1, head_dim))  # (q/k, heads, head_dim)

    def forward(self, qk: Tensor) -> Tensor:
        """qk: (..., 2, H, d) -> (..., 2, H, d) contiguous, float32 (the rotary embedding follows)."""
        return F.rms_norm(qk.float(), qk.shape[-1:], eps=self.eps) * self.weight


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation. Without autograd on the CPU it is computed through the identity
    0.5 * (1 + tanh(z)) = sigmoid(2z), in place, which is about twice as fast as ATen's tanh kernel
    there; the result matches `F.gelu(x, approximate="tanh")` to float32 rounding."""
    if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
        return F.gelu(x, approximate="tanh")
    a = 2 * math.sqrt(2 / math.pi)  # x * sigmoid(a * (x + 0.044715 x^3))
    return (x * x).mul_(a * 0.044715).add_(a).mul_(x).sigmoid_().mul_(x)


class MLP(nn.Module):
    """Linear -> GELU (tanh) -> Linear: the feed-forward of every block and the text embedder."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return self.fc2(gelu_tanh(self.fc1(x)))


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DiT and diffusers' `Timesteps`.

    t: (B,) float -> (B, dim) float32, [cos | sin] halves with geometric frequencies 1 .. 1/max_period.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> (B, dim): sinusoid of t * time_scale, then an MLP (Linear, SiLU, Linear).

    Scaling t to [0, 1000] spreads the sinusoid's frequencies over the range a unit interval needs.
    """

    def __init__(self, dim: int, freq_dim: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) float in [0, 1] -> (B, dim)."""
        emb = timestep_embedding(t * self.time_scale, self.freq_dim)  # (B, freq_dim)
        return self.fc2(F.silu(self.fc1(emb)))  # (B, dim)


# --- rotary position embeddings ------------------------------------------------------------------

def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head's channels between (time, height, width) as Wan does: 2 * (d // 6) channels each
    for height and width, the rest (at least as many) for time. Each part is even."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_1d(dim: int, positions: Tensor, theta: float = 10000.0) -> Tensor:
    """Rotations for one axis: positions (P,) -> complex64 (P, dim // 2), angle p * theta^(-2i/dim).
    Angles are computed in float64 so long sequences keep their precision."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None]  # (P, dim // 2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def rope_3d(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0,
            device: torch.device | str | None = None) -> Tensor:
    """Rotations for every cell of a (T', H', W') patch grid, in the row-major token order of patchify.

    Returns complex64 (T' * H' * W', head_dim // 2): [time | height | width] channel pairs, each axis
    rotated by its integer patch coordinate.
    """
    nt, nh, nw = grid
    dt, dh, dw = rope_axis_dims(head_dim)
    ft = rope_1d(dt, torch.arange(nt, device=device), theta)  # (T', dt/2)
    fh = rope_1d(dh, torch.arange(nh, device=device), theta)  # (H', dh/2)
    fw = rope_1d(dw, torch.arange(nw, device=device), theta)  # (W', dw/2)
    freqs = torch.cat([
        ft[:, None, None].expand(nt, nh, nw, -1),
        fh[None, :, None].expand(nt, nh, nw, -1),
        fw[None, None, :].expand(nt, nh, nw, -1),
    ], dim=-1)  # (T', H', W', head_dim/2)
    return freqs.reshape(nt * nh * nw, head_dim // 2)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate consecutive channel pairs (x[2i], x[2i+1]) of x by the complex table `freqs`.

    x: (..., d) real, any float dtype (rotated in float32); freqs: complex, broadcastable to (..., d/2).
    Returns (..., d) in x's dtype. Needs x's last dimension contiguous (true for views of a Linear output).
    """
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (..., d/2) complex
    return torch.view_as_real(xc * freqs).flatten(-2).type_as(x)  # (..., d)


# --- absolute positions --------------------------------------------------------------------------

POSITION_FREQS = 4  # sine/cosine pairs per axis
TIME_HORIZON = 16.0  # latent frames over which the time features make half a turn at their lowest frequency


def position_features(grid: tuple[int, int, int], device: torch.device | str | None = None) -> Tensor:
    """Where each token of a (T', H', W') grid sits, as features a Linear can read: (N, 6 * POSITION_FREQS + 1).

    RoPE tells a token only how far it is from another one. From pure noise that leaves it no way to know
    where the canvas edges are or which frame comes first, yet the world's prompts are about exactly
    that ("moves right" starts in the left third and ends to the right; "falls" starts near the top): a DiT
    with RoPE alone predicted the same centred mean for "moves left" and "moves right" at high noise. So
    height and width enter as fractions of the canvas (any size or aspect ratio: the walls are at 0 and 1),
    time as the latent frame index from the clip's start (frame 0, a single pixel frame in the causal
    VAE, also gets its own flag), each through sines and cosines of pi * k * position, k = 1 .. POSITION_FREQS.
    Row-major (t, h, w) token order, as patchify. (A 1,600-step fine-tune of that DiT with them,
    `configs/dit/abs_pos.toml`, still did not tell left from right: RoPE was not what held it back.)
    """
    nt, nh, nw = grid
    k = torch.arange(1, POSITION_FREQS + 1, device=device, dtype=torch.float32) * math.pi  # (F,)

    def axis(pos: Tensor) -> Tensor:  # (P,) -> (P, 2F)
        a = pos[:, None] * k[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=-1)

    ft = axis(torch.arange(nt, device=device, dtype=torch.float32) / TIME_HORIZON)  # (T', 2F)
    first = (torch.arange(nt, device=device) == 0).float()[:, None]  # (T', 1)
    fh = axis((torch.arange(nh, device=device, dtype=torch.float32) + 0.5) / nh)  # (H', 2F)
    fw = axis((torch.arange(nw, device=device, dtype=torch.float32) + 0.5) / nw)  # (W', 2F)
    feats = torch.cat([
        torch.cat([ft, first], dim=-1)[:, None, None].expand(nt, nh, nw, -1),
        fh[None, :, None].expand(nt, nh, nw, -1),
        fw[None, None, :].expand(nt, nh, nw, -1),
    ], dim=-1)  # (T', H', W', 6F + 1)
    return feats.reshape(nt * nh * nw, -1)


def position_feature_dim() -> int:
    return 6 * POSITION_FREQS + 1
