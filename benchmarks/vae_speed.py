"""Decode speed of Moviola's VAE against the Wan2.1 VAE architecture, both with random weights.

Both models compress 4x in time and 8x in space into the same number of latent channels and decode the
same latent tensor on the same machine with the same threads, after a warm-up, timed in alternation
(``--repeats`` rounds, the fastest of each counts). Wan's is diffusers' `AutoencoderKLWan` in its standard
configuration (base_dim 96, dim_mult [1, 2, 4, 4], 2 residual blocks, temporal downsampling [False, True,
True]); diffusers decodes it one latent frame at a time through its own conv cache, so ours is timed both
one-shot and streamed (`decode_stream`). The standard Wan VAE has about 68 times our parameters, so its
ratio is mostly model size; the second Wan row is the same architecture at ``--narrow-base-dim`` (16: a
few million parameters, near ours), which compares implementations.

    pip install diffusers --no-deps   # keeps the installed torch; add importlib_metadata/regex if asked
    PYTHONPATH=src python benchmarks/vae_speed.py                    # 17x64x64 and 17x256x256
    PYTHONPATH=src python benchmarks/vae_speed.py --latent-sizes 8 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from moviola.models.vae import PRESETS, CausalVAE


def build_wan(z_dim: int, base_dim: int = 96) -> torch.nn.Module:
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        raise SystemExit(f"this benchmark needs diffusers ({e}): pip install diffusers --no-deps") from e
    return AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                            temperal_downsample=[False, True, True]).eval()


def fastest(fns: dict, repeats: int) -> dict[str, float]:
    """Wall time of one call of each, after a warm-up call of each: the fastest of `repeats` rounds, each
    round calling every one in turn (so a background load hits all alike; on a shared machine the minimum is
    the least disturbed measurement)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--latent-frames", type=int, default=5, help="5 latent frames = 17 video frames")
    parser.add_argument("--latent-sizes", type=int, nargs="+", default=[8, 32], help="latent height = width")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up; the fastest counts")
    parser.add_argument("--no-wan", action="store_true", help="time ours only")
    parser.add_argument("--narrow-base-dim", type=int, default=16, help="base_dim of the second, narrow Wan "
                        "VAE (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = CausalVAE(PRESETS[args.preset]).eval()
    c = ours.config.latent_channels
    wans = {} if args.no_wan else {"Wan": build_wan(c)}
    if wans and args.narrow_base_dim:
        wans[f"Wan base_dim {args.narrow_base_dim}"] = build_wan(c, args.narrow_base_dim)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, fastest of {args.repeats} rounds "
          "after a warm-up")
    print(f"params: ours ({args.preset}) {ours.num_params():,}"
          + "".join(f", {name} {sum(p.numel() for p in m.parameters()):,}" for name, m in wans.items()))

    for size in args.latent_sizes:
        z = torch.randn(1, c, args.latent_frames, size, size)
        frames, pixels = 1 + 4 * (args.latent_frames - 1), 8 * size
        fns = {"ours": lambda: ours.decode(z), "ours streamed": lambda: torch.cat(list(ours.decode_stream([z])), 2)}
        fns.update({name: (lambda m=m: m.decode(z).sample) for name, m in wans.items()})
        with torch.inference_mode():
            shapes = {name: tuple(fn().shape) for name, fn in fns.items()}
            if len(set(shapes.values())) != 1:
                raise SystemExit(f"the decoders' outputs differ in shape: {shapes}")
            t = fastest(fns, args.repeats)
        line = (f"latent {c}x{args.latent_frames}x{size}x{size} -> {frames}x{pixels}x{pixels}: "
                f"ours {t['ours']:.3f} s (streamed {t['ours streamed']:.3f} s)")
        for name in wans:
            line += (f"; {name} {t[name]:.3f} s, {name} / ours {t[name] / t['ours']:.1f}x "
                     f"(streamed {t[name] / t['ours streamed']:.1f}x)")
        print(line, flush=True)


if __name__ == "__main__":
    main()
