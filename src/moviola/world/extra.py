"""Opt-in colours outside WORLD.md's palette, for fine-tuning demonstrations ("teach the model pink").

The world's contract has seven object colours, and nothing here changes that: only inside
``with extra_colors("pink"):`` do the sampler, renderer, spec validation, captioner, prompt parser and
scorer also know the extra colours; on leaving the block every table is exactly as it was. So the
shipped model's training data and the scorer's self-test are untouched, while a fine-tune can render
clips of a colour the default model has never seen and grade what it learned.

    with extra_colors("pink"):
        cache = build_world_cache(...)                    # 1/8 of drawn objects are pink
        report = score_clip(frames, "a small pink circle moves right")

Not thread-safe: the tables are module-level (they are read at call time by every world module), so
use it from one thread at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

# Colours chosen to stay more than 100 (RGB distance) from every background and from every palette
# colour's core (the scorer's CORE_DIST is 48), so detection keeps them apart.
EXTRA_COLORS: dict[str, tuple[int, int, int]] = {
    "pink": (240, 110, 170),
}


@contextlib.contextmanager
def extra_colors(*names: str) -> Iterator[None]:
    """Add ``names`` (keys of EXTRA_COLORS) to the world's colours for the duration of the block."""
    from moviola.world import caption, detect, spec

    unknown = [n for n in names if n not in EXTRA_COLORS]
    if unknown:
        raise ValueError(f"unknown extra colour {unknown[0]!r}; available: {', '.join(EXTRA_COLORS)}")
    added = [n for n in dict.fromkeys(names) if n not in spec.COLORS]
    if not added:
        yield
        return
    old_palette, old_expect = detect.PALETTE, dict(caption._EXPECT)
    try:
        for n in added:
            spec.COLORS[n] = EXTRA_COLORS[n]  # the one dict every world module imported
            caption._LEXICON[(n,)] = ("color", n)
            detect.NAMES.append(n)
        detect.PALETTE = np.array([spec.COLORS[c] for c in detect.NAMES], dtype=np.float32)
        caption._EXPECT["color"] = f"a colour ({caption._listing('color')})"
        yield
    finally:
        for n in added:
            spec.COLORS.pop(n, None)
            caption._LEXICON.pop((n,), None)
            if n in detect.NAMES:
                detect.NAMES.remove(n)
        detect.PALETTE = old_palette
        caption._EXPECT.clear()
        caption._EXPECT.update(old_expect)


def color_fraction(frames: np.ndarray, rgb: tuple[int, int, int], tol: float = 60.0) -> float:
    """Share of pixels within RGB distance ``tol`` of ``rgb``: frames (..., 3) uint8 -> [0, 1]."""
    d = np.linalg.norm(frames.reshape(-1, 3).astype(np.float32) - np.asarray(rgb, np.float32), axis=1)
    return float((d < tol).mean())
