"""One forward step of Moviola's DiT against diffusers' WanTransformer3DModel of the same shape.

Both models get random weights, the same inputs, the same machine and the same thread count; each is
warmed up, then the two are timed alternately (so a background load hits both alike) and the min and
median over the repeats are printed with the ratio Wan / ours (> 1: ours is faster).

    PYTHONPATH=src python benchmarks/dit_speed.py                       # small@5x8x8 (80 tokens), base@5x16x16
    PYTHONPATH=src python benchmarks/dit_speed.py --cases small:5x8x8 --repeats 50 --threads 1
    PYTHONPATH=src python benchmarks/dit_speed.py --device cuda --bf16   # on a GPU, under bf16 autocast

Identical on both sides: width, depth, heads (and head_dim), patch (1, 2, 2), in/out channels, ffn dim,
text dim, 256-wide sinusoidal time embedding, text MLP (text_dim -> dim -> dim, GELU tanh), per-block
LayerNorm before cross-attention, QK-RMSNorm, 3D RoPE with Wan's t/h/w channel split, GELU-tanh MLPs,
token count, text length, batch. Different: ours passes a text mask (Wan's forward takes none) and
appends one learned null text token (L + 1 keys); ours adds a pooled-text projection to the time
embedding and gives each block its own adaLN Linear (dim -> 6 dim, DiT) where Wan shares one projection
plus a per-block table (so ours has more parameters at these sizes); Wan's QK-RMSNorm spans all heads,
ours is per head; ours fuses qkv into one Linear and rotates q and k with one complex multiply each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moviola.models.dit import DiT, PRESETS


def build_wan(cfg):
    """WanTransformer3DModel with our config's shape. diffusers is imported lazily: an optional extra."""
    try:
        from diffusers import WanTransformer3DModel
    except ImportError as e:
        raise SystemExit(f"this benchmark needs diffusers ({e}); install it without touching torch:\n"
                         "    pip install diffusers --no-deps  (then any missing pure-python deps it names)")
    return WanTransformer3DModel(
        patch_size=cfg.patch, num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels, out_channels=cfg.in_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.mlp_dim, num_layers=cfg.depth, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
    )


def randomize_(model: torch.nn.Module) -> None:
    """Replace our zero-initialised tensors (adaLN, final layer) with small random values, so both
    models compute with ordinary non-zero weights."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.02)


def parse_case(text: str) -> tuple[str, tuple[int, int, int]]:
    preset, _, grid = text.partition(":")
    if preset not in PRESETS or grid.count("x") != 2:
        raise SystemExit(f"case {text!r} must look like PRESET:TxHxW with PRESET in {', '.join(PRESETS)}")
    return preset, tuple(int(v) for v in grid.split("x"))


def run_case(preset: str, latent: tuple[int, int, int], args) -> None:
    cfg = PRESETS[preset]
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = DiT(cfg).to(device).eval()
    randomize_(ours)
    wan = build_wan(cfg).to(device).eval()

    B, (T, H, W) = args.batch, latent
    x = torch.randn(B, cfg.in_channels, T, H, W, device=device)
    t = torch.rand(B, device=device)
    context = torch.randn(B, args.text_len, cfg.text_dim, device=device)
    mask = torch.ones(B, args.text_len, dtype=torch.bool, device=device)
    pt, ph, pw = cfg.patch
    tokens = (T // pt) * (H // ph) * (W // pw)

    def step_ours():
        return ours(x, t, context, mask)

    def step_wan():
        return wan(x, t * 1000, context, return_dict=False)[0]  # diffusers' Wan takes t in [0, 1000]

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    with torch.inference_mode(), autocast:
        assert step_ours().shape == step_wan().shape == x.shape
        for _ in range(args.warmup):
            step_ours(), step_wan()
        times_ours, times_wan = [], []
        for _ in range(args.repeats):  # alternate, so background load affects both alike
            times_ours.append(timed(step_ours))
            times_wan.append(timed(step_wan))

    ours_min, wan_min = min(times_ours), min(times_wan)
    print(f"{preset} (dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads}, ffn {cfg.mlp_dim}), "
          f"latents {cfg.in_channels}x{T}x{H}x{W} = {tokens} tokens, batch {B}, text {args.text_len} tokens")
    print(f"  params: ours {ours.num_params() / 1e6:.2f}M, wan {sum(p.numel() for p in wan.parameters()) / 1e6:.2f}M")
    print(f"  ours  min {ours_min * 1e3:8.2f} ms   median {statistics.median(times_ours) * 1e3:8.2f} ms")
    print(f"  wan   min {wan_min * 1e3:8.2f} ms   median {statistics.median(times_wan) * 1e3:8.2f} ms")
    print(f"  wan / ours: {wan_min / ours_min:.2f}x (min)   "
          f"{statistics.median(times_wan) / statistics.median(times_ours):.2f}x (median)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["small:5x8x8", "base:5x16x16"],
                    help="PRESET:TxHxW latent grids (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=2, help="2 = a classifier-free guidance batch")
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}")
    for case in args.cases:
        run_case(*parse_case(case), args)


if __name__ == "__main__":
    main()
