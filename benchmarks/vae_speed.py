"""Decode speed of Moviola's VAE against the Wan2.1 VAE architecture, both with random weights.

Both models compress 4x in time and 8x in space into the same number of latent channels and decode the
same latent tensor on the same machine with the same threads, once after a warm-up. Wan's is diffusers'
`AutoencoderKLWan` in its standard configuration (base_dim 96, dim_mult [1, 2, 4, 4], 2 residual
blocks, temporal downsampling [False, True, True]); diffusers decodes it one latent frame at a time
through its own conv cache, so ours is timed both one-shot and streamed (`decode_stream`).

    pip install diffusers --no-deps   # keeps the installed torch; add importlib_metadata/regex if asked
    PYTHONPATH=src python benchmarks/vae_speed.py                    # 17x64x64 and 17x256x256
    PYTHONPATH=src python benchmarks/vae_speed.py --latent-sizes 8 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from moviola.models.vae import PRESETS, CausalVAE


def build_wan(z_dim: int) -> torch.nn.Module:
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        raise SystemExit(f"this benchmark needs diffusers ({e}): pip install diffusers --no-deps") from e
    return AutoencoderKLWan(base_dim=96, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                            temperal_downsample=[False, True, True]).eval()


def seconds(fn, repeats: int) -> float:
    """Wall time of one call after one warm-up call (the fastest of `repeats` calls: on a shared machine
    the minimum is the least disturbed measurement)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--latent-frames", type=int, default=5, help="5 latent frames = 17 video frames")
    parser.add_argument("--latent-sizes", type=int, nargs="+", default=[8, 32], help="latent height = width")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the warm-up; the fastest counts")
    parser.add_argument("--no-wan", action="store_true", help="time ours only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = CausalVAE(PRESETS[args.preset]).eval()
    c = ours.config.latent_channels
    wan = None if args.no_wan else build_wan(c)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, fastest of {args.repeats} after a warm-up")
    print(f"params: ours ({args.preset}) {ours.num_params():,}"
          + ("" if wan is None else f", Wan2.1 VAE {sum(p.numel() for p in wan.parameters()):,}"))

    for size in args.latent_sizes:
        z = torch.randn(1, c, args.latent_frames, size, size)
        frames, pixels = 1 + 4 * (args.latent_frames - 1), 8 * size
        with torch.inference_mode():
            t_ours = seconds(lambda: ours.decode(z), args.repeats)
            t_stream = seconds(lambda: [f for f in ours.decode_stream([z])], args.repeats)
            line = (f"latent {c}x{args.latent_frames}x{size}x{size} -> {frames}x{pixels}x{pixels}: "
                    f"ours {t_ours:.3f} s (streamed {t_stream:.3f} s)")
            if wan is not None:
                t_wan = seconds(lambda: wan.decode(z).sample, args.repeats)
                line += f", Wan {t_wan:.3f} s, Wan / ours {t_wan / t_ours:.1f}x (streamed {t_wan / t_stream:.1f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
