"""Evaluate an autoencoder: reconstruction quality on held-out clips, speed, and streaming memory.

    moviola eval vae [--model DIR] [--n 16]

Quality: PSNR and SSIM on world clips from seeds never used in training and on pans over photos held out
of training. Speed: encode and decode frames per second for 17-frame 64x64 clips. Memory: a streaming
decode of a 4 s and of a 60 s clip (128x128, 8 fps), each in a fresh process that loads the model and
then decodes: its peak resident memory (VmHWM) and the part of it the decode added to the loaded
process. Fresh processes make the two runs alike; measured in one process after each other, the second
decode reused or fragmented what the first had freed, and the ratio of the added peaks moved between 1.06
and 3.3 from run to run with no change to the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


_MEMORY_CHILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from moviola.eval.vae import stream_memory
from moviola.models.vae import CausalVAE
res = stream_memory(CausalVAE.from_pretrained(sys.argv[1]), float(sys.argv[2]))
with open("/proc/self/status") as f:
    res["peak_rss_mb"] = round(int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) / 1024, 1)
print(json.dumps(res))
"""


def fresh_stream_memory(model_dir: Path, seconds: float) -> dict:
    """`stream_memory` in a fresh process; peak_rss_mb is that process's high-water mark (VmHWM)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(model_dir), str(seconds),
                          str(torch.get_num_threads())], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def evaluate_vae(model_dir: Path, n: int = 16) -> dict:
    model = CausalVAE.from_pretrained(model_dir)
    short = fresh_stream_memory(model_dir, 4.0)
    long = fresh_stream_memory(model_dir, 60.0)
    return {
        "model": str(model_dir),
        "params": model.num_params(),
        "world": quality(model, "world", n),
        "photo": quality(model, "photo", max(3, n // 2)),
        "speed": speed(model),
        "memory": {"decode_4s": short, "decode_60s": long,
                   "ratio_60s_to_4s": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3),
                   "ratio_added_60s_to_4s": round(max(long["peak_added_mb"], 0.01) / max(short["peak_added_mb"], 0.01), 3)},
        "threads": torch.get_num_threads(),
    }
