"""Teach the shipped model a new colour with LoRA, and measure it: pink pixels before and after.

    python benchmarks/lora_pink.py                                   # train (resumable) + measure
    python benchmarks/lora_pink.py --skip-train --out runs/lora-pink # measure an existing adapter
    python benchmarks/lora_pink.py lora.rank=0 optim.lr=1e-4        # a full fine-tune instead (rows still "lora")

Pink (240, 110, 170) is not in WORLD.md's palette, so the default model has never seen it. The run
fine-tunes a LoRA adapter on world clips that include pink (``configs/dit/lora_pink.toml``), then
generates 64x64 2 s clips for "a ... pink ..." prompts and several seeds with the base model and with
the adapter, and reports:
  * each at its own sampler defaults: the base model's guidance, and the adapter's (``[sampling]`` of its
    config, saved in lora.json: what ``generate --lora`` uses), and the adapter at the base's guidance too;
  * pink pixel fraction: pixels within RGB distance ``--tol`` of (240, 110, 170), over all frames;
  * the world scorer's attributes on the same clips (pink known to it only inside ``extra_colors``);
  * the scorer's attributes on the 8 fixed non-pink prompts of ``train.dit.EVAL_PROMPTS``, so a LoRA
    that damaged what the base knew would show;
  * the renderer's own clips for the pink prompts, the ceiling of the pink fraction, and the same clips
    through the autoencoder, scored: the ceiling of every attribute (the VAE shifts some of pink's edge
    pixels to within the scorer's core distance of purple, which it then counts as an extra object);
  * with ``--world-n N``, ``moviola eval world``'s held-in and held-out figures for the base and the
    adapter on the same N (N / 2) prompts: the check that the adapter kept what the base knew (the
    8-prompt row above is too small to say "no worse").
The report is printed and written to OUT/pink_report.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PINK = (240, 110, 170)
PINK_PROMPTS = [
    "a large pink circle stays still on a black background",
    "a large pink square moves right on a gray background",
    "a large pink circle bounces on a navy background",
    "a large pink square spins on a black background",
    "a large pink triangle falls on a white background",
    "a small pink circle moves left while a large blue square stays still on a gray background",
]
ATTRS = ("background", "count", "color", "shape", "size", "motion")


def _tally(attrs: dict[str, list], report: dict) -> None:
    """Append a score_clip report's attributes (those it scored) to per-attribute lists."""
    for a in ATTRS:
        if report["attributes"].get(a) is not None:
            attrs[a].append(report["attributes"][a])


def _means(attrs: dict[str, list]) -> dict[str, float]:
    return {a: float(np.mean(v)) for a, v in attrs.items() if v}


def measure(pipe, prompts: list[str], seeds: list[int], tol: float, steps: int | None = None,
            guidance: float | None = None) -> dict:
    """Pink fraction and scorer attributes (means over prompts x seeds) of generated 64x64 2 s clips, at the
    pipeline's own guidance (the adapter's while one is applied) unless ``guidance`` is given."""
    from moviola.world.extra import color_fraction, extra_colors
    from moviola.world.score import score_clip

    fracs, overall, attrs = [], [], {a: [] for a in ATTRS}
    for p in prompts:
        for s in seeds:
            frames = pipe(p, width=64, height=64, seconds=2, seed=s, steps=steps, guidance=guidance)
            fracs.append(color_fraction(frames, PINK, tol))
            with extra_colors("pink"):
                rep = score_clip(frames, p, fps=pipe.config.fps)
            overall.append(rep["overall"])
            _tally(attrs, rep)
    return {"guidance": pipe.config.guidance if guidance is None else guidance,
            "pink_fraction": float(np.mean(fracs)), "pink_fraction_min": float(np.min(fracs)),
            "overall": float(np.mean(overall)), **_means(attrs)}


def rendered(prompts: list[str], seeds: list[int], tol: float, pipe=None) -> dict:
    """The renderer's own clips for the prompts (the most pink a perfect model would show), and with ``pipe``
    the same clips through its autoencoder (encode, decode): the pink fraction and scorer attributes a
    perfect DiT could reach through that VAE, the ceiling of the adapter's rows."""
    from moviola.world.caption import parse_prompt
    from moviola.world.extra import color_fraction, extra_colors
    from moviola.world.render import render
    from moviola.world.sample import scene_from_prompt
    from moviola.world.score import score_clip

    fr, rec_fr, attrs = [], [], {a: [] for a in ATTRS}
    with extra_colors("pink"):
        for p in prompts:
            for s in seeds:
                spec = scene_from_prompt(parse_prompt(p), np.random.default_rng(s))
                frames = render(spec).frames
                fr.append(color_fraction(frames, PINK, tol))
                if pipe is None:
                    continue
                # the VAE takes 1 + 4k frames: the first frame repeated in front (encoded on its own), then dropped
                pad = (1 - len(frames)) % 4
                padded = np.concatenate([np.repeat(frames[:1], pad, axis=0), frames])
                rec = pipe.decode_frames(pipe.encode_frames(padded))[pad:]
                rec_fr.append(color_fraction(rec, PINK, tol))
                _tally(attrs, score_clip(rec, p, fps=spec.fps))
    out = {"renderer": {"pink_fraction": float(np.mean(fr))}}
    if pipe is not None:
        out["renderer_through_vae"] = {"pink_fraction": float(np.mean(rec_fr)), **_means(attrs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/dit/lora_pink.toml")
    ap.add_argument("--out", help="run folder (default: the config's)")
    ap.add_argument("--skip-train", action="store_true", help="measure OUT/lora as it is")
    ap.add_argument("--seeds", type=int, default=6, help="seeds per prompt (3 moves an attribute 5.6 points a clip)")
    ap.add_argument("--tol", type=float, default=60.0, help="RGB distance counted as pink")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--world-n", type=int, default=0, help="also run eval world on N held-in prompts, base vs adapter")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. optim.steps=200)")
    args = ap.parse_args()

    import torch

    from moviola.config import load_config
    from moviola.pipeline import Pipeline
    from moviola.train.dit import EVAL_PROMPTS, TrainDiTConfig, init_dir, train_dit

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"out={json.dumps(args.out)}"] if args.out else [])
    cfg = load_config(TrainDiTConfig, args.config, overrides)
    out = Path(cfg.out)
    t0 = time.time()
    adapter = (out / ("model" if cfg.lora.rank == 0 or cfg.lora.merge else "lora") if args.skip_train
               else train_dit(cfg))
    train_min = (time.time() - t0) / 60
    seeds = list(range(100, 100 + args.seeds))
    pipe = Pipeline.from_pretrained(init_dir(cfg))
    rows = {"base": measure(pipe, PINK_PROMPTS, seeds, args.tol),
            "base_world_prompts": measure(pipe, EVAL_PROMPTS, seeds[:1], args.tol)}
    base_guidance = pipe.config.guidance
    tuned = not (adapter / "lora.json").is_file()  # a full fine-tune ([lora] rank 0) or a merged adapter: a model
    if tuned:
        pipe = Pipeline.from_pretrained(adapter)
    else:
        pipe.load_lora(adapter)  # with the adapter's own sampler defaults (its run's [sampling]), as generate --lora
    rows["lora"] = measure(pipe, PINK_PROMPTS, seeds, args.tol)
    rows["lora_world_prompts"] = measure(pipe, EVAL_PROMPTS, seeds[:1], args.tol)
    if pipe.config.guidance != base_guidance:  # and at the base's guidance, the like-for-like comparison
        rows["lora_at_base_guidance"] = measure(pipe, PINK_PROMPTS, seeds, args.tol, guidance=base_guidance)
    rows.update(rendered(PINK_PROMPTS, seeds, args.tol, pipe))
    world = {}
    if args.world_n:
        from moviola.eval.world import evaluate_world
        from moviola.pipeline import training_captions

        seen = training_captions(adapter)  # the adapter's captions, kept out of both prompt lists
        for name, model, lora in (("base", init_dir(cfg), None),
                                  ("lora", adapter, None) if tuned else ("lora", init_dir(cfg), adapter)):
            r = evaluate_world(model, args.world_n, baselines=False, lora=lora, exclude=seen)
            world[name] = {k: r[k]["model"] for k in ("held_in", "held_out")}
    report = {"adapter": str(adapter), "train_minutes": None if args.skip_train else round(train_min, 1),
              "steps": cfg.optim.steps, "batch_size": cfg.optim.batch_size, "lora": vars(cfg.lora) | {},
              "prompts": PINK_PROMPTS, "seeds": seeds, "tol": args.tol, "results": rows,
              **({"eval_world": world} if world else {})}
    (out / "pink_report.json").write_text(json.dumps(report, indent=1))
    keys = ["pink_fraction", "overall"] + list(ATTRS)
    print(f"{'':<22}{'guidance':>9}" + "".join(f"{k[:13]:>14}" for k in keys))
    for name, r in rows.items():
        g = f"{r['guidance']:g}" if "guidance" in r else "-"
        print(f"{name:<22}{g:>9}" + "".join(f"{100 * r[k]:>13.2f}%" if k in r else f"{'-':>14}" for k in keys))
    for name, sets in world.items():  # eval world rows are already in percent
        for split, r in sets.items():
            print(f"{'world ' + name + ' ' + split:<26}" + "  ".join(f"{k} {r[k]:.1f}" for k in ("overall",) + ATTRS))
    print(f"report: {out / 'pink_report.json'}")


if __name__ == "__main__":
    main()
