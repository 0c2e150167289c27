"""Shot splitting: find the hard cuts in a video so a long edit becomes clean single-shot clips.

One pass decodes every frame (which also proves the whole file is readable, not just its header), shrinks
it to a tiny square and scores how much it differs from the frame before: half the mean absolute pixel
difference plus half the colour-histogram distance (3 x 16 bins, half the L1 norm), both in [0, 1]. A cut
is a frame whose score is above ``threshold`` *and* ``ratio`` times the mean score of its neighbours
(about half a second either side, as PySceneDetect's adaptive detector does): a fast pan scores high on
every frame and is not a cut; one jump between two quiet stretches is. Shots shorter than
``min_shot_seconds`` are dropped. Dissolves and fades are not detected.

    scan = scan_video("long.mp4")
    shots(scan, ShotConfig(enabled=True))   # -> [(0.0, 3.2), (3.2, 7.9)] seconds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SIG_SIZE = 32  # frames are compared at 32 x 32: enough to see a cut, cheap to convert
BINS = 16
SCORE_VERSION = 2  # bump when the score changes, so scores kept from earlier runs are recomputed


@dataclass
class ShotConfig:
    enabled: bool = False
    threshold: float = 0.1  # minimum score of a cut (0..1)
    ratio: float = 3.0  # and this many times the neighbours' mean score
    min_shot_seconds: float = 0.5


@dataclass
class VideoScan:
    """What one decoding pass learnt about a video: frame times and per-frame change scores."""

    width: int
    height: int
    fps: float
    times: np.ndarray = field(repr=False)  # (T,) seconds from the stream start
    scores: np.ndarray = field(repr=False)  # (T,) change from the frame before; scores[0] = 0

    @property
    def duration(self) -> float:
        """Seconds covered by the decoded frames (the last one lasts 1 / fps)."""
        return float(self.times[-1] - self.times[0]) + 1.0 / self.fps if len(self.times) else 0.0


def _signature(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SIG, SIG, 3) uint8 -> (pixels in [0, 1] float32, histogram (3, BINS) summing to 1 per channel).

    Soft bins (each value split linearly between its two nearest bin centres): with hard bins a flat
    background sitting on a bin edge flips bins on +-1 of codec noise and looks like a cut.
    """
    px = rgb.astype(np.float32) / 255.0
    pos = px.reshape(-1, 3) * BINS - 0.5  # position in bin-centre units
    lo = np.floor(pos)
    frac = pos - lo
    lo_i, hi_i = np.clip(lo, 0, BINS - 1).astype(np.int64), np.clip(lo + 1, 0, BINS - 1).astype(np.int64)
    hist = np.stack([np.bincount(lo_i[:, c], 1 - frac[:, c], BINS) + np.bincount(hi_i[:, c], frac[:, c], BINS)
                     for c in range(3)])
    return px, hist.astype(np.float32) / (rgb.shape[0] * rgb.shape[1])


def change_score(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """How different two frame signatures are, in [0, 1]."""
    pix = float(np.abs(a[0] - b[0]).mean())
    hist = float(np.abs(a[1] - b[1]).sum()) / (2 * 3)
    return 0.5 * pix + 0.5 * hist


def scan_video(path: str | Path) -> VideoScan:
    """Decode every frame of ``path`` once (at signature size) and score the change between frames.

    Raises VideoError for a file that cannot be opened, stops decoding early, or ends well before its
    header says (a cut-off download), as ``read_video`` does.
    """
    import av

    # The private helpers keep this pass's error messages identical to read_video's.
    from moviola.video_io import (DEFAULT_FPS, VideoError, _display_size, _open, _reason, _stream_duration,
                                  _stream_fps, _video_stream, truncation_margin)

    p = Path(path)
    times: list[float] = []
    scores: list[float] = []
    prev = None
    try:
        with _open(p) as container:
            stream = _video_stream(p, container)
            stream.thread_type = "AUTO"
            fps = _stream_fps(container, stream)
            expected = _stream_duration(container, stream, allow_container=False)
            tb, origin = stream.time_base, stream.start_time or 0
            width = height = 0
            try:
                for frame in container.decode(stream):
                    if frame.pts is not None and tb:
                        t = float((frame.pts - origin) * tb)
                    else:  # no timestamps (some raw streams): assume a constant rate
                        t = len(times) / (fps or DEFAULT_FPS)
                    if not times:  # as displayed: square pixels (anamorphic footage widened), then rotation
                        width, height = _display_size(stream, frame.width, frame.height)
                        if round((getattr(frame, "rotation", 0) or 0) / 90) % 2:
                            width, height = height, width
                    # Area averaging: a proper downscale, and some 20x faster than swscale's default here.
                    sig = _signature(frame.to_ndarray(format="rgb24", width=SIG_SIZE, height=SIG_SIZE,
                                                      interpolation="AREA", threads=1))  # no slice threads to inherit into a fork
                    scores.append(0.0 if prev is None else change_score(prev, sig))
                    times.append(t)
                    prev = sig
            except (av.FFmpegError, OSError) as e:
                raise VideoError(p, f"truncated or corrupt video (decoding failed after {len(times)} frames: "
                                    f"{_reason(e)})") from None
    except VideoError:
        raise
    except (av.FFmpegError, OSError) as e:
        raise VideoError(p, f"truncated or corrupt video ({_reason(e)})") from None
    if not times:
        raise VideoError(p, "truncated or corrupt video (no decodable frames)")
    # The decoder hands frames out in presentation order (B-frames already reordered).
    t, s = np.asarray(times, np.float64), np.asarray(scores, np.float32)
    if fps is None:
        span = t[-1] - t[0]
        fps = (len(t) - 1) / span if len(t) > 1 and span > 0 else DEFAULT_FPS
    scan = VideoScan(width, height, float(fps), t, s)
    if expected and expected - scan.duration > truncation_margin(expected, scan.fps, times):
        raise VideoError(p, f"truncated or corrupt video (frames stop at {scan.duration:.2f} s of {expected:.2f} s)")
    return scan


def detect_cuts(scores: np.ndarray, fps: float, cfg: ShotConfig) -> list[int]:
    """Frame indices that start a new shot (never 0), from per-frame change scores."""
    n = len(scores)
    half = max(2, int(round(fps / 2)))
    cuts = []
    for i in range(1, n):
        if scores[i] < cfg.threshold:
            continue
        nb = np.concatenate([scores[max(1, i - half):i], scores[i + 1:i + 1 + half]])
        if len(nb) == 0 or scores[i] >= cfg.ratio * float(nb.mean()):
            cuts.append(i)
    return cuts


def shots(scan: VideoScan, cfg: ShotConfig, start: float = 0.0, end: float | None = None) -> list[tuple[float, float]]:
    """(start, end) seconds of each shot inside [start, end) of the scanned video; the whole span when
    shot splitting is off. Times are on the same clock as ``read_video``'s ``start``/``end``."""
    t0 = float(scan.times[0])
    stop = scan.duration + t0 if end is None else min(end, scan.duration + t0)
    if not cfg.enabled:
        return [(start, stop)] if stop > start else []
    bounds = [start] + [float(scan.times[i]) for i in detect_cuts(scan.scores, scan.fps, cfg)
                        if start < scan.times[i] < stop] + [stop]
    # A stretch shorter than a shot (a flash, a few frames between two cuts) is dropped, not merged: merged
    # it would put a cut inside a clip.
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= cfg.min_shot_seconds]
