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

Objects overlap. A partly covered object's centroid and area are wrong, so each track keeps a list of
``reliable`` frames: those where it touches nothing, or where its area is whole (it lies on top of what
it touches). Shape, size, motion and physics are measured on those frames.

Every threshold is in the world's unit s = min(W, H) and in seconds, so it holds at every size and fps.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from moviola.world.caption import Prompt, parse_prompt
from moviola.world.detect import (
    Detection, ObjectTrack, build_tracks, detect_background, detect_objects,
)
from moviola.world.spec import (
    BOUNCE_SPEED, GRAVITY, GROW_FACTOR, LINEAR_MOTIONS, MOVE_SPEED, SCALE_SECONDS, SHRINK_FACTOR, SIZES,
    SPIN_RATE,
)

ATTRIBUTES = ("background", "count", "color", "shape", "size", "motion")
_SIZE_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])  # radius threshold between small and large
_SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}  # area / r^2
WHOLE_AREA = 0.95  # a touching object whose area is at least this share of its own is not covered
WHOLE_RADIUS = 0.03  # likewise for the radius of an object in place, against its fitted growth
IN_PLACE_SPEED = 0.1  # s/s: slower than this, an object stays in place (the slowest mover does 0.35)
PLACE_LOOK = 0.25  # s: the time over which that speed is measured
# s: closer still in the frames that show it whole; cover that takes 5 % of an object's area moves its
# centroid by about 0.005 s, and compressed video keeps a centroid to about 0.002 s
HOME_TOL = 0.004
ACC_SPAN = 0.8  # s: longest time over which three samples give an acceleration
REFLECT_WINDOW = 0.4  # s: positions this close to a reversal give the velocities before and after it
REFLECT_GAP = 0.03  # s: largest distance of a reflection from the wall (the object's extent touching it)
FALL_RMS = 0.02  # s: largest rms misfit of a fall to y0 + g t^2 / 2


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


def classify_track(tr: ObjectTrack, fps: float, unit: float, width: int, height: int) -> None:
    """Fill in shape, size, radius, reliable frames and motion of a track (and diagnostic info)."""
    tr.reliable = reliable_frames(tr)
    whole = [tr.dets[k] for k in tr.reliable] or [tr.dets[k] for k in tr.frames()]
    tr.shape = _vote_shape(whole)
    tr.radius = float(np.median([_radius(d, tr.shape, unit) for d in whole]))
    tr.info = {"fill": float(np.median([d.fill for d in whole])), "frames": len(tr.frames()),
               "reliable": len(tr.reliable)}
    ks = tr.reliable
    if len(ks) < 2:  # too little seen whole for motion: use the partly covered views too
        ks = [k for k in tr.frames() if not tr.merged[k]] or tr.frames()
    dets = [tr.dets[k] for k in ks]
    tr.motion = _motion(tr, ks, dets, fps, unit) if len(ks) >= 2 else "static"
    tr.size = "small" if tr.radius < _SIZE_SPLIT else "large"


def _motion(tr: ObjectTrack, ks: list[int], dets: list[Detection], fps: float, unit: float) -> str:
    """The track's motion word (an object that grows or shrinks also gets its radius at t = 0)."""
    # Whether it stays in place is judged on the frames where it touches nothing, when they tell: a
    # growing object that is being covered can keep its area and still lose its centroid.
    free = [k for k in ks if not tr.dets[k].touch]
    speed = None
    for base, need in ((free, 3), (ks, 1), ([k for k in tr.frames() if not tr.merged[k]], 1)):
        speeds = _place_speeds(tr, base, fps, unit)
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
        home = [k for k in tr.frames() if not tr.merged[k]
                and math.hypot(tr.dets[k].cx / unit - hx, tr.dets[k].cy / unit - hy) < tol]
        return _in_place_motion(tr, home if len(home) >= 2 else ks, fps, unit)
    t = np.array(ks, np.float64) / fps
    x = np.array([d.cx for d in dets]) / unit
    y = np.array([d.cy for d in dets]) / unit
    return _moving_motion(tr, np.array(ks), t, x, y)


def _place_speeds(tr: ObjectTrack, ks: list[int], fps: float, unit: float) -> list[float]:
    """Speeds (s per second) of the centre between samples about a quarter second apart (long enough
    for noise to wash out, short enough not to straddle a return from a wall), or closer where the
    samples are sparse."""
    t = np.array(ks, np.float64) / fps
    p = np.array([(tr.dets[k].cx, tr.dets[k].cy) for k in ks]).reshape(-1, 2) / unit
    speeds = []
    for i in range(len(ks) - 1):
        j = int(np.searchsorted(t, t[i] + PLACE_LOOK - 1e-9))
        if j >= len(ks) or t[j] - t[i] > 2.5 * PLACE_LOOK:
            j = int(np.searchsorted(t, t[i] + 2.5 * PLACE_LOOK + 1e-9)) - 1  # the farthest one in reach
        if j > i:
            speeds.append(float(np.hypot(*(p[j] - p[i]))) / (t[j] - t[i]))
    return speeds


def _steps(ks: np.ndarray, max_gap: int) -> np.ndarray:
    """Indices i such that samples i and i + 1 are at most ``max_gap`` frames apart (all if none are)."""
    i = np.nonzero(np.diff(ks) <= max_gap)[0]
    return i if len(i) else np.arange(len(ks) - 1)


def _moving_motion(tr: ObjectTrack, ks: np.ndarray, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> str:
    """left / right / up / down / bounces / falls from a moving object's reliable centres (in s)."""
    i = _steps(ks, 2)
    vx = (x[i + 1] - x[i]) / (t[i + 1] - t[i])
    vy = (y[i + 1] - y[i]) / (t[i + 1] - t[i])
    # Reflections flip a velocity component's sign but keep its magnitude, so medians of |v| are the
    # object's speed along each axis whatever walls it met.
    sx, sy = float(np.median(np.abs(vx))), float(np.median(np.abs(vy)))
    acc = _vertical_acceleration(ks, t, y)
    tr.info.update(speed_x=sx, speed_y=sy, acc=acc)
    if acc > 0.5 * GRAVITY and sx < 0.1:
        return "falls"
    if min(sx, sy) > 0.25 * BOUNCE_SPEED:
        return "bounces"
    if sx >= sy:
        return "right" if np.median(vx[:3]) > 0 else "left"
    return "down" if np.median(vy[:3]) > 0 else "up"


def _vertical_acceleration(ks: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    """Median second divided difference of y over runs of close samples: gravity for a falling object,
    zero for one moving at constant speed. Triples around a floor bounce (down, then up) are left out,
    and so are those spread over more than ACC_SPAN seconds."""
    acc = []
    for i in range(1, len(ks) - 1):
        if t[i + 1] - t[i - 1] > ACC_SPAN:
            continue
        v1 = (y[i] - y[i - 1]) / (t[i] - t[i - 1])
        v2 = (y[i + 1] - y[i]) / (t[i + 1] - t[i])
        if v1 > 0 > v2:
            continue
        acc.append(2 * (v2 - v1) / (t[i + 1] - t[i - 1]))
    return float(np.median(acc)) if acc else 0.0


def _in_place_motion(tr: ObjectTrack, ks: list[int], fps: float, unit: float) -> str:
    """static, spins, grows or shrinks for an object that stays in place, from frames showing it at its
    place. Sets ``tr.reliable`` to the frames that show it whole."""
    t = np.array(ks, np.float64) / fps
    r = np.array([_radius(tr.dets[k], tr.shape, unit) for k in ks])
    # r(t) = r0 (1 + c u), u = min(t, 2 s) / 2 s: c = 0.6 grows, -0.4 shrinks, 0 otherwise. Frames off
    # the fitted line (cover takes area away; a neighbour's smeared edge can add some) are dropped and
    # the line refitted.
    u = np.minimum(t, SCALE_SECONDS) / SCALE_SECONDS
    whole = np.ones(len(ks), bool)
    c = 0.0
    if len(ks) >= 2 and np.ptp(u) >= 0.1:
        for _ in range(3):
            slope, r0 = np.polyfit(u[whole], r[whole], 1)
            fit = r0 + slope * u
            keep = (r >= fit * (1 - WHOLE_RADIUS)) & (r <= fit * (1 + 2 * WHOLE_RADIUS))
            if keep.sum() < 2 or np.ptp(u[keep]) < 0.1 or (keep == whole).all():
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
    ks = tr.reliable
    if len(ks) < 3:
        return None
    t = np.array(ks, np.float64) / fps
    y = np.array([tr.dets[k].cy for k in ks]) / unit
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
    ks = tr.reliable
    if len(ks) < 3:
        return None
    t = np.array(ks, np.float64) / fps
    pos = {"x": np.array([tr.dets[k].cx for k in ks]) / unit, "y": np.array([tr.dets[k].cy for k in ks]) / unit}
    size = {"x": width / unit, "y": height / unit}
    ok, total = 0, 0
    for axis in ("x", "y"):
        p = pos[axis]
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


def _reflection_fit(t: np.ndarray, p: np.ndarray, i: int) -> tuple[float, float, float] | None:
    """Velocities before and after a reversal at sample i and the position where the two motions meet.

    The contact lies between samples i - 1 and i + 1, and sample i may be on either side of it, so the
    lines are fitted to up to three samples each side of it, not to it. A side with one sample only takes
    the other side's speed, mirrored (the elastic reflection it is tested for).
    """
    before = [j for j in range(max(0, i - 3), i) if t[i] - t[j] <= REFLECT_WINDOW]
    after = [j for j in range(i + 1, min(len(p), i + 4)) if t[j] - t[i] <= REFLECT_WINDOW]
    if not before or not after or (len(before) < 2 and len(after) < 2):
        return None
    vb, pb = _line(t[before], p[before]) if len(before) >= 2 else (None, None)
    va, pa = _line(t[after], p[after]) if len(after) >= 2 else (None, None)
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
    known = np.array([k for k in (tr.reliable or ks)], np.float64)
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

def analyse(frames: np.ndarray, fps: float) -> tuple[str, list[ObjectTrack], list[list[Detection]]]:
    """Background, classified object tracks and per-frame detections of a clip (T, H, W, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    T, H, W, _ = frames.shape
    unit = float(min(H, W))
    bg = detect_background(frames)
    dets = [detect_objects(fr, bg, k, unit) for k, fr in enumerate(frames)]
    tracks = build_tracks(dets, fps, unit, W, H)
    for tr in tracks:
        classify_track(tr, fps, unit, W, H)
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
    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) or (H, W, 3) RGB, got shape {frames.shape}")
    T, H, W, _ = frames.shape
    unit = float(min(H, W))
    bg, tracks, dets = analyse(frames, fps)
    score_motion = T >= 2
    # Match prompt objects to tracks, maximising agreeing attributes (colour first).
    n_p, n_t = len(p.objects), len(tracks)
    best, best_val = [], -1.0
    for perm in itertools.permutations(range(n_t), min(n_p, n_t)):
        val = 0.0
        for po, ti in zip(p.objects, perm):
            tr = tracks[ti]
            if tr.color == po.color:
                val += 10 + (tr.shape == po.shape) * 2 + (po.size in (None, tr.size)) + (tr.motion == po.motion)
        if val > best_val:
            best, best_val = list(perm), val
    objects, acc = [], {a: [] for a in ("color", "shape", "size", "motion")}
    fall, refl, perm_scores, cons_c, cons_s = [], [], [], [], []
    boxes = {k: [d.box for d in fr] for k, fr in enumerate(dets)}
    for i, po in enumerate(p.objects):
        tr = tracks[best[i]] if i < len(best) and tracks[best[i]].color == po.color else None
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
        acc["color"].append(1.0)
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
        "background": float(bg == p.background),
        "count": float(n_t == n_p),
        **{a: (float(np.mean(v)) if v else None) for a, v in acc.items()},
    }
    scored = [v for v in attributes.values() if v is not None]
    return {
        "prompt": _prompt_text(p),
        "frames": T, "width": W, "height": H, "fps": fps,
        "background": {"expected": p.background, "found": bg},
        "count": {"expected": n_p, "found": n_t},
        "objects": objects,
        "extra_objects": [{"color": t.color, "shape": t.shape, "size": t.size, "motion": t.motion}
                          for j, t in enumerate(tracks) if j not in best[:n_p]],
        "attributes": attributes,
        "overall": float(np.mean(scored)),
        "physics": {"fall": _mean(fall), "reflection": _mean(refl)},
        "permanence": _mean(perm_scores),
        "consistency": {"color": _mean(cons_c), "size": _mean(cons_s)},
    }


def score_file(path: str | Path, prompt: str | Prompt) -> dict:
    """Score a video file (any format video_io reads) or a PNG image."""
    from moviola.video_io import read_image, read_video

    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        return score_clip(read_image(path), prompt, fps=8.0)
    vid = read_video(path)
    return score_clip(vid.frames, prompt, fps=vid.fps)


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def _prompt_text(p: Prompt) -> str:
    parts = [" ".join(w for w in (o.size, o.color, o.shape, o.motion) if w) for o in p.objects]
    return "; ".join(parts) + f" | {p.background}"
