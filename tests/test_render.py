"""The renderer against closed-form physics, exact areas, determinism and the contract's rules."""

import math

import numpy as np
import pytest

from moviola.world.render import coverage, render, render_audio
from moviola.world.spec import (BACKGROUNDS, COLORS, GRAVITY, MOVE_SPEED, RESTITUTION, ObjectSpec, SceneSpec,
                                SpecError)


def scene(*objects, **kw):
    return SceneSpec(tuple(objects), **kw)


def test_moves_right_at_contract_speed_and_reflects_at_wall():
    s = scene(ObjectSpec("red", "circle", "small", "right", x=0.2, y=0.5), width=96, height=64, seconds=4)
    clip = render(s)
    unit, r = 64, 0.08 * 64
    x0 = 0.2 * 96
    wall = 96 - r
    t_hit = (wall - x0) / (MOVE_SPEED * unit)
    for t, x in zip(clip.times, clip.tracks[0].x):
        expected = x0 + MOVE_SPEED * unit * t
        if expected > wall:  # elastic reflection
            expected = 2 * wall - expected
        assert x == pytest.approx(expected, abs=1e-9)
    assert [e.wall for e in clip.events] == ["right"]
    assert clip.events[0].time == pytest.approx(t_hit)
    assert clip.events[0].frequency == 880.0


def test_fall_is_parabola_then_bounce_with_restitution():
    s = scene(ObjectSpec("blue", "square", "large", "falls", x=0.5, y=0.2), width=64, height=64, fps=24, seconds=3)
    clip = render(s)
    unit = 64
    g = GRAVITY * unit
    y0, floor = 0.2 * 64, 64 - 0.16 * 64
    t1 = math.sqrt(2 * (floor - y0) / g)
    ys = np.array(clip.tracks[0].y)
    pre = clip.times < t1
    assert np.allclose(ys[pre], y0 + 0.5 * g * clip.times[pre] ** 2)
    # After the first bounce the rebound speed is e * g * t1; the apex is at e^2 of the drop height.
    v1 = RESTITUTION * g * t1
    apex_t = t1 + v1 / g
    k = int(np.argmin(np.abs(clip.times - apex_t)))
    dt = clip.times[k] - t1
    assert ys[k] == pytest.approx(floor - (v1 * dt - 0.5 * g * dt ** 2), abs=1e-9)
    assert floor - ys.min(initial=floor) >= 0
    bounces = [e.time for e in clip.events]
    assert bounces[0] == pytest.approx(t1)
    assert bounces[1] - bounces[0] == pytest.approx(2 * v1 / g)


def test_physics_is_evaluated_at_timestamps_not_accumulated():
    """The same scene at 8 and 24 fps puts the object at the same place at the same time."""
    o = ObjectSpec("green", "triangle", "small", "bounces", x=0.3, y=0.6, angle=37.0)
    a = render(scene(o, fps=8, seconds=4))
    b = render(scene(o, fps=24, seconds=4))
    assert np.allclose(a.tracks[0].x, b.tracks[0].x[::3])
    assert np.allclose(a.tracks[0].y, b.tracks[0].y[::3])
    assert [round(e.time, 9) for e in a.events] == [round(e.time, 9) for e in b.events]


def test_spin_grow_shrink():
    s = scene(ObjectSpec("red", "square", "small", "spins", x=0.3, y=0.3),
              ObjectSpec("blue", "circle", "small", "grows", x=0.7, y=0.7),
              ObjectSpec("green", "circle", "large", "shrinks", x=0.3, y=0.75), width=128, height=128, seconds=3)
    clip = render(s)
    assert clip.tracks[0].rotation[4] == pytest.approx(2 * math.pi * 0.5 * 0.5)  # t = 0.5 s
    r_small, r_large = 0.08 * 128, 0.16 * 128
    assert clip.tracks[1].r[8] == pytest.approx(1.3 * r_small)  # t = 1 s: halfway to 1.6 r
    assert clip.tracks[1].r[-1] == pytest.approx(1.6 * r_small)  # holds after 2 s
    assert clip.tracks[2].r[-1] == pytest.approx(0.6 * r_large)


@pytest.mark.parametrize("shape,area", [("circle", math.pi), ("square", 4.0), ("triangle", 3 * math.sqrt(3) / 4)])
def test_antialiased_coverage_has_true_area(shape, area):
    r = 9.3
    alpha, _ = coverage(shape, 31.37, 27.81, r, 0.4, 64, 64)
    assert alpha.sum() == pytest.approx(area * r * r, rel=5e-3)
    assert 0 < ((alpha > 0) & (alpha < 1)).sum()  # edges are anti-aliased


def test_colours_background_and_draw_order():
    s = scene(ObjectSpec("red", "square", "large", "static", x=0.5, y=0.5),
              ObjectSpec("yellow", "circle", "small", "static", x=0.5, y=0.5), background="navy")
    clip = render(s)
    f = clip.frames[0]
    assert tuple(f[0, 0]) == BACKGROUNDS["navy"]
    assert tuple(f[32, 32]) == COLORS["yellow"]  # mentioned last: drawn on top
    assert clip.tracks[0].visible[0] < 1.0 and clip.tracks[1].visible[0] == 1.0
    # "X behind Y" draws X under Y whatever the order of mention.
    s2 = SceneSpec(s.objects[::-1], background="navy")
    assert tuple(render(s2).frames[0][32, 32]) == COLORS["red"]


def test_occlusion_object_disappears_and_reappears():
    s = scene(ObjectSpec("green", "circle", "small", "right", x=0.2, y=0.5),
              ObjectSpec("purple", "square", "large", "static", x=0.2 + MOVE_SPEED * 2 / 2, y=0.5),
              behind=(0, 1), width=64, height=64, seconds=2)
    vis = render(s).tracks[0].visible
    assert vis[0] == 1.0 and min(vis) == 0.0 and vis[-1] == 1.0


def test_deterministic_and_size_independent():
    o = ObjectSpec("cyan", "triangle", "large", "bounces", x=0.4, y=0.4, angle=120.0)
    a, b = render(scene(o)), render(scene(o))
    assert np.array_equal(a.frames, b.frames)
    big = render(scene(o, width=128, height=128))
    assert np.allclose(np.array(big.tracks[0].x) / 128, np.array(a.tracks[0].x) / 64)


def test_contract_violations_are_spec_errors():
    with pytest.raises(SpecError, match="circle never spins"):
        render(scene(ObjectSpec("red", "circle", "small", "spins")))
    with pytest.raises(SpecError, match="multiple of 8"):
        render(scene(ObjectSpec("red", "circle", "small"), width=60))
    with pytest.raises(SpecError, match="two red circles"):
        render(scene(ObjectSpec("red", "circle", "small"), ObjectSpec("red", "circle", "large")))


def test_audio_has_a_tone_per_bounce():
    s = scene(ObjectSpec("red", "circle", "large", "falls", x=0.5, y=0.1), seconds=3)
    clip = render(s)
    audio = render_audio(clip.events, 3.0)
    assert audio.shape == (48000,)
    for e in clip.events:
        i = int(e.time * 16000)
        seg = audio[i:i + 2400]
        spectrum = np.abs(np.fft.rfft(seg))
        assert np.fft.rfftfreq(len(seg), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=15)
