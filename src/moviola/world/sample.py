"""Random scenes that follow WORLD.md, for training data and evaluation sets.

``sample_scene(rng)`` draws words (colour, shape, size, motion, background) uniformly over what the
world allows, honours held-out combinations, and places objects by the contract's rules: fully inside
the canvas, linear movers in the third they move away from, fallers in the top quarter, no overlap at
t = 0 when that can be had. With ``occlusion_prob`` it builds "X moves <dir> behind Y" scenes instead.
``sample_dataset_specs(seed, n)`` makes the i-th spec a function of (seed, i) alone, so a dataset build
can resume anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from moviola.world.spec import (
    BACKGROUNDS, BOUNCE_ANGLE_RANGE, COLORS, DIRECTIONS, GROW_FACTOR, LINEAR_MOTIONS, MAX_OBJECTS, MOTIONS,
    MOVE_SPEED, SHAPES, SIZES, ObjectSpec, SceneSpec, combination_matches,
)

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (96, 64), (64, 96), (128, 128))
PLACEMENT_TRIES = 50  # attempts to place objects without overlap at t = 0
WORD_TRIES = 1000  # attempts to draw an object's words before a holdout is declared impossible
OCCLUSION_MIN_SECONDS = 2.0


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _extent(shape: str, motion: str) -> float:
    """How far (in radii) the object reaches from its centre during the clip, for wall margins."""
    if motion == "grows":
        return GROW_FACTOR
    if motion == "spins" and shape == "square":
        return math.sqrt(2.0)  # a rotating square's corner
    return 1.0


def _overlap_radius(shape: str, r_px: float) -> float:
    """Radius of a disc that holds the shape at any rotation (squares reach their corners)."""
    return 1.42 * r_px if shape == "square" else r_px


def _draw_words(rng, holdout, taken: set[tuple[str, str]], *, colors=None, shapes=None, sizes=None,
                motions=None, avoid_colors=()) -> tuple[str, str, str, str]:
    """Uniform (colour, shape, size, motion) over the allowed combinations, by rejection."""
    colors = [c for c in (colors or list(COLORS)) if c not in avoid_colors]
    shapes, sizes, motions = shapes or list(SHAPES), sizes or list(SIZES), motions or list(MOTIONS)
    for _ in range(WORD_TRIES):
        color, shape, size, motion = (_pick(rng, colors), _pick(rng, shapes), _pick(rng, sizes),
                                      _pick(rng, motions))
        if motion == "spins" and shape == "circle":
            continue
        if (color, shape) in taken:
            continue
        probe = ObjectSpec(color, shape, size, motion)
        if any(combination_matches(probe, combo) for combo in holdout):
            continue
        return color, shape, size, motion
    raise ValueError(f"cannot draw an object outside the holdout {[sorted(c) for c in holdout]}")


def _place(rng, color, shape, size, motion, W: int, H: int) -> ObjectSpec:
    """Initial conditions for one object by the contract's rules (positions as canvas fractions)."""
    s = min(W, H)
    r = SIZES[size]
    k = _extent(shape, motion)
    rx, ry = k * r * s / W, k * r * s / H
    x = rng.uniform(rx, 1 - rx)
    y = rng.uniform(ry, 1 - ry)
    angle = 45.0
    if motion in LINEAR_MOTIONS:
        dx, dy = DIRECTIONS[motion]
        if dx > 0:
            x = rng.uniform(rx, 1 / 3)
        elif dx < 0:
            x = rng.uniform(2 / 3, 1 - rx)
        elif dy > 0:
            y = rng.uniform(ry, 1 / 3)
        else:
            y = rng.uniform(2 / 3, 1 - ry)
    elif motion == "bounces":
        angle = float(rng.uniform(*BOUNCE_ANGLE_RANGE) + 90.0 * rng.integers(4))
    elif motion == "falls":
        y = rng.uniform(ry, 0.25)
    return ObjectSpec(color, shape, size, motion, float(x), float(y), angle)


def _overlap_depth(a: ObjectSpec, b: ObjectSpec, W: int, H: int) -> float:
    """How far (pixels) the two objects' bounding discs overlap; >= 0 means they touch or overlap.

    A grower's disc is its size at the end of the clip, so growers do not run into each other either,
    and one pixel is kept clear for anti-aliased edges."""
    s = min(W, H)
    d = math.hypot((a.x - b.x) * W, (a.y - b.y) * H)
    ra = _overlap_radius(a.shape, a.radius * s) * (GROW_FACTOR if a.motion == "grows" else 1.0)
    rb = _overlap_radius(b.shape, b.radius * s) * (GROW_FACTOR if b.motion == "grows" else 1.0)
    return ra + rb + 1.0 - d


def _place_all(rng, words, W: int, H: int) -> list[ObjectSpec]:
    """Place objects for ``words`` without overlap at t = 0. When PLACEMENT_TRIES draws all overlap
    (crowded canvases: three large growers on 64x64), keep the draw that overlaps least, counting a
    same-colour overlap double: two touching objects of one colour look like one blob to any viewer
    (overlap is allowed by the contract, just not preferred)."""
    best: list[ObjectSpec] = []
    best_cost = math.inf
    for _ in range(PLACEMENT_TRIES):
        placed = [_place(rng, *w, W, H) for w in words]
        depths = [_overlap_depth(a, b, W, H) * (2.0 if a.color == b.color else 1.0)
                  for i, a in enumerate(placed) for b in placed[i + 1:]]
        cost = max(depths, default=-math.inf)
        if cost < 0:
            return placed
        if cost < best_cost:
            best, best_cost = placed, cost
    return best


def _seconds_grid(seconds_range: tuple[float, float], step: float) -> list[float]:
    lo, hi = seconds_range
    n = int(math.floor((hi - lo) / step + 1e-9)) + 1
    return [round(lo + step * k, 6) for k in range(max(n, 1))]


def _occlusion_window(direction: str, W: int, H: int, seconds: float) -> tuple[float, float] | None:
    """Range of X's start coordinate (pixels along its axis, from the wall X moves away from) for
    "small X moves <direction> behind large Y"; None when the canvas and duration cannot hold it.

    Y's centre is where X is at seconds / 2. X must start clear of Y and must not reach the far wall
    within the clip, so it is seen going in, vanishing, and coming out once (no bounce back behind Y).
    """
    s = min(W, H)
    L = W if DIRECTIONS[direction][0] else H
    r, R = SIZES["small"] * s, SIZES["large"] * s
    half = MOVE_SPEED * s * seconds / 2  # distance X travels until it is centred behind Y
    if half < R + r:  # X would start (and end) partly hidden
        return None
    lo = r
    hi = min(L / 3, L - r - 2 * half)
    return (lo, hi) if hi >= lo else None


def _occlusion_scene(rng, n_objects, W, H, grid, holdout) -> tuple[tuple[ObjectSpec, ...], float] | None:
    """Objects (X, Y[, Z]) and duration of an occlusion scene, or None if this canvas cannot hold one."""
    options = [(sec, d) for sec in grid if sec >= OCCLUSION_MIN_SECONDS for d in LINEAR_MOTIONS
               if _occlusion_window(d, W, H, sec) is not None]
    if not options:
        return None
    seconds, direction = _pick(rng, options)
    lo, hi = _occlusion_window(direction, W, H, seconds)
    s = min(W, H)
    horizontal = DIRECTIONS[direction][0] != 0
    L, M = (W, H) if horizontal else (H, W)  # along and across X's path
    R = SIZES["large"] * s
    try:
        xc, xs, _, _ = _draw_words(rng, holdout, set(), sizes=["small"], motions=[direction])
        yc, ys, _, _ = _draw_words(rng, holdout, {(xc, xs)}, shapes=["circle", "square"], sizes=["large"],
                                   motions=["static"], avoid_colors=(xc,))
    except ValueError:
        return None
    start = rng.uniform(lo, hi)  # from the wall X moves away from
    if DIRECTIONS[direction][0] + DIRECTIONS[direction][1] < 0:  # left or up: that wall is the far one
        start_px, y_along = L - start, L - start - MOVE_SPEED * s * seconds / 2
    else:
        start_px, y_along = start, start + MOVE_SPEED * s * seconds / 2
    across = rng.uniform(R, M - R) / M  # shared row (or column), Y fully inside
    if horizontal:
        x_obj = ObjectSpec(xc, xs, "small", direction, start_px / L, across)
        y_obj = ObjectSpec(yc, ys, "large", "static", y_along / L, across)
    else:
        x_obj = ObjectSpec(xc, xs, "small", direction, across, start_px / L)
        y_obj = ObjectSpec(yc, ys, "large", "static", across, y_along / L)
    objects = (x_obj, y_obj)
    if n_objects >= 3:
        objects += _occlusion_bystander(rng, objects, direction, W, H, holdout)
    return objects, seconds


def _occlusion_bystander(rng, pair, direction, W, H, holdout) -> tuple[ObjectSpec, ...]:
    """A third object for an occlusion scene that never crosses the X-Y lane, so X's disappearance and
    return are Y's doing alone: it moves in place or parallel to X, in a lane of its own. Returns () when
    the drawn object does not fit beside the lane."""
    x_obj, y_obj = pair
    horizontal = DIRECTIONS[direction][0] != 0
    parallel = ["left", "right"] if horizontal else ["up", "down"]
    try:
        words = _draw_words(rng, holdout, {(x_obj.color, x_obj.shape), (y_obj.color, y_obj.shape)},
                            motions=["static", "spins", "grows", "shrinks"] + parallel,
                            avoid_colors=(x_obj.color, y_obj.color))
    except ValueError:
        return ()
    s = min(W, H)
    M = H if horizontal else W  # the axis across the lane
    lane = y_obj.y if horizontal else y_obj.x
    R = SIZES["large"] * s
    for _ in range(PLACEMENT_TRIES):
        z = _place(rng, *words, W, H)
        reach = max(_extent(z.shape, z.motion), 1.42 if z.shape == "square" else 1.0) * z.radius * s
        if abs((z.y if horizontal else z.x) - lane) * M > R + reach + 1.0:
            return (z,)
    return ()


def sample_scene(
    rng: np.random.Generator,
    *,
    sizes: Iterable[tuple[int, int]] = DEFAULT_SIZES,
    fps_choices: Iterable[float] = (8.0,),
    seconds_range: tuple[float, float] = (1.0, 4.0),
    max_objects: int = MAX_OBJECTS,
    holdout: Iterable[frozenset[str]] = (),
    occlusion_prob: float = 0.1,
    backgrounds: Iterable[str] | None = None,
    seconds_step: float = 0.5,
) -> SceneSpec:
    """One random valid scene (see the module docstring); ``holdout`` word sets never describe an object."""
    sizes, fps_choices = list(sizes), list(fps_choices)
    holdout = [frozenset(c) for c in holdout]
    backgrounds = list(BACKGROUNDS) if backgrounds is None else list(backgrounds)
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be 1 to {MAX_OBJECTS}, got {max_objects}")
    grid = _seconds_grid(seconds_range, seconds_step)

    W, H = _pick(rng, sizes)
    fps = float(_pick(rng, fps_choices))
    background = _pick(rng, backgrounds)
    n_objects = int(rng.integers(1, max_objects + 1))

    if n_objects >= 2 and rng.random() < occlusion_prob:
        made = _occlusion_scene(rng, n_objects, W, H, grid, holdout)
        if made is not None:
            objects, seconds = made
            return SceneSpec(objects, background, W, H, fps, seconds, behind=(0, 1)).validate()

    seconds = _pick(rng, grid)
    taken: set[tuple[str, str]] = set()
    words = []
    for _ in range(n_objects):
        w = _draw_words(rng, holdout, taken)
        taken.add((w[0], w[1]))
        words.append(w)
    objects = tuple(_place_all(rng, words, W, H))
    return SceneSpec(objects, background, W, H, fps, seconds).validate()


def sample_dataset_specs(seed: int, n: int, *, start: int = 0, **kwargs) -> Iterator[SceneSpec]:
    """Specs ``start .. n - 1`` of the dataset ``seed``; spec i depends only on (seed, i)."""
    for i in range(start, n):
        yield sample_scene(np.random.default_rng([seed, i]), **kwargs)


def scene_from_prompt(prompt, rng: np.random.Generator, *, width: int = 64, height: int = 64, fps: float = 8.0,
                      seconds: float = 2.0) -> SceneSpec:
    """A scene that a prompt describes, with random initial conditions (and a random size where the
    prompt gives none). Used to render ground truth for a prompt; never by generation.

    Args:
        prompt: a parsed ``caption.Prompt``.
    Raises:
        SpecError: the canvas or duration cannot hold the prompt (e.g. an occlusion scene that is too short).
    """
    from moviola.world.spec import SpecError

    W, H = width, height
    behind = prompt.behind or (-1, -1)
    # An object hides behind a larger one: unsized, the hidden one is small and the one in front large.
    default = {behind[0]: "small", behind[1]: "large"}
    words = [(o.color, o.shape, o.size or default.get(i) or _pick(rng, list(SIZES)), o.motion)
             for i, o in enumerate(prompt.objects)]
    if prompt.behind is not None and SIZES[words[behind[0]][2]] >= SIZES[words[behind[1]][2]]:
        raise SpecError(f"a {words[behind[0]][2]} object cannot be hidden behind a {words[behind[1]][2]} one: "
                        "the one behind must be smaller (e.g. a small ... behind a large ...)")
    if prompt.behind is None:
        objects = tuple(_place_all(rng, words, W, H))
        return SceneSpec(objects, prompt.background, W, H, fps, seconds).validate()
    xi, yi = prompt.behind
    direction = words[xi][3]
    window = _occlusion_window(direction, W, H, seconds)
    if window is None:
        s = min(W, H)
        short = MOVE_SPEED * s * seconds / 2 < (SIZES["small"] + SIZES["large"]) * s
        raise SpecError(f"a {W}x{H} clip of {seconds:g} s is too {'short' if short else 'long for its size'} for "
                        f"an object to move {direction} behind another and come out again once; try "
                        + ("more seconds" if short else "fewer seconds or a larger size"))
    s = min(W, H)
    horizontal = DIRECTIONS[direction][0] != 0
    L, M = (W, H) if horizontal else (H, W)
    start = rng.uniform(*window)
    half = MOVE_SPEED * s * seconds / 2
    if DIRECTIONS[direction][0] + DIRECTIONS[direction][1] < 0:
        start_px, mid = L - start, L - start - half
    else:
        start_px, mid = start, start + half
    R = SIZES[words[yi][2]] * s
    across = rng.uniform(R, M - R) / M
    placed = _place_all(rng, words, W, H)
    pos = {xi: (start_px / L, across), yi: (mid / L, across)}
    objects = []
    for i, o in enumerate(placed):
        if i in pos:
            a, b = pos[i]
            x, y = (a, b) if horizontal else (b, a)
            o = ObjectSpec(o.color, o.shape, o.size, o.motion, x, y, o.angle)
        objects.append(o)
    return SceneSpec(tuple(objects), prompt.background, W, H, fps, seconds, behind=(xi, yi)).validate()
