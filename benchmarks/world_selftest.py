"""The scorer's self-test: render random scenes, caption them, score the renders against their captions.

WORLD.md requires the scorer to give 100 percent on the renderer's own clips. This prints, per attribute
(background, count, colour, shape, size, motion) and per check (fall and reflection physics, permanence,
colour and size consistency), the percentage of clips that scored 1.0 there, and lists the failures.

    PYTHONPATH=src python benchmarks/world_selftest.py --n 500
    PYTHONPATH=src python benchmarks/world_selftest.py --n 500 --mp4           # through H.264 (crf 12)
    PYTHONPATH=src python benchmarks/world_selftest.py --n 500 --seed 11 --fps 24 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from moviola.world.caption import caption
from moviola.world.render import render
from moviola.world.sample import sample_scene
from moviola.world.score import score_clip

CHECKS = ("background", "count", "color", "shape", "size", "motion", "fall", "reflection", "permanence",
          "consistency_color", "consistency_size")


def _flatten(report: dict) -> dict[str, float | None]:
    out = dict(report["attributes"])
    out["fall"] = report["physics"]["fall"]
    out["reflection"] = report["physics"]["reflection"]
    out["permanence"] = report["permanence"]
    out["consistency_color"] = report["consistency"]["color"]
    out["consistency_size"] = report["consistency"]["size"]
    return out


def run_one(args: tuple[int, int, bool, float, float]) -> dict:
    """Render, (optionally) round-trip through MP4, and score scene i of seed base ``seed``."""
    seed, i, mp4, fps, occlusion_prob = args
    rng = np.random.default_rng([seed, i])
    spec = sample_scene(rng, occlusion_prob=occlusion_prob, fps_choices=(fps,))
    frames = render(spec).frames
    if mp4:
        from moviola.video_io import read_video, write_video

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "clip.mp4"
            write_video(path, frames, spec.fps)
            frames = read_video(path).frames[:, :spec.height, :spec.width]
    text = caption(spec, detailed=True)
    t0 = time.perf_counter()
    report = score_clip(frames, text, fps=spec.fps)
    return {"i": i, "caption": text, "size": f"{spec.width}x{spec.height}", "seconds": spec.seconds,
            "score_s": time.perf_counter() - t0, "checks": _flatten(report)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="number of scenes")
    ap.add_argument("--start", type=int, default=0, help="index of the first scene")
    ap.add_argument("--seed", type=int, default=7, help="seed base: scene i uses default_rng([seed, i])")
    ap.add_argument("--mp4", action="store_true", help="encode to H.264 MP4 and decode before scoring")
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--occlusion-prob", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="also write the summary and failures here")
    ap.add_argument("--show", type=int, default=30, help="failures to list")
    a = ap.parse_args(argv)

    jobs = [(a.seed, i, a.mp4, a.fps, a.occlusion_prob) for i in range(a.start, a.start + a.n)]
    t0 = time.time()
    if a.workers > 1:
        with mp.Pool(a.workers) as pool:
            rows = pool.map(run_one, jobs, chunksize=4)
    else:
        rows = [run_one(j) for j in jobs]
    wall = time.time() - t0

    summary = {}
    for c in CHECKS:
        vals = [r["checks"][c] for r in rows if r["checks"][c] is not None]
        summary[c] = {"scored": len(vals), "perfect_pct": round(100.0 * sum(v >= 1.0 for v in vals) / len(vals), 2)
                      if vals else None}
    failures = [{"i": r["i"], "check": c, "value": r["checks"][c], "caption": r["caption"], "size": r["size"],
                 "seconds": r["seconds"]}
                for r in rows for c in CHECKS if r["checks"][c] is not None and r["checks"][c] < 1.0]
    times = np.array([r["score_s"] for r in rows])
    clips_ok = sum(all(v is None or v >= 1.0 for v in r["checks"].values()) for r in rows)

    print(f"seed {a.seed}, scenes {a.start}..{a.start + a.n - 1}, fps {a.fps:g}, {'mp4' if a.mp4 else 'raw'}: "
          f"{clips_ok}/{len(rows)} clips perfect; scoring {times.mean():.3f} s/clip mean, "
          f"{times.max():.3f} max; wall {wall:.0f} s")
    print(f"{'check':<18}{'scored':>8}{'perfect %':>11}")
    for c, s in summary.items():
        pct = "-" if s["perfect_pct"] is None else f"{s['perfect_pct']:.2f}"
        print(f"{c:<18}{s['scored']:>8}{pct:>11}")
    for f in failures[: a.show]:
        print(f"  fail {f['i']:>4} {f['check']:<17} {f['value']:.3f}  {f['size']} {f['seconds']:g}s  {f['caption']}")
    if a.json:
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "summary": summary,
                                      "clips_perfect": clips_ok, "failures": failures,
                                      "score_seconds_mean": float(times.mean())}, indent=1))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
