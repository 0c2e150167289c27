"""The world scorer: its self-test on random renders (raw and through H.264), each motion word, wrong
prompts lowering exactly the wrong attribute, physics and permanence failing when broken, noise."""

import math

import numpy as np
import pytest

from moviola.world.caption import PromptError, caption
from moviola.world.render import render
from moviola.world.sample import DEFAULT_SIZES, sample_scene
from moviola.world.score import score_clip
from moviola.world.spec import ObjectSpec, SceneSpec

CHECKS = ("background", "count", "color", "shape", "size", "motion")


def _all_perfect(report: dict) -> list[str]:
    """Names of the checks below 1.0 (None means not applicable)."""
    vals = dict(report["attributes"])
    vals.update(fall=report["physics"]["fall"], reflection=report["physics"]["reflection"],
                permanence=report["permanence"], consistency_color=report["consistency"]["color"],
                consistency_size=report["consistency"]["size"])
    return [k for k, v in vals.items() if v is not None and v < 1.0]


def _score_spec(spec: SceneSpec, prompt: str | None = None, **kw) -> dict:
    return score_clip(render(spec).frames, prompt or caption(spec, detailed=True), fps=spec.fps, **kw)


# --- self-test ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", DEFAULT_SIZES)
def test_selftest_raw(size):
    """Random scenes (occlusion scenes included) at each default size score 1.0 on every check."""
    bad = []
    for i in range(15):
        spec = sample_scene(np.random.default_rng([2026, i, *size]), sizes=[size], occlusion_prob=0.2)
        failed = _all_perfect(_score_spec(spec))
        if failed:
            bad.append((i, caption(spec, detailed=True), failed))
    assert not bad, bad


def test_selftest_mp4(tmp_path):
    """The same after an H.264 round trip (crf 12, yuv420p: chroma at half resolution)."""
    video_io = pytest.importorskip("moviola.video_io")
    bad = []
    for i in range(20):
        spec = sample_scene(np.random.default_rng([2027, i]), occlusion_prob=0.2)
        path = tmp_path / f"{i}.mp4"
        video_io.write_video(path, render(spec).frames, spec.fps)
        frames = video_io.read_video(path).frames[:, :spec.height, :spec.width]
        failed = _all_perfect(score_clip(frames, caption(spec, detailed=True), fps=spec.fps))
        if failed:
            bad.append((i, caption(spec, detailed=True), failed))
    assert not bad, bad


@pytest.mark.parametrize("fps", [12.0, 24.0])
def test_selftest_other_fps(fps):
    """Motion is measured in seconds, so other frame rates score the same."""
    bad = []
    for i in range(6):
        spec = sample_scene(np.random.default_rng([2028, i]), fps_choices=(fps,), seconds_range=(1.0, 2.0),
                            occlusion_prob=0.2)
        failed = _all_perfect(_score_spec(spec))
        if failed:
            bad.append((i, caption(spec, detailed=True), failed))
    assert not bad, bad


# --- each motion word -----------------------------------------------------------------------------

MOTION_SCENES = {
    "static": ObjectSpec("red", "circle", "large", "static", 0.5, 0.5),
    "left": ObjectSpec("orange", "triangle", "small", "left", 0.8, 0.4),
    "right": ObjectSpec("yellow", "square", "large", "right", 0.2, 0.6),
    "up": ObjectSpec("green", "circle", "small", "up", 0.5, 0.8),
    "down": ObjectSpec("cyan", "square", "small", "down", 0.3, 0.2),
    "bounces": ObjectSpec("blue", "triangle", "small", "bounces", 0.4, 0.4, 35.0),
    "falls": ObjectSpec("purple", "circle", "large", "falls", 0.6, 0.2),
    "spins": ObjectSpec("red", "square", "large", "spins", 0.5, 0.5),
    "grows": ObjectSpec("green", "triangle", "small", "grows", 0.5, 0.5),
    "shrinks": ObjectSpec("blue", "circle", "large", "shrinks", 0.5, 0.5),
}


@pytest.mark.parametrize("motion", sorted(MOTION_SCENES))
def test_each_motion_is_classified(motion):
    spec = SceneSpec((MOTION_SCENES[motion],), "navy", 64, 64, 8.0, 3.0)
    report = _score_spec(spec)
    assert report["objects"][0]["found"]["motion"] == motion
    assert not _all_perfect(report), report


# --- wrong prompts lower exactly the wrong attribute ----------------------------------------------

TWO = SceneSpec((ObjectSpec("red", "circle", "small", "right", 0.2, 0.3),
                 ObjectSpec("blue", "square", "large", "spins", 0.65, 0.65)), "white", 96, 64, 8.0, 2.0)
TWO_PROMPT = "a small red circle moves right and a large blue square spins on a white background"


@pytest.mark.parametrize("wrong, attribute", [
    (TWO_PROMPT.replace("red circle", "green circle"), "color"),
    (TWO_PROMPT.replace("red circle", "red triangle"), "shape"),
    (TWO_PROMPT.replace("small red", "large red"), "size"),
    (TWO_PROMPT.replace("moves right", "moves left"), "motion"),
    (TWO_PROMPT.replace("blue square spins", "blue square stays still"), "motion"),
    (TWO_PROMPT.replace("white background", "gray background"), "background"),
    ("a small red circle moves right on a white background", "count"),
])
def test_wrong_prompt_lowers_exactly_that_attribute(wrong, attribute):
    frames = render(TWO).frames
    assert _all_perfect(score_clip(frames, TWO_PROMPT, fps=8.0)) == []
    attrs = score_clip(frames, wrong, fps=8.0)["attributes"]
    assert attrs[attribute] < 1.0
    assert all(v == 1.0 for k, v in attrs.items() if k != attribute and v is not None), attrs


def test_prompt_outside_the_grammar_raises():
    frames = render(TWO).frames
    for bad in ("a red hexagon falls", "a red circle dances", "a navy circle falls", ""):
        with pytest.raises(PromptError):
            score_clip(frames, bad, fps=8.0)


# --- physics and permanence -----------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [8.0, 12.0])
def test_a_fall_that_comes_to_rest_is_still_a_fall(seconds):
    """After about 6 s of shrinking bounces a dropped object lies on the floor; over a long clip its median
    speed is that of a static one, yet it fell (it had been scored static). A static object stays static."""
    fall = ObjectSpec("green", "square", "large", "falls", 0.5, 0.2)
    still = ObjectSpec("red", "circle", "small", "static", 0.2, 0.7)
    report = _score_spec(SceneSpec((fall, still), "white", 64, 64, 8.0, seconds))
    assert [o["found"]["motion"] for o in report["objects"]] == ["falls", "static"]
    assert not _all_perfect(report), report


def test_fall_physics_needs_the_worlds_gravity():
    """A drop rendered at 1.41x speed shows twice the gravity: still a fall, but not the world's."""
    obj = ObjectSpec("yellow", "circle", "large", "falls", 0.4, 0.15)
    real = SceneSpec((obj,), "black", 64, 96, 8.0, 2.0)
    report = _score_spec(real)
    assert report["physics"]["fall"] == 1.0 and report["attributes"]["motion"] == 1.0
    c = math.sqrt(2.0)  # frames taken c times further apart in time, played at the same rate: g * c^2
    fast = SceneSpec((obj,), "black", 64, 96, 8.0 / c, 2.0)
    report = score_clip(render(fast).frames, caption(real, detailed=True), fps=8.0)
    assert report["objects"][0]["found"]["motion"] == "falls"
    assert report["physics"]["fall"] == 0.0


def test_reflection_physics_fails_when_the_object_turns_in_mid_air():
    """Reversing a mover's frames halfway makes it turn back away from any wall."""
    spec = SceneSpec((ObjectSpec("green", "square", "small", "right", 0.15, 0.5),), "gray", 128, 128, 8.0, 3.0)
    frames = render(spec).frames  # it meets the right wall at 2.2 s
    assert score_clip(frames, caption(spec, detailed=True), fps=8.0)["physics"]["reflection"] == 1.0
    turned = np.concatenate([frames[:12], frames[10::-1]])  # back from x = 0.63 s, far from the wall
    assert score_clip(turned, caption(spec, detailed=True), fps=8.0)["physics"]["reflection"] == 0.0


def test_permanence_fails_when_the_hidden_object_never_returns():
    x = ObjectSpec("red", "circle", "small", "right", 0.1, 0.5)
    y = ObjectSpec("blue", "square", "large", "static", 0.5, 0.5)
    spec = SceneSpec((x, y), "black", 64, 64, 8.0, 2.3, behind=(0, 1))
    prompt = caption(spec, detailed=True)
    assert "behind" in prompt
    frames = render(spec).frames
    report = score_clip(frames, prompt, fps=8.0)
    assert report["permanence"] == 1.0 and not _all_perfect(report)
    # From the middle on (X is behind Y there), show the scene without X: it never comes back.
    gone = render(SceneSpec((y,), "black", 64, 64, 8.0, 2.3)).frames
    mid = len(frames) // 2
    broken = np.concatenate([frames[:mid], gone[mid:]])
    assert score_clip(broken, prompt, fps=8.0)["permanence"] == 0.0


# --- clips that are not the world --------------------------------------------------------------------

def test_noise_and_blank_clips_score_low():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    report = score_clip(noise, TWO_PROMPT, fps=8.0)
    assert report["overall"] < 0.3 and report["count"]["found"] == 0
    blank = np.zeros((16, 64, 64, 3), np.uint8)
    report = score_clip(blank, TWO_PROMPT, fps=8.0)
    assert report["count"]["found"] == 0 and report["attributes"]["color"] == 0.0
    assert report["overall"] < 0.3


def test_single_frame_scores_without_motion():
    frame = render(TWO).frames[5]
    report = score_clip(frame, TWO_PROMPT, fps=8.0)
    assert report["attributes"]["motion"] is None
    assert all(v == 1.0 for v in report["attributes"].values() if v is not None)
    assert report["physics"] == {"fall": None, "reflection": None}


def test_float_frames_are_accepted():
    frames = render(TWO).frames
    report = score_clip(frames.astype(np.float32) / 255.0, TWO_PROMPT, fps=8.0)
    assert report["overall"] == 1.0


def test_score_file_reads_footage_by_time(tmp_path):
    """A clip whose rate was raised by holding frames (8 fps content in a 29.97 fps file, as re-encoders and
    sharing sites make them) and a variable-frame-rate file score as the clip itself: motion is read by the
    frames' timestamps, not by frame-to-frame differences of held copies."""
    from fractions import Fraction

    import av

    from moviola.world.score import score_file

    spec = SceneSpec(objects=(ObjectSpec("blue", "square", "large", "falls", y=0.25),), background="white",
                     seconds=3.0)
    prompt = caption(spec, detailed=True)
    frames = render(spec).frames
    assert score_clip(frames, prompt, fps=8.0)["physics"]["fall"] == 1.0

    def write(path, times):  # frame shown at each timestamp: the 8 fps frame on screen then
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=30, options={"crf": "10"})
            s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
            s.codec_context.time_base = s.time_base = Fraction(1, 30000)
            for t in times:
                f = av.VideoFrame.from_ndarray(frames[min(int(t * 8 + 1e-9), len(frames) - 1)], format="rgb24")
                f.pts, f.time_base = round(t * 30000), Fraction(1, 30000)
                c.mux(s.encode(f))
            c.mux(s.encode())
        return path

    held = write(tmp_path / "held.mp4", [k * 1001 / 30000 for k in range(round(3 * 30000 / 1001))])
    vfr = write(tmp_path / "vfr.mp4", [k / 30 for k in range(30)] + [1 + k / 10 for k in range(20)])
    for path in (held, vfr):
        report = score_file(path, prompt)
        assert report["physics"]["fall"] == 1.0 and report["attributes"]["motion"] == 1.0, (path.name, report)


def test_files_at_rates_that_are_not_multiples_of_8_score_as_their_frames(tmp_path):
    """A 12 fps file had been resampled to 8 fps with steps of 1/6 and 1/12 s read as even: 'moves up' read
    as 'falls'. Every k-th frame (k = round(rate / 8)) keeps the steps even."""
    import numpy as np

    from moviola.video_io import write_video
    from moviola.world.caption import parse_prompt
    from moviola.world.render import render
    from moviola.world.sample import scene_from_prompt
    from moviola.world.score import score_file

    for fps, prompt, seed in [(12, "a green ball moves up", 42), (12, "a red circle falls", 67), (29.97, "a red circle falls", 1)]:
        spec = scene_from_prompt(parse_prompt(prompt), np.random.default_rng(seed), width=96, height=96, fps=fps,
                                 seconds=3)
        path = tmp_path / f"{seed}.mp4"
        write_video(path, render(spec).frames, fps)
        assert score_file(path, prompt)["overall"] == 1.0, (fps, prompt)


def test_noise_has_no_background():
    """The background vote had no minimum share: random noise was given 'gray' (or 'navy') and scored."""
    import numpy as np

    from moviola.world.score import score_clip

    noise = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    for bg in ("black", "white", "gray", "navy"):
        report = score_clip(noise, f"a red circle falls on a {bg} background", fps=8)
        assert report["attributes"]["background"] == 0.0 and report["background"]["found"] is None


@pytest.mark.parametrize("fps", [8.0, 24.0])
def test_large_files_are_scored_at_a_bounded_size(tmp_path, monkeypatch, fps):
    """A file with a shorter side over 256 px is scaled down as it is decoded (a 10 s 1080p clip had needed
    4 GB), and scores as at full size: the world's thresholds are in units of the shorter side."""
    from moviola.video_io import write_image, write_video
    from moviola.world import score as score_mod

    spec = SceneSpec(TWO.objects, TWO.background, 480, 320, fps, 2.0)
    frames = render(spec).frames
    write_video(tmp_path / "big.mp4", frames, fps)
    write_image(tmp_path / "big.png", frames[0])
    seen = []
    real = score_mod.score_clip
    monkeypatch.setattr(score_mod, "score_clip", lambda f, p, fps=8.0: seen.append(f.shape) or real(f, p, fps=fps))
    report = score_mod.score_file(tmp_path / "big.mp4", TWO_PROMPT)
    assert seen[-1][1:] == (256, 384, 3), seen
    assert report["overall"] == 1.0, report
    still = score_mod.score_file(tmp_path / "big.png", "a small red circle stays still and a large blue square "
                                                       "stays still on a white background")
    assert seen[-1] == (256, 384, 3) and still["attributes"]["color"] == 1.0


def test_score_takes_still_images_of_every_kind_read_image_reads(tmp_path):
    """A BMP or TIFF had been refused as 'not a video: ... a still image' by the command that scores images."""
    from PIL import Image

    from moviola.world.score import score_file

    frame = render(TWO).frames[0]
    for ext in ("bmp", "tiff"):
        Image.fromarray(frame).save(tmp_path / f"f.{ext}")
        report = score_file(tmp_path / f"f.{ext}", TWO_PROMPT.replace("moves right", "stays still")
                            .replace("spins", "stays still"))
        assert report["attributes"]["color"] == 1.0 and report["attributes"]["background"] == 1.0


def test_score_file_keeps_a_variable_frame_rate_files_timing_and_reads_every_image_name(tmp_path):
    """A Matroska file with frames dropped (their times kept: variable frame rate) scores the speed of the file it
    came from, where its nominal rate had made the motion half as fast again; and every picture name Moviola
    reads elsewhere (.jfif, .tga, .qoi...) is scored as a picture, not refused as "a still image"."""
    from fractions import Fraction

    import av
    from PIL import Image

    from moviola.world.score import score_file

    prompt = "a large red circle moves right on a black background"
    from moviola.world.caption import parse_prompt
    from moviola.world.sample import scene_from_prompt

    spec = scene_from_prompt(parse_prompt(prompt), np.random.default_rng(1), seconds=4.0)  # no wall reached
    frames = render(spec).frames
    with av.open(str(tmp_path / "vfr.mkv"), "w") as c:
        s = c.add_stream("libx264", rate=8, options={"crf": "10"})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        for i in [i for i in range(len(frames)) if i % 3 != 1]:
            f = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            f.pts, f.time_base = i * 125, Fraction(1, 1000)
            c.mux(s.encode(f))
        c.mux(s.encode())
    whole = score_clip(frames, prompt, fps=8.0)
    vfr = score_file(tmp_path / "vfr.mkv", prompt)
    speed = [r["objects"][0]["found"]["speed_x"] for r in (whole, vfr)]
    assert abs(speed[1] - speed[0]) < 0.1 * abs(speed[0]), speed
    for name in ("s.jfif", "s.tga", "s.qoi"):
        Image.fromarray(frames[0]).save(tmp_path / name, format="JPEG" if name.endswith("jfif") else None)
        report = score_file(tmp_path / name, prompt)
        assert report["attributes"]["color"] == 1.0, report


@pytest.mark.parametrize("fps", [12.0, 30.0])
def test_a_fall_in_a_fast_file_is_read_from_its_first_frame(tmp_path, fps):
    """A file faster than 8 fps is read every k-th frame from its first, so frame j shows t = j / rate: read
    mid-frame, a fall no longer started at rest and failed its physics in every clip at 12 and 30 fps."""
    from moviola.video_io import write_video
    from moviola.world.caption import parse_prompt
    from moviola.world.sample import scene_from_prompt
    from moviola.world.score import score_file

    prompt = parse_prompt("a red circle falls")
    for j in range(4):
        spec = scene_from_prompt(prompt, np.random.default_rng([5, j]), fps=fps, seconds=2.0)
        path = write_video(tmp_path / f"{j}.mp4", render(spec).frames, fps)
        assert score_file(path, "a red circle falls")["physics"]["fall"] == 1.0
