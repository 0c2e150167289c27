"""The world's scorer: does a clip match its prompt? Per-attribute accuracy, physics, permanence.

Pipeline, per WORLD.md: find the background; find objects by palette colour and track them over time
(``detect.py``); classify each track's shape, size and motion; check physics (falls fit a parabola with
the world's gravity, reflections happen at walls), object permanence (an occluded object comes back
unchanged) and temporal consistency. The prompt decides only what is checked and which found object
answers for which prompt object; every colour, shape, size and motion is read from the pixels.

Shape is read from the angular harmonics of an object's coverage about its centroid (|m3| large for a
triangle, |m4| for a square, neither for a circle): they are rotation invariant, so a spinning square is
still a square, and their phase gives the orientation used to detect spinning. The bounding-box fill
ratio of WORLD.md is reported beside them.

Objects overlap, and a partly covered object's centroid and area are wrong. So each track keeps its
``reliable`` frames, those showing it whole: it touches nothing, or its area is whole next to its
untouched views (it lies on top of what it touches). Shape and size are read there. Motion first asks
whether the object stays in place (its centre's speed, over untouched views where they suffice): if so,
static / spins / grows / shrinks come from the views whose centroid sits at its place; if not, the
direction, bounce or fall comes from its centre over time, where a partly covered view still places the
centre along an axis by its own edge on a side clear of other objects.

Every threshold is in the world's unit s = min(W, H) and in seconds, so it holds at every size and fps.

Limits: objects of one colour that overlap for a whole clip are one blob and count as one; an object
that is never more than about half visible (covered in every frame) can have its shape or size misread.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from moviola.world.caption import Prompt, parse_prompt
from moviola.world.detect import (
    MIN_BACKGROUND_SHARE, Detection, ObjectTrack, background_share, build_tracks, detect_background, detect_objects,
    edge_shape,
)
from moviola.world.spec import (
    BOUNCE_SPEED, GRAVITY, GROW_FACTOR, LINEAR_MOTIONS, SCALE_SECONDS, SHRINK_FACTOR, SIZES,
    SPIN_RATE,
)

ATTRIBUTES = ("background", "count", "color", "shape", "size", "motion")
MOVING_MOTIONS = (*LINEAR_MOTIONS, "bounces", "falls")  # the others keep the object in place
_SIZE_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])  # radius threshold between small and large
_SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}  # area / r^2
WHOLE_AREA = 0.95  # a touching object whose area is at least this share of its own is not covered
WHOLE_RADIUS = 0.03  # likewise for the radius of an object in place, against its fitted growth
IN_PLACE_SPEED = 0.1  # s/s: slower than this, an object stays in place (the slowest mover does 0.35)
PLACE_LOOK = 0.25  # s: the time over which that speed is measured
# s: an object in place shows itself whole where its centroid is within this of its place (or 3 % of its
# radius): cover taking 5 % of its area moves the centroid about 0.005 s; H.264 keeps it to 0.002 s.
HOME_TOL = 0.004
MIN_SCALE_LOOK = 0.2  # s: growth is judged over at least this long (grows: +6 % of r, shrinks: -4 %)
ACC_STEP = 0.125  # s: spacing of the samples an acceleration is read from
ACC_SPAN = 0.8  # s: longest time over which three samples give an acceleration
REFLECT_WINDOW = 0.4  # s: positions this close to a reversal give the velocities before and after it
REFLECT_SPAN = 0.1  # s: the least time a side of a reversal must be seen over to give a speed
REFLECT_GAP = 0.03  # s: largest distance of a reflection from the wall (the object's extent touching it)
FALL_RMS = 0.02  # s: largest rms misfit of a fall to y0 + g t^2 / 2
# s: a track longer than this that reads as static is asked again over its first EARLY_SECONDS. A fall comes
# to rest after about 6 s of shrinking bounces (restitution 0.75), and over a longer clip the median speed
# is that of an object lying on the floor; the motion word names how the object moves from the start.
EARLY_SECONDS = 4.0


# --- per-track attributes --------------------------------------------------------------------------

def _radius(d: Detection, shape: str, unit: float) -> float:
    return math.sqrt(max(d.area, 0.0) / _SHAPE_AREA[shape]) / unit


def _vote_shape(dets: list[Detection]) -> str:
    """The shape most of the object's views show, each view weighted by its area (a small view's
    harmonics are the least sure)."""
    votes: dict[str, float] = {}
    for d in dets:
        votes[d.shape] = votes.get(d.shape, 0.0) + max(d.area, 0.0)
    return max(sorted(votes), key=votes.get) if votes else "circle"


def _vote_edge_shape(dets: list[Detection]) -> str | None:
    """The shape the views' clear edges tell, each view weighted by how much clear edge it shows."""
    votes: dict[str, float] = {}
    for d in dets:
        shape = edge_shape(d)
        if shape is not None:
            votes[shape] = votes.get(shape, 0.0) + d.edge_weight
    return max(sorted(votes), key=votes.get) if votes else None


def reliable_frames(tr: ObjectTrack) -> list[int]:
    """Frames whose detection shows the whole object: it touches nothing, or its area is whole next to
    its untouched area at the nearest times (objects that grow or shrink change area over time), or,
    for an object never seen alone, next to the largest areas it shows."""
    ks = [k for k in tr.frames() if not tr.merged[k]]
    if not ks:
        return []
    free = [k for k in ks if not tr.dets[k].touch]
    areas = np.array([tr.dets[k].area for k in ks])
    if free:
        ref = np.interp(ks, free, np.sqrt([tr.dets[k].area for k in free])) ** 2
    else:
        ref = np.full(len(ks), np.percentile(areas, 90))
    return [k for k, a, r in zip(ks, areas, ref) if not tr.dets[k].touch or a >= WHOLE_AREA * r]


def classify_track(tr: ObjectTrack, fps: float, unit: float) -> None:
    """Fill in shape, size, radius, reliable frames and motion of a track (and diagnostic info)."""
    tr.reliable = reliable_frames(tr)
    whole = [tr.dets[k] for k in tr.reliable] or [tr.dets[k] for k in tr.frames()]
    tr.shape = _vote_shape(whole)
    views = [tr.dets[k] for k in tr.frames() if not tr.merged[k]]
    never_alone = bool(views) and all(d.touch for d in views)
    if never_alone:
        # Never seen alone, perhaps never whole: the edges it shows clear of others tell its shape.
        tr.shape = _vote_edge_shape(views) or tr.shape
    tr.radius = float(np.median([_radius(d, tr.shape, unit) for d in whole]))
    tr.info = {"fill": float(np.median([d.fill for d in whole])), "frames": len(tr.frames()),
               "reliable": len(tr.reliable)}
    ks = tr.reliable
    if len(ks) < 2:  # too little seen whole for motion: use the partly covered views too
        ks = [k for k in tr.frames() if not tr.merged[k]] or tr.frames()
    tr.motion = _motion(tr, ks, fps, unit) if len(ks) >= 2 else "static"
    seen = tr.frames()
    if tr.motion == "static" and (seen[-1] - seen[0]) / fps > EARLY_SECONDS:
        early = ObjectTrack(tr.color, [d if k - seen[0] <= EARLY_SECONDS * fps else None
                                       for k, d in enumerate(tr.dets)], list(tr.merged))
        classify_track(early, fps, unit)
        if early.motion in MOVING_MOTIONS:  # it came to rest: keep the start's motion and its samples
            tr.motion, tr.samples = early.motion, early.samples
            tr.info.update({k: v for k, v in early.info.items() if k not in tr.info or k == "place_speed"},
                           early_seconds=EARLY_SECONDS)
    if never_alone and tr.motion != "spins":
        # Area and extent of a covered view both fall short of the whole; where the area falls much
        # shorter (a bite out of the middle of an edge), the extent is the closer.
        t0 = views[0].frame
        first = [d for d in views if d.frame - t0 <= PLACE_LOOK * fps]  # the size word names the start
        r_ext = float(np.median([_extent_radius(d, tr.shape) for d in first])) / unit
        if tr.radius < 0.8 * r_ext:
            tr.radius = r_ext
    tr.size = "small" if tr.radius < _SIZE_SPLIT else "large"


def _extent_radius(d: Detection, shape: str) -> float:
    """Radius (pixels) of an upright shape whose bounding box holds the view's extent."""
    w, h = d.extent[2] - d.extent[0], d.extent[3] - d.extent[1]
    if shape == "triangle":  # circumradius r: width r sqrt(3), height 1.5 r
        return max(w / math.sqrt(3), h / 1.5)
    return max(w, h) / 2


def _motion(tr: ObjectTrack, ks: list[int], fps: float, unit: float) -> str:
    """The track's motion word (an object that grows or shrinks also gets its radius at t = 0)."""
    # Whether it stays in place is judged on the frames where it touches nothing, when they tell: a
    # growing object that is being covered can keep its area and still lose its centroid.
    free = [k for k in ks if not tr.dets[k].touch]
    speed = None
    # Free frames far apart can alias a periodic motion (a ball seen free only at its floor contacts),
    # so they tell only through pairs of samples within reach of each other.
    for base, need, near in ((free, 3, True), (ks, 1, False), ([k for k in tr.frames() if not tr.merged[k]], 1, False)):
        speeds = _place_speeds(tr, base, fps, unit, near=near)
        if len(speeds) >= need:
            speed = float(np.median(speeds))
            break
    tr.info["place_speed"] = speed
    if speed is None or speed < IN_PLACE_SPEED:
        # In place. A covered object's centroid leaves its place, so the frames showing it whole are
        # those (of all frames, touching or not) whose centroid stays home.
        anchor = free or ks
        hx = float(np.median([tr.dets[k].cx for k in anchor])) / unit
        hy = float(np.median([tr.dets[k].cy for k in anchor])) / unit
        tol = max(HOME_TOL, 0.03 * tr.radius)
        views = [k for k in tr.frames() if not tr.merged[k]]
        home = [k for k in views if math.hypot(tr.dets[k].cx / unit - hx, tr.dets[k].cy / unit - hy) < tol]
        return _in_place_motion(tr, home if len(home) >= 2 else ks, fps, unit, views)
    tr.samples = axis_samples(tr, tr.reliable or ks, fallback=ks)
    return _moving_motion(tr, fps, unit)


def axis_samples(tr: ObjectTrack, ks: list[int], fallback: list[int] = ()) -> dict[str, tuple]:
    """Per axis, the frames where the object's centre is known and its coordinate there (pixels).

    Frames ``ks`` (whole views) give their centroids. A partly covered view still shows its own edge
    on the sides clear of other objects; that edge, plus the centre-to-edge offset seen in the whole
    views, places the centre along that axis. An axis left with fewer than two samples takes the
    centroids of the ``fallback`` frames.
    """
    whole = [tr.dets[k] for k in ks]
    offsets = [float(np.median([(d.cx, d.cy)[i % 2] - d.extent[i] for d in whole])) for i in range(4)]
    out = {}
    for axis, (lo, hi) in (("x", (0, 2)), ("y", (1, 3))):
        a = 0 if axis == "x" else 1
        span = offsets[lo] - offsets[hi]  # the whole object's extent along the axis
        known = {k: (tr.dets[k].cx, tr.dets[k].cy)[a] for k in ks}
        for k in tr.frames():
            d = tr.dets[k]
            if k in known or tr.merged[k]:
                continue
            sides = [i for i in (lo, hi) if d.clear[i]]
            if len(sides) == 2 and abs(d.extent[hi] - d.extent[lo] - span) > 0.1 * span:
                continue  # both look clear, yet the view is short: one of them is not the object's edge
            if sides:
                known[k] = float(np.mean([d.extent[i] + offsets[i] for i in sides]))
        if len(known) < 2:
            known.update({k: (tr.dets[k].cx, tr.dets[k].cy)[a] for k in fallback})
        order = sorted(known)
        out[axis] = (np.array(order), np.array([known[k] for k in order], np.float64))
    return out


def _place_speeds(tr: ObjectTrack, ks: list[int], fps: float, unit: float, near: bool = False) -> list[float]:
    """Speeds (s per second) of the centre between samples about a quarter second apart (long enough
    for noise to wash out, short enough not to straddle a return from a wall), or between neighbours
    where the samples are sparse."""
    t = np.array(ks, np.float64) / fps
    p = np.array([(tr.dets[k].cx, tr.dets[k].cy) for k in ks]).reshape(-1, 2) / unit
    speeds = []
    for i in range(len(ks) - 1):
        j = int(np.searchsorted(t, t[i] + PLACE_LOOK - 1e-9))
        if j >= len(ks) or t[j] - t[i] > 2.5 * PLACE_LOOK:
            j = int(np.searchsorted(t, t[i] + 2.5 * PLACE_LOOK + 1e-9)) - 1  # the farthest one in reach
            j = max(j, i + 1)  # or, where none is in reach, the next one however far
            if near and t[j] - t[i] > 2.5 * PLACE_LOOK:
                continue  # (unless only pairs within reach are asked for)
        speeds.append(float(np.hypot(*(p[j] - p[i]))) / (t[j] - t[i]))
    return speeds


def _steps(ks: np.ndarray, max_gap: int) -> np.ndarray:
    """Indices i such that samples i and i + 1 are at most ``max_gap`` frames apart (all if none are)."""
    i = np.nonzero(np.diff(ks) <= max_gap)[0]
    return i if len(i) else np.arange(len(ks) - 1)


def _moving_motion(tr: ObjectTrack, fps: float, unit: float) -> str:
    """left / right / up / down / bounces / falls from a moving object's centres (``tr.samples``)."""
    (kx, x), (ky, y) = tr.samples["x"], tr.samples["y"]
    vx, vy = _velocities(kx, x / unit, fps), _velocities(ky, y / unit, fps)
    # Reflections flip a velocity component's sign but keep its magnitude, so medians of |v| are the
    # object's speed along each axis whatever walls it met.
    sx = float(np.median(np.abs(vx))) if len(vx) else 0.0
    sy = float(np.median(np.abs(vy))) if len(vy) else 0.0
    acc = _vertical_acceleration(ky, ky / fps, y / unit)
    tr.info.update(speed_x=sx, speed_y=sy, acc=acc)
    if acc > 0.5 * GRAVITY and sx < 0.1:
        return "falls"
    if min(sx, sy) > 0.25 * BOUNCE_SPEED:
        return "bounces"
    if sx >= sy:
        return "right" if np.median(vx[:3]) > 0 else "left"
    return "down" if np.median(vy[:3]) > 0 else "up"


def _velocities(ks: np.ndarray, p: np.ndarray, fps: float) -> np.ndarray:
    """Velocities between successive samples at most two frames apart (any two if none are)."""
    if len(ks) < 2:
        return np.zeros(0)
    i = _steps(ks, 2)
    return (p[i + 1] - p[i]) / ((ks[i + 1] - ks[i]) / fps)


def _vertical_acceleration(ks: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    """Median second divided difference of y over triples of samples about ACC_STEP apart: gravity for
    a falling object, zero for one moving at constant speed. (Closer samples, at a high frame rate,
    would leave gravity's curve under the codec's noise.) Triples around a floor bounce (down, then up)
    are left out, and so are those spread over more than ACC_SPAN seconds."""
    acc = []
    for i in range(len(ks) - 2):
        j = max(i + 1, int(np.searchsorted(t, t[i] + ACC_STEP - 1e-9)))
        if j >= len(ks) - 1:
            break
        m = max(j + 1, int(np.searchsorted(t, t[j] + ACC_STEP - 1e-9)))
        if m >= len(ks) or t[m] - t[i] > ACC_SPAN:
            continue
        v1 = (y[j] - y[i]) / (t[j] - t[i])
        v2 = (y[m] - y[j]) / (t[m] - t[j])
        if v1 > 0 > v2:
            continue
        acc.append(2 * (v2 - v1) / (t[m] - t[i]))
    return float(np.median(acc)) if acc else 0.0


def _scale_u(ks, fps: float) -> np.ndarray:
    """u = min(t, 2 s) / 2 s of frames ks: an object that grows or shrinks has radius r0 (1 + c u)."""
    return np.minimum(np.asarray(ks, np.float64) / fps, SCALE_SECONDS) / SCALE_SECONDS


def _scale_look(tr: ObjectTrack, ks: list[int]) -> float:
    """The least span of u growth is judged over: MIN_SCALE_LOOK seconds, half as long again when every
    view touches another object (one creeping over it takes area away much as shrinking does)."""
    return MIN_SCALE_LOOK * (1.5 if all(tr.dets[k].touch for k in ks) else 1.0) / SCALE_SECONDS


# Share of a covered object's area growth (shrinking) that its clear edges must show moving out (in)
EDGE_AGREE = 0.5
# Per side (left, top, right, bottom): distance from an upright shape's centre to that side, over r.
_SIDE_REACH = {"circle": (1.0, 1.0, 1.0, 1.0), "square": (1.0, 1.0, 1.0, 1.0),
               "triangle": (math.sqrt(3) / 2, 1.0, math.sqrt(3) / 2, 0.5)}


def _edge_scale_slope(tr: ObjectTrack, ks: list[int], fps: float, unit: float) -> float | None:
    """d r / d u (s) of an object in place told by its own edges: every side clear of other objects
    lies r times a fixed reach from the fixed centre, so it moves out as the object grows and stays
    put when only cover changes. Least squares over all clear sides (one offset each, one slope);
    None where no side is seen clear over the span growth is judged on."""
    reach = _SIDE_REACH[tr.shape]
    u = _scale_u(ks, fps)
    num = den = 0.0
    spans = False
    for i in range(4):
        rows = [(uk, (1.0 if i >= 2 else -1.0) * tr.dets[k].extent[i] / reach[i])
                for k, uk in zip(ks, u) if tr.dets[k].clear[i]]
        if len(rows) < 2:
            continue
        x, y = np.array(rows).T
        spans |= bool(np.ptp(x) >= _scale_look(tr, ks))
        x = x - x.mean()
        num += float((x * (y - y.mean())).sum())
        den += float((x * x).sum())
    return num / den / unit if spans and den > 0 else None


def _in_place_motion(tr: ObjectTrack, ks: list[int], fps: float, unit: float, views: list[int] = ()) -> str:
    """static, spins, grows or shrinks for an object that stays in place, from frames showing it at its
    place. Sets ``tr.reliable`` to the frames that show it whole.

    An object covered at its place for nearly all the clip may show it whole too briefly to judge
    growth; then its partly covered ``views`` are read, and an area that grows (shrinks) counts only if
    its clear edges move out (in) with it: a change in cover alone moves no edge of its own."""
    look = _scale_look(tr, ks)
    covered = len(ks) < 2 or np.ptp(_scale_u(ks, fps)) < look
    if covered and len(views) >= 2 and np.ptp(_scale_u(views, fps)) >= _scale_look(tr, views):
        found = _in_place_motion(tr, list(views), fps, unit)
        if found in ("grows", "shrinks"):
            slope = tr.info["scale_rate"] * tr.radius
            edge = _edge_scale_slope(tr, list(views), fps, unit)
            tr.info["edge_scale_rate"] = None if edge is None else edge / max(tr.radius, 1e-6)
            if edge is not None and edge * np.sign(slope) >= EDGE_AGREE * abs(slope):
                return found
        tr.info.pop("scale_rate", None)
        return _in_place_motion(tr, ks, fps, unit)
    r = np.array([_radius(tr.dets[k], tr.shape, unit) for k in ks])
    # r(t) = r0 (1 + c u), u = min(t, 2 s) / 2 s: c = 0.6 grows, -0.4 shrinks, 0 otherwise. Frames off
    # the fitted line (cover takes area away; a neighbour's smeared edge can add some) are dropped and
    # the line refitted.
    u = _scale_u(ks, fps)
    whole = np.ones(len(ks), bool)
    c = 0.0
    if len(ks) >= 2 and np.ptp(u) >= look:
        for _ in range(3):
            slope, r0 = np.polyfit(u[whole], r[whole], 1)
            fit = r0 + slope * u
            keep = (r >= fit * (1 - WHOLE_RADIUS)) & (r <= fit * (1 + 2 * WHOLE_RADIUS))
            if keep.sum() < 2 or np.ptp(u[keep]) < look or (keep == whole).all():
                break
            whole = keep
        c = float(slope / max(r0, 1e-6))
        tr.info["scale_rate"] = c
    else:
        whole = r >= np.max(r) * (1 - WHOLE_RADIUS)
    tr.reliable = [k for k, w in zip(ks, whole) if w]
    if c > 0.5 * (GROW_FACTOR - 1) or c < 0.5 * (SHRINK_FACTOR - 1):
        tr.radius = float(r0)  # the size word names the radius at the start
        return "grows" if c > 0 else "shrinks"
    tr.radius = float(np.median(r[whole]))
    if tr.shape != "circle" and whole.sum() >= 2:
        kk = np.array(tr.reliable)
        dets = [tr.dets[k] for k in kk]
        n = 3 if tr.shape == "triangle" else 4
        ang = np.array([np.angle(d.m3 if n == 3 else d.m4) for d in dets])
        i = _steps(kk, 2)
        dang = np.angle(np.exp(1j * (ang[i + 1] - ang[i]))) / n  # wrapped change of orientation
        rate = np.abs(dang) / ((kk[i + 1] - kk[i]) / fps) / (2 * math.pi)  # turns per second
        tr.info["spin_rate"] = float(np.median(rate))
        if np.median(rate) > 0.4 * SPIN_RATE:
            return "spins"
    return "static"


# --- physics, permanence, consistency --------------------------------------------------------------

def _fall_physics(tr: ObjectTrack, fps: float, unit: float) -> float | None:
    """1 if the drop before the first floor contact fits y0 + g t^2 / 2 (at rest at t = 0, the world's
    gravity), else 0; None when too little of the drop is seen."""
    ks, y = _whole_samples(tr)["y"]
    if len(ks) < 3:
        return None
    t = ks / fps
    y = y / unit
    end = 1  # the drop: samples from the first while y grows, with no long gap between them
    while end < len(y) and y[end] >= y[end - 1] - 0.005 and ks[end] - ks[end - 1] <= 2:
        end += 1
    # The last sample before y turns may already be past the floor contact: leave it out when the rest
    # is enough for a fit.
    if end >= 4:
        end -= 1
    if end < 3:
        return None
    ts, ys = t[:end], y[:end]
    y0 = float(np.mean(ys - 0.5 * GRAVITY * ts ** 2))
    rms = float(np.sqrt(np.mean((ys - y0 - 0.5 * GRAVITY * ts ** 2) ** 2)))
    tr.info["fall_rms"] = rms
    return float(rms < FALL_RMS)


def _reflection_physics(tr: ObjectTrack, fps: float, unit: float, width: int, height: int) -> float | None:
    """Fraction of velocity reversals that are elastic reflections at a wall: lines fitted to the
    positions just before and just after the reversal meet with the object's extent at the wall, and
    the speed is kept."""
    size = {"x": width / unit, "y": height / unit}
    samples = _whole_samples(tr)
    ok, total = 0, 0
    for axis in ("x", "y"):
        ks, p = samples[axis]
        if len(ks) < 3:
            continue
        t = ks / fps
        p = p / unit
        v = np.diff(p) / np.diff(t)
        if np.median(np.abs(v)) < 0.1:  # no motion along this axis, nothing to reflect
            continue
        for i in range(1, len(p) - 1):
            if v[i - 1] * v[i] >= 0:
                continue
            fit = _reflection_fit(t, p, i)
            if fit is None:
                continue
            vb, va, pc = fit
            if max(abs(vb), abs(va)) < 0.1:
                continue
            total += 1
            gap = min(abs(pc - tr.radius), abs(size[axis] - tr.radius - pc))
            kept = abs(abs(va) - abs(vb)) < 0.25 * max(abs(va), abs(vb))
            ok += int(vb * va < 0 and gap < REFLECT_GAP and kept)
    return ok / total if total else None


def _whole_samples(tr: ObjectTrack) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-axis centre samples from the views showing the whole object only: the physics checks want
    centroids, not centres placed from edges (a codec moves an edge by a pixel)."""
    ks = tr.reliable or [k for k in tr.frames() if not tr.merged[k]]
    kk = np.array(ks, dtype=np.int64)
    return {"x": (kk, np.array([tr.dets[k].cx for k in ks], np.float64)),
            "y": (kk, np.array([tr.dets[k].cy for k in ks], np.float64))}


def _reflection_fit(t: np.ndarray, p: np.ndarray, i: int) -> tuple[float, float, float] | None:
    """Velocities before and after a reversal at sample i and the position where the two motions meet.

    The contact lies between samples i - 1 and i + 1, and sample i may be on either side of it, so the
    lines are fitted to the samples within REFLECT_WINDOW each side of it, not to it. A side seen too
    briefly takes the other side's speed, mirrored (the elastic reflection it is tested for), through
    its sample nearest the reversal.
    """
    before = [j for j in range(i) if t[i] - t[j] <= REFLECT_WINDOW]
    after = [j for j in range(i + 1, len(p)) if t[j] - t[i] <= REFLECT_WINDOW]
    if not before or not after:
        return None
    # A side seen over less than REFLECT_SPAN gives no trustworthy speed (a codec's jitter over a
    # frame or two at a high frame rate): it lends only its position.
    fit_b = t[before[-1]] - t[before[0]] >= REFLECT_SPAN
    fit_a = t[after[-1]] - t[after[0]] >= REFLECT_SPAN
    if not (fit_b or fit_a):
        return None
    vb, pb = _line(t[before], p[before]) if fit_b else (None, None)
    va, pa = _line(t[after], p[after]) if fit_a else (None, None)
    if vb is None:
        vb = -va
        pb = p[before[-1]] - vb * t[before[-1]]
    if va is None:
        va = -vb
        pa = p[after[0]] - va * t[after[0]]
    if vb == va:
        return None
    tc = (pa - pb) / (vb - va)  # where the two lines meet
    return vb, va, pb + vb * tc


def _line(t: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of p(t)."""
    slope, icpt = np.polyfit(t, p, 1)
    return float(slope), float(icpt)


def _permanence(tr: ObjectTrack, unit: float) -> float:
    """1 if the object is seen whole, then hidden (missing or mostly covered), then seen whole again
    with the same shape and size."""
    ks = [k for k in tr.frames() if not tr.merged[k]]
    if not ks:
        return 0.0
    areas = np.array([tr.dets[k].area for k in ks])
    full = float(np.percentile(areas, 90))
    shown = [k for k, a in zip(ks, areas) if a >= 0.5 * full]
    gaps = [i for i in range(1, len(shown)) if shown[i] - shown[i - 1] > 1]
    if not gaps:
        return 0.0
    split = shown[max(gaps, key=lambda i: shown[i] - shown[i - 1])]
    whole = set(tr.reliable)
    before = [tr.dets[k] for k in shown if k < split and k in whole]
    after = [tr.dets[k] for k in shown if k >= split and k in whole]
    if not before or not after:
        return 0.0
    sb, sa = _vote_shape(before), _vote_shape(after)
    rb = np.median([_radius(d, sb, unit) for d in before])
    ra = np.median([_radius(d, sa, unit) for d in after])
    return float(sb == sa and (rb < _SIZE_SPLIT) == (ra < _SIZE_SPLIT))


def _consistency(tr: ObjectTrack, unit: float, boxes: dict[int, list]) -> tuple[float, float]:
    """(colour, size) stability: the share of the track's lifespan in which it is seen (or could be
    hidden behind another object), and the share of reliable frames whose radius stays near the median."""
    ks = tr.frames()
    missing = [k for k in range(ks[0], ks[-1] + 1) if tr.dets[k] is None]
    known = np.array(ks, np.float64)
    xs = np.array([tr.dets[int(k)].cx for k in known])
    ys = np.array([tr.dets[int(k)].cy for k in known])
    pad = max(tr.radius * unit, 2.0)
    unexplained = 0
    for k in missing:
        # Between two sightings the object was on the line joining them (or near it).
        x, y = float(np.interp(k, known, xs)), float(np.interp(k, known, ys))
        if not any(b[0] - pad <= x < b[2] + pad and b[1] - pad <= y < b[3] + pad for b in boxes.get(k, [])):
            unexplained += 1
    seen = 1 - unexplained / (ks[-1] - ks[0] + 1)
    if tr.motion in ("grows", "shrinks"):
        return seen, 1.0
    r = np.array([_radius(tr.dets[k], tr.shape, unit) for k in tr.reliable])
    if len(r) == 0:
        return seen, 1.0
    return seen, float(np.mean(np.abs(r - np.median(r)) < 0.2 * np.median(r)))


# --- the report ------------------------------------------------------------------------------------

def _as_uint8(frames) -> np.ndarray:
    """(T, H, W, 3) uint8 from uint8 frames, or float frames in [0, 1]; one frame (H, W, 3) is a clip of one."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be (T, H, W, 3) or (H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"frames must be uint8, or float in [0, 1]; got {frames.dtype}")
        lo, hi = float(np.nanmin(frames)), float(np.nanmax(frames))
        if np.isnan(frames).any() or lo < -0.01 or hi > 1.01:  # [0, 255] or [-1, 1] floats: say so, never mis-score
            raise ValueError(f"float frames must be in [0, 1], got values from {lo:g} to {hi:g} (pass uint8 for "
                             "0..255; map [-1, 1] with (x + 1) / 2)")
        frames = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
    return frames


def analyse(frames: np.ndarray, fps: float) -> tuple[str, list[ObjectTrack], list[list[Detection]]]:
    """Background, classified object tracks and per-frame detections of a clip (T, H, W, 3) uint8."""
    frames = _as_uint8(frames)
    T, H, W, _ = frames.shape
    unit = float(min(H, W))
    bg = detect_background(frames)
    dets = [detect_objects(fr, bg, k, unit) for k, fr in enumerate(frames)]
    tracks = build_tracks(dets, fps, unit, W, H)
    for tr in tracks:
        classify_track(tr, fps, unit)
    return bg, tracks, dets


def score_clip(frames: np.ndarray, prompt: str | Prompt, fps: float = 8.0) -> dict:
    """Score a clip against a prompt in the world's grammar.

    Args:
        frames: (T, H, W, 3) uint8 RGB (or one frame (H, W, 3)).
        prompt: canonical-grammar text (PromptError if outside it) or a parsed Prompt.
        fps: frame rate; motion and physics are measured in seconds.
    Returns:
        A JSON-ready dict: per-attribute accuracies in [0, 1] ("attributes"), "overall" (their mean),
        per-object findings, "physics", "permanence", "consistency" (None where not applicable).
    """
    if not isinstance(prompt, (str, Prompt)):
        raise TypeError(f"prompt must be a string or a parsed Prompt, got {type(prompt).__name__}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number above 0, got {fps!r}")
    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    frames = _as_uint8(frames)
    T, H, W, _ = frames.shape
    unit = float(min(H, W))
    bg, tracks, dets = analyse(frames, fps)
    found_bg = bg if background_share(frames, bg) >= MIN_BACKGROUND_SHARE else None  # noise has no background
    score_motion = T >= 2
    # Match prompt objects to found objects, maximising agreeing attributes (colour first). A prompt
    # object whose colour is nowhere may still answer to an object of another colour: then only its
    # colour is wrong.
    n_p, n_t = len(p.objects), len(tracks)
    best, best_val = [-1] * n_p, -1.0
    for perm in itertools.permutations(list(range(n_t)) + [-1] * n_p, n_p):
        val = sum(_agreement(po, tracks[ti]) for po, ti in zip(p.objects, perm) if ti >= 0)
        if val > best_val:
            best, best_val = list(perm), val
    objects, acc = [], {a: [] for a in ("color", "shape", "size", "motion")}
    fall, refl, perm_scores, cons_c, cons_s = [], [], [], [], []
    boxes = {k: [d.box for d in fr] for k, fr in enumerate(dets)}
    for i, po in enumerate(p.objects):
        tr = tracks[best[i]] if best[i] >= 0 else None
        row = {"expected": {"color": po.color, "shape": po.shape, "size": po.size, "motion": po.motion}}
        if tr is None:
            row["found"] = None
            for a in acc:
                if (a != "size" or po.size is not None) and (a != "motion" or score_motion):
                    acc[a].append(0.0)
            if po.motion == "falls" and score_motion:
                fall.append(0.0)
            if p.behind is not None and p.behind[0] == i:
                perm_scores.append(0.0)
            objects.append(row)
            continue
        row["found"] = {"color": tr.color, "shape": tr.shape, "size": tr.size, "motion": tr.motion,
                        "radius": round(tr.radius, 4), **{k: _round(v) for k, v in tr.info.items()}}
        acc["color"].append(float(tr.color == po.color))
        acc["shape"].append(float(tr.shape == po.shape))
        if po.size is not None:
            acc["size"].append(float(tr.size == po.size))
        if score_motion:
            acc["motion"].append(float(tr.motion == po.motion))
            if po.motion == "falls":
                fall.append(_fall_physics(tr, fps, unit))
            if po.motion in LINEAR_MOTIONS or po.motion == "bounces":
                refl.append(_reflection_physics(tr, fps, unit, W, H))
            if p.behind is not None and p.behind[0] == i:
                perm_scores.append(_permanence(tr, unit))
        if len(tr.frames()) >= 2:
            c, s = _consistency(tr, unit, boxes)
            cons_c.append(c)
            cons_s.append(s)
        objects.append(row)
    attributes = {
        "background": float(found_bg == p.background),
        "count": float(n_t == n_p),
        **{a: (float(np.mean(v)) if v else None) for a, v in acc.items()},
    }
    scored = [v for v in attributes.values() if v is not None]
    return {
        "prompt": _prompt_text(p),
        "frames": T, "width": W, "height": H, "fps": fps,
        "background": {"expected": p.background, "found": found_bg},
        "count": {"expected": n_p, "found": n_t},
        "objects": objects,
        "extra_objects": [{"color": t.color, "shape": t.shape, "size": t.size, "motion": t.motion}
                          for j, t in enumerate(tracks) if j not in best],
        "attributes": attributes,
        "overall": float(np.mean(scored)),
        "physics": {"fall": _mean(fall), "reflection": _mean(refl)},
        "permanence": _mean(perm_scores),
        "consistency": {"color": _mean(cons_c), "size": _mean(cons_s)},
    }


FILE_FPS = 8.0  # the world's default rate: files faster than it are scored at it
FILE_SIDE = 256  # px: a file whose shorter side is larger is scaled down to it (thresholds are in units of it)


def _scoring_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is at most FILE_SIDE, the aspect ratio kept: a 10 s 1080p
    clip had been scored at full size and needed 4 GB; the world's thresholds are in units of the shorter
    side, so the verdict does not depend on it."""
    f = FILE_SIDE / min(width, height)
    if f >= 1:
        return width, height
    return max(2, round(width * f / 2) * 2), max(2, round(height * f / 2) * 2)


def score_file(path: str | Path, prompt: str | Prompt) -> dict:
    """Score a video file (any format video_io reads) or an image (png, jpg/jpeg, webp, bmp, tif/tiff).

    A file faster than 8 fps is read at its rate divided by k = round(rate / 8) (12 fps at 6, 16 at 8, 29.97
    at 7.49), by its frames' timestamps (mid-frame), as the world defines motion by time, not frame index:
    the frames read are evenly spaced in time (resampling 12 fps to 8 had alternated steps of 1/6 and 1/12 s,
    which the motion fits read as acceleration), variable-frame-rate files keep their real timing, and a clip
    whose rate was raised by holding frames (8 fps content in a 29.97 fps file) is read near its own frames,
    where frame-to-frame differences of the held copies would read as no motion. A file whose shorter side is
    over FILE_SIDE pixels is scaled down to it: a video as it is decoded, an image after it is read.
    """
    from moviola.video_io import fit_frames, probe_video, read_image, read_video_fitted

    from moviola.images import image_suffixes

    path = Path(path)
    if path.suffix.lower() in image_suffixes() - {".gif", ".apng", ".avifs"}:  # these may move: read as videos
        image = read_image(path)
        w, h = _scoring_size(image.shape[1], image.shape[0])
        return score_clip(fit_frames(image[None], w, h)[0], prompt, fps=8.0)
    info = probe_video(path)
    w, h = _scoring_size(info["width"], info["height"])
    if info["fps"] > FILE_FPS + 1e-3:
        k = max(1, round(info["fps"] / FILE_FPS))
        rate, phase = info["fps"] / k, 0.0  # every k-th frame from the first: frame j shows t = j / rate
        if abs(rate - FILE_FPS) > 1e-3 * FILE_FPS and _holds_frames(path, info["fps"]):
            # 8 fps content whose frames were held to fill a faster rate: read at its own frames, each mid-way
            # through its run of copies (where rounding cannot pick the copy of a neighbour)
            rate, phase = FILE_FPS, 0.5
        # (mid-frame for every file, frame j had shown t = (j + 1/2) / rate but been scored as j / rate: a fall read
        # at 12 or 30 fps no longer started at rest, and failed its physics in every clip)
        frames = read_video_fitted(path, w, h, rate, phase=phase)
        return score_clip(frames, prompt, fps=rate)
    # By the frames' timestamps at the file's rate: a variable-frame-rate Matroska file reports its nominal rate,
    # and its frames read one after another had made its motions half as fast again as they are
    return score_clip(read_video_fitted(path, w, h, info["fps"]), prompt, fps=info["fps"])


def _holds_frames(path: Path, fps: float) -> bool:
    """Whether a file repeats its frames (content at a lower rate held to fill ``fps``): many consecutive frames
    the same (a small copy, read at the file's own rate), some not. Changes are judged by the largest pixel
    difference, which a slow small object still makes and a held copy does not (beyond the codec's noise)."""
    from moviola.video_io import read_video_fitted

    small = read_video_fitted(path, 64, 64, fps).astype(np.int16)  # (T, 64, 64, 3)
    if len(small) < 4:
        return False
    changed = np.abs(np.diff(small, axis=0)).max(axis=(1, 2, 3)) > 12  # (T - 1,)
    return bool(changed.any() and (~changed).mean() >= 0.3)


def _agreement(po, tr: ObjectTrack) -> float:
    """How well a found object answers a prompt object (colour outweighs the rest together)."""
    return (1.0 + 10.0 * (tr.color == po.color) + 2.0 * (tr.shape == po.shape)
            + (po.size in (None, tr.size)) + (tr.motion == po.motion))


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def _prompt_text(p: Prompt) -> str:
    parts = [" ".join(w for w in (o.size, o.color, o.shape, o.motion) if w) for o in p.objects]
    return "; ".join(parts) + f" | {p.background}"
