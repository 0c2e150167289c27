"""The server's one door to the model: what a request may ask for, and how a job becomes frames.

Request limits come from the model folder's ``pipeline.json`` (read as JSON, so the API process never
imports torch): sides ``min_side..max_side`` in multiples of ``side_multiple`` (the default model:
32-128 in steps of 16), up to ``max_seconds`` (4 s) at ``fps`` (8).

Sizes. A size the model supports is used as given. Sora's four sizes are mapped to the supported size
with the closest aspect ratio (ties: the nearest in area) and the response reports the real size:

    1280x720, 1792x1024 -> 112x64        720x1280, 1024x1792 -> 64x112     (default model)

Any other size is a 400 that names the allowed values. No size means ``DEFAULT_SIZE`` (64x64).
Seconds: any number in (0, max_seconds] given as a string ("2", "2.5"); Sora's "8" and "12" are beyond
the default model and answer 400. No seconds means "4", the SDK's documented default.
Models: the served model's name, or Sora's names as aliases for it (code written for Sora runs unchanged).

Abilities. Text-to-video is ``Pipeline.__call__``. Image-to-video, extension and remix use
``Pipeline.image_to_video``, ``Pipeline.extend`` and ``Pipeline.remix`` when the pipeline has them
(keyword arguments are matched to their signatures). Until then:

- image-to-video fails the job with code ``unsupported`` (an image cannot be honestly ignored);
- remix (and edit of a stored video) regenerates from the new prompt with the source's seed, size and
  duration: the same starting noise keeps the layout roughly similar, and the job's note says it is not
  conditioned on the source frames;
- extension generates the new segment from the prompt alone and stitches it after the source, saying
  so in the note;
- edit of an uploaded video fails with ``unsupported``.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SIZE = (64, 64)
DEFAULT_SECONDS = "4"
SORA_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
SORA_MODELS = ("sora-2", "sora-2-pro", "sora-2-2025-10-06", "sora-2-pro-2025-10-06", "sora-2-2025-12-08")
MAX_TOTAL_SECONDS = 120.0  # an extension chain stops growing here


class RequestProblem(ValueError):
    """A request the model cannot serve; ``param`` names the field (the API answers 400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class JobFailure(Exception):
    """A job that cannot be run; ``code`` is what the Video's ``error.code`` says."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class ModelInfo:
    """The served model's name and the limits from its ``pipeline.json`` (no torch needed)."""

    name: str
    directory: Path
    fps: float = 8.0
    min_side: int = 32
    max_side: int = 128
    side_multiple: int = 16
    max_seconds: float = 4.0
    steps: int = 16
    guidance: float = 4.0
    sampler: str = "euler"

    @classmethod
    def from_dir(cls, directory: str | Path, name: str | None = None) -> "ModelInfo":
        d = Path(directory)
        f = d / "pipeline.json"
        if not f.is_file():
            raise FileNotFoundError(f"{d}: not a Moviola model folder (missing pipeline.json)")
        cfg = json.loads(f.read_text())
        keep = {k: cfg[k] for k in ("fps", "min_side", "max_side", "side_multiple", "max_seconds", "steps",
                                    "guidance", "sampler") if k in cfg}
        if name is None:
            from moviola import DEFAULT_MODEL_DIR

            name = "moviola-default" if d.resolve() == Path(DEFAULT_MODEL_DIR).resolve() else f"moviola-{d.name}"
        return cls(name=name, directory=d, **keep)

    # --- what a request may ask for ---------------------------------------------------------------

    def sides(self) -> list[int]:
        return list(range(self.min_side, self.max_side + 1, self.side_multiple))

    def allowed_sizes_text(self) -> str:
        return (f"WxH with each side a multiple of {self.side_multiple} from {self.min_side} to {self.max_side} "
                f"(e.g. 64x64, 96x64, 64x96), or one of Sora's sizes {', '.join(SORA_SIZES)} "
                f"(generated at {', '.join(f'{w}x{h}' for w, h in map(self.sora_size, SORA_SIZES))})")

    def supports(self, w: int, h: int) -> bool:
        return all(self.min_side <= s <= self.max_side and s % self.side_multiple == 0 for s in (w, h))

    def closest_size(self, w: int, h: int) -> tuple[int, int]:
        """The supported size nearest in aspect ratio to w:h (ties: the nearest in area)."""
        aspect, area = math.log(w / h), math.log(w * h)
        return min(((a, b) for a in self.sides() for b in self.sides()),
                   key=lambda s: (round(abs(math.log(s[0] / s[1]) - aspect), 9), abs(math.log(s[0] * s[1]) - area)))

    def sora_size(self, text: str) -> tuple[int, int]:
        w, h = (int(v) for v in text.split("x"))
        return self.closest_size(w, h)

    def parse_size(self, text: str | None) -> tuple[int, int]:
        if text is None or text == "":
            return DEFAULT_SIZE
        if text in SORA_SIZES:
            return self.sora_size(text)
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise RequestProblem(f"size must look like WIDTHxHEIGHT, got {text!r}; allowed: "
                                 f"{self.allowed_sizes_text()}", "size") from None
        if not self.supports(w, h):
            raise RequestProblem(f"size {text} is not supported by {self.name}; allowed: "
                                 f"{self.allowed_sizes_text()}", "size")
        return w, h

    def parse_seconds(self, text: str | None, param: str = "seconds") -> float:
        if text is None or text == "":
            text = DEFAULT_SECONDS
        try:
            s = float(text)
        except (TypeError, ValueError):
            s = float("nan")
        if not (math.isfinite(s) and 0 < s <= self.max_seconds and round(s * self.fps) >= 1):
            raise RequestProblem(f"{param} must be a number of seconds more than 0 and at most "
                                 f"{self.max_seconds:g} for {self.name} (e.g. \"2\" or \"4\"), got {text!r}", param)
        return s

    def parse_model(self, text: str | None) -> str:
        if text in (None, "", self.name) or text in SORA_MODELS:
            return self.name
        raise RequestProblem(f"model {text!r} is not served here; use {self.name!r} "
                             f"(Sora's names {', '.join(SORA_MODELS[:2])} are accepted as aliases for it)", "model")


def seconds_text(s: float) -> str:
    """How a duration is reported: "2", "2.5"."""
    return f"{s:g}"


# --- running a job ----------------------------------------------------------------------------------

@dataclass
class Result:
    """Frames (T, H, W, 3) uint8 at ``fps``, and a note when the job did less than it was asked."""

    frames: Any
    fps: float
    note: str | None = None


def _call(fn: Callable, media: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """Call an ability with the keyword arguments its signature takes.

    ``media`` maps candidate parameter names (e.g. "video", "frames") to the input; the first name the
    signature has is used.
    """
    params = inspect.signature(fn).parameters
    open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call = {k: v for k, v in kwargs.items() if open_kw or k in params}
    for name, value in media.items():
        if name in params:
            call[name] = value
            break
    else:
        raise JobFailure("unsupported", f"{fn.__qualname__} takes none of the arguments "
                                        f"{', '.join(media)}; this server cannot call it")
    return fn(**call)


def _frames_array(out: Any) -> Any:
    import numpy as np

    frames = getattr(out, "frames", out)  # an ability may return frames or a Video-like object
    if hasattr(frames, "numpy"):
        frames = frames.numpy()
    return np.asarray(frames)


def load_video(path: Path, width: int, height: int, fps: float) -> Any:
    """A stored or uploaded clip as (T, height, width, 3) uint8 at the model's fps."""
    from moviola.video_io import fit_frames, read_video, resample_fps

    v = read_video(path)
    frames = resample_fps(v.frames, v.fps, fps) if abs(v.fps - fps) > 1e-3 else v.frames
    return fit_frames(frames, width, height, mode="crop")


def run_job(pipe: Any, job: dict[str, Any], params: dict[str, Any], *, source: Path | None,
            callback: Callable[[int, int], None] | None = None) -> Result:
    """Make the frames for one job.

    Args:
        pipe: a ``moviola.pipeline.Pipeline``.
        job: the job row (``kind``: create, remix, extension or edit; ``prompt``).
        params: the job's parameters (width, height, seconds, seed, steps, guidance, sampler, fps,
            negative_prompt, input_image for image-to-video, source_seed for remix/edit fallbacks,
            extension_seconds for extensions).
        source: the source clip for remix/extension/edit (a stored output or an upload), else None.
        callback: ``(step, total)`` from the sampler, for progress.
    """
    import numpy as np

    kind, prompt = job["kind"], job["prompt"] or ""
    w, h, fps = int(params["width"]), int(params["height"]), float(params["fps"])
    common = dict(width=w, height=h, fps=fps, steps=int(params["steps"]), guidance=float(params["guidance"]),
                  seed=int(params["seed"]), negative_prompt=params.get("negative_prompt", ""),
                  sampler=params["sampler"], callback=callback)

    if kind == "create":
        if params.get("input_image"):
            if not hasattr(pipe, "image_to_video"):
                raise JobFailure("unsupported", "image-to-video is not available: this model's pipeline has no "
                                                "image_to_video ability yet; create the video without "
                                                "input_reference")
            from moviola.video_io import fit_frames, read_image

            image = fit_frames(read_image(params["input_image"])[None], w, h, mode="crop")[0]
            out = _call(pipe.image_to_video, {"image": image, "first_image": image},
                        {"prompt": prompt, "seconds": float(params["seconds"]), **common})
            return Result(_frames_array(out), fps)
        return Result(pipe(prompt, seconds=float(params["seconds"]), **common), fps)

    if kind in ("remix", "edit"):
        if hasattr(pipe, "remix"):
            assert source is not None
            video = load_video(source, w, h, fps)
            out = _call(pipe.remix, {"video": video, "frames": video, "clip": video},
                        {"prompt": prompt, **common})
            return Result(_frames_array(out), fps)
        if params.get("source_seed") is None:  # an uploaded video: nothing honest to fall back on
            raise JobFailure("unsupported", "editing an uploaded video needs video-to-video (Pipeline.remix), "
                                            "which this model does not have yet; edit a video made here by id")
        frames = pipe(prompt, seconds=float(params["seconds"]), **{**common, "seed": int(params["source_seed"])})
        return Result(frames, fps, note=f"{kind} is not conditioned on the source frames yet (Pipeline.remix "
                                         "is missing): regenerated from the new prompt with the source's seed, "
                                         "size and duration")

    if kind == "extension":
        assert source is not None
        video = load_video(source, w, h, fps)
        new_s = float(params["extension_seconds"])
        if hasattr(pipe, "extend"):
            out = _frames_array(_call(pipe.extend, {"video": video, "frames": video, "clip": video},
                                      {"prompt": prompt, "seconds": new_s, **common}))
            if len(out) >= len(video) + round(new_s * fps) - 1:
                return Result(out, fps)  # the ability returned the whole stitched clip
            return Result(np.concatenate([video, out]), fps)
        seg = pipe(prompt, seconds=new_s, **common)
        return Result(np.concatenate([video, seg]), fps,
                      note="the extension is not conditioned on the source yet (Pipeline.extend is missing): "
                           "the new segment was generated from the prompt alone and appended after the source")

    raise JobFailure("unsupported", f"unknown job kind {kind!r}")
