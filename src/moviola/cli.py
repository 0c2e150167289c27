"""The ``moviola`` command line. Each verb is a thin layer over the library; ``--help`` on each.

Errors a user can cause (a bad file, a prompt outside the grammar, an unknown config key) are printed
as one line naming the problem, with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

from moviola.config import ConfigError
from moviola.layout import part_weights, read_config


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT (e.g. 64x64), got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be at least 1, got {text!r}")
    return w, h


def _number(kind, low: float | None = None, high: float | None = None, *, above: bool = False):
    """An argparse type: an int or a finite float within [low, high] (above=True: more than low), named in the
    error argparse prints (``--steps 0`` is refused, not quietly taken as the default)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if above else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else (f"more than {low:.15g}" if above else f"at least {low:.15g}")
            hi = "" if high is None else f"at most {high:.15g}"  # 2**63 - 1 whole, not 9.22337e+18
            raise argparse.ArgumentTypeError(f"must be {' and '.join(x for x in (lo, hi) if x)}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


STEPS = _number(int, 1, 1000)
SEED = _number(int, 0, 2**63 - 1)
THREADS = _number(int, 0, 1024)
COUNT = _number(int, 1)
FPS = _number(float, 0, 240, above=True)
GUIDANCE = _number(float, 0, 50)
SCALE = _number(float, -10, 10)


def progress():
    """A rich progress bar that shows a spinner, count, elapsed and remaining time, on stderr (rich's default
    console is stdout: a terminal's bar had been written into `moviola eval world > report.json`)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False, disable=not sys.stderr.isatty(),
                    console=Console(stderr=True))


# --- world ---------------------------------------------------------------------------------------

WORLD_RENDER_BYTES = 4 * 2**30  # world render keeps the whole clip in memory; past this it says so first


def cmd_world_render(args) -> int:
    import numpy as np

    from moviola.video_io import write_video
    from moviola.world.caption import parse_prompt
    from moviola.world.render import render, render_audio
    from moviola.world.sample import scene_from_prompt

    w, h = args.size
    out = _output(args.output, image_ok=True)
    # checked before anything is rendered or written (a folder there had failed after the video was replaced)
    truth = _output(args.truth, suffixes=(".json",)) if args.truth else None
    if args.audio and out.suffix.lower() == ".png":
        raise ValueError(f"{out}: --audio needs a video output (.mp4, .webm, .mov, .mkv): a PNG has no sound")
    prompt = parse_prompt(args.prompt)
    need = math.ceil(args.seconds * args.fps) * w * h * 3  # bytes of the rendered frames, held whole
    if need > WORLD_RENDER_BYTES:
        raise ValueError(f"{args.seconds:g} s at {args.fps:g} fps and {w}x{h} is {need / 2**30:.1f} GiB of frames, "
                         f"more than the {WORLD_RENDER_BYTES / 2**30:g} GiB a render holds: ask for fewer seconds, "
                         "a lower --fps or a smaller --size")
    spec = scene_from_prompt(prompt, np.random.default_rng(args.seed), width=w, height=h, fps=args.fps,
                             seconds=args.seconds)
    clip = render(spec)
    audio = render_audio(clip.events, spec.seconds) if args.audio else None
    if out.suffix.lower() == ".png":
        from moviola.video_io import write_image

        write_image(out, clip.frames[0])
    else:
        write_video(out, clip.frames, spec.fps, audio=audio,
                    metadata={"comment": f"moviola world render; prompt: {args.prompt}; seed: {args.seed}"})
    if args.truth:
        from moviola.world.truth import clip_truth
        from moviola.video_io import atomic_write_bytes

        atomic_write_bytes(truth, json.dumps(clip_truth(clip), indent=1).encode())
    what = "frame 0 as an image" if out.suffix.lower() == ".png" else f"{clip.frames.shape[0]} frames"
    print(f"wrote {out} ({what}, {w}x{h}, {spec.fps:g} fps)", file=sys.stderr)
    return 0


def cmd_world_dataset(args) -> int:
    from moviola.world.dataset import build_dataset
    from moviola.world.spec import parse_holdout

    holdout = parse_holdout(args.holdout) if args.holdout else []
    sizes = args.size or [(64, 64), (96, 64), (64, 96), (128, 128)]
    if args.min_seconds is None:  # as long as data cache's shortest bucket, unless every clip is to be shorter
        args.min_seconds = min(1.125, args.max_seconds)
        made = Path(args.out_dir) / "dataset.json"  # a folder begun before that default (1.0 s) goes on with its own
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):
            args.min_seconds = min(float(json.loads(made.read_text())["seconds_range"][0]), args.max_seconds)
    if args.min_seconds > args.max_seconds:
        raise ValueError(f"--min-seconds {args.min_seconds:g} is more than --max-seconds {args.max_seconds:g}")
    with progress() as bar:
        task = bar.add_task("rendering", total=args.n)

        def on_clip(i: int, done: int) -> None:
            bar.update(task, completed=done)

        stats = build_dataset(Path(args.out_dir), n=args.n, seed=args.seed, sizes=sizes,
                              fps_choices=args.fps or [8.0], seconds_range=(args.min_seconds, args.max_seconds),
                              holdout=holdout, occlusion_prob=args.occlusion, on_clip=on_clip)
    print(json.dumps(stats))
    return 0


def cmd_score(args) -> int:
    from moviola.world.score import score_file

    report = score_file(args.clip, args.prompt)
    print(json.dumps(report, indent=1))
    return 0


# --- generation -----------------------------------------------------------------------------------

def _model_dir(arg: str | None) -> Path:
    from moviola import DEFAULT_MODEL_DIR

    return Path(arg) if arg else DEFAULT_MODEL_DIR


VIDEO_OUTPUTS = (".mp4", ".webm", ".mov", ".mkv", ".gif")


def _load_pipe(args):
    import torch

    from moviola.pipeline import Pipeline

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(_model_dir(args.model))
    if getattr(args, "lora", None):
        pipe.load_lora(args.lora, scale=args.lora_scale)
    return pipe


def _sampling(args) -> dict:
    return {"steps": args.steps, "guidance": args.guidance, "seed": 0 if args.seed is None else args.seed,
            "negative_prompt": args.negative_prompt, "sampler": args.sampler}


def _provenance(args, pipe, prompt: str, **extra) -> dict:
    """MP4 tags: which model made the clip, from what, with which settings."""
    import time

    return {"comment": "generated by moviola", "moviola_model": str(_model_dir(args.model)),
            "moviola_prompt": prompt, "moviola_negative_prompt": args.negative_prompt,
            "moviola_seed": str(0 if args.seed is None else args.seed),
            "moviola_steps": str(args.steps or pipe.config.steps),
            "moviola_guidance": str(pipe.config.guidance if args.guidance is None else args.guidance),
            "moviola_sampler": args.sampler or pipe.config.sampler,
            **({"moviola_lora": f"{args.lora} (scale {args.lora_scale:g})"} if getattr(args, "lora", None) else {}),
            **{f"moviola_{k}": str(v) for k, v in extra.items()},
            "creation_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _output(path: str, *, image_ok: bool = False, suffixes: tuple[str, ...] | None = None) -> Path:
    """The output path, checked before any work: its extension (one of ``suffixes``, by default the video ones,
    and .png with ``image_ok``), not a directory, in a folder that can be made or written."""
    out = Path(path)
    allowed = suffixes or VIDEO_OUTPUTS + ((".png",) if image_ok else ())
    if out.suffix.lower() not in allowed:
        raise ValueError(f"{out}: output must end in {', '.join(allowed)}")
    if out.is_dir():
        raise ValueError(f"{out}: output is a directory; give a file name")
    parent = next((d for d in out.absolute().parents if d.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{out}: cannot create the output: {parent} is a file, not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: cannot write there: {parent} is not writable")
    return out


def _partial_path(out: Path) -> Path:
    """NAME.partial.EXT, or NAME.partial-2.EXT... when an earlier interrupted run's is there."""
    path, k = out.with_name(f"{out.stem}.partial{out.suffix}"), 2
    while path.exists():
        path, k = out.with_name(f"{out.stem}.partial-{k}{out.suffix}"), k + 1
    return path


def _run(label: str, make, out: Path, fps: float, meta: dict) -> int:
    """Run ``make(callback)`` under a progress bar and write what it returns: frames (T, H, W, 3), or an
    iterator of frame chunks, written to a video file as they come (an interrupted run keeps what it made)."""
    import time

    import numpy as np

    from moviola.video_io import VideoWriter, write_image, write_video

    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(label, total=None)
        result = make(lambda i, n: bar.update(task, completed=i, total=n))
        if isinstance(result, np.ndarray):
            n, shape = len(result), result.shape
            if out.suffix.lower() == ".png":
                write_image(out, result[0])
            else:
                write_video(out, result, fps, metadata=meta)
        elif out.suffix.lower() in (".gif", ".png"):
            frames = np.concatenate(list(result))
            n, shape = len(frames), frames.shape
            write_image(out, frames[0]) if out.suffix.lower() == ".png" else write_video(out, frames, fps, metadata=meta)
        else:
            shape = None
            existed = out.exists()
            with VideoWriter(out, fps, metadata=meta) as writer:
                try:
                    for chunk in result:
                        writer.write(chunk)
                        shape = chunk.shape
                except BaseException as e:
                    # Interrupted or failed: what was made is kept, but never in place of a file that was
                    # there before the run, nor of an earlier run's partial clip.
                    kept = writer.close(keep=True, path=_partial_path(out) if existed else None)
                    how = "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped by an error"
                    if kept is None and writer.frames_written:  # the file itself failed (a full disk)
                        print(f"moviola: {how}; nothing kept (the video could not be written)", file=sys.stderr)
                    elif kept is None:
                        print(f"moviola: {how} before any frame was made", file=sys.stderr)
                    else:
                        note = f" ({out} left as it was)" if existed else ""
                        print(f"moviola: {how}; kept {writer.frames_written} frames in {kept}{note}",
                              file=sys.stderr)
                    raise
            n = writer.frames_written
    took = time.perf_counter() - t0
    what = "1 image" if out.suffix.lower() == ".png" else f"{n} frames"
    print(f"wrote {out} ({what}, {shape[2]}x{shape[1]}, {fps:g} fps) in {took:.2f} s", file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    w, h = args.size
    out = _output(args.output, image_ok=True)
    if args.frames is not None and args.seconds is not None:
        raise ValueError("give --seconds or --frames, not both")
    if args.seconds is None:
        args.seconds = 2.0
    if args.last_image and (args.frames == 1 or (args.frames is None and args.seconds == 0)):
        raise ValueError("--last-image needs a clip to end on it: give --seconds (or --frames) above one frame")
    image = _read_picture(args.image) if args.image else None
    last = _read_picture(args.last_image) if args.last_image else None
    pipe = _load_pipe(args)
    fps = args.fps or pipe.config.fps
    # One frame (a PNG) by the count the clip rounds to: --seconds 0.01 at 8 fps is one frame too.
    one = args.frames == 1 or (args.frames is None and max(1, round(args.seconds * fps)) == 1)
    if one and args.last_image:
        raise ValueError(f"--seconds {args.seconds:g} is one frame at {fps:g} fps: --last-image needs a clip")
    if one and out.suffix.lower() != ".png":
        raise ValueError(f"{out}: a single frame (--seconds 0 or --frames 1; here {args.seconds:g} s at {fps:g} fps) "
                         "is written as an image: use a .png output")
    if out.suffix.lower() == ".png" and not one:
        raise ValueError(f"{out}: a .png holds one frame: add --seconds 0 (or --frames 1)")
    length = {"num_frames": 1} if one else ({"num_frames": args.frames} if args.frames else {"seconds": args.seconds})
    kw = dict(width=w, height=h, fps=fps, **length, **_sampling(args))
    if args.loop:
        if image is not None or last is not None:
            raise ValueError("--loop cannot be combined with --image or --last-image")
        make = lambda cb: pipe.loop(args.prompt, callback=cb, **kw)  # noqa: E731
    elif last is not None:
        asked = args.frames or max(1, round(args.seconds * fps))
        made = min(pipe.window_frames, max(9, 1 + 4 * round((asked - 1) / 4)))  # as image_to_video makes it
        if made != asked and asked <= pipe.window_frames:  # longer: refused below, no promise first
            print(f"moviola: --last-image: making {made} frames ({made / fps:g} s), the nearest length a clip "
                  f"can end on a given image (4k + 1 frames, 9 to {pipe.window_frames}), not {asked}", file=sys.stderr)
        make = lambda cb: pipe.image_to_video(args.prompt, image, last_image=last, callback=cb, **kw)  # noqa: E731
    else:
        make = lambda cb: pipe.stream(args.prompt, image=image, callback=cb, **kw)  # noqa: E731
    meta = _provenance(args, pipe, args.prompt, **({"image": args.image} if args.image else {}),
                       **({"last_image": args.last_image} if args.last_image else {}),
                       **({"loop": "true"} if args.loop else {}))
    return _run("generating", make, out, fps, meta)


def _read_picture(path: str):
    """An image file to condition on, (H, W, 3) uint8; a ValueError naming it if it is under 8 px a side."""
    from moviola.images import IMAGE_DECODE_SIDE
    from moviola.pipeline import MIN_INPUT_SIDE
    from moviola.video_io import read_image

    image = read_image(path, max_side=IMAGE_DECODE_SIDE)
    if min(image.shape[:2]) < MIN_INPUT_SIDE:
        raise ValueError(f"{path}: image is {image.shape[1]}x{image.shape[0]}: too small to condition on "
                         f"({MIN_INPUT_SIDE} px a side at least)")
    return image


def _read_source(path: str, args, pipe, name: str = "video"):
    """A video file as the model takes it: (T, H, W, 3) uint8 at the model's fps, scaled and centre-cropped
    to --size or the trained size nearest its aspect ratio (real footage: any size, rate, codec)."""
    from moviola.pipeline import MIN_INPUT_SIDE
    from moviola.video_io import probe_video, read_video_fitted

    info = probe_video(path)
    if min(info["width"], info["height"]) < MIN_INPUT_SIDE:
        raise ValueError(f"{path}: video is {info['width']}x{info['height']}: too small "
                         f"({MIN_INPUT_SIDE} px a side at least)")
    w, h = args.size or pipe.size_for(info["width"], info["height"])
    frames = read_video_fitted(path, w, h, pipe.config.fps, max_seconds=pipe.config.max_total_seconds)
    return frames, w, h


def cmd_extend(args) -> int:
    out = _output(args.output)
    pipe = _load_pipe(args)
    src, w, h = _read_source(args.input, args, pipe)
    meta = _provenance(args, pipe, args.prompt, source=args.input, extend_seconds=args.seconds,
                       direction="backward" if args.backward else "forward")
    extend = pipe.extend if args.backward else pipe.extend_stream  # forwards: written as it is made
    kw = dict(backward=True) if args.backward else {}
    return _run("extending", lambda cb: extend(src, args.prompt, seconds=args.seconds, width=w, height=h,
                                               callback=cb, **kw, **_sampling(args)),
                out, pipe.config.fps, meta)


def cmd_remix(args) -> int:
    out = _output(args.output)
    if not 0 <= args.strength <= 1:
        raise ValueError(f"--strength must be between 0 and 1, got {args.strength:g}")
    pipe = _load_pipe(args)
    src, w, h = _read_source(args.input, args, pipe)
    meta = _provenance(args, pipe, args.prompt, source=args.input, strength=args.strength)
    return _run("remixing", lambda cb: pipe.remix_stream(src, args.prompt, strength=args.strength, width=w, height=h,
                                                  callback=cb, **_sampling(args)),
                out, pipe.config.fps, meta)


def cmd_connect(args) -> int:
    from moviola.pipeline import TRANSITION_GUIDANCE, TRANSITION_STRENGTH

    strength = TRANSITION_STRENGTH if args.strength is None else args.strength
    if not 0 < strength <= 1:
        raise ValueError(f"--strength must be above 0 and at most 1, got {strength:g}")
    out = _output(args.output)
    pipe = _load_pipe(args)
    a, w, h = _read_source(args.first, args, pipe)
    args.size = (w, h)  # the second clip takes the first one's size
    b, _, _ = _read_source(args.second, args, pipe)
    meta = _provenance(args, pipe, args.prompt, sources=f"{args.first} + {args.second}", transition_seconds=args.seconds,
                       transition_strength=strength)
    meta["moviola_guidance"] = str(TRANSITION_GUIDANCE if args.guidance is None else args.guidance)  # connect's own
    return _run("connecting", lambda cb: pipe.connect(a, b, args.prompt, seconds=args.seconds, width=w, height=h,
                                                      strength=strength, callback=cb, **_sampling(args)),
                out, pipe.config.fps, meta)


def load_board(path: str) -> dict:
    """A storyboard file (TOML): optional seconds, size, transition, seed; [[card]] tables with start (s),
    prompt and an optional image (a path relative to the board). Unknown keys are errors."""
    import tomllib

    from moviola.pipeline import Card

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such storyboard file")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid TOML ({e})") from None
    top = {"seconds", "size", "transition", "seed", "card"}
    unknown = sorted(set(doc) - top)
    if unknown:
        raise ValueError(f"{p}: unknown key {unknown[0]!r} (known: {', '.join(sorted(top))})")
    def check(key: str, value, kinds: tuple, what: str):
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{p}: {key} must be {what}, got {value!r}")
        return value

    raw_cards = doc.get("card", [])
    if isinstance(raw_cards, dict):
        raise ValueError(f"{p}: cards are [[card]] tables (double brackets), one per card")
    check("card", raw_cards, (list,), "a list of [[card]] tables")
    cards = []
    for i, c in enumerate(raw_cards):
        check(f"card {i + 1}", c, (dict,), "a [[card]] table")
        bad = sorted(set(c) - {"start", "prompt", "image"})
        if bad:
            raise ValueError(f"{p}: card {i + 1}: unknown key {bad[0]!r} (known: image, prompt, start)")
        if "start" not in c or "prompt" not in c:
            raise ValueError(f"{p}: card {i + 1} needs start and prompt")
        check(f"card {i + 1}: start", c["start"], (int, float), "a number of seconds")
        check(f"card {i + 1}: prompt", c["prompt"], (str,), "a string")
        if "image" in c:
            check(f"card {i + 1}: image", c["image"], (str,), "a path to an image")
        image = _read_picture(str(p.parent / c["image"])) if c.get("image") else None
        cards.append(Card(start=c["start"], prompt=c["prompt"], image=image))
    if not cards:
        raise ValueError(f"{p}: no cards (add [[card]] tables with start and prompt)")
    try:
        size = _size(check("size", doc["size"], (str,), 'a string like "64x64"')) if "size" in doc else None
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{p}: {e}") from None
    if "seconds" in doc:
        check("seconds", doc["seconds"], (int, float), "a number of seconds")
    if "transition" in doc:
        check("transition", doc["transition"], (str,), '"cut" or "continue"')
    if "seed" in doc and not 0 <= check("seed", doc["seed"], (int,), "a whole number") < 2**63:
        raise ValueError(f"{p}: seed must be from 0 to {2**63 - 1}, got {doc['seed']}")
    return {"cards": cards, "seconds": doc.get("seconds"), "size": size,
            "transition": doc.get("transition", "cut"), "seed": doc.get("seed")}


def cmd_storyboard(args) -> int:
    out = _output(args.output)
    board = load_board(args.board)
    pipe = _load_pipe(args)
    w, h = args.size or board["size"] or (64, 64)
    if args.seed is None:  # --seed wins over the board's, even --seed 0
        args.seed = board["seed"] if board["seed"] is not None else 0
    kw = dict(seconds=board["seconds"], width=w, height=h, transition=board["transition"], **_sampling(args))
    pipe.storyboard(board["cards"], **kw)  # checks the whole board before any work starts
    meta = _provenance(args, pipe, " | ".join(f"{c.start:g}s: {c.prompt}" for c in board["cards"]),
                       storyboard=args.board)
    return _run("storyboard", lambda cb: pipe.storyboard(board["cards"], callback=cb, **kw), out, pipe.config.fps, meta)

def cmd_eval_abilities(args) -> int:
    from moviola.eval.abilities import evaluate_abilities

    res = evaluate_abilities(_model_dir(args.model), n=args.n, steps=args.steps, long_seconds=args.long_seconds,
                             long_n=args.long_n, memory=not args.no_memory)
    print(json.dumps(res, indent=2))
    return 0


def cmd_eval_world(args) -> int:
    from moviola.eval.world import evaluate_world

    with progress() as bar:
        task = bar.add_task("eval world", total=None)
        report = evaluate_world(_model_dir(args.model), n=args.n, steps=args.steps, guidance=args.guidance,
                                seed=args.seed, baselines=not args.no_baselines, lora=Path(args.lora) if args.lora else None,
                                progress=lambda i, n: bar.update(task, completed=i, total=n))
    print(json.dumps(report, indent=1))
    return 0


# --- training -------------------------------------------------------------------------------------

def _overrides(extra: list[str]) -> list[str]:
    """``--optim.lr=3e-4`` or ``--optim.lr 3e-4`` flags -> ["optim.lr=3e-4"]."""
    out, i = [], 0
    while i < len(extra):
        a = extra[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r}; overrides look like --section.key=value")
        if "=" in a:
            out.append(a[2:])
        elif i + 1 < len(extra):
            out.append(f"{a[2:]}={extra[i + 1]}")
            i += 1
        else:
            raise ConfigError(f"override {a!r} has no value")
        i += 1
    return out


def cmd_train_vae(args, extra: list[str]) -> int:
    from moviola.config import load_config
    from moviola.train.vae import TrainVAEConfig, train_vae

    overrides = _overrides(extra)
    if args.out:
        overrides.append(f"out={json.dumps(args.out)}")
    cfg = load_config(TrainVAEConfig, args.config, overrides)
    tty = sys.stderr.isatty()
    with progress() as bar:
        task = bar.add_task("train vae", total=cfg.optim.steps + cfg.decoder.steps)  # both phases

        def on_step(step, total, m):
            bar.update(task, completed=step, total=total, description=f"train vae  loss {m['loss']:.4f}")
            if not tty and (step % max(cfg.log_every, 1) == 0 or step == total):  # logs, CI: plain lines (none had
                print(f"step {step}/{total}  loss {m['loss']:.4f}", file=sys.stderr, flush=True)  # come for 50 min)

        path = train_vae(cfg, on_step=on_step)
    print(f"saved {path}", file=sys.stderr)
    return 0


def cmd_data_check(args) -> int:
    from moviola.data.folder import check_folder

    report = check_folder(args.folder, manifest=args.manifest, min_seconds=args.min_seconds, deep=not args.quick)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        for p in report.problems:
            print(f"skip  {p.path}: {p.problem}")
        d = report.to_dict()
        print(f"{d['usable']} usable clips ({d['seconds']:g} s), {d['skipped']} skipped")
    return 0 if report.clips else 1


def cmd_data_cache(args, extra: list[str]) -> int:
    import torch

    from moviola.config import load_config
    from moviola.data.buckets import check_buckets, parse_buckets
    from moviola.data.folder_cache import FolderCacheConfig, build_folder_cache, vae_fingerprint
    from moviola.models.text import load_text_encoder
    from moviola.models.vae import CausalVAE

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    out = Path(args.out) if args.out else folder.resolve().parent / f"{folder.resolve().name}-cache"
    # The config file, then dotted overrides (--shots.threshold=0.2), then the named flags.
    overrides = _overrides(extra)
    for key, value in (("fps", args.fps), ("min_seconds", args.min_seconds), ("clips_per_shot", args.clips_per_shot),
                       ("shots.threshold", args.shot_threshold)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.shots:
        overrides.append("shots.enabled=true")
    cfg = load_config(FolderCacheConfig, args.config, overrides)
    cfg.buckets = parse_buckets(args.buckets) if args.buckets else check_buckets(cfg.buckets)
    model = _model_dir(args.model)
    if not part_weights(model, "vae").is_file():
        raise FileNotFoundError(f"{model}: no VAE here (pass --model DIR: a model folder or a VAE's own)")
    text_name = args.text_encoder
    if text_name is None:  # a model folder says which text encoder its DiT was trained with; a VAE's own, none
        try:
            text_name = read_config(model, "pipeline").get("text_encoder", "minilm")
        except (FileNotFoundError, ValueError):
            text_name = "minilm"
    vae = CausalVAE.from_pretrained(model)
    text = load_text_encoder(None if text_name == "minilm" else text_name)
    with progress() as bar:
        tasks = {"scan": bar.add_task("decoding files", total=None), "encode": bar.add_task("encoding clips", total=None)}
        summary = build_folder_cache(folder, out, vae, text, cfg, vae_fp=vae_fingerprint(model),
                                     text_encoder_name=text_name, manifest=args.manifest,
                                     on_progress=lambda stage, i, n: bar.update(tasks[stage], completed=i, total=n))
    for p in summary["skipped"]:
        print(f"skip  {p['path']}: {p['problem']}")
    n = sum(summary["clips"].values())
    per = ", ".join(f"{k}: {v}" for k, v in summary["clips"].items())
    print(f"{n} clips ({per}), {len(summary['skipped'])} skipped; {summary['parts_encoded']} parts encoded, "
          f"{summary['parts_reused']} reused; cache at {out}")
    return 0


def cmd_eval_vae(args) -> int:
    from moviola import DEFAULT_MODEL_DIR
    from moviola.eval.vae import evaluate_vae

    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if not part_weights(model, "vae").is_file():
        raise FileNotFoundError(f"{model}: no VAE here (pass --model DIR: a model folder or a VAE's own)")
    print(json.dumps(evaluate_vae(model, n=args.n), indent=1))
    return 0


def cmd_train_dit(args, extra: list[str]) -> int:
    from moviola.config import load_config
    from moviola.train.dit import TrainDiTConfig, train_dit

    overrides = _overrides(extra)
    if args.out:
        overrides.append(f"out={json.dumps(args.out)}")
    if args.vae:
        overrides.append(f"vae={json.dumps(args.vae)}")
    cfg = load_config(TrainDiTConfig, args.config, overrides)
    import os

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    tty = sys.stderr.isatty()
    with progress() as bar:
        cache = bar.add_task("latent cache", total=None, visible=main_rank)
        task = bar.add_task("train dit", total=cfg.optim.steps, visible=main_rank)
        rate = [0.0]

        def on_step(step, total, m):
            # tokens/s smoothed over ~20 steps; the bar's own columns add elapsed time and the ETA
            rate[0] = m["tokens_per_s"] if not rate[0] else 0.95 * rate[0] + 0.05 * m["tokens_per_s"]
            text = f"step {step}/{total}  loss {m['loss']:.4f}  {rate[0]:,.0f} tok/s"
            bar.update(task, completed=step, description=f"train dit  {text}")
            if not tty and (step % max(cfg.log_every, 1) == 0 or step == total):  # logs, CI: plain lines
                print(text, file=sys.stderr, flush=True)

        path = train_dit(cfg, on_step=on_step, on_cache=lambda i, n: bar.update(cache, completed=i, total=n))
    if main_rank:
        print(f"saved {path}", file=sys.stderr)
    return 0


# --- server ---------------------------------------------------------------------------------------

def _server_db(args) -> str:
    from moviola.server.db import sqlite_url

    return args.db or sqlite_url(Path(args.storage) / "moviola.db")


@contextlib.contextmanager
def _database_errors():
    """A database that cannot be opened or used (a bad URL, a locked or foreign file) becomes the ValueError
    that `main` prints as one line, instead of a traceback from deep inside the server."""
    from moviola.server.db import DatabaseError

    import sqlite3

    try:
        yield
    except DatabaseError as e:
        raise ValueError(str(e)) from None
    except sqlite3.DatabaseError as e:  # a file that is not a SQLite database, a damaged one
        raise ValueError(f"the database cannot be used ({e}); is --db a Moviola database?") from None


def _storage_dir(path: str) -> Path:
    """The server's storage folder, made if missing; a ValueError if a file is in the way."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{p}: --storage must be a folder, and a file is in the way") from None
    return p


def _server_extra() -> None:
    """The server's packages (FastAPI, uvicorn) come with an extra: say so, not ModuleNotFoundError's page."""
    import importlib.util

    have = importlib.util.find_spec
    missing = [m for m in ("fastapi", "uvicorn") if have(m) is None]
    if have("python_multipart") is None and have("multipart") is None:
        missing.append("python-multipart")
    if missing:
        raise ValueError(f"the server needs {', '.join(missing)}: pip install -e '.[server]' (or moviola[server])")


def cmd_serve(args) -> int:
    _server_extra()
    from moviola.server.app import ServerConfig, serve

    _storage_dir(args.storage)
    cfg = ServerConfig(storage=args.storage, db=args.db, model=args.model, host=args.host, port=args.port,
                       workers=args.workers, steps=args.steps, poll_after_ms=args.poll_after_ms,
                       ttl_seconds=args.ttl_seconds, lease_seconds=args.lease_seconds, worker_threads=args.threads,
                       max_seconds=args.max_seconds)
    with _database_errors():
        return serve(cfg)


def cmd_worker(args) -> int:
    _server_extra()
    from moviola.server.worker import WorkerConfig, main as worker_main

    _storage_dir(args.storage)
    cfg = WorkerConfig(db=_server_db(args), storage=args.storage, model=args.model, lease_seconds=args.lease_seconds,
                       poll_seconds=args.poll_seconds, ttl_seconds=args.ttl_seconds, threads=args.threads,
                       max_jobs=args.max_jobs, parent_pid=args.parent_pid, nice=args.nice)
    with _database_errors():
        return worker_main(cfg)


def _user() -> str:
    """The operating-system user running the command, for the audit log ("?" where it can't be told)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no USER variable and no password entry (a bare container)
        return "?"


def cmd_keys(args) -> int:
    from moviola.server import keys
    from moviola.server.db import Database

    if not args.db:  # keys live in the database only: a --db leaves the storage folder alone (it had been made)
        if args.keys_verb == "create" or Path(args.storage).exists():
            _storage_dir(args.storage)  # made for a new key; a file in the way is said as such
        if args.keys_verb != "create" and not (Path(args.storage) / "moviola.db").is_file():
            raise ValueError(f"{Path(args.storage) / 'moviola.db'}: no server database there yet (moviola keys "
                             "create, or moviola serve, makes it; or give --db / --storage)")
    with _database_errors():
        db = Database(_server_db(args))
        t0 = time.perf_counter()

        def audit(action: str) -> None:  # the operator's changes to keys, in the log the admin API's go to
            keys.audit(db, key_name=f"cli:{_user()}", action=action, video_id=None, target=args.name, status=200,
                       ms=(time.perf_counter() - t0) * 1000)

        if args.keys_verb == "create":
            token, rec = keys.create_key(db, args.name, quota_seconds_per_day=args.quota_seconds_per_day,
                                         rate_per_minute=args.rate_per_minute, admin=args.admin)
            audit("cli.keys.create")
            print(token)
            print(f"created key {rec['name']!r}; this is the only time it is shown", file=sys.stderr)
        elif args.keys_verb == "list":
            rows = keys.list_keys(db)
            if args.json:
                print(json.dumps(rows, indent=1))
            for r in [] if args.json else rows:
                state = "revoked" if r["revoked_at"] else "active"
                print(f"{r['name']:<24} {r['prefix']}...  {state:<8} admin={str(r['admin']).lower():<5} "
                      f"quota_s/day={r['quota_seconds_per_day']}  rate/min={r['rate_per_minute']}")
        else:
            keys.revoke_key(db, args.name)
            audit("cli.keys.revoke")
            print(f"revoked key {args.name!r}", file=sys.stderr)
    return 0


# --- parser ----------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (a usage block first would bury them); --help shows the usage.
    Subcommands' parsers are of this class too (add_subparsers uses the parent's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moviola", description="Open, self-hostable text-to-video.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    world = sub.add_parser("world", help="the procedural world: render clips and datasets (training data)")
    wsub = world.add_subparsers(dest="world_verb", required=True, metavar="VERB")
    r = wsub.add_parser("render", help="render the world's ground-truth clip for a canonical prompt",
                        description="Render a prompt in the world's grammar (training data and ground truth; "
                                    "never used by generation).")
    r.add_argument("prompt", help='e.g. "a small red circle moves right on a black background"')
    r.add_argument("-o", "--output", required=True, help="output .mp4/.webm/.gif/.png")
    r.add_argument("--size", type=_size, default=(64, 64), help="WxH, multiples of 8 from 32 to 512 (default 64x64)")
    r.add_argument("--fps", type=FPS, default=8.0)
    r.add_argument("--seconds", type=_number(float, 0, 600, above=True), default=2.0,
                   help="up to 600, and at most 4 GiB of frames (default 2; a .png output keeps frame 0)")
    r.add_argument("--seed", type=SEED, default=0, help="initial positions and unspecified sizes")
    r.add_argument("--audio", action="store_true", help="add the bounce sounds as an audio track")
    r.add_argument("--truth", help="also write per-frame ground truth (tracks, events) to this .json file")
    r.set_defaults(func=cmd_world_render)

    d = wsub.add_parser("dataset", help="render N clips plus a captions manifest (streaming, resumable)")
    d.add_argument("out_dir")
    d.add_argument("--n", type=COUNT, required=True)
    d.add_argument("--size", type=_size, action="append", help="WxH; repeat for several (default: 64x64 96x64 64x96 128x128)")
    d.add_argument("--fps", type=FPS, action="append", help="frame rate(s) to draw from (default 8)")
    # 1.125 s: 9 frames at 8 fps, the shortest default bucket of `data cache` (at 1.0 s the shortest clips were
    # refused as too short by `data check` and skipped by `data cache`)
    d.add_argument("--min-seconds", type=_number(float, 0, 600, above=True), default=None,
                   help="shortest clip (default 1.125, what data cache's shortest bucket takes at 8 fps, or "
                        "--max-seconds if less)")
    d.add_argument("--max-seconds", type=_number(float, 0, 600, above=True), default=4.0, help="longest clip")
    d.add_argument("--occlusion", type=_number(float, 0, 1), default=0.1, help="probability of an occlusion scene")
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument("--holdout", default="", help='attribute combinations never shown, e.g. "purple+triangle,circle+grows"')
    d.set_defaults(func=cmd_world_dataset)

    train = sub.add_parser("train", help="train models (config file plus --section.key=value overrides)")
    tsub = train.add_subparsers(dest="train_verb", required=True, metavar="MODEL")
    tv = tsub.add_parser("vae", help="train the causal video autoencoder",
                         description="Train the VAE. Extra flags are dotted config overrides, e.g. "
                                     "--optim.steps=4000 --data.sizes='[[64,64]]'. Rerun to resume.")
    tv.add_argument("--config", help="TOML config (e.g. configs/vae/default.toml)")
    tv.add_argument("--out", help="run folder (checkpoints, logs, model); overrides the config's 'out'")
    tv.set_defaults(func=cmd_train_vae, takes_extra=True)
    td = tsub.add_parser("dit", help="train the text-to-video diffusion transformer (world clips, or a "
                                     "footage cache with --data.cache_dir)",
                         description="Builds a latent cache (resumable), then trains. Extra flags are dotted "
                                     "config overrides, e.g. --optim.steps=6000. Rerun to resume.")
    td.add_argument("--config", help="TOML config (e.g. configs/dit/default.toml)")
    td.add_argument("--out", help="run folder; overrides the config's 'out'")
    td.add_argument("--vae", help="folder with the trained vae.safetensors (default: the shipped model)")
    td.epilog = ("Fine-tune with --init_from=default (or a model folder) and --lora.rank=8. Several processes: "
                 "torchrun --nproc_per_node=N -m moviola.cli train dit ... (DDP; --parallel=fsdp on GPUs).")
    td.set_defaults(func=cmd_train_dit, takes_extra=True)

    def sampling_flags(q, size_default=None, board: bool = False):
        q.add_argument("-o", "--output", required=True, help="output .mp4/.webm/.mov/.mkv/.gif"
                       + (" (.png for a still: --seconds 0 or --frames 1)" if q.prog.endswith("generate") else ""))
        q.add_argument("--size", type=_size, default=size_default,
                       help="WxH (default: " + ("64x64" if size_default else "the board's size, else 64x64" if board
                                                else "the trained size nearest the input's aspect ratio") + ")")
        q.add_argument("--steps", type=STEPS, help="sampler steps (default: the model's)")
        q.add_argument("--guidance", type=GUIDANCE, help="classifier-free guidance scale (1 = off)")
        q.add_argument("--seed", type=SEED, default=None,
                       help="noise seed (default: " + ("the board's seed if it has one, else 0)" if board else "0)"))
        q.add_argument("--sampler", help="euler, heun, dpm++ or unipc (default: the model's)")
        q.add_argument("--negative-prompt", default="", help="what the unconditional pass steers away from")
        q.add_argument("--model", help="model folder (default: the shipped model)")
        q.add_argument("--lora", help="a LoRA adapter to apply (folder with lora.safetensors + lora.json)")
        q.add_argument("--lora-scale", type=SCALE, default=1.0, help="strength of the adapter (default 1)")
        q.add_argument("--threads", type=THREADS, default=0, help="CPU threads (default: torch's)")

    g = sub.add_parser("generate", help="generate a video (or an image) from a prompt with a trained model "
                                        "(default: the shipped one)")
    g.add_argument("prompt")
    sampling_flags(g, (64, 64))
    g.add_argument("--seconds", type=_number(float, 0), default=None,
                   help="duration (default 2; longer than the model's window is made window by window, up to "
                        "its max_total_seconds, and written as it is made; 0 = one image, as .png)")
    g.add_argument("--frames", type=COUNT, help="number of frames instead of --seconds (1 = an image, as .png)")
    g.add_argument("--fps", type=FPS, help="playback frame rate (default: the model's)")
    g.add_argument("--image", help="an image to start from (image-to-video): frame 0 is this image")
    g.add_argument("--last-image", help="an image to end on (with or without --image): the clip is at most one "
                                        "window, its length rounded to 4k + 1 frames")
    g.add_argument("--loop", action="store_true", help="a seamless loop: the last frame leads into the first")
    g.set_defaults(func=cmd_generate)

    x = sub.add_parser("extend", help="continue a video forwards (or backwards) in time with a prompt")
    x.add_argument("input", help="the video to extend (any size, frame rate and codec PyAV reads)")
    x.add_argument("prompt")
    x.add_argument("--seconds", type=_number(float, 0, above=True), default=2.0, help="how much to add (default 2)")
    x.add_argument("--backward", action="store_true", help="add before the clip instead of after it")
    sampling_flags(x)
    x.set_defaults(func=cmd_extend)

    r = sub.add_parser("remix", help="video to video: remake a clip under a new prompt")
    r.add_argument("input", help="the video to remix")
    r.add_argument("prompt")
    r.add_argument("--strength", type=float, default=0.6,
                   help="0 keeps the clip, 1 ignores it (default 0.6)")
    sampling_flags(r)
    r.set_defaults(func=cmd_remix)

    c = sub.add_parser("connect", help="join two videos with a generated transition (guided at 1 unless "
                                       "--guidance says otherwise)")
    c.add_argument("first")
    c.add_argument("second")
    c.add_argument("prompt")
    c.add_argument("--seconds", type=_number(float, 0, above=True), default=1.0,
                   help="length of the transition (default 1)")
    c.add_argument("--strength", type=float, default=None,
                   help="above 0 to 1: 1 samples the transition from noise, lower starts it from a cross-fade "
                        "of the two clips (default 0.35)")
    sampling_flags(c)
    c.set_defaults(func=cmd_connect)

    sb = sub.add_parser("storyboard", help="one continuous clip from a storyboard TOML of timed prompt cards")
    sb.add_argument("board", help="TOML: seconds, size, transition ('cut' or 'continue'), seed, and [[card]] "
                                  "tables with start, prompt and an optional image")
    sampling_flags(sb, board=True)
    sb.set_defaults(func=cmd_storyboard)

    ev = sub.add_parser("eval", help="evaluate models")
    esub = ev.add_subparsers(dest="eval_verb", required=True, metavar="MODEL")
    evv = esub.add_parser("vae", help="VAE: PSNR/SSIM on held-out world and photo clips, speed, streaming memory")
    evv.add_argument("--model", help="model folder (default: the shipped model)")
    evv.add_argument("--n", type=COUNT, default=16, help="held-out world clips (photo clips: n/2, at least 3)")
    evv.set_defaults(func=cmd_eval_vae)
    evw = esub.add_parser("world", help="prompt adherence: generate for held-in and held-out prompts and score them")
    evw.add_argument("--model", help="model folder (default: the shipped model)")
    evw.add_argument("--n", type=COUNT, default=48, help="held-in prompts (held-out: n/2)")
    evw.add_argument("--steps", type=STEPS)
    evw.add_argument("--guidance", type=GUIDANCE)
    evw.add_argument("--seed", type=SEED, default=0, help="noise seed of the first prompt's clip (the i-th: seed + i); "
                     "the prompts stay the same, so runs with other seeds measure the sampling noise")
    evw.add_argument("--no-baselines", action="store_true", help="skip the renderer, autoencoder and random-weights rows")
    evw.add_argument("--lora", help="a LoRA adapter folder to apply to the model (as generate --lora)")
    evw.set_defaults(func=cmd_eval_world)
    eva = esub.add_parser("abilities", help="image-to-video, extend, connect, loop, storyboard and long videos "
                                             "against their targets (seams, given frames, drift, memory)")
    eva.add_argument("--model", help="model folder (default: the shipped model)")
    eva.add_argument("--n", type=COUNT, default=8, help="clips per ability")
    eva.add_argument("--steps", type=STEPS)
    eva.add_argument("--long-seconds", type=_number(float, 8, above=True), default=60.0,
                     help="length of the long clips (more than 8: their first and last 8 s are compared)")
    eva.add_argument("--long-n", type=_number(int, 0), default=2, help="long clips scored for drift (0: none)")
    eva.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    eva.set_defaults(func=cmd_eval_abilities)

    data = sub.add_parser("data", help="your own footage: check a folder of captioned videos, cache it")
    dsub = data.add_subparsers(dest="data_verb", required=True, metavar="VERB")
    dc = dsub.add_parser("check", help="validate every video and caption in a folder; list each problem with its file")
    dc.add_argument("folder")
    dc.add_argument("--manifest", help="JSONL or CSV manifest (default: FOLDER/manifest.jsonl or .csv, else sidecar .txt)")
    dc.add_argument("--min-seconds", type=_number(float, 0, 3600), default=None,
                    help="shortest usable clip (default: what the cache's shortest default bucket needs, 1 s plus one source frame)")
    dc.add_argument("--json", action="store_true", help="print the full report as JSON")
    dc.add_argument("--quick", action="store_true", help="open each file and decode one frame only (faster; misses "
                                                         "files cut off mid-way, which 'data cache' then skips)")
    dc.set_defaults(func=cmd_data_check)
    dk = dsub.add_parser("cache", help="encode every clip to VAE latents and every caption to text embeddings, once",
                         description="Check the folder, split it into clips (optionally at scene cuts), fit each "
                                     "to a bucket and encode it. Resumable: rerun the same command after an "
                                     "interruption; done parts are kept.")
    dk.add_argument("folder")
    dk.add_argument("--config", help="TOML config of FolderCacheConfig (e.g. configs/data/footage.toml); other "
                                     "flags and dotted overrides (--shots.min_shot_seconds=1) apply on top")
    dk.add_argument("--out", help="cache folder (default: FOLDER-cache beside the folder)")
    dk.add_argument("--model", help="model folder (its VAE and the text encoder its config names) or a VAE's "
                                    "own folder; default: the shipped model")
    dk.add_argument("--text-encoder", help="minilm or a local T5/CLIP folder (default: the model's)")
    dk.add_argument("--buckets", help="bucket file (.toml/.json: [{width, height, frames, batch_size, weight}]) or "
                                      "inline WxHxFRAMES[:BATCH[:WEIGHT]],... (default: 64x64, 96x64, 64x96, 112x48 "
                                      "at 17 and 9 frames)")
    dk.add_argument("--fps", type=FPS, help="frame rate clips are sampled at (default 8)")
    dk.add_argument("--shots", action="store_true", help="split videos at scene cuts first")
    dk.add_argument("--shot-threshold", type=_number(float, 0, 1), help="minimum change score of a cut, 0..1 (default 0.1)")
    dk.add_argument("--clips-per-shot", type=COUNT, help="up to this many clips from one long shot (default 1)")
    dk.add_argument("--manifest", help="JSONL or CSV manifest (default: FOLDER/manifest.jsonl or .csv)")
    dk.add_argument("--min-seconds", type=_number(float, 0), help="shortest usable file (default 0.5)")
    dk.add_argument("--threads", type=THREADS, default=0, help="CPU threads (default: torch's)")
    dk.set_defaults(func=cmd_data_cache, takes_extra=True)

    s = sub.add_parser("score", help="score a clip against a prompt with the world scorer (JSON on stdout)")
    s.add_argument("clip", help="a video file (mp4/webm/gif/...) or an image (png/jpg/webp/bmp/tiff)")
    s.add_argument("prompt")
    s.set_defaults(func=cmd_score)

    def _store(q):
        q.add_argument("--storage", default="moviola-data", help="folder for videos, uploads and the default "
                                                                  "SQLite database (default: ./moviola-data)")
        q.add_argument("--db", help="database URL: sqlite:///PATH or postgresql://USER:PW@HOST/DB "
                                    "(default: sqlite:///STORAGE/moviola.db)")

    sv = sub.add_parser("serve", help="the Videos API (OpenAI SDK compatible) and the web studio, with workers",
                        description="Serve OpenAI's Videos API under /v1 and the studio at /. Make a key first "
                                    "with `moviola keys create --name NAME`.")
    _store(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=_number(int, 1, 65535), default=8000)
    sv.add_argument("--model", help="model folder (default: the shipped model)")
    sv.add_argument("--workers", type=_number(int, 0, 64), default=1, help="worker processes to start here (0: API only)")
    sv.add_argument("--steps", type=STEPS, help="sampler steps for every job (default: the model's)")
    sv.add_argument("--poll-after-ms", type=_number(int, 1, 600_000), default=1000, help="the openai-poll-after-ms header")
    sv.add_argument("--ttl-seconds", type=_number(float, 0), default=86400.0, help="completed videos expire after this (0: never)")
    sv.add_argument("--max-seconds", type=_number(float, 0, above=True), default=60.0,
                    help="the longest video a request may ask for (default 60; capped by the model's)")
    sv.add_argument("--lease-seconds", type=_number(float, 1), default=30.0, help="job lease of the workers started here")
    sv.add_argument("--threads", type=THREADS, default=0, help="CPU threads per worker (default: torch's)")
    sv.set_defaults(func=cmd_serve)

    wk = sub.add_parser("worker", help="claim and run generation jobs from the server's database",
                        description="Any number of workers, on any machines sharing --db and --storage, share one "
                                    "queue. SIGTERM gives the running job back to the queue.")
    _store(wk)
    wk.add_argument("--model", help="model folder (default: the shipped model)")
    wk.add_argument("--lease-seconds", type=_number(float, 1), default=30.0, help="a job held longer without a heartbeat is "
                                                                       "taken over by another worker")
    wk.add_argument("--poll-seconds", type=_number(float, 0.01, 3600), default=0.5, help="wait between looks at an empty queue")
    wk.add_argument("--ttl-seconds", type=_number(float, 0), default=86400.0, help="completed videos expire after this (0: never)")
    wk.add_argument("--threads", type=THREADS, default=0, help="CPU threads (default: torch's)")
    wk.add_argument("--max-jobs", type=_number(int, 0), default=0, help="exit after this many jobs (0: never)")
    wk.add_argument("--nice", type=_number(int, 0, 19), default=10, help="added scheduling niceness, so an API on the same "
                                                         "machine answers first (default 10; 0: none)")
    wk.add_argument("--parent-pid", type=_number(int, 0), default=0, help="stop (giving the job back) when this process is "
                                                              "gone; `moviola serve` sets it for its workers")
    wk.set_defaults(func=cmd_worker)

    ky = sub.add_parser("keys", help="API keys of the server: create, list, revoke")
    ksub = ky.add_subparsers(dest="keys_verb", required=True, metavar="VERB")
    kc = ksub.add_parser("create", help="make a key and print it (shown only once; stored hashed)")
    _store(kc)
    kc.add_argument("--name", required=True)
    kc.add_argument("--quota-seconds-per-day", type=_number(float, 0, above=True), help="seconds of video per rolling 24 h")
    kc.add_argument("--rate-per-minute", type=_number(int, 1), help="video-creating requests per minute")
    kc.add_argument("--admin", action="store_true", help="may manage keys and read the audit log via /v1/admin")
    kl = ksub.add_parser("list", help="list keys (never the keys themselves)")
    _store(kl)
    kl.add_argument("--json", action="store_true")
    kr = ksub.add_parser("revoke", help="revoke a key by name; it fails from its next request on")
    _store(kr)
    kr.add_argument("name")
    ky.set_defaults(func=cmd_keys)
    return p


def main(argv: list[str] | None = None) -> int:
    """The console entry point: exit status 0 on success, 2 for an error the user can fix (one line on
    stderr), 130 when interrupted, at any point, start-up's imports included."""
    import signal

    def stop(signum, frame):  # `kill`, `timeout`, a closed terminal: the same as Ctrl-C (what was made is kept)
        raise KeyboardInterrupt

    before = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            try:
                current = signal.getsignal(sig)
                if current in (signal.SIG_IGN, None):  # `nohup` ignores SIGHUP: keep it so
                    continue
                before[sig] = signal.signal(sig, stop)  # `serve` and `worker` set their own on top
            except ValueError:  # not the main thread (an embedding program): leave signals alone
                break
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("moviola: interrupted", file=sys.stderr)
        return 130
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _one_line_notes() -> None:
    """Moviola's own notes to the user (moviola.models.text.PromptTruncated: a prompt longer than the encoder
    reads) as one line each, not Python's warning with its file and source line."""
    import warnings

    default = warnings.showwarning
    if getattr(default, "moviola", False):  # already in place (main called again in one process)
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ == "PromptTruncated":
            print(f"moviola: note: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.moviola = True
    warnings.showwarning = show


def _main(argv: list[str] | None) -> int:
    from moviola.video_io import VideoError  # imports av and numpy: a Ctrl-C here is main's to report
    from moviola.world.caption import PromptError
    from moviola.world.spec import SpecError

    args, extra = build_parser().parse_known_args(argv)
    _one_line_notes()
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra) or 0
        if extra:
            build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args) or 0
    except (VideoError, PromptError, SpecError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"moviola: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine said no (permissions, a full disk, a read-only place): one line, which file
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"moviola: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
