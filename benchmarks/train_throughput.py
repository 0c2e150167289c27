"""DiT training throughput: video tokens per second and model FLOPs utilisation (MFU) for a preset.

    python benchmarks/train_throughput.py --preset small --device cpu              # this machine
    python benchmarks/train_throughput.py --preset wan-1.3b --device cuda --batch 8 --size 832x480 --seconds 5

One training step is what ``moviola train dit`` does per micro-batch: forward under autocast (bf16 on
CUDA, fp32 on CPU), flow-matching loss, backward, gradient clipping and AdamW, on synthetic latents
and text tokens of the requested shape (the data pipeline is not timed: it reads a latent cache).

Model FLOPs are counted analytically, per training step (forward + backward = 3 x forward):
  * every matmul weight W (m x n) costs 2 m n FLOPs per row it is applied to; per-token Linears (qkv,
    attention out, cross-attention q and out, MLP, patch embed, final) see B * N video tokens, the text
    Linears (text embedder, cross-attention kv) B * L text tokens, the conditioning Linears (timestep MLP,
    adaLN) B rows. For video tokens this is the usual 6 * params * tokens.
  * attention: per block and sample, self-attention 4 N^2 D (QK^T and AV) and cross-attention
    4 N (L + 1) D, times 3 for training.
Recomputation under activation checkpointing is not counted (MFU counts model FLOPs, not hardware FLOPs).

Peak: on CUDA the H100's dense bf16 peak, 989 TFLOP/s (SXM; pass --peak for another GPU); on the CPU
the rate of a large fp32 matmul measured in the same run (torch's own best case on these cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from moviola.flow.path import add_noise, flow_loss
from moviola.models.dit import PRESETS, DiT
from moviola.train.common import OptimConfig, autocast, make_optimizer

H100_BF16_PEAK = 989e12


def model_flops(model: DiT, batch: int, tokens: int, text_len: int) -> float:
    """Training FLOPs of one step (forward + backward) for ``batch`` clips of ``tokens`` video tokens."""
    cfg = model.config
    per_row = {"video": 0, "text": 0, "cond": 0}
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        leaf = name.split(".")[-1]
        if name.startswith("text_embed") or leaf == "kv":
            kind = "text"
        elif name.startswith(("time_embed", "pooled_embed")) or leaf == "adaln":
            kind = "cond"
        else:
            kind = "video"
        per_row[kind] += m.weight.numel()
    linear = 2 * (per_row["video"] * batch * tokens + per_row["text"] * batch * text_len + per_row["cond"] * batch)
    attn = cfg.depth * batch * (4 * tokens * tokens * cfg.dim + 4 * tokens * (text_len + 1) * cfg.dim)
    return 3.0 * (linear + attn)


def measure_peak(device: torch.device, seconds: float = 2.0) -> float:
    """FLOP/s of a large square matmul: fp32 on the CPU, bf16 on CUDA."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up
    _sync(device)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
        if device.type == "cuda" and k % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * n ** 3 * k / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", default="64x64", help="video WxH (the VAE makes it 8x smaller)")
    ap.add_argument("--seconds", type=float, default=2.0, help="clip length at 8 fps (4k + 1 frames, 4x fewer latents)")
    ap.add_argument("--text-len", type=int, default=16, help="text tokens per prompt")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto",
                    help="activation checkpointing (auto: the preset's setting)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", default="", choices=["", "default", "reduce-overhead", "max-autotune"],
                    help="torch.compile the model in this mode (its compile time is reported apart)")
    ap.add_argument("--peak", type=float, default=0.0, help="peak FLOP/s to compare with (default: 989e12 on CUDA, the H100/H200 dense bf16 peak; on the CPU a "
                    "large fp32 matmul measured first)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")

    cfg = dataclasses.replace(PRESETS[args.preset])
    if args.checkpointing != "auto":
        cfg.gradient_checkpointing = args.checkpointing == "on"
    w, h = (int(v) for v in args.size.lower().split("x"))
    frames = 1 + 4 * math.ceil((round(args.seconds * 8) - 1) / 4)
    lat = (cfg.in_channels, (frames - 1) // 4 + 1, h // 8, w // 8)  # (C, t, h, w)
    pt, ph, pw = cfg.patch
    tokens = lat[1] // pt * (lat[2] // ph) * (lat[3] // pw)

    torch.manual_seed(0)
    model = DiT(cfg).to(device).train()
    opt = make_optimizer(model, OptimConfig(lr=1e-4))
    forward = torch.compile(model, mode=args.compile) if args.compile else model
    B = args.batch
    x0 = torch.randn(B, *lat, device=device)
    noise = torch.randn_like(x0)
    ctx = torch.randn(B, args.text_len, cfg.text_dim, device=device)
    mask = torch.ones(B, args.text_len, dtype=torch.bool, device=device)

    def step() -> None:
        t = torch.rand(B, device=device)
        with autocast(device):
            v = forward(add_noise(x0, noise, t), t, ctx, mask)
            loss = flow_loss(v.float(), x0, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    t_warm = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _sync(device)
    warm = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / args.steps

    flops = model_flops(model, B, tokens, args.text_len)
    if args.peak:
        peak, peak_what = args.peak, "given"
    elif device.type == "cuda":
        peak, peak_what = H100_BF16_PEAK, "H100 bf16 dense"
    else:
        peak, peak_what = measure_peak(device), f"fp32 2048^3 matmul, {torch.get_num_threads()} threads"
    achieved = flops / dt
    # On a GPU, also against what a large bf16 matmul reaches on this card in this run (the datasheet peak is
    # a ceiling few chips reach; the measured one says how close this model's step gets to the card's best).
    measured = measure_peak(device) if device.type == "cuda" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [
        ("preset", f"{args.preset} ({model.num_params() / 1e6:.2f} M params, dim {cfg.dim}, depth {cfg.depth})"),
        ("device", f"{name}" + (" (bf16 autocast)" if device.type == "cuda" else " (fp32)")),
        ("batch", f"{B} clips of {w}x{h}, {frames} frames -> latents {lat}, {tokens} tokens each"),
        ("activation checkpointing", str(cfg.gradient_checkpointing)),
        ("torch.compile", f"{args.compile} ({warm:.1f} s of warm-up steps, compiling included)" if args.compile else "no"),
        ("step time", f"{dt * 1e3:.1f} ms"),
        ("tokens / s", f"{B * tokens / dt:,.0f}"),
        ("clips / s", f"{B / dt:.2f}"),
        ("model FLOPs / step", f"{flops / 1e9:,.2f} GFLOP"),
        ("achieved", f"{achieved / 1e12:.4f} TFLOP/s"),
        ("peak", f"{peak / 1e12:.4f} TFLOP/s ({peak_what})"),
        ("MFU", f"{100 * achieved / peak:.1f} %"),
    ]
    if measured:
        rows += [("bf16 8192^3 matmul here", f"{measured / 1e12:.1f} TFLOP/s"),
                 ("of that", f"{100 * achieved / measured:.1f} %")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
