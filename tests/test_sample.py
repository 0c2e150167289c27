"""Scene sampler: validity, holdout, start-position rules, coverage, occlusion geometry, determinism."""

import math

import numpy as np
import pytest

from moviola.world.sample import DEFAULT_SIZES, sample_dataset_specs, sample_scene
from moviola.world.spec import (
    BACKGROUNDS, COLORS, DEFAULT_HOLDOUT, DIRECTIONS, GROW_FACTOR, LINEAR_MOTIONS, MOTIONS, MOVE_SPEED, SHAPES,
    SIZES, combination_matches,
)


@pytest.fixture(scope="module")
def specs():
    return list(sample_dataset_specs(0, 2000, occlusion_prob=0.2))


def _margin(o):
    if o.motion == "grows":
        return GROW_FACTOR
    if o.motion == "spins" and o.shape == "square":
        return math.sqrt(2)
    return 1.0


def test_valid_and_inside(specs):
    for spec in specs:
        spec.validate()
        assert (spec.width, spec.height) in DEFAULT_SIZES and spec.fps == 8.0
        assert spec.seconds in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
        s = spec.unit
        for o in spec.objects:
            rx, ry = _margin(o) * o.radius * s / spec.width, _margin(o) * o.radius * s / spec.height
            assert rx - 1e-9 <= o.x <= 1 - rx + 1e-9 and ry - 1e-9 <= o.y <= 1 - ry + 1e-9, (spec, o)
            assert not (o.shape == "circle" and o.motion == "spins")


def test_start_positions(specs):
    for spec in specs:
        for o in spec.objects:
            if o.motion == "right":
                assert o.x <= 1 / 3
            elif o.motion == "left":
                assert o.x >= 2 / 3
            elif o.motion == "down":
                assert o.y <= 1 / 3
            elif o.motion == "up":
                assert o.y >= 2 / 3
            elif o.motion == "falls":
                assert o.y <= 0.25
            elif o.motion == "bounces":
                assert 25 <= o.angle % 90 <= 65 and 0 <= o.angle < 360


def test_coverage_and_uniformity(specs):
    objs = [o for spec in specs if spec.behind is None for o in spec.objects]
    for attr, words in (("color", COLORS), ("shape", SHAPES), ("size", SIZES), ("motion", MOTIONS)):
        counts = {w: sum(getattr(o, attr) == w for o in objs) for w in words}
        assert all(counts.values()), (attr, counts)
        share = np.array(list(counts.values())) / len(objs)
        assert share.max() < 2.0 / len(words) and share.min() > 0.4 / len(words), (attr, counts)
    assert {s.background for s in specs} == set(BACKGROUNDS)
    assert {(s.width, s.height) for s in specs} == set(DEFAULT_SIZES)
    assert {len(s.objects) for s in specs} == {1, 2, 3}
    assert {o.angle // 90 for s in specs for o in s.objects if o.motion == "bounces"} == {0, 1, 2, 3}


def test_no_duplicates_and_little_overlap(specs):
    overlapping = multi = 0
    for spec in specs:
        pairs = [(o.color, o.shape) for o in spec.objects]
        assert len(set(pairs)) == len(pairs)
        if spec.behind is None and len(spec.objects) > 1:
            multi += 1
            s = spec.unit
            ext = [(1.42 if o.shape == "square" else 1.0) * o.radius * s for o in spec.objects]
            overlapping += any(
                math.hypot((a.x - b.x) * spec.width, (a.y - b.y) * spec.height) <= ext[i] + ext[j]
                for i, a in enumerate(spec.objects) for j, b in enumerate(spec.objects) if i < j)
    assert overlapping < 0.05 * multi


def test_holdout_respected():
    rng = np.random.default_rng(5)
    specs = [sample_scene(rng, holdout=DEFAULT_HOLDOUT, occlusion_prob=0.3) for _ in range(2000)]
    for spec in specs:
        for o in spec.objects:
            assert not any(combination_matches(o, c) for c in DEFAULT_HOLDOUT), o
    objs = [o for s in specs for o in s.objects]
    assert any(o.color == "purple" for o in objs) and any(o.shape == "triangle" for o in objs)
    rng = np.random.default_rng(6)
    only_red = [sample_scene(rng, holdout=[frozenset({c}) for c in COLORS if c != "red"]) for _ in range(50)]
    assert all(o.color == "red" for s in only_red for o in s.objects)
    with pytest.raises(ValueError, match="holdout"):
        sample_scene(rng, holdout=[frozenset({shape}) for shape in SHAPES])


def test_occlusion_scenes():
    rng = np.random.default_rng(9)
    specs = [sample_scene(rng, occlusion_prob=1.0, max_objects=3) for _ in range(400)]
    occ = [s for s in specs if s.behind is not None]
    assert len(occ) > 0.5 * sum(len(s.objects) > 1 for s in specs)
    assert any(len(s.objects) == 3 for s in occ)
    assert {s.objects[0].motion for s in occ} == set(LINEAR_MOTIONS)
    for spec in occ:
        assert spec.behind == (0, 1) and spec.seconds >= 2
        x, y = spec.objects[0], spec.objects[1]
        assert x.size == "small" and x.motion in LINEAR_MOTIONS
        assert y.size == "large" and y.motion == "static" and y.shape in ("circle", "square")
        assert x.color != y.color
        s, T = spec.unit, spec.seconds
        dx, dy = DIRECTIONS[x.motion]
        along = 0 if dx else 1
        start = np.array([x.x * spec.width, x.y * spec.height])
        centre = np.array([y.x * spec.width, y.y * spec.height])
        end = start + MOVE_SPEED * s * T * np.array([dx, dy])  # straight line (no wall: checked below)
        r, R = x.radius * s, y.radius * s
        assert start[1 - along] == pytest.approx(centre[1 - along])  # same row / column
        mid = (start + end) / 2
        assert mid == pytest.approx(centre)  # Y sits where X is at T / 2
        d = np.array([dx, dy])[along]
        assert d * (centre[along] - start[along]) >= R + r - 1e-6  # X starts clear of Y ...
        L = spec.width if along == 0 else spec.height
        assert r - 1e-6 <= end[along] <= L - r + 1e-6  # ... and never reaches a wall within the clip
        for z in spec.objects[2:]:  # a bystander keeps out of the X-Y lane for the whole clip
            assert z.motion in ("static", "spins", "grows", "shrinks") or DIRECTIONS[z.motion][along] != 0
            across = abs(np.array([z.x - y.x, z.y - y.y])[1 - along]) * (spec.height if along == 0 else spec.width)
            assert across > R + _margin(z) * z.radius * s


def test_occlusion_falls_back_when_impossible():
    rng = np.random.default_rng(2)
    for _ in range(50):  # shorter than 2 s: no occlusion scene fits
        spec = sample_scene(rng, occlusion_prob=1.0, seconds_range=(1.0, 1.5))
        assert spec.behind is None


def test_dataset_specs_deterministic_per_index():
    first = list(sample_dataset_specs(7, 30, occlusion_prob=0.5))
    assert first == list(sample_dataset_specs(7, 30, occlusion_prob=0.5))
    assert first[12:] == list(sample_dataset_specs(7, 30, start=12, occlusion_prob=0.5))
    assert first[20] == sample_scene(np.random.default_rng([7, 20]), occlusion_prob=0.5)
    assert first != list(sample_dataset_specs(8, 30, occlusion_prob=0.5))


def test_options():
    rng = np.random.default_rng(3)
    for _ in range(100):
        spec = sample_scene(rng, sizes=[(256, 128)], fps_choices=[24.0], seconds_range=(2.0, 3.0),
                            seconds_step=0.25, max_objects=1, backgrounds=["white"])
        assert (spec.width, spec.height, spec.fps, spec.background) == (256, 128, 24.0, "white")
        assert len(spec.objects) == 1 and spec.seconds in (2.0, 2.25, 2.5, 2.75, 3.0)


def test_crowded_canvas_keeps_objects_of_one_colour_apart_at_the_start():
    # Three large growers cannot avoid touching by the end on 64x64; the placement that overlaps least
    # (same-colour overlap counted double) must still start the two purple ones apart.
    import math

    from moviola.world.sample import _overlap_radius, _place_all

    words = [("purple", "circle", "large", "grows"), ("purple", "triangle", "large", "grows"),
             ("cyan", "circle", "large", "grows")]
    for seed in range(40):
        a, b, _ = _place_all(np.random.default_rng(seed), words, 64, 64)
        d = math.hypot((a.x - b.x) * 64, (a.y - b.y) * 64)
        assert d > _overlap_radius(a.shape, a.radius * 64) + _overlap_radius(b.shape, b.radius * 64) + 1, seed


def test_unsized_occlusion_prompts_hide_a_small_object_behind_a_large_one():
    """Sizes left out had been drawn at random, so the hidden object was often large and never hidden."""
    import numpy as np
    import pytest

    from moviola.world.caption import parse_prompt
    from moviola.world.render import render
    from moviola.world.sample import scene_from_prompt
    from moviola.world.score import score_clip
    from moviola.world.spec import SpecError

    prompt = "a red circle moves right behind a blue square"
    for seed in range(6):
        spec = scene_from_prompt(parse_prompt(prompt), np.random.default_rng(seed), width=64, height=64, fps=8,
                                 seconds=2)
        assert score_clip(render(spec).frames, prompt, fps=8)["permanence"] == 1.0, seed
    with pytest.raises(SpecError, match="cannot be hidden behind a small one"):
        scene_from_prompt(parse_prompt("a large red circle moves right behind a small blue square"),
                          np.random.default_rng(0), width=64, height=64, fps=8, seconds=2)
    with pytest.raises(SpecError, match="too long for its size.*fewer seconds"):
        scene_from_prompt(parse_prompt("a small red circle moves right behind a large blue square"),
                          np.random.default_rng(0), width=64, height=64, fps=8, seconds=3)
