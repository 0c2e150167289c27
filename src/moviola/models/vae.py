"""Moviola's causal video VAE: 4x temporal and 8x spatial compression, streamed through conv caches.

A clip of 1 + 4k frames, (B, 3, T, H, W) in [-1, 1], maps to latents (B, C, 1 + k, H/8, W/8). Every
temporal operation is causal: latent frame j sees input frames <= 4j, and decoded frame f sees latent
frames <= ceil(f / 4). Frame 0 is encoded on its own, so an image is a one-frame video.

Because nothing looks ahead in time and no normalisation mixes positions (RMSNorm over channels only),
a clip can be processed in pieces: each causal conv carries its last input frames in a `StreamState`,
and chunked output equals one-shot output. That is how a clip of any length is encoded or decoded in
constant memory (`encode_stream`, `decode_stream`). Frames larger than the training size are split into
overlapping spatial tiles whose seams are blended with linear ramps (`tile_latent=`).

    vae = CausalVAE(PRESETS["default"])
    z = vae.normalize(vae.encode(video).mean)           # (B, 16, 1 + (T-1)/4, H/8, W/8)
    for frames in vae.decode_stream([vae.denormalize(z)], clamp=True):
        writer.write(frames)                            # (B, 3, 1 or 4, H, W)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

WEIGHTS_NAME = "vae.safetensors"  # with config.json beside it (moviola.layout)


# --- config --------------------------------------------------------------------------------------

@dataclass
class VAEConfig:
    """Architecture of a CausalVAE. Level i works at 1/2^i resolution with base_channels * channel_mult[i]
    channels; temporal_downsample[i] says whether going from level i to level i + 1 also halves time."""

    in_channels: int = 3
    latent_channels: int = 16
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1  # residual blocks per level in the encoder
    decoder_res_blocks: int = 2  # and in the decoder, which does more of the work
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    full_res_temporal_kernel: int = 1  # temporal kernel at level 0; 1 = spatial-only convs, fast
    padding_mode: str = "zeros"  # spatial padding, "zeros" or "replicate"; time is always zero-padded
    # Parameter-free shortcuts around every resampling and around the latent bottleneck (average-pool /
    # repeat plus channel averaging / repetition, as in DC-AE's residual autoencoding): the network starts
    # near "latent = pooled image, output = upsampled latent" and learns the residual, which trains many
    # times faster than learning the whole mapping through 16-channel full-resolution layers.
    shortcuts: bool = True
    # The decoder's own widths (0 / empty: the encoder's). A wider decoder can be trained later on a frozen
    # encoder (`moviola train vae --init_from`), so the latent space, and the diffusion model trained in
    # it, stay as they are while reconstructions get sharper.
    decoder_base_channels: int = 0
    decoder_channel_mult: tuple[int, ...] = ()
    # The decoder's temporal kernel at full resolution (0: full_res_temporal_kernel). Most of the world error
    # is at the edges of moving objects, and a spatial-only full-resolution level places them frame by frame;
    # a decoder with kernel 3 there can be grown from a shipped one on its frozen encoder (`_init_from`
    # of `moviola.train.vae` puts the old kernel in the newest tap, so training starts from the same output).
    decoder_full_res_temporal_kernel: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, tuple):
                if not isinstance(value, (list, tuple)):
                    raise ValueError(f"VAEConfig.{f.name} must be a list, got {value!r}")
                value = tuple(value)
                setattr(self, f.name, value)
                kinds = {type(v) for v in default} or {int}
                if any(type(v) not in kinds for v in value):
                    raise ValueError(f"VAEConfig.{f.name} must hold {kinds.pop().__name__}s, got {value!r}")
            elif type(value) is not type(default):
                raise ValueError(f"VAEConfig.{f.name} must be {type(default).__name__}, got {value!r}")
        if self.decoder_channel_mult and len(self.decoder_channel_mult) != len(self.channel_mult):
            raise ValueError("decoder_channel_mult needs as many levels as channel_mult")
        if self.decoder_base_channels < 0 or min(self.decoder_channel_mult, default=1) < 1:
            raise ValueError("decoder_base_channels and decoder_channel_mult must be positive (0 / empty: the encoder's)")
        if len(self.temporal_downsample) != len(self.channel_mult) - 1:
            raise ValueError("temporal_downsample needs one entry per downsampling (len(channel_mult) - 1)")
        if self.padding_mode not in ("replicate", "zeros"):
            raise ValueError(f"padding_mode must be 'replicate' or 'zeros', got {self.padding_mode!r}")
        if self.full_res_temporal_kernel < 1 or min(self.channel_mult) < 1 or self.base_channels < 1:
            raise ValueError("kernel sizes, channel_mult and base_channels must be positive")
        if self.decoder_full_res_temporal_kernel < 0:
            raise ValueError("decoder_full_res_temporal_kernel must be positive (0: full_res_temporal_kernel)")

    @property
    def channels(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    @property
    def decoder_channels(self) -> list[int]:
        return [(self.decoder_base_channels or self.base_channels) * m
                for m in (self.decoder_channel_mult or self.channel_mult)]

    def encoder_fields(self) -> dict:
        """The fields that shape the encoder, hence the latent space."""
        return {k: v for k, v in self.to_dict().items() if not k.startswith("decoder_")}

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        """Build from a JSON/TOML dict; an unknown key or a wrong type is a ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"unknown VAEConfig key {key!r} (known: {', '.join(sorted(known))})")
        return cls(**d)


PRESETS: dict[str, VAEConfig] = {
    # a few thousand parameters: tests only
    "tiny": VAEConfig(latent_channels=4, base_channels=4, channel_mult=(1, 1, 1, 1), num_res_blocks=1,
                      decoder_res_blocks=1),
    # the shipped model: 1.87M parameters (7.5 MB in fp32); 64 channels only at 1/4 and 1/8 resolution,
    # 16 spatial-only channels at full resolution, so decoding 17 frames of 64x64 takes ~0.1 s on 2 cores
    "default": VAEConfig(),
}


# --- building blocks -----------------------------------------------------------------------------

class StreamState:
    """What every causal conv of one stream carries between chunks: its last unconsumed input frames.

    One per stream (one clip being encoded or decoded); two streams must not share one. Entries are
    keyed by module; a tiled stream keeps one child state per spatial tile.
    """

    def __init__(self) -> None:
        self.frames: dict[nn.Module, Tensor] = {}
        self.started: set[nn.Module] = set()  # upsamplers that have emitted the clip's first frame
        self.tiles: dict[tuple[int, int], StreamState] = {}

    def tile(self, iy: int, ix: int) -> StreamState:
        return self.tiles.setdefault((iy, ix), StreamState())

    def num_elements(self) -> int:
        """Total cached tensor elements: constant once a stream is running, whatever its length."""
        return sum(t.numel() for t in self.frames.values()) + sum(t.num_elements() for t in self.tiles.values())


class CausalConv3d(nn.Module):
    """3D conv that pads only the past in time (kt - 1 zero frames) and 'same' in space.

    Given a StreamState, the past frames are the previous chunk's last inputs instead of zeros, so a
    clip fed in chunks gives the same output as the clip fed whole. A temporal stride s maps
    T = s*m + 1 frames to m + 1: output frame j sees input frames s*j - kt + 1 .. s*j.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (3, 3, 3),
                 stride: tuple[int, int, int] = (1, 1, 1), padding_mode: str = "zeros") -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.kt, self.st = kt, stride[0]
        self.space_pad = (kw // 2, kw // 2, kh // 2, kh // 2)
        self.replicate = padding_mode == "replicate" and kh * kw > 1
        builtin_pad = (0, 0, 0) if self.replicate else (0, kh // 2, kw // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=builtin_pad)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        """x: (B, C, T, H, W) -> (B, C', T', H / sh, W / sw)."""
        if self.kt > 1:
            past = state.frames.get(self) if state is not None else None
            if past is None:  # start of the clip: zeros
                past = x.new_zeros(*x.shape[:2], self.kt - 1, *x.shape[3:])
            x = torch.cat([past, x], dim=2)  # (B, C, kt - 1 + T, H, W) in one-shot and first chunk
            if state is not None:  # keep what the next output window will need
                used = ((x.shape[2] - self.kt) // self.st + 1) * self.st
                state.frames[self] = x[:, :, used:].clone()
        if self.replicate:
            x = F.pad(x, (*self.space_pad, 0, 0), mode="replicate")
        return _conv3d(self.conv, x)


def _conv3d(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """conv(x), sending fp32 CPU convs straight to oneDNN: PyTorch's dispatch heuristic routes batch-1
    3D convs with small B*C*T*H to its slow reference kernel, 2-10x slower for this model's shapes."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and _ONEDNN and not torch.is_autocast_enabled("cpu"):
        return torch.ops.aten.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride,
                                                 conv.dilation, conv.groups)
    return conv(x)


_ONEDNN = torch.backends.mkldnn.is_available()


class RMSNorm(nn.Module):
    """Normalises each position's channel vector to unit RMS with a learnable gain.

    Nothing is pooled over time or space, which is what keeps the model causal and streamable
    (GroupNorm over T*H*W would not be).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T, H, W) -> same."""
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # low precision: normalise in fp32
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.gain.view(1, -1, 1, 1, 1).to(x.dtype)


class ResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))) at constant channels."""

    def __init__(self, channels: int, kt: int, padding_mode: str) -> None:
        super().__init__()
        self.norm1 = RMSNorm(channels)
        self.conv1 = CausalConv3d(channels, channels, (kt, 3, 3), padding_mode=padding_mode)
        self.norm2 = RMSNorm(channels)
        self.conv2 = CausalConv3d(channels, channels, (kt, 3, 3), padding_mode=padding_mode)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), state)
        h = self.conv2(F.silu(self.norm2(h)), state)
        return x + h


def regroup_channels(x: Tensor, channels: int) -> Tensor:
    """(B, C, ...) -> (B, channels, ...) without parameters: average groups of C / channels channels, or
    repeat each channel channels / C times."""
    c = x.shape[1]
    if c == channels:
        return x
    if c % channels == 0:
        return x.unflatten(1, (channels, c // channels)).mean(2)
    if channels % c == 0:
        return x.repeat_interleave(channels // c, dim=1)
    raise ValueError(f"cannot regroup {c} channels into {channels}")


class Downsample(nn.Module):
    """Stride-2 conv halving H and W, and time too when temporal: T = 2m + 1 -> m + 1, output frame j
    sees input frames 2j - 2 .. 2j, so frame 0 stays alone. With `shortcut`, adds the 2x2-average-pooled
    input at frame 2j, its channels regrouped."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool, kt: int, padding_mode: str,
                 shortcut: bool = False) -> None:
        super().__init__()
        kernel, stride = ((3, 3, 3), (2, 2, 2)) if temporal else ((kt, 3, 3), (1, 2, 2))
        self.conv = CausalConv3d(in_channels, out_channels, kernel, stride, padding_mode)
        self.temporal, self.shortcut, self.out_channels = temporal, shortcut, out_channels

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        y = self.conv(x, state)  # (B, C', T', H/2, W/2)
        if not self.shortcut:
            return y
        if self.temporal:
            # Output frame j sits at input frame 2j: in the clip's first chunk (odd length) those are
            # frames 0, 2, ...; a later chunk (even length) starts one past a kept frame: 1, 3, ...
            first = state is None or self not in state.started
            x = x[:, :, 0::2] if first else x[:, :, 1::2]
            if state is not None:
                state.started.add(self)
        sc = F.avg_pool3d(x, (1, 2, 2))  # (B, C, T', H/2, W/2)
        return y + regroup_channels(sc, self.out_channels)


class Upsample(nn.Module):
    """Doubles H and W (nearest + conv), and time too when temporal: a causal conv makes 2C channels that
    are interleaved into 2T frames, and the clip's very first frame is dropped (T -> 2T - 1)."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool, padding_mode: str,
                 shortcut: bool = False) -> None:
        super().__init__()
        self.shortcut, self.out_channels = shortcut, out_channels
        self.time_conv = CausalConv3d(in_channels, 2 * in_channels, (3, 1, 1)) if temporal else None
        self.conv = CausalConv3d(in_channels, out_channels, (1, 3, 3), padding_mode=padding_mode)  # per frame
        if self.time_conv is not None:  # start as frame repetition: both new frames copy the current one
            w = self.time_conv.conv.weight  # (2C, C, 3, 1, 1)
            with torch.no_grad():
                w.zero_()
                eye = torch.eye(in_channels)
                w[:in_channels, :, 2, 0, 0] = eye
                w[in_channels:, :, 2, 0, 0] = eye
                self.time_conv.conv.bias.zero_()

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        """x: (B, C, T, H, W) -> (B, C', 2T - 1 or 2T, 2H, 2W); 2T - 1 on the clip's first chunk."""
        sc = x
        if self.time_conv is not None:
            b, c, t, h, w = x.shape
            y = self.time_conv(x, state).view(b, 2, c, t, h, w)  # (B, 2, C, T, H, W)
            x = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # frames 2i, 2i+1 from input i
            sc = sc.repeat_interleave(2, dim=2)  # the shortcut repeats each frame
            if state is None or self not in state.started:
                x, sc = x[:, :, 1:], sc[:, :, 1:]  # frame 0 of the clip maps to one frame
                if state is not None:
                    state.started.add(self)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T', 2H, 2W)
        y = self.conv(x, state)
        if not self.shortcut:
            return y
        sc = F.interpolate(sc, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return y + regroup_channels(sc, self.out_channels)


def _level_kt(cfg: VAEConfig, level: int, decoder: bool = False) -> int:
    """Temporal kernel of the convs working at a resolution level (only level 0 may be spatial-only)."""
    if level > 0:
        return 3
    return (decoder and cfg.decoder_full_res_temporal_kernel) or cfg.full_res_temporal_kernel


class Encoder(nn.Module):
    """(B, 3, 1 + 4k, H, W) -> moments (B, 2 * latent_channels, 1 + k, H/8, W/8): mean then logvar."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, pm = cfg.channels, cfg.padding_mode
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], (_level_kt(cfg, 0), 3, 3), padding_mode=pm)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += [ResBlock(c, _level_kt(cfg, i), pm) for _ in range(cfg.num_res_blocks)]
            if i < len(ch) - 1:
                layers.append(Downsample(c, ch[i + 1], cfg.temporal_downsample[i], _level_kt(cfg, i), pm,
                                         cfg.shortcuts))
        self.layers = nn.ModuleList(layers)
        self.norm_out = RMSNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, (3, 3, 3), padding_mode=pm)
        self.shortcuts = cfg.shortcuts
        # Start with a narrow posterior (std ~0.05). At the default logvar ~0 the sampled noise drowns the
        # small initial means, the decoder learns to ignore its input and training sits for thousands of
        # steps at the mean-colour plateau (measured: 17.5 dB world PSNR after 300 steps either way).
        with torch.no_grad():
            self.conv_out.conv.bias[cfg.latent_channels:].fill_(-6.0)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv_in(x, state)  # (B, C0, T, H, W)
        for layer in self.layers:
            h = layer(h, state)  # down to (B, C3, t, H/8, W/8)
        moments = self.conv_out(F.silu(self.norm_out(h)), state)  # (B, 2 * latent, t, H/8, W/8)
        if self.shortcuts:  # the mean starts as the pooled features, channel groups averaged
            mean, logvar = moments.chunk(2, dim=1)
            moments = torch.cat([mean + regroup_channels(h, mean.shape[1]), logvar], dim=1)
        return moments


class Decoder(nn.Module):
    """(B, latent_channels, 1 + k, h, w) -> (B, 3, 1 + 4k, 8h, 8w), unbounded (about [-1, 1])."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, pm = cfg.decoder_channels, cfg.padding_mode
        self.conv_in = CausalConv3d(cfg.latent_channels, ch[-1], (3, 3, 3), padding_mode=pm)
        self.shortcuts = cfg.shortcuts
        layers: list[nn.Module] = []
        for i in reversed(range(len(ch))):
            kt = _level_kt(cfg, i, decoder=True)
            layers += [ResBlock(ch[i], kt, pm) for _ in range(cfg.decoder_res_blocks)]
            if i > 0:
                layers.append(Upsample(ch[i], ch[i - 1], cfg.temporal_downsample[i - 1], pm, cfg.shortcuts))
        self.layers = nn.ModuleList(layers)
        self.norm_out = RMSNorm(ch[0])
        kt0 = _level_kt(cfg, 0, decoder=True)
        self.conv_out = CausalConv3d(ch[0], cfg.in_channels, (kt0, 3, 3), padding_mode=pm)

    def forward(self, z: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv_in(z, state)  # (B, C3, t, h, w)
        if self.shortcuts:
            h = h + regroup_channels(z, h.shape[1])
        for layer in self.layers:
            h = layer(h, state)  # up to (B, C0, T, 8h, 8w)
        return self.conv_out(F.silu(self.norm_out(h)), state)  # (B, 3, T, 8h, 8w)


@dataclass
class DiagonalGaussian:
    """The encoder's posterior q(z | x) = N(mean, exp(logvar)); tensors (B, C, t, h, w)."""

    mean: Tensor
    logvar: Tensor

    def __post_init__(self) -> None:
        self.logvar = self.logvar.clamp(-30.0, 20.0)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> Tensor:
        """KL(q || N(0, 1)) per latent element, (B, C, t, h, w); `.kl().mean()` is nats per element."""
        mean, logvar = self.mean.float(), self.logvar.float()  # fp32 even from a bf16 (autocast) encoder
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)

    @staticmethod
    def cat(parts: list[DiagonalGaussian]) -> DiagonalGaussian:
        """Join chunks along time."""
        return DiagonalGaussian(torch.cat([p.mean for p in parts], 2), torch.cat([p.logvar for p in parts], 2))


# --- tiling and chunking helpers -----------------------------------------------------------------

def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced starts of tiles of length `tile` covering [0, size), neighbours overlapping >= overlap."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(length: int, before: int, after: int) -> Tensor:
    """Blend weights (length,) along one tile axis, given its overlaps with the previous and next tile.

    Each overlap is cross-faded linearly over its middle half; its outer quarter, where the tile's own
    border padding distorts it most, gets no weight. Two tiles' weights over a shared overlap sum to one.
    """
    i = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    for overlap, distance in ((before, i), (after, length - i)):
        if overlap:
            margin = overlap // 4
            w = torch.minimum(w, ((distance - margin) / (overlap - 2 * margin)).clamp(0.0, 1.0))
    return w


def _rechunk(chunks: Iterable[Tensor], first: int, size: int, multiple: int) -> Iterator[Tensor]:
    """Regroup a stream of (B, C, T_i, H, W) chunks: `first` frames, then `size` at a time, then the rest,
    which must be a multiple of `multiple` frames. Holds at most one regrouped chunk of frames."""
    if isinstance(chunks, Tensor):
        chunks = [chunks]
    buffer: list[Tensor] = []
    have, need = 0, first
    for chunk in chunks:
        buffer.append(chunk)
        have += chunk.shape[2]
        while have >= need:
            x = torch.cat(buffer, dim=2) if len(buffer) > 1 else buffer[0]
            buffer = [x[:, :, need:]] if have > need else []
            have -= need
            yield x[:, :, :need]
            need = size
    if have:
        if have % multiple:
            raise ValueError(f"stream length must be 1 + {multiple}k frames; {have} frames left over at the end")
        yield torch.cat(buffer, dim=2)


# --- the model -----------------------------------------------------------------------------------

class CausalVAE(nn.Module):
    """Causal video VAE with streaming (constant memory in time) and spatial tiling.

    `forward` is the training path; `encode`/`decode` process a clip at once; `encode_stream`/
    `decode_stream` process it chunk by chunk with identical results. Latents from `encode` are raw;
    `normalize` maps them to the unit-scale space the diffusion model works in.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latent_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latent_std", torch.ones(config.latent_channels))

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latents of a (3, frames, height, width) clip."""
        self._check_video(frames, height, width)
        s = self.spatial_factor
        return (self.config.latent_channels, 1 + (frames - 1) // self.temporal_factor, height // s, width // s)

    def _check_input(self, x, channels: int, what: str) -> None:
        """A clear error for an input that is not a (B, channels, T, H, W) floating-point tensor."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 5 or x.shape[1] != channels:
            raise ValueError(f"{what} must be (B, {channels}, T, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{what} must be floating point (pixels in [-1, 1]), got {x.dtype}")

    def _check_video(self, frames: int, height: int, width: int) -> None:
        tf, s = self.temporal_factor, self.spatial_factor
        if (frames - 1) % tf or frames < 1:
            raise ValueError(f"clips must have 1 + {tf}k frames, got {frames}")
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s}, got {height}x{width}")

    # --- one-shot ------------------------------------------------------------------------------

    def encode(self, x: Tensor, tile_latent: tuple[int, int] | None = None, tile_overlap: int = 4) -> DiagonalGaussian:
        """x: (B, 3, 1 + 4k, H, W) in [-1, 1] -> posterior over (B, C, 1 + k, H/8, W/8).

        tile_latent=(h, w) encodes overlapping tiles of (8h, 8w) pixels, tile_overlap latents apart.
        """
        self._check_input(x, self.config.in_channels, "x")
        self._check_video(*x.shape[2:])
        moments = self._tiled(self.encoder, x.to(next(self.parameters()).dtype), tile_latent, tile_overlap,
                              encode=True)
        return DiagonalGaussian(*moments.chunk(2, dim=1))

    def decode(self, z: Tensor, tile_latent: tuple[int, int] | None = None, tile_overlap: int = 4,
               clamp: bool = False) -> Tensor:
        """z: (B, C, 1 + k, h, w) raw latents -> (B, 3, 1 + 4k, 8h, 8w), about [-1, 1] (clamp=True: exactly)."""
        self._check_input(z, self.config.latent_channels, "z")
        x = self._tiled(self.decoder, z.to(next(self.parameters()).dtype), tile_latent, tile_overlap, encode=False)
        return x.clamp(-1.0, 1.0) if clamp else x

    def forward(self, x: Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussian]:
        """Training path: x (B, 3, T, H, W) -> (reconstruction (B, 3, T, H, W), posterior)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mean
        return self.decoder(z), posterior

    # --- streaming -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_stream(self, chunks: Iterable[Tensor], frames_per_chunk: int = 4,
                      tile_latent: tuple[int, int] | None = None, tile_overlap: int = 4) -> Iterator[DiagonalGaussian]:
        """Encode a stream of frame chunks (B, 3, T_i, H, W) of any sizes, in constant memory.

        Frames are regrouped as frame 0 alone, then `frames_per_chunk` (a multiple of 4) at a time; yields
        the posterior of latent frame 0, then of each next frames_per_chunk / 4 latent frames. The stream
        must total 1 + 4k frames. Concatenated, the output equals `encode` of the whole clip.
        """
        tf = self.temporal_factor
        if frames_per_chunk % tf or frames_per_chunk < tf:
            raise ValueError(f"frames_per_chunk must be a positive multiple of {tf}")
        state = StreamState()
        for x in _rechunk(chunks, 1, frames_per_chunk, tf):
            yield self.encode_chunk(x, state, tile_latent, tile_overlap)

    @torch.no_grad()
    def decode_stream(self, latent_chunks: Iterable[Tensor], latents_per_chunk: int = 1,
                      tile_latent: tuple[int, int] | None = None, tile_overlap: int = 4,
                      clamp: bool = False) -> Iterator[Tensor]:
        """Decode a stream of raw latent chunks (B, C, t_i, h, w) in constant memory, yielding frames as they
        are ready: (B, 3, 1, 8h, 8w) for latent frame 0, then (B, 3, 4 * latents_per_chunk, 8h, 8w).

        Only the conv caches persist between chunks; no decoded frame is kept. Concatenated, the output
        equals `decode` of the whole latent clip.
        """
        if latents_per_chunk < 1:
            raise ValueError("latents_per_chunk must be >= 1")
        state = StreamState()
        for z in _rechunk(latent_chunks, 1, latents_per_chunk, 1):
            yield self.decode_chunk(z, state, tile_latent, tile_overlap, clamp)

    def encode_chunk(self, x: Tensor, state: StreamState, tile_latent: tuple[int, int] | None = None,
                     tile_overlap: int = 4) -> DiagonalGaussian:
        """Encode the next frames of a stream: (B, 3, 1, H, W) first, then (B, 3, 4m, H, W) ->
        posterior over (B, C, 1 or m, H/8, W/8). `state` carries the causal context between calls."""
        self._check_video(1, *x.shape[3:])
        moments = self._tiled(self.encoder, x, tile_latent, tile_overlap, encode=True, state=state)
        return DiagonalGaussian(*moments.chunk(2, dim=1))

    def decode_chunk(self, z: Tensor, state: StreamState, tile_latent: tuple[int, int] | None = None,
                     tile_overlap: int = 4, clamp: bool = False) -> Tensor:
        """Decode the next raw latent frames of a stream: (B, C, m, h, w) -> (B, 3, 4m, 8h, 8w), or
        4m - 3 frames on the stream's first call. `state` carries the causal context between calls."""
        x = self._tiled(self.decoder, z, tile_latent, tile_overlap, encode=False, state=state)
        return x.clamp(-1.0, 1.0) if clamp else x

    def encode_video(self, x: Tensor, chunked: bool = True, **kwargs) -> DiagonalGaussian:
        """Encode a whole clip (B, 3, 1 + 4k, H, W), through `encode_stream` when chunked."""
        # the checks and the cast `encode` makes (a uint8 or float64 clip had met a raw PyTorch error here)
        self._check_input(x, self.config.in_channels, "x")
        self._check_video(*x.shape[2:])
        x = x.to(next(self.parameters()).dtype)
        if not chunked:
            return self.encode(x, **kwargs)
        return DiagonalGaussian.cat(list(self.encode_stream([x], **kwargs)))

    def decode_video(self, z: Tensor, chunked: bool = True, **kwargs) -> Tensor:
        """Decode whole raw latents (B, C, t, h, w) to (B, 3, 1 + 4(t-1), 8h, 8w), through `decode_stream`
        when chunked (the result is still held whole: stream with `decode_stream` to write as you go)."""
        self._check_input(z, self.config.latent_channels, "z")
        if z.shape[2] < 1:
            raise ValueError(f"z has no latent frames: shape {tuple(z.shape)}")
        z = z.to(next(self.parameters()).dtype)
        if not chunked:
            return self.decode(z, **kwargs)
        return torch.cat(list(self.decode_stream([z], **kwargs)), dim=2)

    # --- tiling --------------------------------------------------------------------------------

    def _tiled(self, fn: nn.Module, x: Tensor, tile_latent: tuple[int, int] | None, overlap: int, encode: bool,
               state: StreamState | None = None) -> Tensor:
        """Apply the encoder or decoder `fn` to overlapping spatial tiles of x and blend them.

        Tiles are laid on the latent grid; each tile has its own StreamState when streaming. Blending uses
        linear ramps across every overlap, normalised by the summed weights.
        """
        if tile_latent is None:
            return fn(x, state)
        s = self.spatial_factor
        in_scale, out_scale = (s, 1) if encode else (1, s)
        grid_h, grid_w = x.shape[-2] // in_scale, x.shape[-1] // in_scale
        tile_h, tile_w = min(tile_latent[0], grid_h), min(tile_latent[1], grid_w)
        if (tile_h, tile_w) == (grid_h, grid_w):  # one tile covers it: no seams to blend (a clip smaller than a
            return fn(x, state)  # tile had been refused for its overlap)
        split = [t for t, g in ((tile_h, grid_h), (tile_w, grid_w)) if t < g]  # the sides cut into tiles
        if overlap * 2 > min(split):
            raise ValueError(f"tile_overlap {overlap} must be at most half the tile size {tile_h}x{tile_w}")
        ys, xs = _tile_starts(grid_h, tile_h, overlap), _tile_starts(grid_w, tile_w, overlap)
        out = weight = None
        for iy, y0 in enumerate(ys):
            ramp_y = _ramp(tile_h * out_scale,
                           (ys[iy - 1] + tile_h - y0) * out_scale if iy > 0 else 0,
                           (y0 + tile_h - ys[iy + 1]) * out_scale if iy + 1 < len(ys) else 0)
            for ix, x0 in enumerate(xs):
                ramp_x = _ramp(tile_w * out_scale,
                               (xs[ix - 1] + tile_w - x0) * out_scale if ix > 0 else 0,
                               (x0 + tile_w - xs[ix + 1]) * out_scale if ix + 1 < len(xs) else 0)
                tile_state = state.tile(iy, ix) if state is not None else None
                tile = x[..., y0 * in_scale:(y0 + tile_h) * in_scale, x0 * in_scale:(x0 + tile_w) * in_scale]
                y = fn(tile, tile_state)  # (B, C', T', tile_h * out_scale, tile_w * out_scale)
                if out is None:
                    out = y.new_zeros(*y.shape[:3], grid_h * out_scale, grid_w * out_scale, dtype=torch.float32)
                    weight = torch.zeros(grid_h * out_scale, grid_w * out_scale, device=y.device)
                w = (ramp_y[:, None] * ramp_x[None, :]).to(y.device)  # (th, tw)
                oy, ox = y0 * out_scale, x0 * out_scale
                out[..., oy:oy + w.shape[0], ox:ox + w.shape[1]] += y.float() * w
                weight[oy:oy + w.shape[0], ox:ox + w.shape[1]] += w
        return (out / weight).to(y.dtype)

    # --- latent statistics ---------------------------------------------------------------------

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents (B, C, t, h, w) -> unit-scale latents for the diffusion model."""
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of `normalize`."""
        return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store per-channel statistics (C,) of raw latents over the training data."""
        self.latent_mean.copy_(torch.as_tensor(mean, dtype=self.latent_mean.dtype))
        self.latent_std.copy_(torch.as_tensor(std, dtype=self.latent_std.dtype))

    # --- files ---------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `vae.safetensors` (weights and latent stats) and `config.json` (config and stats), atomically.

        `directory` is the VAE's own folder (a model folder's `vae/`); one whose config.json is another part's
        is refused."""
        from moviola.layout import save_part

        stats = {"latent_mean": self.latent_mean.tolist(), "latent_std": self.latent_std.tolist()}
        save_part(directory, "vae", self.state_dict(), self.config.to_dict() | stats)  # stats informational here

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> CausalVAE:
        """Load what `save_pretrained` wrote, from that folder or from a model folder holding it in `vae/`
        (or, in the old flat layout, `vae.safetensors` + `vae.json`); no network. Returns the model in eval
        mode on `device`."""
        from moviola.layout import load_part, load_state

        meta, weights = load_part(directory, "vae", str(device))
        meta.pop("latent_mean", None)  # informational: the safetensors copy is the one loaded
        meta.pop("latent_std", None)
        model = cls(VAEConfig.from_dict(meta))
        load_state(model, weights, directory)
        return model.to(device).eval()
