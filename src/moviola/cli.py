"""The ``moviola`` command line. Each verb is a thin layer over the library; ``--help`` on each.

Errors a user can cause (a bad file, a prompt outside the grammar, an unknown config key) are printed
as one line naming the problem, with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moviola.config import ConfigError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT (e.g. 64x64), got {text!r}") from None
    return w, h


def progress():
    """A rich progress bar that shows a spinner, count, elapsed and remaining time."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False, disable=not sys.stderr.isatty())


# --- world ---------------------------------------------------------------------------------------

def cmd_world_render(args) -> int:
    import numpy as np

    from moviola.video_io import write_video
    from moviola.world.caption import parse_prompt
    from moviola.world.render import render, render_audio
    from moviola.world.sample import scene_from_prompt

    w, h = args.size
    prompt = parse_prompt(args.prompt)
    spec = scene_from_prompt(prompt, np.random.default_rng(args.seed), width=w, height=h, fps=args.fps,
                             seconds=args.seconds)
    clip = render(spec)
    audio = render_audio(clip.events, spec.seconds) if args.audio else None
    out = Path(args.output)
    if out.suffix.lower() == ".png":
        from moviola.video_io import write_image

        write_image(out, clip.frames[0])
    else:
        write_video(out, clip.frames, spec.fps, audio=audio,
                    metadata={"comment": f"moviola world render; prompt: {args.prompt}; seed: {args.seed}"})
    if args.truth:
        from moviola.world.truth import clip_truth
        from moviola.video_io import atomic_write_bytes

        atomic_write_bytes(Path(args.truth), json.dumps(clip_truth(clip), indent=1).encode())
    print(f"wrote {out} ({clip.frames.shape[0]} frames, {w}x{h}, {spec.fps:g} fps)", file=sys.stderr)
    return 0


def cmd_world_dataset(args) -> int:
    from moviola.world.dataset import build_dataset
    from moviola.world.spec import parse_holdout

    holdout = parse_holdout(args.holdout) if args.holdout else []
    sizes = args.size or [(64, 64), (96, 64), (64, 96), (128, 128)]
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
    with progress() as bar:
        task = bar.add_task("train vae", total=cfg.optim.steps)

        def on_step(step, total, m):
            bar.update(task, completed=step, description=f"train vae  loss {m['loss']:.4f}")

        path = train_vae(cfg, on_step=on_step)
    print(f"saved {path}", file=sys.stderr)
    return 0


def cmd_eval_vae(args) -> int:
    from moviola import DEFAULT_MODEL_DIR
    from moviola.eval.vae import evaluate_vae

    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    if not (model / "vae.safetensors").is_file():
        raise FileNotFoundError(f"{model}: no vae.safetensors here (pass --model DIR)")
    print(json.dumps(evaluate_vae(model, n=args.n), indent=1))
    return 0


# --- parser ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moviola", description="Open, self-hostable text-to-video.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    world = sub.add_parser("world", help="the procedural world: render clips and datasets (training data)")
    wsub = world.add_subparsers(dest="world_verb", required=True, metavar="VERB")
    r = wsub.add_parser("render", help="render the world's ground-truth clip for a canonical prompt",
                        description="Render a prompt in the world's grammar (training data and ground truth; "
                                    "never used by generation).")
    r.add_argument("prompt", help='e.g. "a small red circle moves right on a black background"')
    r.add_argument("-o", "--output", required=True, help="output .mp4/.webm/.gif/.png")
    r.add_argument("--size", type=_size, default=(64, 64), help="WxH, multiples of 8 from 32 to 512 (default 64x64)")
    r.add_argument("--fps", type=float, default=8.0)
    r.add_argument("--seconds", type=float, default=2.0)
    r.add_argument("--seed", type=int, default=0, help="initial positions and unspecified sizes")
    r.add_argument("--audio", action="store_true", help="add the bounce sounds as an audio track")
    r.add_argument("--truth", help="also write per-frame ground truth (tracks, events) as JSON here")
    r.set_defaults(func=cmd_world_render)

    d = wsub.add_parser("dataset", help="render N clips plus a captions manifest (streaming, resumable)")
    d.add_argument("out_dir")
    d.add_argument("--n", type=int, required=True)
    d.add_argument("--size", type=_size, action="append", help="WxH; repeat for several (default: 64x64 96x64 64x96 128x128)")
    d.add_argument("--fps", type=float, action="append", help="frame rate(s) to draw from (default 8)")
    d.add_argument("--min-seconds", type=float, default=1.0)
    d.add_argument("--max-seconds", type=float, default=4.0)
    d.add_argument("--occlusion", type=float, default=0.1, help="probability of an occlusion scene")
    d.add_argument("--seed", type=int, default=0)
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

    ev = sub.add_parser("eval", help="evaluate models")
    esub = ev.add_subparsers(dest="eval_verb", required=True, metavar="MODEL")
    evv = esub.add_parser("vae", help="VAE: PSNR/SSIM on held-out world and photo clips, speed, streaming memory")
    evv.add_argument("--model", help="model folder (default: the shipped model)")
    evv.add_argument("--n", type=int, default=16, help="held-out world clips (photo clips: n/2)")
    evv.set_defaults(func=cmd_eval_vae)

    s = sub.add_parser("score", help="score a clip against a prompt with the world scorer (JSON on stdout)")
    s.add_argument("clip", help="a video file (mp4/webm/gif/...) or a PNG")
    s.add_argument("prompt")
    s.set_defaults(func=cmd_score)
    return p


def main(argv: list[str] | None = None) -> int:
    from moviola.video_io import VideoError
    from moviola.world.caption import PromptError
    from moviola.world.spec import SpecError

    args, extra = build_parser().parse_known_args(argv)
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra) or 0
        if extra:
            build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args) or 0
    except (VideoError, PromptError, SpecError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"moviola: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moviola: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
