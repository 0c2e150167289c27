"""Captions for scene specs, and the parser that reads them (and users' prompts) back.

``caption(spec)`` writes the sentence a scene is trained on; ``parse_prompt(text)`` turns a sentence of
the same grammar back into words (colours, shapes, sizes, motions, background, occlusion), which the
scorer compares with what a clip shows. Both read one table of phrases (``MOTION_PHRASES``,
``SYNONYMS``), so the parser accepts exactly what the captioner can emit plus the canonical words.

Grammar (case-insensitive; commas and a final period are tolerated)::

    prompt     := [background ","] [opener] item (joiner item)* [[","] background]
    opener     := "there is" | "there are" | "video of" | "a video of"
    item       := object [motion] ["behind" object]     # X moves <dir> behind a static Y
    object     := ["a" | "an"] [size] colour shape
    joiner     := "," | "and" | "while" | "," "and" | "," "while"
    background := ("on" | "against") ["a" | "an"] bg "background"

An object without a motion phrase stays still.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from moviola.world.spec import (
    BACKGROUNDS, COLORS, LINEAR_MOTIONS, MAX_OBJECTS, SHAPES, SIZES, ObjectSpec, SceneSpec,
)

# --- the phrase table ------------------------------------------------------------------------------
# Canonical phrase of each motion (what ``caption`` writes when it uses no synonym).
MOTION_PHRASES: dict[str, str] = {
    "static": "stays still",
    "left": "moves left",
    "right": "moves right",
    "up": "moves up",
    "down": "moves down",
    "bounces": "bounces",
    "falls": "falls",
    "spins": "spins",
    "grows": "grows",
    "shrinks": "shrinks",
}

# (kind, canonical word) -> other phrases the captioner may write for it. The parser accepts these,
# the canonical words and MOTION_PHRASES, and nothing else (plus PARSE_ONLY below).
SYNONYMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("shape", "circle"): ("ball",),
    ("shape", "square"): ("box",),
    ("background", "gray"): ("grey",),
    ("motion", "static"): ("is still",),
    ("motion", "left"): ("drifts left", "moves to the left", "slides left"),
    ("motion", "right"): ("drifts right", "moves to the right", "slides right"),
    ("motion", "up"): ("drifts up", "moves upward", "slides up"),
    ("motion", "down"): ("drifts down", "moves downward", "slides down"),
    ("motion", "bounces"): ("bounces around",),
    ("motion", "falls"): ("drops", "falls down"),
    ("motion", "spins"): ("rotates", "spins around"),
    ("motion", "grows"): ("gets bigger",),
    ("motion", "shrinks"): ("gets smaller",),
}
# Accepted from people, never written by the captioner.
PARSE_ONLY: dict[tuple[str, str], tuple[str, ...]] = {
    ("motion", "static"): ("is static", "static"),
}
SYNONYM_PROB = 0.3  # chance that a training caption uses a synonym for a word that has one

_OPENERS: tuple[tuple[str, ...], ...] = (("there", "is"), ("there", "are"), ("video", "of"), ("a", "video", "of"))
_ARTICLES = ("a", "an")
_BACKGROUND_PREPS = ("on", "against")
_CONNECTIVES = ("and", "while")


def _build_lexicon() -> dict[tuple[str, ...], tuple[str, str]]:
    """Every content phrase (as a word tuple) -> (kind, canonical word)."""
    lex: dict[tuple[str, ...], tuple[str, str]] = {}
    for kind, words in (("color", COLORS), ("shape", SHAPES), ("size", SIZES), ("background", BACKGROUNDS)):
        for w in words:
            lex[(w,)] = (kind, w)
    for motion, phrase in MOTION_PHRASES.items():
        lex[tuple(phrase.split())] = ("motion", motion)
    for table in (SYNONYMS, PARSE_ONLY):
        for (kind, word), phrases in table.items():
            for phrase in phrases:
                key = tuple(phrase.split())
                assert lex.get(key, (kind, word)) == (kind, word), f"phrase {phrase!r} means two things"
                lex[key] = (kind, word)
    return lex


_LEXICON = _build_lexicon()
_MAX_PHRASE = max(len(k) for k in _LEXICON)


# --- prompts ---------------------------------------------------------------------------------------
class PromptError(ValueError):
    """Text outside the caption grammar; the message names the offending word and what was expected."""


@dataclass(frozen=True)
class PromptObject:
    """One object as a prompt describes it. ``size`` is None when the prompt does not say (either)."""

    color: str
    shape: str
    size: str | None
    motion: str

    def matches(self, obj: ObjectSpec) -> bool:
        return (self.color, self.shape, self.motion) == (obj.color, obj.shape, obj.motion) and (
            self.size is None or self.size == obj.size)


@dataclass(frozen=True)
class Prompt:
    """What a prompt asks for: objects in order of mention, the background (black when left out) and
    the occlusion pair ``behind = (index of X, index of Y)`` for "X moves <dir> behind Y"."""

    objects: tuple[PromptObject, ...]
    background: str = "black"
    behind: tuple[int, int] | None = None

    def matches_spec(self, spec: SceneSpec) -> bool:
        """True if ``spec`` is a scene this prompt describes (same order of mention as its caption)."""
        want = prompt_from_spec(spec)
        return (len(self.objects) == len(want.objects) and self.background == want.background
                and self.behind == want.behind
                and all(p.matches(spec.objects[i]) for p, i in zip(self.objects, mention_order(spec))))


def mention_order(spec: SceneSpec) -> list[int]:
    """Object indices in the order a caption mentions them.

    That is the spec's order, except that in an occlusion scene X is moved to just before Y so that
    "X moves <dir> behind Y" reads as one clause. Scenes with ``behind == (i, i + 1)`` (what the sampler
    makes) keep their order exactly.
    """
    order = list(range(len(spec.objects)))
    if spec.behind is not None:
        x, y = spec.behind
        order.remove(x)
        order.insert(order.index(y), x)
    return order


def prompt_from_spec(spec: SceneSpec) -> Prompt:
    """The exact (detailed) prompt of a scene, in caption order."""
    order = mention_order(spec)
    objects = tuple(PromptObject(o.color, o.shape, o.size, o.motion) for o in (spec.objects[i] for i in order))
    behind = None
    if spec.behind is not None:
        y = order.index(spec.behind[1])
        behind = (y - 1, y)
    return Prompt(objects, spec.background, behind)


# --- captioner -------------------------------------------------------------------------------------
def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def caption(spec: SceneSpec, *, detailed: bool = False, rng: np.random.Generator | None = None) -> str:
    """Describe a scene in one sentence.

    With ``rng=None`` the canonical form: lower case, no opener, objects joined by ", " and " and ",
    sizes always stated, the background stated unless it is black and ``detailed`` is False, e.g.
    "a small red circle moves right on a black background". With an ``rng`` the opener, joiners,
    capitalisation, final period and synonyms vary, and short captions may drop sizes and a black
    background. Detailed captions always state every attribute.
    """
    def choose(options):
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    def chance(p: float) -> bool:
        return rng is not None and rng.random() < p

    def word(kind: str, canonical: str) -> str:
        base = MOTION_PHRASES[canonical] if kind == "motion" else canonical
        syn = SYNONYMS.get((kind, canonical))
        return choose(syn) if syn and chance(SYNONYM_PROB) else base

    def phrase(o: ObjectSpec, with_motion: bool) -> str:
        words = [] if not detailed and chance(0.5) else [o.size]
        words += [o.color, word("shape", o.shape)]
        if with_motion:
            words.append(word("motion", o.motion))
        return f"{_article(words[0])} {' '.join(words)}"

    order = mention_order(spec)
    x_pos = order.index(spec.behind[0]) if spec.behind is not None else -1
    items, k = [], 0
    while k < len(order):
        obj = spec.objects[order[k]]
        if k == x_pos:  # "X moves <dir> behind Y": Y follows X in mention order and is static
            items.append(f"{phrase(obj, True)} behind {phrase(spec.objects[order[k + 1]], False)}")
            k += 2
        else:
            items.append(phrase(obj, True))
            k += 1

    text = items[0]
    for i, item in enumerate(items[1:], start=1):
        if rng is None:
            joiner = " and " if i == len(items) - 1 else ", "
        else:
            joiner = choose((" and ", " while ", ", ", ", and ", ", while "))
        text += joiner + item

    if rng is not None:
        opener = choose(("", "there is ", "video of "))
        # WORLD.md lists "There is" for every scene ("There is a red circle and a blue square..."): several
        # objects take either (only "there are" had been written, so that phrasing was never trained on)
        if opener == "there is " and len(spec.objects) > 1 and chance(0.5):
            opener = "there are "
        text = opener + text

    if detailed or spec.background != "black" or not (rng is None or chance(0.5)):
        bg = word("background", spec.background)
        sep = "," if chance(0.3) else ""
        text += f"{sep} {choose(_BACKGROUND_PREPS)} {_article(bg)} {bg} background"

    if chance(0.5):
        text = text[0].upper() + text[1:]
    if chance(0.5):
        text += "."
    return text


# --- parser ----------------------------------------------------------------------------------------
def _listing(kind: str) -> str:
    words = {"color": COLORS, "shape": SHAPES, "size": SIZES, "background": BACKGROUNDS}[kind]
    return ", ".join(words)


_EXPECT = {
    "size": f"a size ({_listing('size')})",
    "color": f"a colour ({_listing('color')})",
    "shape": f"a shape ({_listing('shape')})",
    "motion": "a motion (" + ", ".join(MOTION_PHRASES.values()) + ")",
    "joiner": "a joiner ('and', 'while', a comma) before another object",
    "background": f"a background phrase such as 'on a black background' ({_listing('background')})",
    "end": "the end of the prompt",
}
_EXAMPLE = "'a small red circle moves right on a black background'"


def _tokenize(text: str) -> list[str]:
    text = text.lower().strip()
    text = re.sub(r"[.!]+$", "", text).strip()
    return re.findall(r"[a-z]+|[^\sa-z]", text)


class _Parser:
    """Recursive descent over the token list; ``pos`` is the next token."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    # -- helpers --
    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.tokens[i] if i < len(self.tokens) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.tokens)

    def lookup(self) -> tuple[str, str, int] | None:
        """Longest phrase of the lexicon starting at ``pos``: (kind, canonical word, length)."""
        for n in range(min(_MAX_PHRASE, len(self.tokens) - self.pos), 0, -1):
            hit = _LEXICON.get(tuple(self.tokens[self.pos:self.pos + n]))
            if hit is not None:
                return hit[0], hit[1], n
        return None

    def fail(self, *expected: str) -> PromptError:
        parts = [_EXPECT[e] for e in expected]
        want = parts[0] if len(parts) == 1 else "; ".join(parts[:-1]) + "; or " + parts[-1]
        if self.at_end():
            return PromptError(f"{self.text!r} ends too early: expected {want}")
        tok = self.peek()
        known = tok in _ARTICLES or tok in _BACKGROUND_PREPS or tok in _CONNECTIVES or tok in (
            ",", "behind", "background") or self.lookup() is not None
        verb = "unexpected" if known else "cannot understand"
        return PromptError(f"{verb} {tok!r} in {self.text!r}: expected {want}")

    # -- grammar --
    def parse(self) -> Prompt:
        if not self.tokens:
            raise PromptError(f"empty prompt: describe 1 to {MAX_OBJECTS} objects, e.g. {_EXAMPLE}")
        background = None
        if self.peek() in _BACKGROUND_PREPS:  # "On a white background, a red circle falls"
            background = self.background()
            if self.peek() == ",":
                self.pos += 1
        for opener in _OPENERS:
            if tuple(self.tokens[self.pos:self.pos + len(opener)]) == opener:
                self.pos += len(opener)
                break

        objects: list[PromptObject] = []
        behind: tuple[int, int] | None = None
        while True:
            obj, said_motion = self.object(with_motion=True)
            objects.append(obj)
            if self.peek() == "behind":
                if behind is not None:
                    raise PromptError(f"a second 'behind' in {self.text!r}: a scene has one occlusion at most")
                if obj.motion not in LINEAR_MOTIONS:
                    raise PromptError(
                        f"'behind' in {self.text!r} must follow an object that moves left, right, up or down "
                        f"(\"X moves right behind Y\"), not one that {MOTION_PHRASES[obj.motion]}")
                self.pos += 1
                if self.at_end() or self.peek() in (",",) + _CONNECTIVES + _BACKGROUND_PREPS:
                    raise PromptError(f"'behind' in {self.text!r} must be followed by an object, "
                                      f"e.g. 'behind a large purple square'")
                objects.append(self.object(with_motion=False)[0])
                behind = (len(objects) - 2, len(objects) - 1)
                said_motion = True  # the object behind which X passes takes no motion phrase
            if self.at_end():
                break
            comma = self.peek() == ","
            if comma:
                self.pos += 1
            if self.peek() in _BACKGROUND_PREPS:
                if background is not None:
                    raise PromptError(f"a second background in {self.text!r}: say it once")
                background = self.background()
                if not self.at_end():
                    raise self.fail("end")
                break
            if self.peek() in _CONNECTIVES:
                self.pos += 1
            elif not comma:
                expected = () if said_motion else ("motion",)
                expected += ("joiner",) if background is not None else ("joiner", "background")
                raise self.fail(*expected)
            if self.at_end():
                raise PromptError(f"{self.text!r} ends after {self.tokens[-1]!r}: expected another object")

        if len(objects) > MAX_OBJECTS:
            raise PromptError(f"too many objects in {self.text!r}: found {len(objects)}, "
                              f"a scene has 1 to {MAX_OBJECTS}")
        seen = set()
        for o in objects:
            if (o.color, o.shape) in seen:
                raise PromptError(f"two {o.color} {o.shape}s in {self.text!r}: a scene has at most one "
                                  f"object of each colour and shape")
            seen.add((o.color, o.shape))
        return Prompt(tuple(objects), background or "black", behind)

    def object(self, with_motion: bool) -> tuple[PromptObject, bool]:
        """``["a" | "an"] [size] colour shape [motion]``, and whether a motion phrase was said.

        Without ``with_motion`` (the Y of "behind Y") a motion phrase is an error: Y is static.
        """
        if self.peek() in _ARTICLES:
            self.pos += 1
        size = color = None
        hit = self.lookup()
        if hit and hit[0] == "size":
            size = hit[1]
            self.pos += 1
            hit = self.lookup()
        if hit and hit[0] == "color":
            color = hit[1]
            self.pos += 1
            hit = self.lookup()
        if hit and hit[0] == "background" and color is None:
            raise PromptError(f"{self.peek()!r} in {self.text!r} is a background colour; "
                              f"an object is one of {_listing('color')}")
        if not (hit and hit[0] == "shape"):
            expected = (("size",) if size is None and color is None else ()) + (
                ("color",) if color is None else ()) + ("shape",)
            raise self.fail(*expected)
        shape_word = self.peek()
        if color is None:
            raise PromptError(f"missing colour for {shape_word!r} in {self.text!r}: expected "
                              f"{_EXPECT['color']} before the shape")
        shape = hit[1]
        self.pos += 1

        motion = "static"
        hit = self.lookup()
        if hit and hit[0] == "motion":
            if not with_motion:
                words = " ".join(self.tokens[self.pos:self.pos + hit[2]])
                raise PromptError(f"the object after 'behind' in {self.text!r} stays still; "
                                  f"it cannot say {words!r}")
            motion = hit[1]
            if motion == "spins" and shape == "circle":
                raise PromptError(f"a circle never spins ({self.peek()!r} in {self.text!r}): "
                                  f"only squares and triangles spin")
            self.pos += hit[2]
            return PromptObject(color, shape, size, motion), True
        return PromptObject(color, shape, size, motion), False

    def background(self) -> str:
        """``("on" | "against") ["a" | "an"] bg "background"``."""
        self.pos += 1
        if self.peek() in _ARTICLES:
            self.pos += 1
        hit = self.lookup()
        if not (hit and hit[0] == "background" and hit[2] == 1):
            raise self.fail("background")
        self.pos += 1
        if self.peek() != "background":
            raise PromptError(f"expected the word 'background' after {self.tokens[self.pos - 1]!r} in "
                              f"{self.text!r}" + (f", got {self.peek()!r}" if self.peek() else ""))
        self.pos += 1
        return hit[1]


def parse_prompt(text: str) -> Prompt:
    """Parse a caption or a user's prompt; raise PromptError naming the first word outside the grammar."""
    return _Parser(text).parse()
