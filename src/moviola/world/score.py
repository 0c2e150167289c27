"""The world's scorer: does a clip match its prompt? Per-attribute accuracy, physics, permanence.

Pipeline, per WORLD.md: find the background; find objects by palette colour (connected components of
pixels near a palette colour); measure each blob's soft coverage against the background; classify
shape, size and orientation from that coverage; track blobs over time; classify motion from the tracks;
check physics (falls fit a parabola with the world's gravity, reflections happen at walls), object
permanence (an occluded object comes back unchanged) and temporal consistency.

Shape is read from the angular harmonics of the coverage about its centroid (|m3| large for a triangle,
|m4| for a square, neither for a circle): they are rotation invariant, so a spinning square is still a
square, and their phase gives the orientation used to detect spinning. The bounding-box fill ratio of
WORLD.md is reported beside them.

Every measurement is in the world's unit s = min(W, H), so thresholds hold at every size.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from moviola.world.caption import Prompt, parse_prompt
from moviola.world.spec import (
    BACKGROUNDS, BOUNCE_SPEED, COLORS, GRAVITY, GROW_FACTOR, LINEAR_MOTIONS, MOVE_SPEED,
    SCALE_SECONDS, SHRINK_FACTOR, SIZES,
)

ATTRIBUTES = ("background", "count", "color", "shape", "size", "motion")
_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _NAMES], dtype=np.float32)  # (7, 3)
CORE_DIST = 48.0  # max RGB distance of a pixel counted as an object colour's core
_SIZE_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])  # radius threshold between small and large
_SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}  # area / r^2


@dataclass
class Detection:
    """One blob of one palette colour in one frame (lengths in pixels)."""

    color: str
    frame: int
    cx: float
    cy: float
    area: float
    fill: float  # bounding-box fill ratio
    m3: complex  # normalised 3rd and 4th angular harmonics of the coverage
    m4: complex
    clean: bool  # isolated from other objects' pixels, so area and shape are trustworthy
    box: tuple[int, int, int, int]

    @property
    def shape(self) -> str:
        a3, a4 = abs(self.m3), abs(self.m4)
        if a3 > 0.3 and a3 > a4:
            return "triangle"
        if a4 > 0.22:
            return "square"
        return "circle"


@dataclass
class ObjectTrack:
    """A tracked object: its colour and one detection (or None) per frame."""

    color: str
    dets: list[Detection | None]
    shape: str = "circle"
    size: str = "small"
    motion: str = "static"
    radius: float = 0.0  # initial radius in units of s
    info: dict = field(default_factory=dict)

    def frames(self) -> list[int]:
        return [k for k, d in enumerate(self.dets) if d is not None]


# --- detection -----------------------------------------------------------------------------------

def detect_background(frames: np.ndarray) -> str:
    """The background colour that most pixels of the clip are close to."""
    sample = frames[:: max(1, len(frames) // 8)].reshape(-1, 3).astype(np.float32)
    best, best_n = "black", -1
    for name, rgb in BACKGROUNDS.items():
        n = int((np.linalg.norm(sample - np.asarray(rgb, np.float32), axis=1) < 40).sum())
        if n > best_n:
            best, best_n = name, n
    return best


def _classify_pixels(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest palette colour and whether it is within CORE_DIST of it."""
    f = frame.astype(np.float32)
    d = np.linalg.norm(f[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, 7)
    idx = d.argmin(-1)
    return idx, d.min(-1) < CORE_DIST


def _harmonics(alpha: np.ndarray, x0: int, y0: int) -> tuple[float, float, float, complex, complex]:
    """Area, centroid and normalised angular harmonics m3, m4 of a coverage patch."""
    yy, xx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]].astype(np.float64) + 0.5
    area = float(alpha.sum())
    cx = float((alpha * xx).sum() / area)
    cy = float((alpha * yy).sum() / area)
    z = (xx - cx) + 1j * (yy - cy)
    rho = np.abs(z)
    ms = []
    for k in (3, 4):
        den = float((alpha * rho ** k).sum())
        ms.append(complex((alpha * z ** k).sum() / den) if den > 0 else 0j)
    return area, cx + x0, cy + y0, ms[0], ms[1]


def detect_objects(frame: np.ndarray, background: str, k: int = 0, unit: float | None = None) -> list[Detection]:
    """All palette-coloured blobs in one frame (H, W, 3) uint8."""
    H, W = frame.shape[:2]
    unit = unit or float(min(H, W))
    idx, core = _classify_pixels(frame)
    bg = np.asarray(BACKGROUNDS[background], np.float32)
    f = frame.astype(np.float32)
    any_core = core & True
    min_core = max(2, int(0.15 * (0.048 * unit) ** 2))  # a fraction of the smallest possible object
    out = []
    eight = np.ones((3, 3), bool)
    for ci, name in enumerate(_NAMES):
        mask = core & (idx == ci)
        if not mask.any():
            continue
        labels, n = ndimage.label(mask, structure=eight)
        others = any_core & ~mask
        near_other = ndimage.binary_dilation(others, structure=eight)
        col = _PALETTE[ci]
        for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[sl] == lab
            npx = int(comp.sum())
            if npx < min_core:
                continue
            # A blend line where two other colours meet (red over yellow looks orange) touches other
            # colours almost everywhere; a real object has pixels away from them.
            if npx < 0.5 * (0.16 * unit) ** 2 and near_other[sl][comp].mean() > 0.8:
                continue
            y0, y1 = max(0, sl[0].start - 2), min(H, sl[0].stop + 2)
            x0, x1 = max(0, sl[1].start - 2), min(W, sl[1].stop + 2)
            patch = f[y0:y1, x0:x1]
            # Soft coverage: project each pixel onto the line from background to object colour.
            dcol = col - bg
            alpha = ((patch - bg) @ dcol) / float(dcol @ dcol)
            resid = np.linalg.norm(patch - (bg + alpha[..., None] * dcol), axis=-1)
            alpha = np.clip(alpha, 0.0, 1.0) * (resid < 40)
            # Keep only coverage connected to this component (not a neighbouring blob of the same colour).
            own = ndimage.binary_dilation(labels[y0:y1, x0:x1] == lab, structure=eight, iterations=2)
            other_same = (labels[y0:y1, x0:x1] > 0) & (labels[y0:y1, x0:x1] != lab)
            alpha = alpha * (own & ~other_same)
            if alpha.sum() <= 0:
                continue
            area, cx, cy, m3, m4 = _harmonics(alpha, x0, y0)
            w = float(alpha.max(0).sum())
            h = float(alpha.max(1).sum())
            clean = not (near_other[y0:y1, x0:x1] & own).any() and not other_same.any()
            out.append(Detection(name, k, cx, cy, area, area / max(w * h, 1e-6), m3, m4, clean,
                                 (x0, y0, x1, y1)))
    return out


# --- tracking -------------------------------------------------------------------------------------

def _robust_count(counts: list[int]) -> int:
    """Largest n seen in at least a tenth of the frames, and in two at least (objects of one colour can
    overlap for most of a clip; a one-frame blip is not an object)."""
    T = len(counts)
    need = min(T, max(2, math.ceil(0.1 * T)))
    best = 0
    for n in range(1, max(counts, default=0) + 1):
        if sum(c >= n for c in counts) >= need:
            best = n
    return best


def build_tracks(dets: list[list[Detection]], fps: float, unit: float) -> list[ObjectTrack]:
    """Link per-frame detections of each colour into object tracks (nearest neighbour with a
    constant-velocity prediction; at most 3 objects of a colour, so assignment is brute force)."""
    T = len(dets)
    tracks: list[ObjectTrack] = []
    for name in _NAMES:
        per = [[d for d in fr if d.color == name] for fr in dets]
        # Count isolated blobs only: an object cut in two by one drawn over it is not two objects.
        n = _robust_count([sum(d.clean for d in p) for p in per])
        if n == 0:
            n = _robust_count([len(p) for p in per])
        if n == 0:
            continue
        anchor = next((k for k in range(T) if sum(d.clean for d in per[k]) == n), None)
        if anchor is None:
            anchor = next(k for k in range(T) if len(per[k]) >= n)
        tr = [ObjectTrack(name, [None] * T) for _ in range(n)]
        start = [d for d in per[anchor] if d.clean] if sum(d.clean for d in per[anchor]) == n else per[anchor]
        for t, d in zip(tr, sorted(start, key=lambda d: (d.cx, d.cy))[:n]):
            t.dets[anchor] = d
        sig = [t.dets[anchor] for t in tr]  # shape and area tell apart objects of one colour
        for rng_ in (range(anchor + 1, T), range(anchor - 1, -1, -1)):
            for k in rng_:
                if not per[k]:
                    continue
                if len(per[k]) < n:
                    # Fewer blobs than objects: some overlap, so no blob's shape or area can be trusted.
                    for d in per[k]:
                        d.clean = False
                preds = [_predict(t, k) for t in tr]
                best, best_cost = None, math.inf
                m = min(n, len(per[k]))
                for ti in itertools.permutations(range(n), m):
                    for di in itertools.permutations(range(len(per[k])), m):
                        cost = sum(_match_cost(preds[a], sig[a], per[k][b], unit) for a, b in zip(ti, di))
                        if cost < best_cost:
                            best, best_cost = list(zip(ti, di)), cost
                gate = 0.45 * unit
                for a, b in best or []:
                    p = preds[a]
                    if math.hypot(p[0] - per[k][b].cx, p[1] - per[k][b].cy) < gate * max(1, p[2]):
                        tr[a].dets[k] = per[k][b]
        tracks += tr
    return tracks


def _match_cost(pred: tuple[float, float, int], sig: Detection, d: Detection, unit: float) -> float:
    """Distance from the predicted centre, plus penalties for a different shape or area."""
    cost = math.hypot(pred[0] - d.cx, pred[1] - d.cy)
    if d.clean and sig.clean:
        cost += 0.3 * unit * (d.shape != sig.shape) + 0.1 * unit * abs(math.log(d.area / sig.area))
    return cost


def _predict(track: ObjectTrack, k: int) -> tuple[float, float, int]:
    """Predicted centre of a track at frame k from its two nearest known frames; and the gap."""
    known = [j for j, d in enumerate(track.dets) if d is not None]
    if not known:
        return (0.0, 0.0, 1)
    near = sorted(known, key=lambda j: abs(j - k))[:2]
    a = track.dets[near[0]]
    if len(near) == 1 or near[0] == near[1]:
        return (a.cx, a.cy, abs(k - near[0]))
    b = track.dets[near[1]]
    step = (k - near[0]) / (near[0] - near[1])
    return (a.cx + (a.cx - b.cx) * step, a.cy + (a.cy - b.cy) * step, abs(k - near[0]))


# --- per-track attributes --------------------------------------------------------------------------

def _track_shape(dets: list[Detection]) -> str:
    votes = [d.shape for d in dets]
    return max(set(votes), key=votes.count) if votes else "circle"


def _radius(d: Detection, shape: str, unit: float) -> float:
    return math.sqrt(d.area / _SHAPE_AREA[shape]) / unit


def classify_track(tr: ObjectTrack, fps: float, unit: float, width: int, height: int) -> None:
    """Fill in shape, size, radius and motion of a track (and diagnostic info)."""
    ks = tr.frames()
    dets = [tr.dets[k] for k in ks]
    clean = [d for d in dets if d.clean] or dets
    tr.shape = _track_shape(clean)
    radii = [(d.frame, _radius(d, tr.shape, unit)) for d in clean]
    early = [r for _, r in radii[:3]]
    tr.radius = float(np.median(early))
    tr.size = "small" if tr.radius < _SIZE_SPLIT else "large"
    tr.info = {"fill": float(np.median([d.fill for d in clean])), "frames": len(ks)}
    if len(ks) < 2:
        tr.motion = "static"
        return
    if len(clean) >= max(3, 0.6 * len(dets)):  # covered frames shift the centroid; skip them
        ks, dets = [d.frame for d in clean], clean
    t = np.array(ks, np.float64) / fps
    x = np.array([d.cx for d in dets]) / unit
    y = np.array([d.cy for d in dets]) / unit
    disp = float(np.max(np.hypot(x - x[0], y - y[0])))
    tr.info["max_displacement"] = disp
    duration = t[-1] - t[0]
    if disp < max(0.04, 0.1 * MOVE_SPEED * duration):
        tr.motion = _stationary_motion(tr, clean, radii, fps)
        return
    vx, vy = np.diff(x) / np.diff(t), np.diff(y) / np.diff(t)
    # Reflections flip a velocity component's sign but keep its magnitude, so medians of |v| are the
    # object's speed along each axis whatever walls it met.
    sx, sy = float(np.median(np.abs(vx))), float(np.median(np.abs(vy)))
    end = _drop_end(t, y)
    acc, v0 = 0.0, sy
    if end >= 3:
        c2, c1, _ = np.polyfit(t[:end] - t[0], y[:end], 2)
        acc, v0 = 2 * c2, c1
    tr.info.update(speed_x=sx, speed_y=sy, acc=float(acc))
    if acc > 0.5 * GRAVITY and abs(v0) < 0.25 and sx < 0.1:
        tr.motion = "falls"
    elif min(sx, sy) > 0.25 * BOUNCE_SPEED:
        tr.motion = "bounces"
    elif sx >= sy:
        tr.motion = "right" if np.median(vx[:3]) > 0 else "left"
    else:
        tr.motion = "down" if np.median(vy[:3]) > 0 else "up"


def _drop_end(t: np.ndarray, y: np.ndarray) -> int:
    """Number of leading frames before a bounce breaks the curve: the first frame whose second
    difference turns sharply upward (a floor or wall contact) ends the segment."""
    if len(t) < 3:
        return len(t)
    dt = float(np.median(np.diff(t)))
    d2 = y[2:] - 2 * y[1:-1] + y[:-2]
    hit = np.nonzero(d2 < -0.5 * GRAVITY * dt * dt)[0]
    return int(hit[0]) + 2 if len(hit) else len(t)


def _stationary_motion(tr: ObjectTrack, clean: list[Detection], radii: list[tuple[int, float]], fps: float) -> str:
    """static, spins, grows or shrinks for an object that stays in place."""
    if len(radii) >= 2:
        (k0, r0), (k1, r1) = radii[0], radii[-1]
        t1 = (k1 - k0) / fps
        frac = min(t1 / SCALE_SECONDS, 1.0)
        if frac > 0:
            ratio = r1 / max(r0, 1e-6)
            grow, shrink = 1 + (GROW_FACTOR - 1) * frac, 1 + (SHRINK_FACTOR - 1) * frac
            tr.info["radius_ratio"] = ratio
            if ratio > 1 + 0.5 * (grow - 1):
                return "grows"
            if ratio < 1 + 0.5 * (shrink - 1):
                return "shrinks"
    if tr.shape != "circle" and len(clean) >= 3:
        k = 3 if tr.shape == "triangle" else 4
        ang = np.array([np.angle(d.m3 if k == 3 else d.m4) for d in clean])
        frames = np.array([d.frame for d in clean])
        dang = np.angle(np.exp(1j * np.diff(ang))) / k  # wrapped change of orientation per step
        rate = np.abs(dang) / np.diff(frames) * fps / (2 * math.pi)  # turns per second
        tr.info["spin_rate"] = float(np.median(rate))
        if np.median(rate) > 0.2:
            return "spins"
    return "static"


# --- physics, permanence, consistency --------------------------------------------------------------

def _fall_physics(tr: ObjectTrack, fps: float, unit: float, height: int) -> float | None:
    """1 if the drop before the first floor contact fits y0 + g t^2 / 2 with the world's gravity."""
    ks = tr.frames()
    if len(ks) < 4:
        return None
    t = np.array(ks, np.float64) / fps
    y = np.array([tr.dets[k].cy for k in ks]) / unit
    end = _drop_end(t, y)
    if end < 3:
        return None
    ts, ys = t[:end], y[:end]
    y0 = float(np.mean(ys - 0.5 * GRAVITY * ts ** 2))
    rms = float(np.sqrt(np.mean((ys - y0 - 0.5 * GRAVITY * ts ** 2) ** 2)))
    tr.info["fall_rms"] = rms
    return float(rms < 0.02)


def _reflection_physics(tr: ObjectTrack, fps: float, unit: float, width: int, height: int) -> float | None:
    """Fraction of velocity reversals that happen with the object's extent at a wall."""
    # Partly covered frames shift the centroid, so only clean frames are used.
    ks = [k for k in tr.frames() if tr.dets[k].clean]
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
            # The contact lies in one of the two intervals around the extremum i, so the speeds before
            # and after are read one interval further out where the clip has them.
            before = v[i - 2] if i >= 2 else v[i - 1]
            after = v[i + 1] if i + 1 < len(v) else v[i]
            if max(abs(before), abs(after)) < 0.1:
                continue
            total += 1
            step = max(abs(before), abs(after)) * max(t[i] - t[i - 1], t[i + 1] - t[i])
            gap = min(p[i] - tr.radius, size[axis] - tr.radius - p[i])
            kept = (i < 2 or i + 1 >= len(v)) or abs(abs(after) - abs(before)) < 0.25 * max(abs(before), abs(after))
            ok += int(gap < step + 0.02 and kept)
    return ok / total if total else None


def _permanence(tr: ObjectTrack, unit: float) -> float:
    """1 if the object is seen, hidden for a while, and seen again with the same shape and size."""
    ks = tr.frames()
    if not ks:
        return 0.0
    gaps = [i for i in range(1, len(ks)) if ks[i] - ks[i - 1] > 1]
    # Mostly hidden frames count as hidden too: split where the visible area drops below half.
    areas = np.array([tr.dets[k].area for k in ks])
    full = np.median(areas[: max(1, len(areas) // 4)])
    low = [i for i, a in enumerate(areas) if a < 0.5 * full]
    split = gaps[0] if gaps else (low[len(low) // 2] if low else None)
    if split is None:
        return 0.0
    before = [tr.dets[k] for k in ks[:split] if tr.dets[k].clean and tr.dets[k].area >= 0.5 * full]
    after = [tr.dets[k] for k in ks[split:] if tr.dets[k].clean and tr.dets[k].area >= 0.5 * full]
    if not before or not after:
        return 0.0
    sb, sa = _track_shape(before), _track_shape(after)
    rb = np.median([_radius(d, sb, unit) for d in before])
    ra = np.median([_radius(d, sa, unit) for d in after])
    same_size = (rb < _SIZE_SPLIT) == (ra < _SIZE_SPLIT)
    return float(sb == sa and same_size)


def _consistency(tr: ObjectTrack, unit: float, boxes: dict[int, list]) -> tuple[float, float]:
    """(colour, size) stability: the share of the track's lifespan in which it is seen (or could be
    hidden behind another object), and the share of clean frames whose radius stays near the median."""
    ks = tr.frames()
    missing = [k for k in range(ks[0], ks[-1] + 1) if tr.dets[k] is None]
    # A frame where the object is missing but its interpolated position lies on another object may
    # be an occlusion, not flicker.
    unexplained = 0
    for k in missing:
        x, y, _ = _predict(tr, k)
        if not any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in boxes.get(k, [])):
            unexplained += 1
    seen = 1 - unexplained / (ks[-1] - ks[0] + 1)
    if tr.motion in ("grows", "shrinks"):
        return seen, 1.0
    r = np.array([_radius(tr.dets[k], tr.shape, unit) for k in ks if tr.dets[k].clean])
    if len(r) == 0:
        return seen, 1.0
    return seen, float(np.mean(np.abs(r - np.median(r)) < 0.2 * np.median(r)))


# --- the report ------------------------------------------------------------------------------------

def analyse(frames: np.ndarray, fps: float) -> tuple[str, list[ObjectTrack]]:
    """Background and classified object tracks of a clip (T, H, W, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    T, H, W, _ = frames.shape
    unit = float(min(H, W))
    bg = detect_background(frames)
    dets = [detect_objects(fr, bg, k, unit) for k, fr in enumerate(frames)]
    tracks = build_tracks(dets, fps, unit)
    for tr in tracks:
        classify_track(tr, fps, unit, W, H)
    return bg, tracks


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
    T, H, W, _ = frames.shape
    unit = float(min(H, W))
    bg, tracks = analyse(frames, fps)
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
    boxes: dict[int, list] = {}
    for t in tracks:
        for d in t.dets:
            if d is not None:
                boxes.setdefault(d.frame, []).append(d.box)
    for i, po in enumerate(p.objects):
        tr = tracks[best[i]] if i < len(best) and tracks[best[i]].color == po.color else None
        row = {"expected": {"color": po.color, "shape": po.shape, "size": po.size, "motion": po.motion}}
        if tr is None:
            row["found"] = None
            for a in acc:
                if a != "size" or po.size is not None:
                    if a != "motion" or score_motion:
                        acc[a].append(0.0)
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
            fall.append(_fall_physics(tr, fps, unit, H))
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
