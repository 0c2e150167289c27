"""How diffusable a VAE's latent space looks, beside how well it reconstructs (model card, 2026-12-06).

    python scripts/vae_latents.py runs/vae-a/model runs/vae-b/model [--clips 8] [--threads 1]

For each VAE folder, on held-out world clips of 2 s (17 frames, 64x64): the reconstruction PSNR, the PSNR
of the latents average-pooled 2x in space decoded against the clip pooled the same way (high when the latent
space is scale-equivariant, image-like), and the share of the normalised latents' spatial spectrum above a
quarter of the sampling rate (the detail a diffusion model generates worst).
"""

from __future__ import annotations

import argparse

import torch

from moviola.data.clips import eval_clips, psnr
from moviola.models.vae import CausalVAE
from moviola.train.vae import pool_space


def high_frequency_share(z: torch.Tensor) -> float:
    """Share of spatial spectral energy (per frame and channel, mean removed) beyond 0.25 cycles a latent."""
    f = torch.fft.fft2(z - z.mean(dim=(-2, -1), keepdim=True)).abs() ** 2  # (B, C, t, h, w)
    fy = torch.fft.fftfreq(z.shape[-2]).abs().view(-1, 1)
    fx = torch.fft.fftfreq(z.shape[-1]).abs().view(1, -1)
    high = ((fy > 0.25) | (fx > 0.25)).to(f)
    return float((f * high).sum() / f.sum())


@torch.no_grad()
def probe(folder: str, x: torch.Tensor) -> dict:
    m = CausalVAE.from_pretrained(folder).eval()
    z = m.encode(x).mean  # (B, C, t, h, w)
    return {"model": folder, "psnr": round(psnr(m.decode(z), x), 2),
            "pooled_decode_psnr": round(psnr(m.decode(pool_space(z)), pool_space(x)), 2),
            "latent_high_frequency_share": round(high_frequency_share(m.normalize(z)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="VAE (or model) folders")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = eval_clips("world", args.clips, frames=17)
    for folder in args.models:
        print(probe(folder, x))


if __name__ == "__main__":
    main()
