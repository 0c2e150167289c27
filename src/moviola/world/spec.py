"""The world's vocabulary and scene specification (the contract in docs/WORLD.md, as data).

Everything that describes a scene lives here so the renderer, captioner, sampler and scorer agree on
one set of words and numbers. Lengths are in the unit ``s = min(W, H)``: a scene means the same at
every resolution. Positions are fractions of the canvas (0..1 along x and y).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

# --- palette (sRGB 0-255) -------------------------------------------------------------------------
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 130, 30),
    "yellow": (240, 210, 40),
    "green": (40, 180, 60),
    "cyan": (40, 200, 210),
    "blue": (50, 90, 230),
    "purple": (150, 60, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "navy": (20, 24, 64),
}

# --- objects ---------------------------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.08, "large": 0.16}  # radius r in units of s

# --- motions ---------------------------------------------------------------------------------------
MOTIONS: tuple[str, ...] = (
    "static", "left", "right", "up", "down", "bounces", "falls", "spins", "grows", "shrinks",
)
LINEAR_MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")
DIRECTIONS: dict[str, tuple[float, float]] = {  # unit vectors, image coordinates (y grows downward)
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
}
MOVE_SPEED = 0.35  # s per second
BOUNCE_SPEED = 0.5  # s per second
BOUNCE_ANGLE_RANGE = (25.0, 65.0)  # degrees off the x axis: 45 +- 20
GRAVITY = 1.5  # s per second^2, downward
RESTITUTION = 0.75
SPIN_RATE = 0.5  # turns per second
SCALE_SECONDS = 2.0  # grows/shrinks reach their final size after this many seconds
GROW_FACTOR = 1.6
SHRINK_FACTOR = 0.6

MAX_OBJECTS = 3
MIN_SIDE, MAX_SIDE = 32, 512

# Fill ratio of an object's axis-aligned bounding box (what the scorer measures).
FILL_RATIO: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}


class SpecError(ValueError):
    """A scene specification that breaks the world's contract."""


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its words, plus the initial conditions the renderer needs.

    Attributes:
        color, shape, size, motion: canonical words (see the tables above).
        x, y: initial centre as a fraction of the canvas width / height.
        angle: direction of travel in degrees for ``bounces`` (0 = +x, 90 = +y, image coordinates).
    """

    color: str
    shape: str
    size: str
    motion: str = "static"
    x: float = 0.5
    y: float = 0.5
    angle: float = 45.0

    @property
    def radius(self) -> float:
        """Radius in units of s at t = 0."""
        return SIZES[self.size]

    def words(self) -> tuple[str, str, str, str]:
        return (self.size, self.color, self.shape, self.motion)


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene. ``objects`` are in order of mention, which is also back-to-front drawing order.

    ``behind`` marks an occlusion scene "X moves <dir> behind Y": (index of X, index of Y). X is drawn
    under Y whatever their order of mention.
    """

    objects: tuple[ObjectSpec, ...]
    background: str = "black"
    width: int = 64
    height: int = 64
    fps: float = 8.0
    seconds: float = 2.0
    behind: tuple[int, int] | None = None

    @property
    def unit(self) -> float:
        """Pixels per unit s."""
        return float(min(self.width, self.height))

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))

    def draw_order(self) -> list[int]:
        """Indices of objects from back to front."""
        order = list(range(len(self.objects)))
        if self.behind is not None:
            x, y = self.behind
            if order.index(x) > order.index(y):
                order.remove(x)
                order.insert(order.index(y), x)
        return order

    def replace(self, **changes) -> "SceneSpec":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "SceneSpec":
        """Raise SpecError naming the first thing that breaks the contract; return self."""
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise SpecError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        if self.background not in BACKGROUNDS:
            raise SpecError(f"unknown background {self.background!r}; allowed: {', '.join(BACKGROUNDS)}")
        for side, name in ((self.width, "width"), (self.height, "height")):
            if not (MIN_SIDE <= side <= MAX_SIDE and side % 8 == 0):
                raise SpecError(f"{name} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, got {side}")
        if not self.fps > 0:
            raise SpecError(f"fps must be positive, got {self.fps}")
        if not self.seconds > 0:
            raise SpecError(f"seconds must be positive, got {self.seconds}")
        seen = set()
        for o in self.objects:
            if o.color not in COLORS:
                raise SpecError(f"unknown colour {o.color!r}; allowed: {', '.join(COLORS)}")
            if o.shape not in SHAPES:
                raise SpecError(f"unknown shape {o.shape!r}; allowed: {', '.join(SHAPES)}")
            if o.size not in SIZES:
                raise SpecError(f"unknown size {o.size!r}; allowed: {', '.join(SIZES)}")
            if o.motion not in MOTIONS:
                raise SpecError(f"unknown motion {o.motion!r}; allowed: {', '.join(MOTIONS)}")
            if o.motion == "spins" and o.shape == "circle":
                raise SpecError("a circle never spins")
            if (o.color, o.shape) in seen:
                raise SpecError(f"two {o.color} {o.shape}s in one scene")
            seen.add((o.color, o.shape))
        if self.behind is not None:
            x, y = self.behind
            if not (0 <= x < len(self.objects) and 0 <= y < len(self.objects) and x != y):
                raise SpecError(f"behind={self.behind} does not name two objects of the scene")
            if self.objects[x].motion not in LINEAR_MOTIONS or self.objects[y].motion != "static":
                raise SpecError("an occlusion scene is 'X moves <direction> behind a static Y'")
        return self


@dataclass
class Track:
    """Ground truth for one object over a clip; arrays have one entry per frame.

    x, y: centre in pixels; r: radius in pixels; rotation: radians; visible: fraction of the object's
    area that is visible (not covered by objects drawn above it).
    """

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    r: list[float] = field(default_factory=list)
    rotation: list[float] = field(default_factory=list)
    visible: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    """A wall or floor bounce: object index, exact time in seconds, which wall, and its sound's pitch
    (WORLD.md, Audio: 880 Hz for a small object, 440 Hz for a large one)."""

    obj: int
    time: float
    wall: str  # "left" | "right" | "top" | "bottom"
    frequency: float


def combination_matches(obj: ObjectSpec, combo: frozenset[str]) -> bool:
    """True if every word of ``combo`` describes ``obj`` (used to hold out attribute combinations)."""
    return combo <= set(obj.words())


def parse_holdout(text: str) -> list[frozenset[str]]:
    """Parse ``"purple+triangle,circle+grows"`` into word sets; unknown words are an error."""
    vocab = set(COLORS) | set(SHAPES) | set(SIZES) | set(MOTIONS)
    combos = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        words = frozenset(w.strip() for w in part.split("+"))
        bad = sorted(w for w in words if w not in vocab)
        if bad:
            raise SpecError(f"unknown word(s) {bad} in holdout {part!r}; use colour/shape/size/motion words")
        combos.append(words)
    return combos


# The combinations the shipped default never sees in training (text-to-video issue, generalisation test).
DEFAULT_HOLDOUT: tuple[frozenset[str], ...] = (
    frozenset({"purple", "triangle"}),
    frozenset({"orange", "circle"}),
    frozenset({"cyan", "square"}),
    frozenset({"circle", "grows"}),
    frozenset({"square", "falls"}),
    frozenset({"triangle", "up"}),
)
