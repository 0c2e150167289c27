"""Pixels to objects for the world's scorer: find palette-coloured blobs in frames, link them into tracks.

Detection, per frame (``detect_objects``):
- A frame that is mostly neither background nor palette colour is noise and shows no objects.
- Every pixel within CORE_DIST of a palette colour is that colour's core. Core pixels of one colour
  within two pixels of each other form one blob (a video codec cuts a thin rim off an edge; a gap that
  narrow never separates two objects). Blend lines (red meeting yellow looks orange) are dropped, and so
  are clumps whose rim does not fade into what lies under them (noise).
- Pieces of one object cut apart by another drawn over it are measured as one.
- Soft coverage: each pixel near the blob is read as a mix of its colour and what lies under it (the
  background, or a touching object), in a luma-weighted metric since codecs halve chroma resolution.
  From it come area, centroid, the angular harmonics m3, m4 (shape and orientation) and the sub-pixel
  extent, with which of its sides are clear of other objects.

Tracking, per colour (``build_tracks``): the number of objects is the most blobs seen in enough
frames; blobs are linked frame to frame by a constant-velocity prediction (reflected at the walls) and
the shape and area seen at an anchor frame. When same-colour objects overlap, their shared blob goes to
each of them, marked ``merged``: its centroid belongs to neither.

Every length here is in pixels; the scorer converts to the world's unit s = min(W, H).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from moviola.world.spec import BACKGROUNDS, COLORS, MAX_OBJECTS, SIZES

NAMES = list(COLORS)
PALETTE = np.array([COLORS[c] for c in NAMES], dtype=np.float32)  # (7, 3)
CORE_DIST = 48.0  # max RGB distance of a pixel counted as an object colour's core
MIX_RESIDUAL = 30.0  # max distance (luma-weighted, see _METRIC) of a pixel from the mixing line it is read on
# The smallest object the world draws (a small triangle shrunk to 0.6 r) covers 1.3 (0.048 s)^2; a blob
# needs a third of that in core pixels.
MIN_CORE_FRAC = 0.35 * 1.299 * (0.6 * SIZES["small"]) ** 2
MIN_RIM_FIT = 0.5  # share of a blob's rim pixels that must read as its colour over what lies under it
EDGE_REACH = 2.9  # px: how far from an object's core its soft edge is read (two pixels, diagonals too)
CLEAR_REACH = 3.5  # px: a side of an object with another object's core this close is not its own edge
# Pieces of one object cut apart by another lie within this radius (s) of their middle: the widest
# object, a large one grown by 1.6, reaches 0.26 s.
FRAGMENT_REACH = 0.27
MAX_BLOBS = 6  # per colour and frame: the world has at most 3; more is noise
MIN_SEEN = 0.2  # s: an object is counted once seen apart from others of its colour for this long
EIGHT = np.ones((3, 3), bool)
# Every palette colour lies over 100 from every background, so no pixel this close to the background
# can be an object's core.
_BG_MARGIN = min(float(np.linalg.norm(PALETTE - np.asarray(b, np.float32), axis=1).min())
                 for b in BACKGROUNDS.values()) - CORE_DIST - 1.0
assert _BG_MARGIN > 0, "a palette colour is too close to a background colour"


@dataclass
class Detection:
    """One blob of one palette colour in one frame (lengths in pixels).

    ``touch`` is True when the blob borders another object's pixels, so it may be partly covered (or
    cover the other); whether it is whole is decided over its track, by its area.
    """

    color: str
    frame: int
    cx: float
    cy: float
    area: float
    fill: float  # bounding-box fill ratio
    m3: complex  # normalised 3rd and 4th angular harmonics of the coverage
    m4: complex
    touch: bool
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    # Sub-pixel extent of the coverage (left, top, right, bottom) and, per side, whether that side is
    # clear of other objects: a clear side of a partly covered object is still its own edge.
    extent: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    clear: tuple[bool, bool, bool, bool] = (True, True, True, True)
    # Angular harmonics 3 and 4 of the coverage's edge normals, over edges clear of other objects, and
    # the amount of such edge: a partly covered object's own edges still tell its shape.
    edge_m3: complex = 0j
    edge_m4: complex = 0j
    edge_weight: float = 0.0

    @property
    def shape(self) -> str:
        a3, a4 = abs(self.m3), abs(self.m4)
        if a3 > 0.3 and a3 > a4:
            return "triangle"
        if a4 > 0.22:
            return "square"
        return "circle"


def edge_shape(d: Detection) -> str | None:
    """The shape told by a view's clear edges alone (None where they do not tell: a single straight
    edge looks the same to both harmonics)."""
    a3, a4 = abs(d.edge_m3), abs(d.edge_m4)
    if a4 > 0.5 and a4 > a3 + 0.2:
        return "square"
    if a3 > 0.5 and a3 > a4 + 0.2:
        return "triangle"
    if max(a3, a4) < 0.3:
        return "circle"
    return None


@dataclass
class ObjectTrack:
    """A tracked object: its colour and, per frame, a detection (or None) and whether that detection is
    shared with another object of the same colour (``merged``). The scorer fills in the rest."""

    color: str
    dets: list[Detection | None]
    merged: list[bool]
    shape: str = "circle"
    size: str = "small"
    motion: str = "static"
    radius: float = 0.0  # initial radius in units of s
    reliable: list[int] = field(default_factory=list)  # frames whose detection shows the whole object
    # Per axis ("x", "y"): frames and centre coordinates (pixels) known there, from whole views and
    # from the clear sides of partly covered ones.
    samples: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def frames(self) -> list[int]:
        return [k for k, d in enumerate(self.dets) if d is not None]


# --- detection -----------------------------------------------------------------------------------

def detect_background(frames: np.ndarray) -> str:
    """The background colour that most pixels of the clip are close to."""
    sample = frames[:: max(1, len(frames) // 8), ::2, ::2].reshape(-1, 3).astype(np.float32)
    names = list(BACKGROUNDS)
    d2 = _sq_dist(sample, np.array([BACKGROUNDS[n] for n in names], np.float32))
    votes = (d2 < 40.0 ** 2).sum(0)
    return names[int(np.argmax(votes))]


MIN_BACKGROUND_SHARE = 0.25  # of pixels: a world clip's objects never cover more than about half of it


def background_share(frames: np.ndarray, name: str) -> float:
    """The share of the clip's (sampled) pixels close to background ``name``: below MIN_BACKGROUND_SHARE the
    clip has no world background (noise, footage), whatever colour wins the vote."""
    sample = frames[:: max(1, len(frames) // 8), ::2, ::2].reshape(-1, 3).astype(np.float32)
    d2 = _sq_dist(sample, np.array([BACKGROUNDS[name]], np.float32))
    return float((d2 < 40.0 ** 2).mean())


def _sq_dist(pixels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Squared RGB distances (..., K) from float pixels (..., 3) to colours (K, 3)."""
    return ((pixels * pixels).sum(-1)[..., None] - 2.0 * (pixels @ colours.T)
            + (colours * colours).sum(-1))


# Coverage is read in YCbCr with the colour-difference channels down-weighted: video codecs keep luma
# at full resolution but store chroma at half, so luma places edges better wherever it has contrast.
_YCC = np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]], np.float32)
CHROMA_WEIGHT = 0.25
_METRIC = (_YCC.T @ np.diag([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT]).astype(np.float32) @ _YCC)  # (3, 3)


def _project(patch: np.ndarray, base: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of ``col`` over ``base`` for each pixel of ``patch`` (h, w, 3), and the distance of the
    pixel from that mixing point (in the same chroma-light metric)."""
    d = col - base
    q = patch - base
    md = _METRIC @ d
    alpha = (q @ md) / float(d @ md)
    e = q - alpha[..., None] * d
    resid = np.sqrt(np.maximum(((e @ _METRIC) * e).sum(-1), 0.0))
    return alpha, resid


def _harmonics(alpha: np.ndarray, x0: int, y0: int) -> tuple[float, float, complex, complex]:
    """Centroid and normalised angular harmonics m3, m4 of a coverage patch."""
    yy, xx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]].astype(np.float64) + 0.5
    mass = float(alpha.sum())
    cx = float((alpha * xx).sum() / mass)
    cy = float((alpha * yy).sum() / mass)
    z = (xx - cx) + 1j * (yy - cy)
    rho = np.abs(z)
    ms = []
    for k in (3, 4):
        den = float((alpha * rho ** k).sum())
        ms.append(complex((alpha * z ** k).sum() / den) if den > 0 else 0j)
    return cx + x0, cy + y0, ms[0], ms[1]


def detect_objects(frame: np.ndarray, background: str, k: int = 0, unit: float | None = None) -> list[Detection]:
    """All palette-coloured blobs in one frame (H, W, 3) uint8."""
    H, W = frame.shape[:2]
    unit = unit or float(min(H, W))
    f = frame.astype(np.float32)
    bg = np.asarray(BACKGROUNDS[background], np.float32)
    cand = ((f - bg) ** 2).sum(-1) > _BG_MARGIN ** 2
    idx = np.zeros((H, W), np.int64)
    core = np.zeros((H, W), bool)
    if cand.any():
        d2 = _sq_dist(f[cand], PALETTE)  # (N, 7)
        near = d2.argmin(-1)
        idx[cand] = near
        core[cand] = d2[np.arange(len(near)), near] < CORE_DIST ** 2
    # Objects cover at most about 60 % of a world frame and are mostly their palette colour; a frame
    # that is mostly neither background nor palette colour is noise, and shows no objects.
    if cand.mean() > 0.5 and core.sum() < 0.4 * cand.sum():
        return []
    min_core = max(3, int(round(MIN_CORE_FRAC * unit * unit)))

    # Pass 1: blobs of each colour, big enough to be an object. ``ids`` labels their core pixels.
    ids = np.zeros((H, W), np.int32)
    blobs = []  # (colour index, slice)
    for ci in np.unique(idx[core]):
        mask = core & (idx == ci)
        lab = np.zeros((H, W), np.int32)
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        win = _grow((slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)), 1, H, W)
        joined, n = ndimage.label(ndimage.binary_dilation(mask[win], EIGHT), EIGHT)
        lab[win] = joined * mask[win]
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        sizes[0] = 0
        keep = np.nonzero(sizes >= min_core)[0]
        keep = keep[np.argsort(-sizes[keep])][:MAX_BLOBS]
        slices = ndimage.find_objects(lab)
        for j in keep:
            blobs.append((int(ci), slices[j - 1]))
            ids[slices[j - 1]][lab[slices[j - 1]] == j] = len(blobs)
    if not blobs:
        return []

    # Pass 2: drop blend lines. Where two colours meet, anti-aliased pixels can land near a third palette
    # colour (red over yellow looks orange); such a blob hugs the others almost everywhere.
    small_area = (SIZES["large"] * unit) ** 2 * 0.5
    kept = []
    for b, (ci, sl) in enumerate(blobs, start=1):
        own = ids[sl] == b
        npx = int(own.sum())
        if npx < small_area:
            big = _grow(sl, 1, H, W)
            other = (ids[big] != 0) & (ids[big] != b) & (idx[big] != ci)
            near = ndimage.binary_dilation(other, EIGHT)
            if near[_sub(sl, big)][own].mean() > 0.8:
                ids[sl][own] = 0
                continue
        kept.append(b)

    # Pass 3: an object cut in two by one drawn over it shows as two blobs of its colour that both touch
    # the cutter and together span no more than one object; such blobs are measured as one.
    colours = [blobs[b - 1][0] for b in kept]
    touching = {b: _neighbours(ids, b, blobs[b - 1][1], H, W) for b, c in zip(kept, colours)
                if colours.count(c) > 1}
    groups = {b: {b} for b in kept}
    reach = 2 * FRAGMENT_REACH * unit
    for b1, b2 in itertools.combinations(kept, 2):
        c1, c2 = blobs[b1 - 1][0], blobs[b2 - 1][0]
        if c1 != c2 or groups[b1] is groups[b2]:  # (blobs of a shared colour have neighbour sets)
            continue
        common = {o for o in touching[b1] & touching[b2] if blobs[o - 1][0] != c1}
        u = groups[b1] | groups[b2]
        y0, y1 = min(blobs[g - 1][1][0].start for g in u), max(blobs[g - 1][1][0].stop for g in u)
        x0, x1 = min(blobs[g - 1][1][1].start for g in u), max(blobs[g - 1][1][1].stop for g in u)
        if common and max(y1 - y0, x1 - x0) <= reach:
            for g in u:
                groups[g] = u
    seen: set[int] = set()
    out = []
    for b in kept:
        if b in seen:
            continue
        seen |= groups[b]
        det = _measure(sorted(groups[b]), blobs, ids, idx, f, bg, k, H, W)
        if det is not None:
            out.append(det)
    return out


def _neighbours(ids: np.ndarray, b: int, sl: tuple[slice, slice], H: int, W: int) -> set[int]:
    """Blobs within a few pixels of blob b (a codec smears the seam between two objects)."""
    box = _grow(sl, 5, H, W)
    lab = ids[box]
    near = ndimage.binary_dilation(lab == b, EIGHT, iterations=4)
    return set(np.unique(lab[near]).tolist()) - {0, b}


def _measure(group: list[int], blobs: list, ids: np.ndarray, idx: np.ndarray, f: np.ndarray, bg: np.ndarray,
             k: int, H: int, W: int) -> Detection | None:
    """Soft coverage and measurements of one object seen as the blobs ``group`` (one, or the pieces of
    one cut apart)."""
    ci = blobs[group[0] - 1][0]
    sls = [blobs[g - 1][1] for g in group]
    box = _grow((slice(min(s[0].start for s in sls), max(s[0].stop for s in sls)),
                 slice(min(s[1].start for s in sls), max(s[1].stop for s in sls))), 3, H, W)
    y0, x0 = box[0].start, box[1].start
    lab = ids[box]
    mine = (lab == group[0]) if len(group) == 1 else np.isin(lab, group)
    others = (lab != 0) & ~mine  # other objects' core pixels, any colour
    # A pixel off every core belongs to the nearest one, within the reach of an anti-aliased (or
    # codec-smeared) edge.
    d_mine = ndimage.distance_transform_edt(~mine)
    d_other = ndimage.distance_transform_edt(~others) if others.any() else np.full(mine.shape, np.inf)
    own = (d_mine <= EDGE_REACH) & (d_mine <= d_other)
    # Touching: another core within reach of this one's edge (codecs smear a few pixels between them).
    touch = bool(((d_mine <= EDGE_REACH) & (d_other <= 1.5)).any())
    patch = f[box]
    col = PALETTE[ci]
    alpha, resid = _project(patch, bg, col)
    alpha = np.clip(alpha, -0.25, 1.25)
    if touch:
        # Where it meets another object a pixel may mix this colour with that one, not the background.
        contact = own & (d_other <= 1.5)
        for cj in np.unique(idx[box][others]):
            if cj == ci:
                continue
            a2, r2 = _project(patch, PALETTE[cj], col)
            better = contact & (r2 < resid)
            alpha = np.where(better, np.clip(a2, 0.0, 1.0), alpha)
            resid = np.where(better, r2, resid)
    fits = resid < MIX_RESIDUAL
    # An object's rim is its colour fading into what lies under it; around a clump of like-coloured
    # noise pixels the colours are anything.
    rim = own & (d_mine > 0) & (d_mine <= 1.5)
    if rim.any() and fits[rim].mean() < MIN_RIM_FIT:
        return None
    alpha = alpha * (own & fits)
    pos = np.clip(alpha, 0.0, 1.0)
    area = float(alpha.sum())
    if area <= 0 or pos.sum() <= 0:
        return None
    cx, cy, m3, m4 = _harmonics(pos, x0, y0)
    colmax, rowmax = pos.max(0), pos.max(1)
    cols, rows = np.nonzero(colmax > 0.02)[0], np.nonzero(rowmax > 0.02)[0]
    # The outermost column (row) is covered to the depth of its largest coverage.
    extent = (x0 + cols[0] + 1 - colmax[cols[0]], y0 + rows[0] + 1 - rowmax[rows[0]],
              x0 + cols[-1] + colmax[cols[-1]], y0 + rows[-1] + rowmax[rows[-1]])
    crowded = (pos > 0.02) & (d_other <= CLEAR_REACH)
    clear = (not crowded[:, cols[0]:cols[0] + 2].any(), not crowded[rows[0]:rows[0] + 2].any(),
             not crowded[:, max(cols[-1] - 1, 0):cols[-1] + 1].any(),
             not crowded[max(rows[-1] - 1, 0):rows[-1] + 1].any())
    gx, gy = ndimage.sobel(pos, axis=1), ndimage.sobel(pos, axis=0)
    w = np.hypot(gx, gy) * (d_other > CLEAR_REACH)
    wsum = float(w.sum())
    theta = np.arctan2(gy, gx)
    e3, e4 = ((complex((w * np.exp(1j * n * theta)).sum()) / wsum if wsum > 0 else 0j) for n in (3, 4))
    return Detection(NAMES[ci], k, cx, cy, area, area / max(float(colmax.sum() * rowmax.sum()), 1e-6), m3, m4,
                     touch, (x0, y0, box[1].stop, box[0].stop), tuple(map(float, extent)), clear, e3, e4, wsum)


def _grow(sl: tuple[slice, slice], m: int, H: int, W: int) -> tuple[slice, slice]:
    return (slice(max(0, sl[0].start - m), min(H, sl[0].stop + m)),
            slice(max(0, sl[1].start - m), min(W, sl[1].stop + m)))


def _sub(inner: tuple[slice, slice], outer: tuple[slice, slice]) -> tuple[slice, slice]:
    """``inner`` in the coordinates of the array cut by ``outer``."""
    return (slice(inner[0].start - outer[0].start, inner[0].stop - outer[0].start),
            slice(inner[1].start - outer[1].start, inner[1].stop - outer[1].start))


# --- tracking -------------------------------------------------------------------------------------

def robust_count(counts: list[int], fps: float) -> int:
    """Largest n seen in frames covering at least MIN_SEEN seconds, and two frames at least (objects of
    one colour can overlap for most of a clip; a one-frame blip is not an object)."""
    T = len(counts)
    need = min(T, max(2, math.ceil(MIN_SEEN * fps - 1e-9)))
    best = 0
    for n in range(1, max(counts, default=0) + 1):
        if sum(c >= n for c in counts) >= need:
            best = n
    return best


def build_tracks(dets: list[list[Detection]], fps: float, unit: float, width: int, height: int) -> list[ObjectTrack]:
    """Link per-frame detections of each colour into object tracks."""
    tracks: list[ObjectTrack] = []
    for name in NAMES:
        per = [[d for d in fr if d.color == name] for fr in dets]
        n = min(robust_count([len(p) for p in per], fps), MAX_OBJECTS)
        if n:
            tracks += _track_colour(name, per, n, unit, width, height)
    return tracks


def _track_colour(name: str, per: list[list[Detection]], n: int, unit: float, width: int,
                  height: int) -> list[ObjectTrack]:
    T = len(per)
    # Anchor: a frame with exactly n blobs, as many of them untouched and as far apart as can be.
    def anchor_key(k: int) -> tuple:
        ds = per[k]
        gap = min((math.hypot(a.cx - b.cx, a.cy - b.cy) for a, b in itertools.combinations(ds, 2)), default=0.0)
        return (sum(not d.touch for d in ds), gap)

    exact = [k for k in range(T) if len(per[k]) == n]
    anchor = max(exact, key=anchor_key) if exact else next(k for k in range(T) if len(per[k]) >= n)
    start = sorted(per[anchor], key=lambda d: -d.area)[:n]
    tracks = [ObjectTrack(name, [None] * T, [False] * T) for _ in range(n)]
    for tr, d in zip(tracks, sorted(start, key=lambda d: (d.cx, d.cy))):
        tr.dets[anchor] = d
    sig = [tr.dets[anchor] for tr in tracks]  # shape and area tell apart objects of one colour
    for order in (range(anchor + 1, T), range(anchor - 1, -1, -1)):
        partner: list[int | None] = [None] * n  # the object each one was merged with in the last frame
        for k in order:
            cands = per[k]
            if not cands:
                partner = [None] * n
                continue
            preds = [_predict(tr, k, width, height) for tr in tracks]
            best, best_cost = None, math.inf
            for choice in itertools.product(range(-1, len(cands)), repeat=n):
                used = [c for c in choice if c >= 0]
                if len(used) != len(set(used)):
                    continue
                cost = 0.0
                for a, c in enumerate(choice):
                    cost += _MISS if c < 0 else _match_cost(preds[a], sig[a], cands[c], unit)
                if cost < best_cost:
                    best, best_cost = choice, cost
            for a, c in enumerate(best):
                if c >= 0:
                    tracks[a].dets[k] = cands[c]
            # Objects left without a blob may be inside another one of their colour (overlapping): one
            # predicted inside it, or one merged with its owner in the last frame and not yet apart.
            new_partner: list[int | None] = [None] * n
            owner = {c: a for a, c in enumerate(best) if c >= 0}
            pad = 0.05 * unit
            for how in ("inside", "partner", "area"):
                for a in range(n):
                    if tracks[a].dets[k] is not None:
                        continue
                    px, py, _ = preds[a]
                    for cb, d in enumerate(cands):
                        b = owner.get(cb)
                        x0, y0, x1, y1 = d.box
                        if how == "inside":
                            hit = x0 - pad <= px < x1 + pad and y0 - pad <= py < y1 + pad
                        elif how == "partner":
                            hit = b is not None and partner[a] == b
                        else:  # a blob much larger than its owner, near where this one should be
                            gap = math.hypot(max(x0 - px, 0.0, px - x1), max(y0 - py, 0.0, py - y1)) / unit
                            hit = b is not None and d.area > 1.3 * sig[b].area and gap < 0.15
                        if not hit:
                            continue
                        tracks[a].dets[k] = d
                        if b is None:
                            owner[cb] = a
                        else:
                            tracks[a].merged[k] = tracks[b].merged[k] = True
                            new_partner[a], new_partner[b] = b, a
                        break
            partner = new_partner
    return tracks


_MISS = 3.0  # cost of leaving an object without a blob in a frame (in prediction errors)


def _match_cost(pred: tuple[float, float, float], sig: Detection, d: Detection, unit: float) -> float:
    """Distance from the predicted centre over its expected error (which grows with the frames it
    extrapolates over), plus penalties for a shape or area unlike the object's when both are seen
    untouched; infinite beyond the gate."""
    px, py, gap = pred
    dist = math.hypot(px - d.cx, py - d.cy) / unit
    if dist > 0.3 + 0.15 * gap:
        return math.inf
    cost = dist / (0.1 + 0.1 * gap)
    if not d.touch and not sig.touch:
        cost += 2.0 * (d.shape != sig.shape) + 3.0 * abs(math.log(max(d.area, 1e-6) / sig.area))
    return cost


def _predict(tr: ObjectTrack, k: int, width: int, height: int) -> tuple[float, float, float]:
    """Predicted centre of a track at frame k from its two nearest known, unmerged frames (constant
    velocity, reflected at the canvas edges), and the number of frames it extrapolates over."""
    known = [j for j, d in enumerate(tr.dets) if d is not None and not tr.merged[j]]
    if not known:
        known = [j for j, d in enumerate(tr.dets) if d is not None]
    near = sorted(known, key=lambda j: abs(j - k))[:2]
    a = tr.dets[near[0]]
    gap = abs(k - near[0])
    if len(near) == 1:
        return (a.cx, a.cy, gap)
    b = tr.dets[near[1]]
    step = (k - near[0]) / (near[0] - near[1])
    r = math.sqrt(max(a.area, 1.0) / math.pi)
    x = _fold(a.cx + (a.cx - b.cx) * step, r, width - r)
    y = _fold(a.cy + (a.cy - b.cy) * step, r, height - r)
    return (x, y, gap)


def _fold(p: float, lo: float, hi: float) -> float:
    """Reflect p into [lo, hi] (a wall bounce between known frames and the predicted one)."""
    if hi <= lo:
        return p
    span = hi - lo
    m = (p - lo) % (2 * span)
    return lo + (m if m <= span else 2 * span - m)
