"""Moviola's diffusion transformer: a DiT over spacetime patches of VAE latents, conditioned on text.

The model maps noisy latents x_t, the flow time t in [0, 1] and text tokens to a velocity of the same
shape as the latents; it knows nothing of noise schedules (those live in `moviola.flow`), save that a model
configured to predict the clean sample (`prediction="sample"`, unused by the shipped configs) converts it to a
velocity through `flow.path.velocity_from_sample` before returning.

    x (B, C, T, H, W) --patchify--> tokens (B, N, D), N = T/pt * H/ph * W/pw   (+ absolute place, if abs_pos)
    t (B,) -> sinusoid -> MLP (+ pooled text) = c (B, D) --adaLN--> shift/scale/gate of every block
    context (B, L, text_dim) -> MLP -> (B, L, D), plus one learned null token every query may attend to
            (-> text_refiner blocks of self-attention over the tokens, if any)
    blocks: x += gate * SelfAttn(modulate(LN(x)))      QK-RMSNorm, 3D RoPE over (t, h, w), SDPA
            x += CrossAttn(LN(x), context)             keys/values from real text tokens only
            x += gate * MLP(modulate(LN(x)))
    final: modulate(LN(x)) -> Linear -> unpatchify -> v (B, C, T, H, W)

Positions enter through RoPE on integer patch coordinates, so one model handles any duration, size and
aspect ratio; with `abs_pos` each token also gets an embedding of where it sits on the canvas (fractions of
height and width) and in the clip (latent frame index), which RoPE alone can't tell it from noise. adaLN
gates, the cross-attention output and the final layer start at zero: every block is the identity and the
fresh model outputs exactly zero (DiT's adaLN-zero).

    model = DiT(PRESETS["small"])
    v = model(x, t, context, context_mask)              # (B, 16, T, H, W)
    model.save_pretrained(folder); model = DiT.from_pretrained(folder)   # a local folder; nothing is downloaded
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from moviola.config import from_dict, to_dict
from moviola.flow.path import velocity_from_sample
from moviola.models.layers import (MLP, QKNorm, RMSNorm, TimestepEmbedder, apply_rope, position_feature_dim,
                                   position_features, rope_1d, rope_3d, rope_axis_dims)

WEIGHTS_NAME = "dit.safetensors"  # with config.json beside it (moviola.layout)


# --- config --------------------------------------------------------------------------------------

PREDICTIONS = ("velocity", "sample")


@dataclass
class DiTConfig:
    """Architecture of a DiT. JSON-serialisable via `to_dict` / `from_dict`."""

    in_channels: int = 16  # latent channels; the output (velocity) has as many
    cond_channels: int = 0  # extra input channels (e.g. image conditioning + mask) that only widen patchify
    patch: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw) in latent frames / pixels
    dim: int = 192
    depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    ffn_dim: int = 0  # MLP hidden width; 0 means round(mlp_ratio * dim)
    text_dim: int = 384  # width of the text encoder's token embeddings (all-MiniLM-L6-v2)
    qk_norm: bool = True  # RMSNorm of queries and keys per head, in self- and cross-attention
    pooled_text: bool = True  # add the masked mean of the text tokens to the timestep conditioning
    shared_adaln: bool = False  # Wan-style: one adaLN projection for all blocks + a learned table per block
    abs_pos: bool = False  # add an embedding of each token's absolute place (`position_features`) to RoPE
    text_refiner: int = 0  # blocks of self-attention over the text tokens before any cross-attention reads them
    # What the last layer outputs: "velocity" (v = noise - x0, the usual) or "sample" (the clean latents x0,
    # turned into v = (x_t - x0) / t, so the loss and every sampler still see a velocity: JiT, Li & He 2025)
    prediction: str = "velocity"
    freq_dim: int = 256  # sinusoidal timestep embedding width
    time_scale: float = 1000.0  # t in [0, 1] is embedded as t * time_scale
    rope_theta: float = 10000.0
    eps: float = 1e-6
    gradient_checkpointing: bool = False  # recompute each block in backward (large presets on GPU)

    def __post_init__(self) -> None:
        self.patch = tuple(self.patch)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive ints (pt, ph, pw), got {self.patch!r}")
        if (min(self.in_channels, self.dim, self.depth, self.heads, self.text_dim) < 1
                or min(self.cond_channels, self.text_refiner) < 0):
            raise ValueError("in_channels, dim, depth, heads and text_dim must be positive; cond_channels and "
                             "text_refiner at least 0")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        rope_axis_dims(self.head_dim)  # raises if the head can't be split between t, h and w
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {', '.join(PREDICTIONS)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def mlp_dim(self) -> int:
        return self.ffn_dim or round(self.mlp_ratio * self.dim)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        """Build from a JSON/TOML dict; an unknown key or a wrong type is a ValueError (ConfigError)."""
        return from_dict(cls, d)


PRESETS: dict[str, DiTConfig] = {
    "tiny": DiTConfig(dim=32, depth=2, heads=2, freq_dim=64),  # tests
    "small": DiTConfig(dim=192, depth=6, heads=6),  # ~5M params, the CPU default
    "base": DiTConfig(dim=384, depth=12, heads=6),
    # Wan2.1-T2V-1.3B's dimensions (umT5-XXL text, one shared adaLN projection): the code that scales.
    "wan-1.3b": DiTConfig(dim=1536, depth=30, heads=12, ffn_dim=8960, text_dim=4096, shared_adaln=True,
                          gradient_checkpointing=True),
}


# --- patches -------------------------------------------------------------------------------------

def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, N, pt * ph * pw * C), tokens in row-major (t, h, w) order, each token's
    features ordered (pt, ph, pw, C). T, H and W must be multiples of the patch."""
    B, C, T, H, W = x.shape
    pt, ph, pw = patch
    x = x.view(B, C, T // pt, pt, H // ph, ph, W // pw, pw)  # (B, C, T', pt, H', ph, W', pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T', H', W', pt, ph, pw, C)
    return x.reshape(B, (T // pt) * (H // ph) * (W // pw), pt * ph * pw * C)  # (B, N, P * C)


def unpatchify(tokens: Tensor, patch: tuple[int, int, int], grid: tuple[int, int, int]) -> Tensor:
    """The inverse of `patchify`: (B, N, pt * ph * pw * C) and the (T', H', W') grid -> (B, C, T, H, W)."""
    B = tokens.shape[0]
    (pt, ph, pw), (nt, nh, nw) = patch, grid
    x = tokens.view(B, nt, nh, nw, pt, ph, pw, -1)  # (B, T', H', W', pt, ph, pw, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', pt, H', ph, W', pw)
    return x.reshape(B, x.shape[1], nt * pt, nh * ph, nw * pw)  # (B, C, T, H, W)


# --- blocks --------------------------------------------------------------------------------------

class SelfAttention(nn.Module):
    """Multi-head self-attention over video tokens: fused qkv, per-head QK-RMSNorm, 3D RoPE, SDPA.
    Queries and keys stay stacked through normalisation and rotation: one kernel each for both."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_qk = QKNorm(dim // heads, eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Tensor, bias: Tensor | None = None) -> Tensor:
        """x: (B, N, D); rope: complex (N, 1, 1, head_dim / 2); bias: additive key mask (B, 1, 1, N) or None
        -> (B, N, D)."""
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1))  # (B, N, 3, H, d)
        qk = apply_rope(self.norm_qk(qkv[:, :, :2]), rope).to(qkv.dtype)  # (B, N, 2, H, d)
        q, k, v = qk[:, :, 0], qk[:, :, 1], qkv[:, :, 2]  # 3 x (B, N, H, d), views
        if bias is not None:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, N, D), no copy: SDPA's output is (B, N, H, d) in memory


class CrossAttention(nn.Module):
    """Video tokens (queries) attend to text tokens (keys, values); `bias` masks out padding."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = RMSNorm(dim // heads, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim // heads, eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, bias: Tensor | None) -> Tensor:
        """x: (B, N, D); context: (B, L, D); bias: additive (B, 1, 1, L), 0 or -inf, or None -> (B, N, D)."""
        q = self.norm_q(self.q(x).unflatten(-1, (self.heads, -1)))  # (B, N, H, d)
        k, v = self.kv(context).unflatten(-1, (2, self.heads, -1)).unbind(2)  # 2 x (B, L, H, d)
        k = self.norm_k(k)  # (B, L, H, d)
        if bias is not None:
            bias = bias.to(q.dtype)  # SDPA wants a float mask in the queries' dtype (bf16 under autocast)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=bias)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, N, D)


class TextRefinerBlock(nn.Module):
    """Pre-norm self-attention (1D RoPE over token index, padding masked) and MLP over the text tokens, both
    residual with zero-initialised outputs, so a new refiner starts as the identity.

    Why: cross-attention reads a token only if some query attends to it, and a trained small DiT attended
    to colour and background words while giving each motion word under 4 % of every head's attention
    (`benchmarks/word_probe.py`): "moves left" and "moves right" made the same clip. Mixing the tokens
    first lets a motion word reach the words that are attended (its object's colour and shape). Tried on the
    shipped DiT (`configs/dit/text_refiner.toml`, 1,600 fine-tune steps): it did not change that.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.qk_norm, cfg.eps)
        self.mlp = MLP(cfg.dim, cfg.mlp_dim)

    def forward(self, x: Tensor, bias: Tensor | None, rope: Tensor) -> Tensor:
        """x: (B, L, D) text tokens; bias: (B, 1, 1, L) or None; rope: complex (L, 1, 1, head_dim / 2)."""
        D = x.shape[-1]
        x = x + self.attn(F.layer_norm(x, (D,), eps=self.eps), rope, bias)  # (B, L, D)
        return x + self.mlp(F.layer_norm(x, (D,), eps=self.eps))  # (B, L, D)


class DiTBlock(nn.Module):
    """Pre-norm block: adaLN-modulated self-attention and MLP with zero-initialised gates, and plain
    pre-norm cross-attention to the text in between (as in Wan)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.eps = cfg.eps
        self.attn = SelfAttention(dim, cfg.heads, cfg.qk_norm, cfg.eps)
        self.norm_cross = nn.LayerNorm(dim, eps=cfg.eps)
        self.cross = CrossAttention(dim, cfg.heads, cfg.qk_norm, cfg.eps)
        self.mlp = MLP(dim, cfg.mlp_dim)
        if cfg.shared_adaln:  # the model projects c once; each block adds its own learned offsets
            self.adaln = None
            self.adaln_table = nn.Parameter(torch.zeros(6, dim))
        else:  # DiT: each block projects c itself
            self.adaln = nn.Linear(dim, 6 * dim)
            self.adaln_table = None

    def forward(self, x: Tensor, c: Tensor, context: Tensor, bias: Tensor | None, rope: Tensor) -> Tensor:
        """x: (B, N, D); c: SiLU(conditioning) (B, D), or with `shared_adaln` the shared projection (B, 6, D);
        context: (B, L, D); bias: (B, 1, 1, L) or None; rope: complex (N, 1, 1, head_dim / 2) -> (B, N, D)."""
        D = x.shape[-1]
        mod = self.adaln(c).unflatten(1, (6, D)) if self.adaln is not None else c + self.adaln_table  # (B, 6, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unsqueeze(2).unbind(1)  # 6 x (B, 1, D)
        h = torch.addcmul(shift1, F.layer_norm(x, (D,), eps=self.eps), 1 + scale1)  # (B, N, D)
        x = torch.addcmul(x, gate1, self.attn(h, rope))  # (B, N, D)
        x = x + self.cross(self.norm_cross(x), context, bias)  # (B, N, D)
        h = torch.addcmul(shift2, F.layer_norm(x, (D,), eps=self.eps), 1 + scale2)  # (B, N, D)
        return torch.addcmul(x, gate2, self.mlp(h))  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a Linear to the patch values; both zero-initialised."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.adaln = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x: (B, N, D); c: SiLU(conditioning) (B, D) -> (B, N, out_dim)."""
        D = x.shape[-1]
        shift, scale = self.adaln(c).unsqueeze(1).chunk(2, dim=-1)  # 2 x (B, 1, D)
        return self.linear(torch.addcmul(shift, F.layer_norm(x, (D,), eps=self.eps), 1 + scale))  # (B, N, out)


# --- the model -----------------------------------------------------------------------------------

class DiT(nn.Module):
    """Text-conditioned diffusion transformer over spacetime latent patches; predicts a velocity.

    Blocks live in `self.blocks` (an nn.ModuleList) so a trainer can wrap each one for FSDP.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.gradient_checkpointing = cfg.gradient_checkpointing
        patch_volume = math.prod(cfg.patch)
        self.patch_embed = nn.Linear(patch_volume * (cfg.in_channels + cfg.cond_channels), cfg.dim)
        self.pos_embed = nn.Linear(position_feature_dim(), cfg.dim) if cfg.abs_pos else None
        self.time_embed = TimestepEmbedder(cfg.dim, cfg.freq_dim, cfg.time_scale)
        self.text_embed = MLP(cfg.text_dim, cfg.dim, cfg.dim)
        self.pooled_embed = nn.Linear(cfg.text_dim, cfg.dim) if cfg.pooled_text else None
        # Always attendable, so a query never sees an all-masked row (an empty prompt): no NaNs.
        self.null_token = nn.Parameter(torch.empty(1, 1, cfg.dim))
        self.adaln = nn.Linear(cfg.dim, 6 * cfg.dim) if cfg.shared_adaln else None
        self.text_refiner = nn.ModuleList([TextRefinerBlock(cfg) for _ in range(cfg.text_refiner)])
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final = FinalLayer(cfg.dim, patch_volume * cfg.in_channels, cfg.eps)
        self._grid_cache: dict[tuple, Tensor] = {}  # per-grid constants: RoPE tables, position features
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's initialisation: Xavier Linears with zero biases, N(0, 0.02) timestep MLP and null token, zeros for
        every adaLN projection, the cross-attention outputs, the absolute-position embedding and the final
        Linear (so blocks start as the identity and the output as zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.null_token, std=0.02)
        nn.init.normal_(self.time_embed.fc1.weight, std=0.02)
        nn.init.normal_(self.time_embed.fc2.weight, std=0.02)
        zero = [self.final.adaln, self.final.linear] + [m for m in (self.adaln, self.pos_embed) if m is not None]
        for block in self.text_refiner:
            zero += [block.attn.proj, block.mlp.fc2]
        for block in self.blocks:
            zero.append(block.cross.proj)
            if block.adaln is not None:
                zero.append(block.adaln)
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent (T, H, W) -> the token grid (T', H', W'); a ValueError if the patch doesn't divide it."""
        pt, ph, pw = self.config.patch
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent size (T={frames}, H={height}, W={width}) must be a multiple of the "
                             f"patch {self.config.patch}")
        return frames // pt, height // ph, width // pw

    def _cached(self, kind: str, grid: tuple[int, ...], device: torch.device, make) -> Tensor:
        key = (kind, grid, str(device))
        value = self._grid_cache.get(key)
        if value is None:
            value = self._grid_cache[key] = make()
        return value

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """Cached RoPE rotations for a token grid: complex64 (N, 1, 1, head_dim / 2) on `device`."""
        cfg = self.config
        return self._cached("rope", grid, device,
                            lambda: rope_3d(grid, cfg.head_dim, cfg.rope_theta, device)[:, None, None])

    def text_rope(self, length: int, device: torch.device) -> Tensor:
        """Cached 1D RoPE over text token index for the refiner: complex64 (length, 1, 1, head_dim / 2)."""
        cfg = self.config
        return self._cached("text_rope", (length,), device, lambda: rope_1d(
            cfg.head_dim, torch.arange(length, device=device), cfg.rope_theta)[:, None, None])

    def positions(self, grid: tuple[int, int, int], device: torch.device) -> Tensor:
        """Cached `position_features` of a token grid: (N, position_feature_dim()) on `device`."""
        return self._cached("positions", grid, device, lambda: position_features(grid, device))

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_mask: Tensor | None = None,
                cond: Tensor | None = None) -> Tensor:
        """Predict the flow velocity.

        Args:
            x: (B, in_channels, T, H, W) noisy latents; T, H, W multiples of the patch.
            t: (B,) or () float flow time in [0, 1].
            context: (B, L, text_dim) text token embeddings (L may be 0).
            context_mask: (B, L) bool, True for real tokens; None means all real.
            cond: (B, cond_channels, T, H, W) conditioning channels (`frame_cond`: known clean latent
                frames and their mask), only for a model with cond_channels > 0; None there means none
                known (text-only generation).
        Returns:
            (B, in_channels, T, H, W) velocity, in x's dtype (with prediction = "sample", the one implied
            by the clean latents the network predicts).
        """
        cfg = self.config
        if not isinstance(x, Tensor) or x.ndim != 5:
            raise ValueError(f"x must be a (B, C, T, H, W) tensor, got {type(x).__name__} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if not isinstance(t, Tensor):  # a Python number: one time for the whole batch
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        B, C, T, H, W = x.shape
        if C != cfg.in_channels:
            raise ValueError(f"x has {C} channels, the model expects in_channels={cfg.in_channels}")
        grid = self.grid(T, H, W)
        x_t = x  # (B, C, T, H, W), kept for prediction = "sample"
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context must be (B={B}, L, text_dim={cfg.text_dim}), got {tuple(context.shape)}")
        if context_mask is not None and context_mask.shape != context.shape[:2]:
            raise ValueError(f"context_mask must be {tuple(context.shape[:2])}, got {tuple(context_mask.shape)}")
        if cfg.cond_channels:
            if cond is None:  # nothing given: text-only generation (every frame to be made, mask all zero)
                cond = x.new_zeros(B, cfg.cond_channels, T, H, W)
            if cond.shape != (B, cfg.cond_channels, T, H, W):
                raise ValueError(f"cond must have shape {(B, cfg.cond_channels, T, H, W)}, got {tuple(cond.shape)}")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)  # (B, C + cond_channels, T, H, W)
        elif cond is not None:
            raise ValueError("cond given but the model has cond_channels=0")

        # Conditioning vector: time (+ pooled text) -> c (B, D)
        c = self.time_embed(t.expand(B))  # (B, D)
        if self.pooled_embed is not None:
            c = c + self.pooled_embed(_masked_mean(context, context_mask))  # (B, D)
        c = F.silu(c)  # (B, D), the input of every adaLN projection
        block_c = c if self.adaln is None else self.adaln(c).unflatten(1, (6, -1))  # (B, D) or (B, 6, D)

        # Text tokens, plus the null token that every query can attend to
        ctx = torch.cat([self.text_embed(context), self.null_token.expand(B, -1, -1)], dim=1)  # (B, L + 1, D)
        bias = None
        if context_mask is not None:
            keep = F.pad(context_mask.bool(), (0, 1), value=True)  # (B, L + 1)
            bias = torch.zeros(keep.shape, device=x.device).masked_fill_(~keep, float("-inf"))  # (B, L + 1)
            bias = bias[:, None, None, :]  # (B, 1, 1, L + 1)
        if len(self.text_refiner):
            text_rope = self.text_rope(ctx.shape[1], x.device)  # (L + 1, 1, 1, head_dim / 2)
            for block in self.text_refiner:
                ctx = block(ctx, bias, text_rope)  # (B, L + 1, D)

        rope = self.rope(grid, x.device)  # (N, 1, 1, head_dim / 2) complex
        # The residual stream stays float32: under bf16 autocast only the matmuls run in bf16
        h = self.patch_embed(patchify(x, cfg.patch)).float()  # (B, N, D)
        if self.pos_embed is not None:
            h = h + self.pos_embed(self.positions(grid, x.device)).float()  # (B, N, D) + (N, D)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, block_c, ctx, bias, rope, use_reentrant=False)  # (B, N, D)
            else:
                h = block(h, block_c, ctx, bias, rope)  # (B, N, D)
        out = unpatchify(self.final(h, c), cfg.patch, grid)  # (B, C, T, H, W)
        if cfg.prediction == "sample":  # out is x0: the velocity that takes x_t there in time t
            out = velocity_from_sample(x_t, out, t)  # (B, C, T, H, W)
        return out.to(x_t.dtype)  # (B, C, T, H, W)

    # --- persistence -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `dit.safetensors` (weights) and `config.json` (config), each atomically, into the DiT's own
        folder (a model folder's `dit/`); one whose config.json is another part's is refused."""
        from moviola.layout import save_part

        save_part(directory, "dit", self.state_dict(), self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> DiT:
        """Load what `save_pretrained` wrote, from that folder or from a model folder holding it in `dit/`
        (or, in the old flat layout, `dit.safetensors` + `dit.json`); no network. Returns the model in eval
        mode on `device`."""
        from moviola.layout import load_part, load_state

        cfg, weights = load_part(directory, "dit", str(device))
        model = cls(DiTConfig.from_dict(cfg))
        load_state(model, weights, directory)
        return model.to(device).eval()


# --- conditioning on known frames ----------------------------------------------------------------
#
# One mechanism serves image-to-video, extension, connection, loops and long videos: some latent frames are
# known (clean), the rest are generated. The model sees the known frames twice: in x itself (a sampler keeps
# them clean, `moviola.flow.samplers.known_frames_fn`) and in `cond` = [mask * latents, mask], so it can tell
# a clean frame from a noisy one at any t. It is trained with random masks (first frame, prefix, suffix,
# first + last) and no loss on the known frames.

def frame_cond(latents: Tensor, mask: Tensor) -> Tensor:
    """The `cond` input for known latent frames.

    Args:
        latents: (B, C, T, H, W) clean (normalised) latents; only the frames the mask keeps are read.
        mask: (B, T) or (T,), 1 where the frame is known, 0 where it is to be generated.
    Returns:
        (B, C + 1, T, H, W): the known frames (zeros elsewhere) and the mask broadcast over (H, W).
    """
    B, C, T, H, W = latents.shape
    m = mask.to(latents.dtype).reshape(-1, 1, T, 1, 1).expand(B, 1, T, H, W)  # (B, 1, T, H, W)
    return torch.cat([latents * m, m], dim=1)  # (B, C + 1, T, H, W)


def with_conditioning(model: DiT) -> DiT:
    """A copy of a text-only DiT that also takes `frame_cond` input (cond_channels = in_channels + 1).

    The new patch-embedding columns start at zero, so the copy computes exactly what the original did
    until it is fine-tuned with conditioning masks. A model that already has them is returned as is.
    """
    cfg = model.config
    want = cfg.in_channels + 1
    if cfg.cond_channels == want:
        return model
    if cfg.cond_channels:
        raise ValueError(f"model has cond_channels={cfg.cond_channels}; frame conditioning needs {want}")
    new = DiT(DiTConfig.from_dict({**cfg.to_dict(), "cond_channels": want}))
    sd = model.state_dict()
    P, C = math.prod(cfg.patch), cfg.in_channels
    w_old = sd.pop("patch_embed.weight")  # (D, P * C), features ordered (patch position, channel)
    w_new = torch.zeros(w_old.shape[0], P, C + want, dtype=w_old.dtype, device=w_old.device)
    w_new[:, :, :C] = w_old.view(-1, P, C)
    sd["patch_embed.weight"] = w_new.flatten(1)  # (D, P * (C + C + 1))
    new.load_state_dict(sd)
    return new.to(w_old.device).train(model.training)


def with_extras(model: DiT, *, abs_pos: bool = False, text_refiner: int = 0) -> DiT:
    """A copy of a trained DiT with parts it lacks added: the absolute-position embedding, or text refiner
    blocks up to `text_refiner`. The new parts start as the identity (zero-initialised outputs), so the copy
    computes exactly what the original did until it is fine-tuned. With nothing to add, the model itself."""
    cfg = model.config
    changes = {k: v for k, v in (("abs_pos", abs_pos or cfg.abs_pos),
                                 ("text_refiner", max(text_refiner, cfg.text_refiner))) if v != getattr(cfg, k)}
    if not changes:
        return model
    new = DiT(DiTConfig.from_dict({**cfg.to_dict(), **changes}))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or not all(k.startswith(("pos_embed.", "text_refiner.")) for k in missing):
        raise RuntimeError(f"with_extras: unexpected state dict difference (missing {missing}, "
                           f"unexpected {unexpected})")
    device = next(model.parameters()).device
    return new.to(device).train(model.training)


def _masked_mean(context: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over real tokens: (B, L, E), (B, L) bool -> (B, E); zeros where a sample has none."""
    if mask is None:
        return context.mean(dim=1) if context.shape[1] else context.new_zeros(context.shape[0], context.shape[2])
    w = mask.to(context.dtype)[..., None]  # (B, L, 1)
    return (context * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)  # (B, E)
