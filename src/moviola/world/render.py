"""The world's renderer: scene spec -> frames, ground-truth tracks and bounce events.

Physics is evaluated in closed form at each frame's timestamp (frame k at t = k / fps), never
integrated frame by frame, so every fps shows the same motion. Shapes are drawn from exact signed
distance functions with a one-pixel box filter, which anti-aliases deterministically and keeps each
object's covered area equal to its true area.

This module makes training data and ground truth only. Generation never calls it (WORLD.md's rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moviola.world.spec import (
    BACKGROUNDS, BOUNCE_SPEED, COLORS, DIRECTIONS, GRAVITY, GROW_FACTOR, LINEAR_MOTIONS, MOVE_SPEED,
    RESTITUTION, SCALE_SECONDS, SHRINK_FACTOR, SPIN_RATE, Event, ObjectSpec, SceneSpec, Track,
)


@dataclass
class Clip:
    """A rendered clip and its ground truth.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        times: (T,) timestamps in seconds.
        tracks: one Track per object, in the spec's order of mention.
        events: wall and floor bounces, sorted by time.
    """

    spec: SceneSpec
    frames: np.ndarray
    times: np.ndarray
    tracks: list[Track]
    events: list[Event]

    @property
    def fps(self) -> float:
        return self.spec.fps


# --- physics -------------------------------------------------------------------------------------

def _reflect(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position at times t of a point starting at p0 with velocity v, reflecting elastically in [lo, hi]."""
    span = hi - lo
    if span <= 0 or v == 0:
        return np.full_like(t, p0, dtype=np.float64)
    u = (p0 - lo) + v * t  # unfolded coordinate
    m = np.mod(u, 2 * span)
    return lo + np.where(m <= span, m, 2 * span - m)


def _reflect_events(p0: float, v: float, duration: float, lo: float, hi: float) -> list[tuple[float, bool]]:
    """Times in (0, duration] at which the reflecting point touches a wall; True = the ``hi`` wall."""
    span = hi - lo
    if span <= 0 or v == 0:
        return []
    u0 = p0 - lo
    out = []
    # The unfolded coordinate crosses k * span at a wall: even k = lo, odd k = hi.
    k = math.floor(u0 / span) + 1 if v > 0 else math.ceil(u0 / span) - 1
    step = 1 if v > 0 else -1
    while True:
        t = (k * span - u0) / v
        if t > duration + 1e-9:
            return out
        if t > 1e-9:
            out.append((t, k % 2 == 1))
        k += step


def _fall(y0: float, floor: float, g: float, t: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Height of a ball dropped from rest at y0 (image coordinates, y down) bouncing on ``floor``.

    Returns positions at times t and the bounce times (the geometric series of flights is cut once the
    rebound speed is negligible, after which the ball rests on the floor).
    """
    h = max(floor - y0, 0.0)
    t1 = math.sqrt(2 * h / g) if h > 0 else 0.0
    impacts = [t1]
    v = g * t1 * RESTITUTION
    while v > 1e-3 * g and len(impacts) < 200:
        impacts.append(impacts[-1] + 2 * v / g)
        v *= RESTITUTION
    impacts_arr = np.asarray(impacts)
    y = np.empty_like(t, dtype=np.float64)
    before = t < t1
    y[before] = y0 + 0.5 * g * t[before] ** 2
    after = ~before
    if after.any():
        ta = t[after]
        k = np.searchsorted(impacts_arr, ta, side="right") - 1  # index of the last impact
        dt = ta - impacts_arr[k]
        vk = g * t1 * RESTITUTION ** (k + 1)  # rebound speed after impact k
        resting = k >= len(impacts) - 1
        height = np.where(resting, 0.0, vk * dt - 0.5 * g * dt ** 2)
        y[after] = floor - np.maximum(height, 0.0)
    return y, ([t1] if h > 0 else []) + impacts[1:]


def _velocity(o: ObjectSpec, s: float) -> tuple[float, float]:
    """Pixels a second (vx, vy) of a linear or bouncing object, before any wall reflects it."""
    if o.motion == "bounces":
        a = math.radians(o.angle)
        return BOUNCE_SPEED * s * math.cos(a), BOUNCE_SPEED * s * math.sin(a)
    dx, dy = DIRECTIONS[o.motion]
    return MOVE_SPEED * s * dx, MOVE_SPEED * s * dy


def object_states(spec: SceneSpec, i: int, times: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centre x, y (pixels), radius (pixels) and rotation (radians) of object i at each time."""
    o: ObjectSpec = spec.objects[i]
    s, W, H = spec.unit, spec.width, spec.height
    r0 = o.radius * s
    t = np.asarray(times, dtype=np.float64)
    x = np.full_like(t, o.x * W)
    y = np.full_like(t, o.y * H)
    r = np.full_like(t, r0)
    rot = np.zeros_like(t)
    if o.motion in LINEAR_MOTIONS or o.motion == "bounces":
        vx, vy = _velocity(o, s)
        x = _reflect(o.x * W, vx, t, r0, W - r0)
        y = _reflect(o.y * H, vy, t, r0, H - r0)
    elif o.motion == "falls":
        y, _ = _fall(o.y * H, H - r0, GRAVITY * s, t)
    elif o.motion == "spins":
        rot = 2 * math.pi * SPIN_RATE * t
    elif o.motion in ("grows", "shrinks"):
        f = GROW_FACTOR if o.motion == "grows" else SHRINK_FACTOR
        r = r0 * (1 + (f - 1) * np.clip(t / SCALE_SECONDS, 0.0, 1.0))
    return x, y, r, rot


def object_events(spec: SceneSpec, i: int) -> list[Event]:
    """Every wall or floor bounce of object i within the clip, with its exact time."""
    o = spec.objects[i]
    s, W, H, T = spec.unit, spec.width, spec.height, spec.seconds
    r0 = o.radius * s
    freq = 880.0 if o.size == "small" else 440.0
    out: list[Event] = []
    if o.motion in LINEAR_MOTIONS or o.motion == "bounces":
        vx, vy = _velocity(o, s)
        out += [Event(i, t, "right" if hi else "left", freq) for t, hi in _reflect_events(o.x * W, vx, T, r0, W - r0)]
        out += [Event(i, t, "bottom" if hi else "top", freq) for t, hi in _reflect_events(o.y * H, vy, T, r0, H - r0)]
    elif o.motion == "falls":
        _, impacts = _fall(o.y * H, H - r0, GRAVITY * s, np.zeros(1))
        out += [Event(i, t, "bottom", freq) for t in impacts if 0 < t <= T + 1e-9]
    return out


# --- rasterisation --------------------------------------------------------------------------------

def shape_vertices(shape: str, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    """(N, 2) polygon vertices in pixels: a square of side 2r, or an up-pointing equilateral triangle
    of circumradius r centred on its centroid; rotated by ``rot`` radians (clockwise on screen)."""
    if shape == "square":
        local = np.array([[-r, -r], [r, -r], [r, r], [-r, r]], dtype=np.float64)
    elif shape == "triangle":
        ang = np.radians([-90.0, 30.0, 150.0])  # apex up (image y grows downward)
        local = np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    else:
        raise ValueError(f"{shape!r} has no polygon")
    c, sn = math.cos(rot), math.sin(rot)
    rotm = np.array([[c, -sn], [sn, c]])
    return local @ rotm.T + np.array([cx, cy])


def _polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Exact signed distance (negative inside) from points to a convex polygon with clockwise-on-screen
    vertices."""
    n = len(verts)
    dist = np.full(px.shape, np.inf)
    inside_margin = np.full(px.shape, -np.inf)
    for k in range(n):
        ax, ay = verts[k]
        bx, by = verts[(k + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(wx - ex * h, wy - ey * h))
        # Signed distance to the edge's line; outward normal for screen-clockwise order is (ey, -ex).
        inside_margin = np.maximum(inside_margin, (wx * ey - wy * ex) / math.hypot(ex, ey))
    return np.where(inside_margin > 0, dist, -dist)


def coverage(shape: str, cx: float, cy: float, r: float, rot: float, width: int, height: int,
             box: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Anti-aliased coverage (alpha in [0, 1]) of one shape, over its pixel bounding box.

    Returns the alpha patch and the box (x0, y0, x1, y1) it covers, clipped to the canvas.
    """
    if box is None:
        ext = r * (math.sqrt(2) if shape == "square" else 1.0) + 2
        box = (max(0, int(math.floor(cx - ext))), max(0, int(math.floor(cy - ext))),
               min(width, int(math.ceil(cx + ext)) + 1), min(height, int(math.ceil(cy + ext)) + 1))
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0)), box
    # Pixel (i, j) covers [j, j+1) x [i, i+1); sample the SDF at its centre.
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    if shape == "circle":
        sdf = np.hypot(px - cx, py - cy) - r
    else:
        sdf = _polygon_sdf(px, py, shape_vertices(shape, cx, cy, r, rot))
    return np.clip(0.5 - sdf, 0.0, 1.0), box


def render(spec: SceneSpec, *, num_frames: int | None = None) -> Clip:
    """Render a scene. Deterministic: the same spec gives the same bytes.

    Args:
        spec: a valid scene (it is validated here).
        num_frames: override the frame count (default ``round(seconds * fps)``), e.g. 4k+1 for the VAE.
    Returns:
        Clip with frames (T, H, W, 3) uint8, per-object tracks and bounce events.
    """
    spec.validate()
    T = num_frames if num_frames is not None else spec.num_frames
    W, H = spec.width, spec.height
    times = np.arange(T, dtype=np.float64) / spec.fps
    n = len(spec.objects)
    states = [object_states(spec, i, times) for i in range(n)]
    order = spec.draw_order()
    bg = np.asarray(BACKGROUNDS[spec.background], dtype=np.float64)
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    tracks = [Track() for _ in range(n)]
    for k in range(T):
        canvas = np.broadcast_to(bg, (H, W, 3)).copy()
        alphas = {}
        for i in order:
            x, y, r, rot = (a[k] for a in states[i])
            alpha, (x0, y0, x1, y1) = coverage(spec.objects[i].shape, x, y, r, rot, W, H)
            alphas[i] = (alpha, (x0, y0, x1, y1))
            if alpha.size:
                col = np.asarray(COLORS[spec.objects[i].color], dtype=np.float64)
                a = alpha[..., None]
                canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + col * a
        frames[k] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        for pos, i in enumerate(order):
            alpha, box = alphas[i]
            total = float(alpha.sum())
            vis = alpha.copy()
            for j in order[pos + 1:]:  # objects drawn above i
                vis *= 1 - _patch(alphas[j], box)
            x, y, r, rot = (float(a[k]) for a in states[i])
            tr = tracks[i]
            tr.x.append(x)
            tr.y.append(y)
            tr.r.append(r)
            tr.rotation.append(rot)
            tr.visible.append(float(vis.sum()) / total if total > 0 else 0.0)
    events = sorted((e for i in range(n) for e in object_events(spec, i)), key=lambda e: (e.time, e.obj))
    return Clip(spec=spec, frames=frames, times=times, tracks=tracks, events=events)


def _patch(alpha_box: tuple[np.ndarray, tuple[int, int, int, int]], box: tuple[int, int, int, int]) -> np.ndarray:
    """Another object's alpha resampled onto ``box`` (zero where it has no coverage)."""
    alpha, (ax0, ay0, ax1, ay1) = alpha_box
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0))
    ix0, iy0, ix1, iy1 = max(x0, ax0), max(y0, ay0), min(x1, ax1), min(y1, ay1)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = alpha[iy0 - ay0:iy1 - ay0, ix0 - ax0:ix1 - ax0]
    return out


def render_audio(events: list[Event], seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 track of the bounce sounds: a 0.15 s sine per event, exponentially decaying."""
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, dtype=np.float64)
    dur = int(0.15 * sample_rate)
    tt = np.arange(dur) / sample_rate
    for e in events:
        start = int(round(e.time * sample_rate))
        if start >= n:
            continue
        tone = 0.5 * np.sin(2 * np.pi * e.frequency * tt) * np.exp(-tt / 0.03)
        end = min(n, start + dur)
        out[start:end] += tone[: end - start]
    return np.clip(out, -1, 1).astype(np.float32)
