"""The server's one door to the model: what a request may ask for, and how a job becomes frames.

Request limits come from the model folder's ``config.json`` and its DiT's (``moviola.layout``; read as JSON,
so the API process never imports torch): sides ``min_side..max_side`` in multiples of ``side_multiple`` (the default
model: 32-128 in steps of 16) at ``fps`` (8).

Sizes. A size the model supports is used as given. Sora's four sizes are mapped to the supported size
with the closest aspect ratio (ties: the nearest in area) and the response reports the real size:

    1280x720, 1792x1024 -> 112x64        720x1280, 1024x1792 -> 64x112     (default model)

Any other size is a 400 that names the allowed values. No size means ``DEFAULT_SIZE`` (64x64); an
uploaded video with no size asked for is made at the trained size nearest its aspect ratio
(64x64, 96x64 or 64x96: ``moviola.sizes.size_for``).

Seconds: any number given as a string ("2", "2.5"; made a whole number of frames) up to ``ModelInfo.longest``:
a model trained with
known frames (its DiT config's ``cond_channels > 0``) makes clips window by window, so up to its
``max_total_seconds`` capped by the server's own limit (``DEFAULT_MAX_SECONDS`` = 60 s, the length of
Sora's headline clips; a longer clip is a long CPU job); a text-only model makes one window, up to its
``max_seconds`` (4 s). Clips are streamed to disk window by window (``Result.frames`` may be an iterator),
so a job's memory does not grow with its length (backward extensions excepted). No seconds means "4", the SDK's documented default.
Models: the served model's name, or Sora's names as aliases for it (code written for Sora runs unchanged).

Abilities (``moviola.pipeline``), called with their own signatures:

- create: ``Pipeline.stream`` (text-to-video; with ``input_reference`` its ``image`` is frame 0, which is
  what ``Pipeline.image_to_video`` does, streamed);
- remix and edit (of a stored or an uploaded video): ``Pipeline.remix_stream`` at ``strength`` (default
  ``REMIX_STRENGTH``), as many frames as the source, written as they come;
- extension: the stitched clip (source + new; the Video's ``seconds`` is the total): forwards
  ``Pipeline.extend_stream`` (written as it comes), backwards ``Pipeline.extend`` (made whole: the new frames
  come first);
- storyboard (a Moviola endpoint): ``Pipeline.storyboard``, its chunks written as they come.

Everything but text-to-video needs a model trained with known frames; the API answers 400 with code
``unsupported`` before queuing when the model has none. A ``GenerationError`` the checks here did not
foresee fails the job with code ``invalid_request`` and the pipeline's message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moviola import sizes
from moviola.layout import CONFIG_NAME, config_path, read_config

DEFAULT_SIZE = (64, 64)
DEFAULT_SECONDS = "4"
SORA_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")  # what a number of seconds looks like ("2", "2.5"; not "1_0")
_SIZE = re.compile(r"\d+x\d+")
SORA_MODELS = ("sora-2", "sora-2-pro", "sora-2-2025-10-06", "sora-2-pro-2025-10-06", "sora-2-2025-12-08")
DEFAULT_MAX_SECONDS = 60.0  # the server's own limit on one video (create, extension total, storyboard)
REMIX_STRENGTH = 0.6  # remix and edit: how far from the source (0 keeps it, 1 ignores it)
MAX_CARDS = 32  # storyboard cards in one request


class RequestProblem(ValueError):
    """A request the model cannot serve; ``param`` names the field, ``code`` the Video error's code (400)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


class JobFailure(Exception):
    """A job that cannot be run; ``code`` is what the Video's ``error.code`` says."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class ModelInfo:
    """The served model's name and the limits from its configs (no torch)."""

    name: str
    directory: Path
    fps: float = 8.0
    min_side: int = 32
    max_side: int = 128
    side_multiple: int = 16
    max_seconds: float = 4.0  # one window
    max_total_seconds: float = 120.0  # window by window (needs a model trained with known frames)
    steps: int = 16
    guidance: float = 4.0
    sampler: str = "euler"
    conditioned: bool = False  # the DiT takes known frames (the DiT config's cond_channels > 0)
    cap_seconds: float = DEFAULT_MAX_SECONDS  # the server's own limit

    @classmethod
    def from_dir(cls, directory: str | Path, name: str | None = None,
                 cap_seconds: float = DEFAULT_MAX_SECONDS) -> "ModelInfo":
        d = Path(directory)
        if not config_path(d, "pipeline").is_file():
            raise FileNotFoundError(f"{d}: not a Moviola model folder (missing {CONFIG_NAME})")
        cfg = read_config(d, "pipeline")
        keep = {k: cfg[k] for k in ("fps", "min_side", "max_side", "side_multiple", "max_seconds",
                                    "max_total_seconds", "steps", "guidance", "sampler") if k in cfg}
        dit = config_path(d, "dit")
        conditioned = dit.is_file() and int(read_config(d, "dit").get("cond_channels") or 0) > 0
        if name is None:
            from moviola import DEFAULT_MODEL_DIR

            name = ("moviola-default" if d.resolve() == Path(DEFAULT_MODEL_DIR).resolve()
                    else f"moviola-{d.resolve().name}")  # "--model ." had been named "moviola-"
        return cls(name=name, directory=d, conditioned=conditioned, cap_seconds=cap_seconds, **keep)

    # --- what a request may ask for ---------------------------------------------------------------

    @property
    def longest(self) -> float:
        """The longest clip a request may ask for (create, an extension's total, a storyboard)."""
        if not self.conditioned:
            return min(self.max_seconds, self.cap_seconds)
        return min(max(self.max_total_seconds, self.max_seconds), self.cap_seconds)

    @property
    def window_frames(self) -> int:
        """Frames of one window (as ``Pipeline.window_frames``): longer clips need known frames."""
        return 1 + 4 * max(1, int(self.max_seconds * self.fps) // 4)

    def require_frames(self, what: str, param: str | None = None) -> None:
        """A 400 (code ``unsupported``) when the model cannot generate from known frames."""
        if not self.conditioned:
            raise RequestProblem(f"{what} needs a model trained with known frames; {self.name} is text-to-video "
                                 "only (fine-tune it with: moviola train dit --config configs/dit/cond.toml)",
                                 param, code="unsupported")

    def sides(self) -> list[int]:
        return list(range(self.min_side, self.max_side + 1, self.side_multiple))

    def allowed_sizes_text(self) -> str:
        return (f"WxH with each side a multiple of {self.side_multiple} from {self.min_side} to {self.max_side} "
                f"(e.g. 64x64, 96x64, 64x96), or one of Sora's sizes {', '.join(SORA_SIZES)} "
                f"(generated at {', '.join(f'{w}x{h}' for w, h in map(self.sora_size, SORA_SIZES))})")

    def supports(self, w: int, h: int) -> bool:
        return sizes.allowed(w, h, self.min_side, self.max_side, self.side_multiple)

    def closest_size(self, w: int, h: int) -> tuple[int, int]:
        """The supported size nearest in aspect ratio to w:h (ties: the nearest in area)."""
        return sizes.closest_size(w, h, self.min_side, self.max_side, self.side_multiple)

    def size_for(self, w: int, h: int) -> tuple[int, int]:
        """The size made from footage of w x h: ``moviola.sizes.size_for``, as the pipeline and CLI choose it."""
        return sizes.size_for(w, h, self.min_side, self.max_side, self.side_multiple)

    def sora_size(self, text: str) -> tuple[int, int]:
        w, h = (int(v) for v in text.split("x"))
        return self.closest_size(w, h)

    def parse_size(self, text: str | None, default: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int]:
        if text is None or text == "":
            return default
        if text in SORA_SIZES:
            return self.sora_size(text)
        try:
            if not _SIZE.fullmatch(text.strip().lower()):  # int() takes "6_4" and " 64": plain digits only
                raise ValueError(text)
            w, h = (int(v) for v in text.strip().lower().split("x"))
        except ValueError:
            raise RequestProblem(f"size must look like WIDTHxHEIGHT, got {text!r}; allowed: "
                                 f"{self.allowed_sizes_text()}", "size") from None
        if not self.supports(w, h):
            raise RequestProblem(f"size {text} is not supported by {self.name}; allowed: "
                                 f"{self.allowed_sizes_text()}", "size")
        return w, h

    def parse_seconds(self, text: str | float | None, param: str = "seconds", limit: float | None = None) -> float:
        """Seconds as sent ("2", "2.5"), more than 0 and at most ``limit`` (default ``longest``), made a whole
        number of frames (2.3 s at 8 fps: 2.25 s, the 18 frames the clip will have): what is reported and
        charged is the clip's real length."""
        if text is None or text == "":
            text = DEFAULT_SECONDS
        limit = self.longest if limit is None else limit
        if isinstance(text, (int, float)) and not isinstance(text, bool):  # a JSON number (storyboards)
            s = float(text)
        else:
            s = float(text) if isinstance(text, str) and _NUMBER.fullmatch(text.strip()) else float("nan")
        if not (math.isfinite(s) and 0 < s <= limit and round(s * self.fps) >= 1):
            raise RequestProblem(f"{param} must be a number of seconds more than 0 and at most "
                                 f"{limit:g} for {self.name} (e.g. \"2\" or \"4\"), got {text!r}", param)
        frames = round(s * self.fps)
        if frames / self.fps > limit + 1e-9:  # rounded past the limit (10.1 s at 8 fps: 10.125): one frame less
            frames -= 1
        return frames / self.fps

    def parse_strength(self, value: Any, param: str = "strength") -> float:
        """Remix strength, 0 (keep the source) to 1 (ignore it); None means ``REMIX_STRENGTH``."""
        if value is None or value == "":
            return REMIX_STRENGTH
        try:
            x = float(value)
        except (TypeError, ValueError):
            x = float("nan")
        if not (math.isfinite(x) and 0.0 <= x <= 1.0):
            raise RequestProblem(f"{param} must be a number from 0 (keep the source) to 1 (ignore it), "
                                 f"got {value!r}", param)
        return x

    def parse_model(self, text: str | None) -> str:
        if text in (None, "", self.name) or text in SORA_MODELS:
            return self.name
        raise RequestProblem(f"model {text!r} is not served here; use {self.name!r} "
                             f"(Sora's names {', '.join(SORA_MODELS[:2])} are accepted as aliases for it)", "model")

    def check_source(self, seconds: float, what: str, param: str = "video") -> None:
        """A source clip (remix, edit) the model can take: within ``longest``, and within one window
        unless the model generates from known frames."""
        if seconds > self.longest + 1e-6:
            raise RequestProblem(f"{param} is {seconds:g} s long; {what} takes at most {self.longest:g} s "
                                 f"with {self.name}", param)
        if round(seconds * self.fps) > self.window_frames:
            self.require_frames(f"{what} of a clip longer than {(self.window_frames - 1) / self.fps:g} s", param)

    def parse_storyboard(self, cards: list[dict[str, Any]], seconds: str | None, transition: str
                         ) -> tuple[list[dict[str, Any]], float]:
        """Cards [{start, prompt, image?}] checked as ``moviola.pipeline.check_cards`` does (here without
        torch): at least one, the first at 0 s, in order without overlap, each segment at least one frame
        long, the board within ``longest``. Returns (cards, end seconds: ``seconds`` or last start + 2)."""
        if not cards:
            raise RequestProblem("a storyboard needs at least one card", "cards")
        if len(cards) > MAX_CARDS:
            raise RequestProblem(f"a storyboard takes at most {MAX_CARDS} cards, got {len(cards)}", "cards")
        if transition not in ("cut", "continue"):
            raise RequestProblem(f"transition must be 'cut' (each card starts afresh) or 'continue' (the scene "
                                 f"carries on under the new prompt), got {transition!r}", "transition")
        out = []
        for i, c in enumerate(cards):
            start, prompt = c.get("start"), (c.get("prompt") or "").strip()
            if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start) or start < 0:
                raise RequestProblem(f"card {i + 1}: start must be a number of seconds >= 0, got {start!r}",
                                     f"cards[{i}].start")
            if not prompt:
                raise RequestProblem(f"card {i + 1}: prompt must not be empty", f"cards[{i}].prompt")
            if len(prompt) > 4000:
                raise RequestProblem(f"card {i + 1}: prompt is longer than 4000 characters", f"cards[{i}].prompt")
            out.append({**c, "start": float(start), "prompt": prompt})
        if out[0]["start"] != 0:
            raise RequestProblem(f"the first card must start at 0 s, got {out[0]['start']:g}", "cards[0].start")
        for i, (a, b) in enumerate(zip(out, out[1:])):
            if round(b["start"] * self.fps) <= round(a["start"] * self.fps):
                why = "before" if b["start"] < a["start"] else "at the same time as" if b["start"] == a["start"] \
                    else f"less than a frame (1/{self.fps:g} s) after"
                raise RequestProblem(f"cards must be in order of start time without overlap: card {i + 2} starts "
                                     f"at {b['start']:g} s, {why} card {i + 1} at {a['start']:g} s",
                                     f"cards[{i + 1}].start")
        last = out[-1]["start"]
        if seconds in (None, ""):
            end = round((last + 2.0) * self.fps) / self.fps  # whole frames, as parse_seconds makes them
            if end > self.longest:
                raise RequestProblem(f"the board would last {end:g} s (its last card's start + 2 s); {self.name} "
                                     f"makes at most {self.longest:g} s", "cards")
        else:
            end = self.parse_seconds(seconds)
            if round(end * self.fps) <= round(last * self.fps):
                raise RequestProblem(f"seconds ({end:g}) must be after the last card's start ({last:g} s)",
                                     "seconds")
        bounds = [round(c["start"] * self.fps) for c in out] + [round(end * self.fps)]
        if transition == "continue" or any(c.get("image") for c in out) or \
                max(b - a for a, b in zip(bounds, bounds[1:])) > self.window_frames:
            self.require_frames("this storyboard (image cards, transition 'continue' or a card longer than "
                                f"{(self.window_frames - 1) / self.fps:g} s)", "cards")
        return out, end


def seconds_text(s: float) -> str:
    """How a duration is reported: "2", "2.5"."""
    return f"{s:g}"


# --- running a job ----------------------------------------------------------------------------------

@dataclass
class Result:
    """Frames at ``fps``: a (T, H, W, 3) uint8 array, or an iterator of (n, H, W, 3) chunks that the worker
    writes as they come; ``total`` is how many frames to expect (for the thumbnail and sprite sheet)."""

    frames: Any
    fps: float
    total: int
    note: str | None = None

    def chunks(self) -> Iterator[Any]:
        if hasattr(self.frames, "shape"):
            yield self.frames
        else:
            yield from self.frames


def load_video(path: Path, width: int, height: int, fps: float, max_seconds: float | None = None) -> Any:
    """A stored or uploaded clip as (T, height, width, 3) uint8 at the model's fps: each frame scaled to
    cover the size and centre-cropped as it is decoded (real footage of any size never sits whole in memory).
    ``max_seconds``: what the request was checked and charged for (the header's duration): a file whose frames
    run more than half a second longer is refused, not made (a header claiming 1 s over 90 s of frames had
    been charged 1 s), and one cut off short of its header is refused as truncated, as read_video_fitted
    always does. Frames are kept only at the model's rate and size, so a long file costs time, not memory."""
    from moviola.video_io import read_video_fitted

    return read_video_fitted(path, width, height, fps,
                             max_seconds=None if max_seconds is None else max_seconds + 0.5)


def run_job(pipe: Any, job: dict[str, Any], params: dict[str, Any], *, source: Path | None,
            callback: Callable[[int, int], None] | None = None) -> Result:
    """Make the frames for one job (the abilities check their arguments before any work starts).

    Args:
        pipe: a ``moviola.pipeline.Pipeline``.
        job: the job row (``kind``: create, remix, extension, edit or storyboard; ``prompt``).
        params: the job's parameters: width, height, seconds, seed, steps, guidance, sampler, fps,
            negative_prompt; input_image (a path: image-to-video); strength (remix, edit);
            extension_seconds and backward (extension); cards [{start, prompt, image_path?}] and transition
            (storyboard, image paths resolved by the worker).
        source: the source clip for remix/extension/edit (a stored output or an upload), else None.
        callback: ``(step, total)`` from the sampler, for progress.
    """
    from moviola.images import IMAGE_DECODE_SIDE
    from moviola.video_io import read_image

    kind, prompt = job["kind"], job["prompt"] or ""
    w, h, fps = int(params["width"]), int(params["height"]), float(params["fps"])
    common = dict(width=w, height=h, fps=fps, steps=int(params["steps"]), guidance=float(params["guidance"]),
                  seed=int(params["seed"]), negative_prompt=params.get("negative_prompt", ""),
                  sampler=params["sampler"], callback=callback)
    seconds = float(params["seconds"])
    total = max(1, round(seconds * fps))

    if kind == "create":
        image = read_image(params["input_image"], max_side=IMAGE_DECODE_SIDE) if params.get("input_image") else None
        return Result(pipe.stream(prompt, seconds=seconds, image=image, **common), fps, total)

    if kind in ("remix", "edit", "extension"):
        if source is None:
            raise JobFailure("source_unavailable", f"a {kind} needs a source video")
        # the source's length as checked and charged: an extension's total less its new seconds
        checked = seconds - float(params["extension_seconds"]) if kind == "extension" else seconds
        video = load_video(source, w, h, fps, max_seconds=checked)
        new_seconds = float(params["extension_seconds"]) if kind == "extension" else 0.0
        if kind == "extension" and not params.get("backward"):  # the source, then each window as it comes
            return Result(pipe.extend_stream(video, prompt, seconds=new_seconds, **common), fps,
                          len(video) + max(1, round(new_seconds * fps)))
        if kind == "extension":  # backwards: the new frames come before the source, made whole
            out = pipe.extend(video, prompt, seconds=new_seconds, backward=True, **common)
        else:  # window by window, written as it comes
            return Result(pipe.remix_stream(video, prompt, strength=float(params.get("strength", REMIX_STRENGTH)),
                                            **common), fps, len(video))
        return Result(out, fps, len(out))

    if kind == "storyboard":
        from moviola.pipeline import Card

        cards = [Card(float(c["start"]), c["prompt"], read_image(c["image_path"], max_side=IMAGE_DECODE_SIDE) if c.get("image_path") else None)
                 for c in params["cards"]]
        chunks = pipe.storyboard(cards, seconds=seconds, transition=params.get("transition", "cut"), **common)
        return Result(chunks, fps, total)

    raise JobFailure("unsupported", f"unknown job kind {kind!r}")


class FramePicker:
    """Keeps the few frames of a streamed clip that its thumbnail (the middle one) and sprite sheet (``count``
    evenly spaced, as ``video_io.sprite_sheet`` picks them) show, given how many frames to expect; memory
    does not grow with the clip."""

    def __init__(self, total: int, count: int = 16):
        import numpy as np

        self.total, self.seen, self.last = max(1, total), 0, None
        self.sheet = np.linspace(0, self.total - 1, min(count, self.total)).round().astype(int).tolist()
        self.mid = self.total // 2
        self.want = {*self.sheet, self.mid}
        self.kept: dict[int, Any] = {}

    def add(self, chunk: Iterable[Any]) -> None:
        for frame in chunk:
            if self.seen in self.want:
                self.kept[self.seen] = frame
            self.last, self.seen = frame, self.seen + 1

    def sheet_frames(self) -> Any:
        """The sprite sheet's frames in order (the last frame seen stands in for any that never came)."""
        import numpy as np

        if self.last is None:
            raise ValueError("no frames were made")
        return np.stack([self.kept.get(i, self.last) for i in self.sheet])

    def middle(self) -> Any:
        return self.kept.get(self.mid, self.last)
