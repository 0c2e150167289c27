"""Clip sources for autoencoder training and evaluation: world clips, photo pans and zooms, user videos.

Every batch is a pure function of (seed, index), so a resumed run sees exactly the batches the
uninterrupted one would have (no iterator state to save), and evaluation sets are fixed by their seed.
Clips are float tensors (B, 3, T, H, W) in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Photos that ship inside scikit-image (no download). The last three are held out of training so the
# natural-image evaluation measures generalisation to unseen photos.
TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
                "camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel", "logo")
EVAL_PHOTOS = ("chelsea", "coffee", "motorcycle_right")


@dataclass
class ClipDataConfig:
    """What the autoencoder trains on."""

    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(64, 64), (96, 64), (64, 96)])
    frames: int = 9  # 4k + 1
    world_weight: float = 0.7  # share of batches from the world; the rest photo pans (or a folder)
    folder: str | None = None  # a folder of the user's own videos, mixed in place of photo pans
    photos: list[str] = field(default_factory=lambda: list(TRAIN_PHOTOS))
    crop: int = 0  # > 0: train on random crop x crop windows of each clip (same window for all frames)
    seed: int = 0


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from scikit-image's bundled data (grey and RGBA converted to RGB)."""
    import skimage.data as skd
    from skimage import io

    if name.startswith("motorcycle_"):
        img = io.imread(Path(skd.data_dir) / f"{name}.png")
    else:
        if not hasattr(skd, name):
            raise ValueError(f"unknown scikit-image photo {name!r}")
        img = getattr(skd, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def photo_pan(photo: np.ndarray, width: int, height: int, frames: int, rng: np.random.Generator) -> torch.Tensor:
    """A (3, T, H, W) clip in [-1, 1]: a window moving and zooming linearly over the photo."""
    ph, pw = photo.shape[:2]
    img = torch.from_numpy(photo).permute(2, 0, 1).float().div(127.5).sub(1)[None]  # (1, 3, ph, pw)
    aspect = width / height
    # Window height as a fraction of the photo's height; zoom changes it over the clip.
    max_h = min(1.0, (pw / ph) / aspect)
    z0, z1 = rng.uniform(0.25, 1.0, size=2) * max_h
    c0 = rng.uniform(0.0, 1.0, size=2)
    c1 = np.clip(c0 + rng.normal(0, 0.15, size=2), 0, 1)
    t = np.linspace(0, 1, frames)
    grids = []
    for s in t:
        wh = z0 + (z1 - z0) * s  # window height, fraction of photo height
        ww = wh * aspect * ph / pw  # window width, fraction of photo width
        cx = ww / 2 + (c0[0] + (c1[0] - c0[0]) * s) * (1 - ww)
        cy = wh / 2 + (c0[1] + (c1[1] - c0[1]) * s) * (1 - wh)
        ys = torch.linspace(cy - wh / 2, cy + wh / 2, height) * 2 - 1
        xs = torch.linspace(cx - ww / 2, cx + ww / 2, width) * 2 - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grids.append(torch.stack([gx, gy], -1))
    grid = torch.stack(grids)  # (T, H, W, 2)
    # Downscaling by a large factor aliases; blur the photo first to about the output's resolution.
    scale = ph * min(z0, z1) / height
    src = img
    if scale > 2:
        src = F.interpolate(img, scale_factor=1 / (scale / 1.5), mode="area")
    out = F.grid_sample(src.expand(frames, -1, -1, -1), grid, mode="bilinear", align_corners=False,
                        padding_mode="border")  # (T, 3, H, W)
    return out.permute(1, 0, 2, 3).clamp(-1, 1)


def world_clip(width: int, height: int, frames: int, rng: np.random.Generator) -> torch.Tensor:
    """A (3, T, H, W) world clip in [-1, 1] at a random frame rate, so motion per frame varies."""
    from moviola.world.render import render
    from moviola.world.sample import sample_scene

    fps = float(rng.choice([4.0, 8.0, 12.0]))
    spec = sample_scene(rng, sizes=[(width, height)], fps_choices=[fps], seconds_range=(frames / fps, frames / fps),
                        occlusion_prob=0.1)
    clip = render(spec, num_frames=frames)
    return torch.from_numpy(clip.frames).permute(3, 0, 1, 2).float().div(127.5).sub(1)


FOLDER_FPS = (4.0, 8.0, 12.0)  # rates footage is read at, as world clips are rendered: motion per frame varies
MAX_FOLDER_TRIES = 64  # failed draws of footage in one batch before the run stops and names the files


def folder_clip(clips: list, width: int, height: int, frames: int,
                rng: np.random.Generator) -> tuple[torch.Tensor | None, str]:
    """A random window of a random user clip (a ``ClipEntry``: its file's span from start to end), read at a
    random one of FOLDER_FPS by the frames' timestamps, fitted (cover + centre crop) to the size as it is
    decoded, so a long 1080p file is never held whole; and the file's path. None if that window can't be read."""
    from moviola.data.folder import load_clip
    from moviola.video_io import VideoError

    clip = clips[int(rng.integers(len(clips)))]
    fps = float(rng.choice(FOLDER_FPS))
    span = clip.duration - frames / fps  # seconds of the span where the window may start
    if span < -0.5 / fps:
        fps = frames / max(clip.duration, 1e-3)  # a short span: read it faster rather than never
        span = 0.0
    start = clip.start + float(rng.uniform(0.0, max(span, 0.0)))
    try:
        arr = load_clip(clip.path, start, frames=frames, width=width, height=height, fps=fps, src_fps=clip.fps)
    except VideoError:
        return None, clip.path
    return torch.from_numpy(arr).permute(3, 0, 1, 2).float().div(127.5).sub(1), clip.path


class ClipBatches:
    """Deterministic batches: ``batch(i)`` depends only on (config.seed, i)."""

    def __init__(self, cfg: ClipDataConfig, batch_size: int, report=None):
        """``report``: a folder's ``check_folder`` report made before (the decoder phase's batches reuse phase 1's
        rather than decode every file to its end again)."""
        self.cfg, self.batch_size = cfg, batch_size
        if (cfg.frames - 1) % 4:
            raise ValueError(f"frames must be 4k+1, got {cfg.frames}")
        self.videos = []
        self.skipped = []
        self.report = None
        if cfg.folder:
            from moviola.data.folder import check_folder

            # Checked once up front, each file decoded to its end: unreadable, cut-off or too-short files are
            # skipped (and listed), not fatal. (The header-only check had let a file cut off mid-way through:
            # most draws from it failed and were replaced by other clips without a word, and the VAE's record
            # of its footage listed it.)
            if report is None:
                report = check_folder(cfg.folder, min_seconds=0.0, need_captions=False, deep=True)
            self.report = report
            self.skipped = report.problems
            self.videos = list(report.clips)
            if not self.videos:
                raise ValueError(f"{cfg.folder}: no usable videos ({len(report.problems)} skipped; "
                                 f"run 'moviola data check {cfg.folder}')")

    def batch(self, index: int) -> torch.Tensor:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, index])
        w, h = cfg.sizes[int(rng.integers(len(cfg.sizes)))]  # one size per batch
        clips = []
        failures, tries = set(), 0
        while len(clips) < self.batch_size:
            if rng.random() < cfg.world_weight:
                clips.append(world_clip(w, h, cfg.frames, rng))
            elif self.videos:
                c, path = folder_clip(self.videos, w, h, cfg.frames, rng)
                if c is not None:
                    clips.append(c)
                    continue
                failures.add(path)
                tries += 1
                if tries >= MAX_FOLDER_TRIES:  # the folder's files pass the quick check but don't decode
                    names = ", ".join(sorted(failures)[:5]) + (" ..." if len(failures) > 5 else "")
                    raise ValueError(f"{cfg.folder}: {tries} clips drawn for batch {index} could not be read "
                                     f"({names}); run 'moviola data check {cfg.folder}'")
            else:
                name = cfg.photos[int(rng.integers(len(cfg.photos)))]
                clips.append(photo_pan(load_photo(name), w, h, cfg.frames, rng))
        if cfg.crop:
            # A convolutional, causal autoencoder learns the same thing from windows of a clip at a
            # fraction of the cost; the crop is a multiple of 8 so latents stay aligned.
            c = cfg.crop
            out = []
            for clip in clips:
                # Of a few random windows keep the busiest: world clips are mostly flat background, and
                # a window with no object teaches nothing about edges.
                best, best_std = None, -1.0
                for _ in range(4):
                    y0 = int(rng.integers(0, clip.shape[2] - c + 1)) // 8 * 8
                    x0 = int(rng.integers(0, clip.shape[3] - c + 1)) // 8 * 8
                    win = clip[:, :, y0:y0 + c, x0:x0 + c]
                    std = float(win.std())
                    if std > best_std:
                        best, best_std = win, std
                out.append(best)
            clips = out
        return torch.stack(clips)


def eval_clips(kind: str, n: int, *, width: int = 64, height: int = 64, frames: int = 17, seed: int = 12345) -> torch.Tensor:
    """A fixed evaluation set: ``kind`` "world" (seeds never used in training) or "photo" (held-out photos)."""
    rng = np.random.default_rng([seed, 999_999])
    if kind == "world":
        return torch.stack([world_clip(width, height, frames, rng) for _ in range(n)])
    if kind == "photo":
        return torch.stack([photo_pan(load_photo(EVAL_PHOTOS[i % len(EVAL_PHOTOS)]), width, height, frames, rng)
                            for i in range(n)])
    raise ValueError(f"unknown eval set {kind!r}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of clips in [-1, 1] (computed on the 0..255 scale after rounding to 8 bits)."""
    a8 = ((a.clamp(-1, 1) + 1) * 127.5).round()
    b8 = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = F.mse_loss(a8, b8).item()
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)
