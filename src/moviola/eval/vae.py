"""Evaluate an autoencoder: reconstruction quality on held-out clips, speed, and streaming memory.

    moviola eval vae [--model DIR] [--n 16]

Quality: PSNR and SSIM on world clips from seeds never used in training and on pans over photos held out
of training. Speed: encode and decode frames per second for 17-frame 64x64 clips. Memory: peak resident
memory added by a streaming decode of a 4 s and a 60 s clip (128x128, 8 fps), sampled from /proc; at
this size a chunk's working memory (tens of MB) dominates the allocator's noise, so the ratio means
something (at 64x64 both peaks are a few MB and the ratio is mostly noise).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

from moviola.data.clips import eval_clips, psnr
from moviola.models.vae import CausalVAE
from moviola.train.vae import frames_of, ssim


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager sampling resident memory every few milliseconds; ``.added`` = peak - start (bytes)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.added = self.peak - self.start


@torch.no_grad()
def quality(model: CausalVAE, kind: str, n: int, width: int = 64, height: int = 64, frames: int = 17) -> dict:
    x = eval_clips(kind, n, width=width, height=height, frames=frames)
    ps, ss = [], []
    for i in range(n):  # one clip at a time: bounded memory
        xi = x[i:i + 1]
        rec = model.decode(model.encode(xi).mean).clamp(-1, 1)
        ps.append(psnr(rec, xi))
        ss.append(ssim(frames_of(rec), frames_of(xi)).item())
    return {"psnr": round(sum(ps) / n, 2), "ssim": round(sum(ss) / n, 4), "clips": n,
            "size": f"{width}x{height}", "frames": frames}


@torch.no_grad()
def speed(model: CausalVAE, repeats: int = 3) -> dict:
    x = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    z = model.encode(x).mean
    model.decode(z)  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        model.encode(x)
    enc = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    for _ in range(repeats):
        model.decode(z)
    dec = (time.perf_counter() - t) / repeats
    return {"encode_fps": round(17 / enc, 1), "decode_fps": round(17 / dec, 1),
            "decode_seconds_17x64x64": round(dec, 4)}


@torch.no_grad()
def stream_memory(model: CausalVAE, seconds: float, fps: float = 8.0, size: int = 128) -> dict:
    """Peak memory added while streaming-decoding a clip of ``seconds`` (latents made on the fly)."""
    frames = int(seconds * fps)
    t_lat = 1 + (frames + 3) // 4  # enough latent frames to cover the clip
    C = model.config.latent_channels
    gen = torch.Generator().manual_seed(0)

    def latents():
        for _ in range(t_lat):
            yield torch.randn(1, C, 1, size // 8, size // 8, generator=gen)

    n = 0
    t = time.perf_counter()
    with PeakRSS() as mem:
        for chunk in model.decode_stream(latents()):
            n += chunk.shape[2]  # frames are consumed (written) and dropped, as a writer would
    return {"seconds": seconds, "frames": n, "size": f"{size}x{size}", "peak_added_mb": round(mem.added / 2 ** 20, 2),
            "peak_rss_mb": round(mem.peak / 2 ** 20, 1), "wall_s": round(time.perf_counter() - t, 2)}


def evaluate_vae(model_dir: Path, n: int = 16) -> dict:
    model = CausalVAE.from_pretrained(model_dir)
    stream_memory(model, 1.0)  # warm-up: first-call allocations are not the stream's
    short = stream_memory(model, 4.0)
    long = stream_memory(model, 60.0)
    return {
        "model": str(model_dir),
        "params": model.num_params(),
        "world": quality(model, "world", n),
        "photo": quality(model, "photo", max(3, n // 2)),
        "speed": speed(model),
        "memory": {"decode_4s": short, "decode_60s": long,
                   "ratio_60s_to_4s": round(max(long["peak_added_mb"], 0.01) / max(short["peak_added_mb"], 0.01), 3)},
        "threads": torch.get_num_threads(),
    }
