"""Which frame size a model makes for a source of a given shape (torch-free: the API server sizes uploads with it,
the pipeline and the CLI size footage with it, so the two cannot drift apart).

    size_for(1920, 1080, min_side=32, max_side=128, multiple=16)   # -> (96, 64): the trained 3:2
"""

from __future__ import annotations

import math

# the sizes the shipped recipe trains (configs/dit/default.toml's buckets): footage is made at the nearest in shape
TRAINED_SIZES = ((64, 64), (96, 64), (64, 96))


def allowed(w: int, h: int, min_side: int, max_side: int, multiple: int) -> bool:
    """Whether a model with these limits makes w x h."""
    return all(min_side <= s <= max_side and s % multiple == 0 for s in (w, h))


def closest_size(w: int, h: int, min_side: int, max_side: int, multiple: int) -> tuple[int, int]:
    """The allowed size nearest in aspect ratio to w:h (ties: the nearest in area)."""
    sides = range(min_side, max_side + 1, multiple)
    aspect, area = math.log(max(w, 1) / max(h, 1)), math.log(max(w, 1) * max(h, 1))
    return min(((a, b) for a in sides for b in sides),
               key=lambda s: (round(abs(math.log(s[0] / s[1]) - aspect), 9), abs(math.log(s[0] * s[1]) - area)))


def size_for(w: int, h: int, min_side: int, max_side: int, multiple: int) -> tuple[int, int]:
    """The size to make from footage of w x h: the trained size nearest in aspect ratio among those the model
    allows, else the allowed size nearest in shape (a model whose limits leave out every trained size)."""
    sizes = [s for s in TRAINED_SIZES if allowed(*s, min_side, max_side, multiple)]
    if not sizes:
        return closest_size(w, h, min_side, max_side, multiple)
    return min(sizes, key=lambda s: abs(math.log((s[0] / s[1]) / (max(w, 1) / max(h, 1)))))
