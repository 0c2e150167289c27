"""The prompting abilities measured against issue 6's targets: image-to-video, extend, connect, loop,
storyboard and long videos.

    moviola eval abilities [--n 8] [--model DIR] [--long-seconds 60]

Sources are world renders (ground truth from the renderer, never used to generate). Figures:

- image_to_video: PSNR of the model's own frame 0 against the image (``decoded_frame0_psnr``; the output then
  carries the image itself, so the output's frame 0 is exact) and the seam after it.
- extend / connect / loop: for each seam (connect: two unrelated scenes with 1 s and 2 s transitions, or the
  model's longest, and two moments of one scene), the mean absolute frame difference across it divided by
  the clip's median frame difference (target <= 2), and the PSNR of the given frames as the decoder remakes
  them (the output keeps the given pixels); for connect also the largest step inside the transition on the
  same scale. After given frames (a prefix) the ratio is the largest of the step across the seam and the
  PREFIX_SPREAD steps after it, where the decoder's residual is faded out; before given frames (a suffix) the
  largest over the cross-faded steps on both sides.
- storyboard: each segment scored with its own card's prompt, against single-prompt clips of the same
  prompts and length (target: no segment more than 10 points worse).
- long: peak memory (RSS) of a 60 s and an 8 s clip made in fresh processes, and the world scores of the
  first and last 8 seconds of each long clip on colour, shape, size and count (target: within 10 points).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from moviola.eval.world import aggregate, eval_prompts
from moviola.pipeline import CONTEXT_FRAMES, PREFIX_SPREAD, SEAM_BEFORE, SEAM_BLEND, SUFFIX_FRAMES

DRIFT_ATTRS = ("color", "shape", "size", "count")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of 8-bit frames; identical ones give 99.0, as `data.clips.psnr` does (JSON has no infinity)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def frame_diffs(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference between consecutive frames: (T - 1,)."""
    f = frames.astype(np.float32)
    return np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))


def seam_region_ratio(frames: np.ndarray, seam: int, after: int = SEAM_BLEND, before: int = SEAM_BEFORE) -> float:
    """The largest of the differences across a seam, the ``after`` steps that follow it and the ``before``
    steps that lead to it (after a known suffix the decoder's residual is spread over those frames), over
    the clip's median frame difference."""
    d = frame_diffs(frames)
    return float(d[max(0, seam - 1 - before):seam + after].max() / max(np.median(d), 0.5))


def prefix_seam_ratio(frames: np.ndarray, seam: int) -> float:
    """After given frames: the largest of the step across the seam and the PREFIX_SPREAD steps after it
    (the new frames carry a fading share of the decoder's residual there), over the median frame difference."""
    return seam_region_ratio(frames, seam, after=PREFIX_SPREAD, before=0)


def loop_ratio(frames: np.ndarray, after: int = SEAM_BLEND, before: int = SEAM_BEFORE) -> float:
    """The last-to-first difference, and the steps around it where the residual is spread (the ``before``
    last ones and the ``after`` first ones), over the median frame difference."""
    d = frame_diffs(frames)
    wrap = float(np.abs(frames[-1].astype(np.float32) - frames[0].astype(np.float32)).mean())
    around = [float(d[:after].max())] + ([float(d[-before:].max())] if before else [])
    return max(wrap, *around) / max(float(np.median(d)), 0.5)


def _summary(values: list[float], target: float | None = None, below: bool = True) -> dict:
    v = np.asarray(values, dtype=np.float64)
    out = {"median": round(float(np.median(v)), 3), "mean": round(float(np.mean(v)), 3),
           "worst": round(float(v.max() if below else v.min()), 3), "n": len(v)}
    if target is not None:
        out["meets"] = round(float(np.mean(v <= target if below else v >= target)), 3)
    return out


def _render(spec) -> np.ndarray:
    from moviola.world.render import render

    return render(spec).frames


def evaluate_abilities(model_dir: Path, n: int = 8, *, steps: int | None = None, long_seconds: float = 60.0,
                       long_n: int = 2, seed: int = 0, memory: bool = True) -> dict:
    from moviola.pipeline import Card, Pipeline

    if long_n < 0:
        raise ValueError(f"long_n must be at least 0, got {long_n}")
    if memory and not long_seconds > 8.0:  # its peak memory is measured against an 8 s clip's
        raise ValueError(f"long_seconds must be more than 8 to compare its memory with an 8 s clip's, "
                         f"got {long_seconds:g}")
    pipe = Pipeline.from_pretrained(model_dir)
    if long_n and long_seconds > pipe.config.max_total_seconds:  # say so now, not after every other ability
        raise ValueError(f"long_seconds must be at most {pipe.config.max_total_seconds:g} for this model, "
                         f"got {long_seconds:g}")
    fps = pipe.config.fps
    kw = dict(steps=steps) if steps else {}
    # one list for every ability (it only grows at its end with its length): 2n, or more long clips
    prompts = eval_prompts(max(2 * n, long_n), held_out=False, seed=97531, seconds=2.0)
    res: dict = {"model": str(model_dir), "n": n}

    # image to video: the model's frame 0 (before the given image is pasted) and the seam after it
    dec, seams = [], []
    for i, (p, spec) in enumerate(prompts[:n]):
        image = _render(spec)[0]
        out = pipe.window(p, width=64, height=64, frames=17, prefix=image[None], seed=seed + i,
                          steps=steps or pipe.config.steps, guidance=pipe.config.guidance)
        dec.append(psnr(out[0], image))
        full = pipe.image_to_video(p, image, seconds=2, seed=seed + i, **kw)
        seams.append(prefix_seam_ratio(full, 1))
    res["image_to_video"] = {"decoded_frame0_psnr": _summary(dec, 30.0, below=False),
                             "output_frame0_exact": True, "seam_ratio": _summary(seams, 2.0)}

    # extend forwards and backwards by 2 s
    for backward in (False, True):
        ratios, given, decoded = [], [], []
        for i, (p, spec) in enumerate(prompts[:n]):
            src = _render(spec)  # 16 frames at 8 fps
            out = pipe.extend(src, p, seconds=2, backward=backward, seed=seed + i, **kw)
            seam = len(out) - len(src) if backward else len(src)
            ratios.append(seam_region_ratio(out, seam) if backward else prefix_seam_ratio(out, seam))
            given.append(psnr(out[seam:] if backward else out[:len(src)], src))
            if not backward:  # the decoder's version of the 5-frame context the new frames follow
                ctx = src[-5:]
                decoded.append(psnr(pipe.decode_frames(pipe.encode_frames(ctx)), ctx))
        r = {"seam_ratio": _summary(ratios, 2.0), "given_psnr_output": _summary(given, 30.0, below=False)}
        if decoded:
            r["context_psnr_decoded"] = _summary(decoded, 30.0, below=False)
        res["extend_backward" if backward else "extend"] = r

    def connect_figures(triples, seconds: float = 1.0) -> dict:  # (a, b, prompt) -> seams, given frames' PSNR
        ratios, given, inside = [], [], []
        for i, (a, b, p) in enumerate(triples):
            out = pipe.connect(a, b, p, seconds=seconds, seed=seed + i, **kw)
            ratios += [prefix_seam_ratio(out, len(a)), seam_region_ratio(out, len(out) - len(b))]
            given.append(min(psnr(out[:len(a)], a), psnr(out[len(out) - len(b):], b)))
            d = frame_diffs(out)  # the largest step from a's last frame to b's first: a cut inside shows here
            inside.append(float(d[len(a) - 1:len(out) - len(b)].max() / max(np.median(d), 0.5)))
        return {"seam_ratio": _summary(ratios, 2.0), "given_psnr_output": _summary(given, 30.0, below=False),
                "largest_step_in_transition": _summary(inside)}

    # connect two different clips with a 1 s transition, and with a 2 s one (or the longest the model makes)
    unrelated = [(_render(prompts[i][1]), _render(prompts[n + i][1]), prompts[n + i][0]) for i in range(n)]
    res["connect"] = connect_figures(unrelated)
    longer = min(2.0, (pipe.window_frames - CONTEXT_FRAMES - SUFFIX_FRAMES) / fps)
    res["connect_longer"] = {"seconds": longer, **connect_figures(unrelated, seconds=longer)}
    # connect two moments of one scene: the first and last 2 s of a 5 s render (40 frames), 1 s apart
    same = [(_render(spec), p) for p, spec in eval_prompts(n, held_out=False, seed=97531, seconds=5.0)]
    res["connect_same_scene"] = connect_figures((clip[:16], clip[24:], p) for clip, p in same)

    # loops of 3 s
    ratios = [loop_ratio(pipe.loop(p, seconds=3, seed=seed + i, **kw)) for i, (p, _) in enumerate(prompts[:n])]
    res["loop"] = {"wrap_ratio": _summary(ratios, 2.0)}

    # storyboard: two cards of 3 s each, per transition mode, against single-prompt clips
    from moviola.world.score import score_clip

    seg = 3.0
    single = []
    for i in range(n):
        for j, (p, _) in enumerate((prompts[i], prompts[n + i])):
            single.append(score_clip(pipe(p, seconds=seg, seed=seed + 100 + 2 * i + j, **kw), p, fps=fps))
    res["storyboard"] = {"single_prompt": aggregate(single)}
    for mode in ("cut", "continue"):
        first, second = [], []
        for i in range(n):
            (pa, _), (pb, _) = prompts[i], prompts[n + i]
            frames = np.concatenate(list(pipe.storyboard([Card(0, pa), Card(seg, pb)], seconds=2 * seg,
                                                         transition=mode, seed=seed + 100 + 2 * i, **kw)))
            k = round(seg * fps)
            first.append(score_clip(frames[:k], pa, fps=fps))
            second.append(score_clip(frames[k:], pb, fps=fps))
        res["storyboard"][mode] = {"segment_1": aggregate(first), "segment_2": aggregate(second)}

    # long videos: drift, and memory in fresh processes
    drift = []
    for i, (p, _) in enumerate(prompts[:long_n]):
        k8 = round(8 * fps)
        head, tail = [], np.zeros((0, 64, 64, 3), np.uint8)
        for chunk in pipe.stream(p, seconds=long_seconds, seed=seed + i, **kw):
            if sum(len(h) for h in head) < k8:
                head.append(chunk)
            tail = np.concatenate([tail, chunk])[-k8:]
        first = score_clip(np.concatenate(head)[:k8], p, fps=fps)
        last = score_clip(tail, p, fps=fps)
        drift.append({"prompt": p, "first_8s": {a: first["attributes"].get(a) for a in DRIFT_ATTRS},
                      "last_8s": {a: last["attributes"].get(a) for a in DRIFT_ATTRS}})
    res["long"] = {"seconds": long_seconds, "clips": drift}
    for a in DRIFT_ATTRS:
        f = [d["first_8s"][a] for d in drift if d["first_8s"][a] is not None]
        l = [d["last_8s"][a] for d in drift if d["last_8s"][a] is not None]
        res["long"][a] = {"first_8s": round(100 * float(np.mean(f)), 1) if f else None,
                          "last_8s": round(100 * float(np.mean(l)), 1) if l else None}
    if memory:
        res["long"]["peak_rss_mb"] = {f"{s:g}s": _peak_rss(model_dir, s, steps) for s in (8.0, long_seconds)}
        m = res["long"]["peak_rss_mb"]
        res["long"]["memory_ratio"] = round(m[f"{long_seconds:g}s"]["peak"] / m["8s"]["peak"], 3)
    return res


_MEMORY_CHILD = r"""
import json, sys, tempfile, os
from moviola.pipeline import Pipeline
from moviola.video_io import VideoWriter
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
model, seconds, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) or None
pipe = Pipeline.from_pretrained(model)
list(pipe.stream("a small red circle moves right", seconds=1, steps=2))  # warm up kernels and caches
base = rss("VmRSS:")
with tempfile.TemporaryDirectory() as d:
    with VideoWriter(os.path.join(d, "long.mp4"), pipe.config.fps) as w:
        for chunk in pipe.stream("a small red circle moves right", seconds=seconds, steps=steps):
            w.write(chunk)
print(json.dumps({"peak": round(rss("VmHWM:"), 1), "after_load": round(base, 1)}))
"""


def _peak_rss(model_dir: Path, seconds: float, steps: int | None) -> dict:
    """Peak resident memory (MB) of a fresh process that streams a clip of ``seconds`` to an MP4."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(model_dir), str(seconds), str(steps or 0)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
