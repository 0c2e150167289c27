"""Build a world dataset on disk: clips plus a captions manifest, streaming and resumable.

Layout: ``OUT/clips/000000.mp4 ...`` and ``OUT/captions.jsonl`` with one line per clip:
``{"index", "path", "caption", "detailed_caption", "spec"}``. Clip i depends only on (seed, i), so an
interrupted build resumes where it stopped: a clip is written atomically, then its manifest line is
appended and flushed, and on restart any torn last line is dropped and the build continues after the
last complete line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from moviola.video_io import atomic_write_bytes, write_video
from moviola.world.caption import caption
from moviola.world.render import render
from moviola.world.sample import sample_scene
from moviola.world.truth import spec_to_dict

MANIFEST = "captions.jsonl"


def _completed(manifest: Path) -> int:
    """Number of complete manifest lines; truncates a torn last line left by a crash."""
    if not manifest.exists():
        return 0
    data = manifest.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(manifest, "r+b") as f:
            f.truncate(len(data))
    return data.count(b"\n")


def build_dataset(out_dir: Path, *, n: int, seed: int = 0, sizes: Iterable[tuple[int, int]] = ((64, 64),),
                  fps_choices: Iterable[float] = (8.0,), seconds_range: tuple[float, float] = (1.0, 4.0),
                  holdout: Iterable[frozenset[str]] = (), occlusion_prob: float = 0.1,
                  on_clip: Callable[[int, int], None] | None = None) -> dict:
    """Render clips ``0 .. n-1`` of dataset ``seed`` into ``out_dir`` (skipping those already done).

    Returns counts: {"done": n, "written": new clips, "skipped": already present}.
    """
    out_dir = Path(out_dir)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    kw = dict(sizes=list(sizes), fps_choices=list(fps_choices), seconds_range=seconds_range,
              holdout=list(holdout), occlusion_prob=occlusion_prob)
    # What the clips are drawn from: a folder made with other settings is not continued with these (it would
    # mix two datasets under one manifest). A folder from before settings were recorded takes these.
    settings = json.loads(json.dumps({"seed": seed, "sizes": kw["sizes"], "fps_choices": kw["fps_choices"],
                                      "seconds_range": seconds_range, "occlusion_prob": occlusion_prob,
                                      "holdout": sorted(sorted(c) for c in kw["holdout"])}))
    settings_path = out_dir / "dataset.json"
    manifest = out_dir / MANIFEST
    if settings_path.is_file() and _completed(manifest) > 0:  # settings of a run that made no clip don't bind
        old = json.loads(settings_path.read_text())
        if old != settings:
            diff = next(k for k in settings if old.get(k) != settings[k])
            raise ValueError(f"{out_dir}: a dataset made with {diff} = {old.get(diff)!r}; these settings say "
                             f"{settings[diff]!r}. Use another folder, or the same settings to continue it")
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "clips").glob(".*.tmp-*"):  # a clip being written when a run was killed
        stale.unlink(missing_ok=True)
    atomic_write_bytes(settings_path, json.dumps(settings, indent=1).encode())
    start = _completed(manifest)
    written = 0
    with open(manifest, "a") as f:
        for i in range(start, n):
            rng = np.random.default_rng([seed, i])
            spec = sample_scene(rng, **kw)
            clip = render(spec)
            rel = f"clips/{i:06d}.mp4"
            write_video(out_dir / rel, clip.frames, spec.fps)
            cap_rng = np.random.default_rng([seed, i, 1])
            row = {"index": i, "path": rel, "caption": caption(spec, rng=cap_rng),
                   "detailed_caption": caption(spec, detailed=True, rng=cap_rng), "spec": spec_to_dict(spec)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            written += 1
            if on_clip:
                on_clip(i, i + 1)
    return {"done": n, "written": written, "skipped": min(start, n)}


def read_manifest(out_dir: Path) -> list[dict]:
    """The manifest's rows (complete lines only)."""
    path = Path(out_dir) / MANIFEST
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows
