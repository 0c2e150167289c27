"""Buckets of (resolution, frame count, aspect ratio) for footage, and which bucket a clip belongs to.

The Open-Sora scheme: a batch holds clips of one shape, so every clip is cut and cropped to one of a few
bucket shapes, each with its own batch size and sampling weight. A clip goes to the bucket whose aspect
ratio is closest to its own among those whose frame count fits its duration at the target fps (ties:
more frames, then the largest picture that does not upscale the source), so little is cropped away and
nothing is stretched.

A bucket config is a list of ``{width, height, frames, batch_size, weight}`` tables, in a TOML file
(``[[buckets]]`` tables) or JSON file, or inline on the command line::

    64x64x17:8:0.5,112x48x17::0.2      # WIDTHxHEIGHTxFRAMES[:BATCH_SIZE[:WEIGHT]]
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

from moviola.data.latent_cache import Bucket

SIDE_MULTIPLE = 16  # the VAE's 8x times the DiT's 2x2 patch


def default_footage_buckets() -> list[Bucket]:
    """Shapes the shipped model knows (sides 48 to 112, 8 fps): square, 3:2 both ways and 2.35:1 scope, at
    about 2 s (17 frames) and 1 s (9 frames) so short shots still count (a portrait phone clip just under
    2 s goes to 64x96 at 9 frames, not to a square)."""
    return [Bucket(64, 64, 17, 0.3), Bucket(96, 64, 17, 0.2), Bucket(64, 96, 17, 0.1), Bucket(112, 48, 17, 0.1),
            Bucket(64, 64, 9, 0.1), Bucket(96, 64, 9, 0.1), Bucket(64, 96, 9, 0.05), Bucket(112, 48, 9, 0.05)]


def check_buckets(buckets: list[Bucket]) -> list[Bucket]:
    """Raise ValueError naming the first bucket that no model could train on; return the list."""
    if not buckets:
        raise ValueError("no buckets given")
    seen = set()
    for b in buckets:
        if b.width % SIDE_MULTIPLE or b.height % SIDE_MULTIPLE or min(b.width, b.height) < SIDE_MULTIPLE:
            raise ValueError(f"bucket {b.name}: width and height must be positive multiples of {SIDE_MULTIPLE}")
        if b.frames < 1 or (b.frames - 1) % 4:
            raise ValueError(f"bucket {b.name}: frames must be 4k + 1 (1, 5, 9, 17, ...), got {b.frames}")
        if not b.weight > 0:
            raise ValueError(f"bucket {b.name}: weight must be positive, got {b.weight}")
        if b.batch_size < 0:
            raise ValueError(f"bucket {b.name}: batch_size must be >= 0 (0 = the trainer's rule)")
        if b.name in seen:
            raise ValueError(f"bucket {b.name} is listed twice")
        seen.add(b.name)
    return buckets


def buckets_from_list(items: list) -> list[Bucket]:
    """Tables ``{width, height, frames, batch_size?, weight?}`` (or lists in that order) -> checked Buckets."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"width", "height", "frames", "batch_size", "weight"})
            if unknown:
                raise ValueError(f"bucket {i}: unknown key {unknown[0]!r} (known: width, height, frames, "
                                 f"batch_size, weight)")
            missing = [k for k in ("width", "height", "frames") if k not in item]
            if missing:
                raise ValueError(f"bucket {i}: missing {missing[0]!r}")
            w, h, f = item["width"], item["height"], item["frames"]
            bs, wt = item.get("batch_size", 0), item.get("weight", 1.0)
        elif isinstance(item, (list, tuple)) and 3 <= len(item) <= 5:
            w, h, f, bs, wt = (list(item) + [0, 1.0][len(item) - 3:])[:5]
        else:
            raise ValueError(f"bucket {i}: expected a table {{width, height, frames, batch_size, weight}}, "
                             f"got {item!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (w, h, f, bs)):
            raise ValueError(f"bucket {i}: width, height, frames and batch_size must be integers")
        if isinstance(wt, bool) or not isinstance(wt, (int, float)):
            raise ValueError(f"bucket {i}: weight must be a number")
        out.append(Bucket(w, h, f, float(wt), bs))
    return check_buckets(out)


def parse_buckets(text: str) -> list[Bucket]:
    """A bucket file (.toml with ``[[buckets]]`` tables, or .json: a list or {"buckets": [...]}) or an
    inline list ``64x64x17:8:0.5,112x48x17`` (batch size and weight optional; weight defaults to 1)."""
    path = Path(text)
    if path.suffix.lower() in (".toml", ".json"):
        if not path.is_file():
            raise ValueError(f"{path}: no such bucket file")
        try:
            data = tomllib.loads(path.read_text()) if path.suffix.lower() == ".toml" else json.loads(path.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid {path.suffix[1:].upper()} ({e})") from None
        items = data.get("buckets") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a list of buckets (TOML: [[buckets]] tables)")
        return buckets_from_list(items)
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        fields = part.split(":")
        try:
            w, h, f = (int(v) for v in fields[0].lower().split("x"))
            bs = int(fields[1]) if len(fields) > 1 and fields[1] else 0
            wt = float(fields[2]) if len(fields) > 2 and fields[2] else 1.0
        except ValueError:
            raise ValueError(f"bucket {part!r} must look like WIDTHxHEIGHTxFRAMES[:BATCH_SIZE[:WEIGHT]], "
                             f"e.g. 64x64x17:8:0.5") from None
        if len(fields) > 3:
            raise ValueError(f"bucket {part!r}: too many ':' fields")
        out.append(Bucket(w, h, f, wt, bs))
    return check_buckets(out)


def seconds_needed(frames: int, fps: float, src_fps: float) -> float:
    """Source seconds a clip must span to give ``frames`` frames at ``fps``: the last one is shown at
    (frames - 1) / fps, and a source frame must start there."""
    return (frames - 1) / fps + 1.0 / src_fps


def assign_bucket(width: int, height: int, duration: float, src_fps: float, buckets: list[Bucket],
                  fps: float) -> int | None:
    """Index of the bucket for a clip of ``width`` x ``height`` lasting ``duration`` s at ``src_fps``
    (see the module docstring), or None when it is too short for every bucket."""
    ar = math.log(width / height)
    best, best_key = None, None
    for i, b in enumerate(buckets):
        if duration + 1e-6 < seconds_needed(b.frames, fps, src_fps):
            continue
        upscale = b.width > width or b.height > height
        # Closest aspect first; then use more of the clip; then the largest picture that needs no upscale
        # (or, when every bucket upscales, the smallest one).
        key = (round(abs(ar - math.log(b.width / b.height)), 6), -b.frames, upscale,
               b.width * b.height * (1 if upscale else -1))
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best
