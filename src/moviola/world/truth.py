"""Ground truth of a rendered clip as JSON-ready data (tracks per object, bounce events, the spec)."""

from __future__ import annotations

import dataclasses

from moviola.world.render import Clip
from moviola.world.spec import ObjectSpec, SceneSpec


def spec_to_dict(spec: SceneSpec) -> dict:
    d = dataclasses.asdict(spec)
    d["behind"] = list(spec.behind) if spec.behind is not None else None
    return d


def spec_from_dict(d: dict) -> SceneSpec:
    objects = tuple(ObjectSpec(**o) for o in d["objects"])
    behind = tuple(d["behind"]) if d.get("behind") is not None else None
    return SceneSpec(objects, d["background"], d["width"], d["height"], d["fps"], d["seconds"], behind).validate()


def clip_truth(clip: Clip) -> dict:
    """Per-frame centre (px), radius (px), rotation (rad) and visible fraction of each object, and events."""
    return {
        "spec": spec_to_dict(clip.spec),
        "times": [round(float(t), 6) for t in clip.times],
        "tracks": [{k: [round(float(v), 4) for v in getattr(tr, k)] for k in ("x", "y", "r", "rotation", "visible")}
                   for tr in clip.tracks],
        "events": [dataclasses.asdict(e) for e in clip.events],
    }
