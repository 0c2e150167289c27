"""Prompt adherence on the world: generate clips for prompts, score them with the world scorer.

    moviola eval world [--n 48] [--model DIR]

Prompts come from scenes drawn with a seed the trainer never uses, captioned canonically; any prompt that
is verbatim a training caption (the model folder's ``training_captions.json``) is skipped. Held-in
prompts use no held-out combination; held-out prompts contain at least one object with a combination the
training data never showed (purple triangle, orange circle, cyan square, growing circle, falling square,
triangle moving up). Beside the model, the same prompts are scored on the renderer's own clips (the
scorer's ceiling, should be 100), on those clips through the model's autoencoder (encoded and decoded: the
most a perfect diffusion model could reach in this latent space) and on a model with random weights (the
floor, near chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moviola.world.spec import DEFAULT_HOLDOUT, combination_matches

ATTRS = ("background", "count", "color", "shape", "size", "motion")


def eval_prompts(n: int, *, held_out: bool, seed: int = 424242, exclude: set[str] = frozenset(),
                 seconds: float = 2.0, size: tuple[int, int] = (64, 64)) -> list[tuple[str, object]]:
    """(prompt, spec) pairs at the evaluation size; held-out ones contain a held-out combination."""
    from moviola.world.caption import caption
    from moviola.world.sample import sample_scene

    out, i = [], 0
    while len(out) < n and i < 100 * n:
        rng = np.random.default_rng([seed, int(held_out), i])
        i += 1
        spec = sample_scene(rng, sizes=[size], seconds_range=(seconds, seconds), occlusion_prob=0.05)
        has = any(combination_matches(o, c) for o in spec.objects for c in DEFAULT_HOLDOUT)
        if has != held_out:
            continue
        detailed = rng.random() < 0.5
        p = caption(spec, detailed=detailed)
        if p in exclude:
            continue
        out.append((p, spec))
    return out


def aggregate(reports: list[dict]) -> dict:
    """Mean per-attribute accuracy and overall score, in percent."""
    out = {}
    for a in ATTRS:
        vals = [r["attributes"][a] for r in reports if r["attributes"].get(a) is not None]
        out[a] = round(100 * float(np.mean(vals)), 1) if vals else None
    out["overall"] = round(100 * float(np.mean([r["overall"] for r in reports])), 1) if reports else None
    phys = [r["physics"][k] for r in reports for k in ("fall", "reflection") if r["physics"][k] is not None]
    out["physics"] = round(100 * float(np.mean(phys)), 1) if phys else None
    perm = [r["permanence"] for r in reports if r["permanence"] is not None]
    out["permanence"] = round(100 * float(np.mean(perm)), 1) if perm else None
    out["clips"] = len(reports)
    return out


def _score_set(make_frames, prompts, fps: float) -> dict:
    from moviola.world.score import score_clip

    return aggregate([score_clip(make_frames(i, p, spec), p, fps=fps) for i, (p, spec) in enumerate(prompts)])


def evaluate_world(model_dir: Path, n: int = 48, *, steps: int | None = None, guidance: float | None = None,
                   seed: int = 0, baselines: bool = True, progress=None, lora: Path | None = None,
                   exclude: set[str] | None = None) -> dict:
    """Score generated clips for held-in and held-out prompts (JSON-ready dict; see the module doc).
    ``exclude``: more captions to keep out of the prompt lists, so two models (a base and its adapter)
    can be scored on the same prompts."""
    from moviola.pipeline import Pipeline, training_captions
    from moviola.world.render import render

    pipe = Pipeline.from_pretrained(model_dir)
    exclude = training_captions(model_dir) | (exclude or set())  # every caption the model (and adapter) saw
    if lora is not None:
        pipe.load_lora(lora)
        exclude |= training_captions(lora)
    sets = {"held_in": eval_prompts(n, held_out=False, exclude=exclude),
            "held_out": eval_prompts(max(1, n // 2), held_out=True, exclude=exclude)}
    fps = pipe.config.fps
    total = sum(len(v) for v in sets.values()) * (4 if baselines else 1)
    done = [0]

    def tick():
        done[0] += 1
        if progress:
            progress(done[0], total)

    def gen(model):
        def f(i, p, spec):
            tick()
            return model(p, width=64, height=64, seconds=2, steps=steps, guidance=guidance,
                         seed=(seed + i) % 2**63)  # the last seeds wrap: a seed the user never gave had been refused
        return f

    def truth(i, p, spec):
        tick()
        return render(spec, num_frames=int(round(spec.seconds * fps))).frames

    def autoencoded(i, p, spec):
        tick()
        n = int(round(spec.seconds * fps))
        frames = render(spec, num_frames=4 * ((n + 2) // 4) + 1).frames  # 4k + 1 >= n frames: the VAE's lengths
        return pipe.decode_frames(pipe.encode_frames(frames))[:n]

    result = {"model": str(model_dir), **({"lora": str(lora)} if lora is not None else {}), "size": "64x64",
              "seconds": 2, "steps": steps or pipe.config.steps,
              "guidance": pipe.config.guidance if guidance is None else guidance, "seed": seed}
    for name, prompts in sets.items():
        row = {"model": _score_set(gen(pipe), prompts, fps)}
        if baselines:
            row["renderer"] = _score_set(truth, prompts, fps)
            row["autoencoder"] = _score_set(autoencoded, prompts, fps)
        result[name] = row
    if baselines:
        torch.manual_seed(0)
        rand = Pipeline(pipe.vae, type(pipe.dit)(pipe.dit.config), pipe.text_encoder, pipe.config)
        _init_random(rand.dit)
        for name, prompts in sets.items():
            result[name]["random_weights"] = _score_set(gen(rand), prompts, fps)
    result["prompts"] = {k: [p for p, _ in v[:5]] for k, v in sets.items()}
    return result


@torch.no_grad()
def _init_random(model: torch.nn.Module) -> None:
    """Random (not zero) weights everywhere, so the random baseline really outputs something."""
    for p in model.parameters():
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.02)
        else:
            torch.nn.init.normal_(p, std=0.02)
