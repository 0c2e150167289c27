"""Make a folder of real-format videos to try the own-footage tools on (no network, no real footage).

    python scripts/make_footage_folder.py footage --n 100 [--seed 0]
    moviola data check footage
    moviola data cache footage --out footage-cache --shots

Clips are world scenes and slow pans over the photos that ship with scikit-image, written the way cameras
and editors write them: H.264 with B-frames (yuv444p where a side is odd), VP9 in WebM, MPEG-4 Part 2 in
Matroska; sizes like 94x40, 235x100 (2.35:1), 160x90, 72x128 (portrait), 100x75; 30000/1001, 24000/1001,
25, 24, 15 and 12 fps; .mp4, .mov, .mkv and .webm. About one in six is an edit of two or three shots with
hard cuts (for shot splitting). Captions go in ``manifest.jsonl`` (with licence, consent and source), and
for every fifth clip in a sidecar ``.txt`` instead.

Planted problems (always the last 7 files; ``--n`` counts the good ones plus these):
    bad_truncated.mp4    the first third of a good file (no index)
    bad_notvideo.mp4     a text file with a video name
    bad_tooshort.mp4     0.25 s
    bad_nocaption.mkv    a good video with no caption anywhere
    bad_codecdata.mp4    H.264 whose decoder setup (avcC) is garbage: opens, never decodes
    bad_audioonly.mp4    an audio stream only
    bad_cutoff.mkv       cut off at 60 %: header and first frames are fine (``data check`` decodes every
                         frame and names it; ``data check --quick`` probes one frame and does not)
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from moviola.data.clips import TRAIN_PHOTOS, load_photo, photo_pan
from moviola.video_io import atomic_path, fit_frames

SIZES = [(94, 40), (235, 100), (160, 90), (128, 72), (72, 128), (100, 75), (96, 96), (120, 68), (90, 160)]
RATES = [Fraction(30000, 1001), Fraction(24000, 1001), Fraction(25), Fraction(24), Fraction(15), Fraction(12)]
FORMATS = [(".mp4", "libx264"), (".mov", "libx264"), (".mkv", "libx264"), (".webm", "libvpx-vp9"),
           (".mkv", "mpeg4")]
PHOTO_WORDS = {"astronaut": "an astronaut", "rocket": "a rocket on a launch pad", "coffee": "a cup of coffee",
               "chelsea": "a cat", "camera": "a man with a camera", "coins": "old coins", "moon": "the moon's surface",
               "page": "a page of text", "text": "printed text", "clock": "a clock", "brick": "a brick wall",
               "grass": "grass", "gravel": "gravel", "logo": "a logo", "hubble_deep_field": "galaxies in deep space",
               "immunohistochemistry": "stained tissue under a microscope", "retina": "a retina",
               "colorwheel": "a colour wheel", "motorcycle_right": "a motorcycle"}
PHOTOS = [p for p in PHOTO_WORDS if p in TRAIN_PHOTOS or p in ("coffee", "chelsea", "motorcycle_right")]


def write_camera_file(path: Path, frames: np.ndarray, rate: Fraction, codec: str = "libx264") -> Path:
    """(T, H, W, 3) uint8 -> a video file as a camera writes it (B-frames for H.264), atomically."""
    t, h, w, _ = frames.shape
    odd = h % 2 or w % 2
    pix = "yuv444p" if odd and codec == "libx264" else "yuv420p"
    if codec == "mpeg4" and odd:  # MPEG-4 Part 2 has no 4:4:4; crop a line like a camera's encoder would
        frames, h, w = frames[:, : h - h % 2, : w - w % 2], h - h % 2, w - w % 2
    opts = {"x264-params": "bframes=2:b-adapt=0", "preset": "veryfast"} if codec == "libx264" else {}
    with atomic_path(path) as tmp, av.open(str(tmp), "w") as c:
        s = c.add_stream(codec, rate=rate, options=opts)
        s.width, s.height, s.pix_fmt = w, h, pix
        if codec == "mpeg4":
            s.codec_context.max_b_frames = 2
        for i in range(t):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


def world_shot(rng: np.random.Generator, w: int, h: int, fps: float, seconds: float,
               background: str | None = None) -> tuple[np.ndarray, str]:
    """A world scene rendered at a size it supports, then fitted to (w, h); and its caption."""
    from moviola.world.caption import caption
    from moviola.world.render import render
    from moviola.world.sample import sample_scene

    # The renderer wants multiples of 8; render the cover size and crop like a camera's sensor would.
    rw, rh = max(32, -(-w // 8) * 8), max(32, -(-h // 8) * 8)
    spec = sample_scene(rng, sizes=[(rw, rh)], fps_choices=[fps], seconds_range=(seconds, seconds),
                        seconds_step=0.01, backgrounds=[background] if background else None)
    clip = render(spec, num_frames=max(1, round(seconds * fps)))
    return fit_frames(clip.frames, w, h, mode="crop"), caption(spec, rng=rng)


def pan_shot(rng: np.random.Generator, w: int, h: int, fps: float, seconds: float,
             photo: str | None = None) -> tuple[np.ndarray, str]:
    photo = photo or PHOTOS[int(rng.integers(len(PHOTOS)))]
    x = photo_pan(load_photo(photo), w, h, max(1, round(seconds * fps)), rng)  # (3, T, H, W) in [-1, 1]
    frames = ((x.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    return frames, f"a slow pan across a photo of {PHOTO_WORDS[photo]}"


def make_clip(rng: np.random.Generator, i: int) -> tuple[np.ndarray, Fraction, str, str, str]:
    """Frames, rate, extension, codec and caption of good clip ``i``."""
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    rate = RATES[int(rng.integers(len(RATES)))]
    ext, codec = FORMATS[int(rng.integers(len(FORMATS)))]
    fps = float(rate)
    if i % 6 == 5:  # an edit: two or three shots with hard cuts between different photos / backgrounds
        n = int(rng.integers(2, 4))
        photos = rng.choice(PHOTOS, size=n, replace=False)
        parts, words = [], []
        for k in range(n):
            sec = float(rng.uniform(2.5, 4.0))
            if k % 2 == 0:
                f, cap = pan_shot(rng, w, h, fps, sec, str(photos[k]))
            else:
                f, cap = world_shot(rng, w, h, fps, sec, background=["white", "navy"][k // 2 % 2])
            parts.append(f)
            words.append(cap)
        return np.concatenate(parts), rate, ext, codec, "an edit of several shots: " + "; then ".join(words)
    sec = float(rng.uniform(1.5, 5.0))
    f, cap = (world_shot if rng.random() < 0.5 else pan_shot)(rng, w, h, fps, sec)
    return f, rate, ext, codec, cap


def plant_bad_files(out: Path, rng: np.random.Generator, rows: list[dict]) -> list[str]:
    good, _ = pan_shot(rng, 96, 64, 25, 2.0, "astronaut")
    write_camera_file(out / "bad_truncated.mp4", good, Fraction(25))
    data = (out / "bad_truncated.mp4").read_bytes()
    (out / "bad_truncated.mp4").write_bytes(data[: len(data) // 3])
    (out / "bad_notvideo.mp4").write_text("this is a text file, not a video\n")
    write_camera_file(out / "bad_tooshort.mp4", good[:6], Fraction(24))  # 0.25 s
    write_camera_file(out / "bad_nocaption.mkv", good, Fraction(25))
    write_camera_file(out / "bad_codecdata.mp4", good, Fraction(25))
    data = bytearray((out / "bad_codecdata.mp4").read_bytes())
    i = data.find(b"avcC")
    data[i + 4:i + 40] = rng.integers(0, 256, 36, dtype=np.uint8).tobytes()
    (out / "bad_codecdata.mp4").write_bytes(bytes(data))
    with av.open(str(out / "bad_audioonly.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for k in range(20):
            fr = av.AudioFrame.from_ndarray(rng.normal(0, 0.1, (1, 1024)).astype(np.float32), format="fltp",
                                            layout="mono")
            fr.sample_rate, fr.pts = 16000, k * 1024
            c.mux(s.encode(fr))
        c.mux(s.encode())
    long, _ = pan_shot(rng, 96, 64, 25, 3.0, "rocket")
    write_camera_file(out / "bad_cutoff.mkv", long, Fraction(25))
    data = (out / "bad_cutoff.mkv").read_bytes()
    (out / "bad_cutoff.mkv").write_bytes(data[: int(len(data) * 0.6)])
    names = ["bad_truncated.mp4", "bad_notvideo.mp4", "bad_tooshort.mp4", "bad_codecdata.mp4", "bad_audioonly.mp4",
             "bad_cutoff.mkv"]
    rows += [{"path": n, "caption": "a planted bad file", "licence": "CC0-1.0", "consent": "not applicable",
              "source": "scripts/make_footage_folder.py"} for n in names]
    return names + ["bad_nocaption.mkv"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=100, help="files in all, the 7 planted bad ones included")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 8:
        ap.error("--n must be at least 8 (7 planted bad files and one good one)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for i in range(args.n - 7):
        rng = np.random.default_rng([args.seed, i])
        frames, rate, ext, codec, cap = make_clip(rng, i)
        name = f"clip_{i:03d}{ext}"
        write_camera_file(out / name, frames, rate, codec)
        if i % 5 == 4:
            (out / name).with_suffix(".txt").write_text(cap + "\n")
        else:
            licence = ["CC-BY-4.0", "CC0-1.0", "own work, all rights reserved"][i % 3]
            rows.append({"path": name, "caption": cap, "licence": licence, "consent": "yes" if i % 3 != 1 else "",
                         "source": "scripts/make_footage_folder.py (moviola world / scikit-image photos)"})
    bad = plant_bad_files(out, np.random.default_rng([args.seed, 999]), rows)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {args.n - 7} good videos and {len(bad)} planted bad files to {out}: {', '.join(bad)}")


if __name__ == "__main__":
    main()
