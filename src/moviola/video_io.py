"""Reading and writing video and images: the one module in Moviola that touches media files.

Everywhere else in Moviola a clip is a uint8 array of shape (T, H, W, 3) in RGB, plus an fps. This
module turns files into such arrays (``read_video``, ``read_image``, ``probe_video``), turns arrays into
files (``write_video``, ``write_image``, ``write_frames_png``, ``encode_image``) and reshapes clips the
way a model needs them (``fit_frames``, ``resample_fps``, ``thumbnail``, ``sprite_sheet``).

Two rules hold throughout:

- Every problem with a file surfaces as one ``VideoError`` that names the file and the problem, never a
  raw PyAV or OS traceback, so a data loader can skip a bad clip and a server can answer clearly.
- Every write is atomic (a temp file in the same directory, then ``os.replace``): an error or a crash
  never leaves a half-written file where a finished one is expected. ``atomic_path`` and
  ``atomic_write_bytes`` are public so that checkpoints and other outputs use the same mechanism.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from moviola.images import image_formats, open_image, pil_to_rgb
from moviola.layout import replace_or_stage
from moviola.media import IndirectFileError, local_path, open_video_file

PathLike = str | os.PathLike[str]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".gif", ".png")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_FPS = 8.0  # used only when a file carries no timing at all (some GIFs, raw streams)
QUALITIES: tuple[str, ...] = ("high", "default")
FIT_MODES: tuple[str, ...] = ("crop", "pad", "stretch")

# Constant-quality settings per encoder. "high" is near lossless on small synthetic clips, so colours
# and thin edges survive a round trip; "default" is what a person would pick for sharing.
_CRF: dict[str, dict[str, int]] = {
    "libx264": {"high": 12, "default": 20},  # 0..51, lower is better
    "libvpx-vp9": {"high": 15, "default": 32},  # 0..63
    "libvpx": {"high": 4, "default": 10},  # VP8, 4..63
}
_VIDEO_CODECS: dict[str, tuple[str, ...]] = {  # first available wins
    ".mp4": ("libx264",), ".mov": ("libx264",), ".mkv": ("libx264",),
    ".webm": ("libvpx-vp9", "libvpx"),
}
_AUDIO_CODECS: dict[str, tuple[str, ...]] = {
    ".mp4": ("aac",), ".mov": ("aac",), ".mkv": ("aac",), ".webm": ("libopus", "libvorbis"),
}
_RESIZE_CHUNK_BYTES = 64 * 2**20  # float32 working memory per interpolate call in _resize


class VideoError(Exception):
    """A media file could not be read or written; ``str()`` is ``"{path}: {problem}"``."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # survive pickling (DataLoader workers, multiprocessing)
        return (type(self), (self.path, self.problem))


@dataclass
class Video:
    """A decoded clip: frames (T, H, W, 3) uint8 RGB, its fps, an optional mono audio track in [-1, 1]
    (float32, ``sample_rate`` Hz) and the container's metadata tags."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration(self) -> float:
        """Seconds covered by the frames (T / fps)."""
        return self.num_frames / self.fps


# --- atomic writes ----------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success ``os.replace`` it onto ``path``, on error delete it.

    The temp name keeps the extension (``.clip.tmp-1a2b3c4d.mp4``) so muxers and image writers that pick
    the format from the name still work. Parent directories are created. ``fsync=True`` flushes the file
    to disk before the rename (worth it for checkpoints, not for thousands of PNG frames).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{secrets.token_hex(4)}{target.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        replace_or_stage(tmp, target)  # os.replace, or held until a layout.staged_writes block ends
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder: the error worth reporting is the one above
            tmp.unlink(missing_ok=True)
        raise


def ensure_dir(path: PathLike, what: str = "output folder") -> Path:
    """Make ``path`` a folder this process can write in, or a ValueError saying why not (a file in the way, a
    read-only place) before any work is spent on what would go there."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{p}: the {what} is a file, not a folder") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot make the {what} ({_reason(e)})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"{p}: the {what} is not writable")
    return p


def atomic_write_bytes(path: PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (readers see the old file or the new one, never a part)."""
    target = Path(path)
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return target


# --- array validation -------------------------------------------------------------------------------

def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_uint8_frames(frames: Any, name: str = "frames") -> np.ndarray:
    """Validate a clip and return it as contiguous (T, H, W, 3) uint8.

    Accepts numpy arrays or torch tensors that are uint8, other integers in [0, 255], or floats in
    [0, 1]. Floats are clipped to [0, 1] (decoders overshoot slightly), but values far outside (below
    -0.5 or above 1.5) raise: they mean a [-1, 1] or [0, 255] tensor was passed by mistake, which
    clipping would silently turn into a black or white video.
    """
    arr = _to_numpy(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (T, H, W, 3) in RGB; got {tuple(arr.shape)}")
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        raise ValueError(f"{name} must be uint8 or float in [0, 1]; got dtype bool")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"{name} has integer values outside [0, 255]")
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(arr.min()), float(arr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or inf")
        if lo < -0.5 or hi > 1.5:
            raise ValueError(f"float {name} must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}]")
        return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"{name} must be uint8 or float in [0, 1]; got dtype {arr.dtype}")


def _as_uint8_image(image: Any) -> np.ndarray:
    """Validate one image, (H, W, 3) or grayscale (H, W) / (H, W, 1), and return (H, W, 3) uint8."""
    arr = _to_numpy(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        hint = " (RGBA: drop or composite the alpha first; CHW: move channels last)" if arr.ndim == 3 else ""
        raise ValueError(f"image must have shape (H, W, 3) or (H, W); got {tuple(arr.shape)}{hint}")
    return _as_uint8_frames(arr[None], name="image")[0]


def _as_mono_audio(audio: Any) -> np.ndarray:
    """Validate a mono track, (N,) or (1, N) or (N, 1), and return float32 (N,) clipped to [-1, 1]."""
    arr = _to_numpy(audio)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"audio must be a non-empty mono track of shape (N,); got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"audio must be float in [-1, 1]; got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("audio contains NaN or inf")
    return np.clip(arr, -1.0, 1.0)


def _fps_fraction(fps: float | Fraction) -> Fraction:
    """Exact frame rate for the muxer: 29.97 -> 30000/1001 (NTSC family), 12.5 -> 25/2, 8 -> 8."""
    if isinstance(fps, numbers.Rational):
        rate = Fraction(fps)
    else:
        x = float(fps)
        if not math.isfinite(x):
            raise ValueError(f"fps must be a positive number; got {fps!r}")
        n = round(x * 1.001)
        # 23.976, 29.97, 59.94 ... are n/1.001 rounded to a few decimals; use the exact rational.
        if n > 0 and abs(x - n / 1.001) < 5e-3 and abs(x - n) > 5e-3:
            rate = Fraction(n * 1000, 1001)
        else:
            rate = Fraction(x).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be a positive number; got {fps!r}")
    return rate


# --- writing ----------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # UnknownCodecError, or a build without this encoder
        return False
    return True


def _pick_encoder(path: Path, names: tuple[str, ...]) -> str:
    for name in names:
        if _has_encoder(name):
            return name
    raise VideoError(path, f"this PyAV build has none of the encoders {', '.join(names)}")


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) to even H and W by repeating the last row/column (yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _rgb_frame(rgb: np.ndarray) -> av.VideoFrame:
    """One (H, W, 3) uint8 array as a PyAV frame (a seam that tests patch to fail mid-write)."""
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def _encoded_audio_frames(stream: Any, audio: np.ndarray, sample_rate: int) -> list[av.AudioFrame]:
    """Cut a mono float track into frames of the encoder's size, format and rate (pts in samples)."""
    ctx = stream.codec_context
    ctx.open()  # fixes frame_size (1024 for AAC, rate-dependent for Opus)
    resampler = av.AudioResampler(format=ctx.format, layout="mono", rate=ctx.sample_rate,
                                  frame_size=ctx.frame_size or None)
    whole = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
    whole.sample_rate = sample_rate
    whole.pts = 0
    whole.time_base = Fraction(1, sample_rate)
    return list(resampler.resample(whole)) + list(resampler.resample(None))


def _add_audio_stream(container: Any, path: Path, ext: str, sample_rate: int) -> Any:
    name = _pick_encoder(path, _AUDIO_CODECS[ext])
    codec = av.codec.Codec(name, "w")
    rates = codec.audio_rates
    rate = sample_rate
    if rates and sample_rate not in rates:  # e.g. Opus takes only 8/12/16/24/48 kHz
        rate = min((r for r in rates if r >= sample_rate), default=max(rates))
    stream = container.add_stream(name, rate=rate)
    stream.codec_context.layout = "mono"
    formats = [f.name for f in codec.audio_formats or ()]
    for fmt in ("fltp", "flt"):  # float avoids a 16-bit requantisation where the encoder allows it
        if fmt in formats:
            stream.codec_context.format = fmt
            break
    stream.time_base = Fraction(1, rate)
    return stream


def _add_video_stream(container: Any, target: Path, rate: Fraction, w: int, h: int, quality: str) -> Any:
    """An H.264 / VP9 (VP8) yuv420p stream of even size (w, h) whose pts are frame indices."""
    codec = _pick_encoder(target, _VIDEO_CODECS[target.suffix.lower()])
    opts = {"crf": str(_CRF[codec][quality])}
    if codec == "libx264":
        # mbtree off: with it, x264 reads memory it never wrote, so the same frames encoded in a process that
        # had run a model (its heap full of old tensors) came out differently from run to run; without it the
        # same frames always make the same file (a seed reproduces a video), for ~40 % more bytes at this crf.
        opts.update({"preset": "veryfast", "x264-params": "mbtree=0"})
    elif codec == "libvpx-vp9":  # constant quality needs b=0; cpu-used 5 is ~2x faster than default
        opts.update({"b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"})
    else:  # VP8: crf is a floor under a bitrate cap, so set a generous cap
        opts["b"] = "20M"
    stream = container.add_stream(codec, rate=rate, options=opts)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.time_base = 1 / rate  # pts = frame index, so the file reads back at exactly `rate`
    stream.codec_context.gop_size = max(1, min(250, round(2 * rate)))  # a keyframe every ~2 s
    return stream


def _write_av(tmp: Path, target: Path, frames: np.ndarray, rate: Fraction, audio: np.ndarray | None,
              sample_rate: int, metadata: dict[str, str], quality: str) -> None:
    """Encode an H.264 / VP9 file (plus optional AAC / Opus audio) at ``tmp``."""
    ext = target.suffix.lower()
    frames = _pad_to_even(frames)
    t, h, w, _ = frames.shape
    # Without use_metadata_tags the mp4/mov muxer drops every key it has no atom for; faststart
    # moves the index (moov) to the front so browsers can play a served file while it downloads.
    options = {"movflags": "use_metadata_tags+faststart"} if ext in (".mp4", ".mov") else {}
    with av.open(local_path(tmp), "w", options=options) as container:
        for key, value in metadata.items():
            container.metadata[key] = value
        stream = _add_video_stream(container, target, rate, w, h, quality)

        pending: list[av.AudioFrame] = []
        astream = None
        if audio is not None:
            astream = _add_audio_stream(container, target, ext, sample_rate)
            pending = _encoded_audio_frames(astream, audio, sample_rate)
        a = 0
        for i in range(t):
            # Interleave: mux the audio that starts before this video frame, so players and
            # streaming readers never need to buffer one whole track to reach the other.
            while astream is not None and a < len(pending) and \
                    pending[a].pts / astream.codec_context.sample_rate <= i / rate:
                container.mux(astream.encode(pending[a]))
                a += 1
            frame = _rgb_frame(frames[i])
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if astream is not None:
            for frame in pending[a:]:
                container.mux(astream.encode(frame))
            container.mux(astream.encode())


def _write_gif(tmp: Path, frames: np.ndarray, rate: Fraction) -> None:
    """Encode a looping GIF with one 256-colour palette shared by all frames (no dithering, so flat
    areas stay flat and frames do not flicker). GIF delays are whole centiseconds, so 8 fps is stored
    as alternating 12/13 cs delays."""
    t, h, w, _ = frames.shape
    # Palette from up to 16 evenly spaced frames, subsampled to ~256 px per side for speed.
    step = max(1, math.ceil(max(h, w) / 256))
    picks = np.linspace(0, t - 1, min(t, 16)).round().astype(int)
    sample = frames[picks, ::step, ::step]
    mosaic = Image.fromarray(np.ascontiguousarray(sample.reshape(-1, sample.shape[2], 3)))
    palette_image = mosaic.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    colours = np.array(palette_image.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    argb = np.zeros((256, 4), np.uint8)  # PyAV wants the pal8 palette as ARGB
    argb[:, 0] = 255
    argb[: len(colours), 1:] = colours
    with av.open(local_path(tmp), "w", format="gif") as container:
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
        stream.time_base = 1 / rate
        for i in range(t):
            indices = Image.fromarray(frames[i]).quantize(palette=palette_image, dither=Image.Dither.NONE)
            frame = av.VideoFrame.from_ndarray((np.asarray(indices), argb), format="pal8")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_video(path: PathLike, frames: Any, fps: float | Fraction, *, audio: Any = None,
                sample_rate: int = 16000, metadata: dict[str, str] | None = None,
                quality: str = "high") -> Path:
    """Write a clip atomically; the format follows the extension.

    Args:
        path: ``.mp4``/``.mov``/``.mkv`` (H.264, yuv420p), ``.webm`` (VP9, or VP8 if VP9 is missing),
            ``.gif`` (palette) or ``.png`` (exactly one frame).
        frames: (T, H, W, 3) RGB, numpy or torch, uint8 or float in [0, 1]. Odd H or W are padded to
            even by repeating the last row/column (yuv420p needs even sizes), so the file reads back
            at the padded size.
        fps: frames per second; may be fractional (29.97 is stored as exactly 30000/1001). The file
            reads back with this fps and exactly T frames.
        audio: optional mono float track in [-1, 1] at ``sample_rate`` Hz (AAC in mp4/mov/mkv, Opus
            in webm). Not allowed for gif/png.
        metadata: str -> str container tags (values are converted with ``str``). mp4/mov keep keys as
            given; mkv/webm store them upper-case and ``read_video`` returns them lower-case; gif and
            png do not keep metadata.
        quality: "high" (near lossless, crf 12 for x264) or "default" (crf 20).

    Returns:
        The written path. Raises ValueError for malformed arrays/arguments and VideoError for file
        problems (unsupported extension, encoder failure); on any failure nothing is left on disk.
    """
    target = Path(path)
    ext = target.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise VideoError(target, f"unsupported extension {ext or '(none)'!r}; "
                                 f"use one of {', '.join(VIDEO_EXTENSIONS)}")
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}; got {quality!r}")
    clip = _as_uint8_frames(frames)
    rate = _fps_fraction(fps)
    track = _as_mono_audio(audio) if audio is not None else None
    if track is not None and (not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive int; got {sample_rate!r}")
    if track is not None and ext in (".gif", ".png"):
        raise VideoError(target, f"{ext} cannot hold an audio track")
    if ext == ".png" and len(clip) != 1:
        raise VideoError(target, f".png holds one frame, got {len(clip)} "
                                 "(use write_frames_png or a video extension)")
    tags = _tags(metadata)
    try:
        with atomic_path(target) as tmp:
            if ext == ".png":
                _save_image(tmp, clip[0], "png")
            elif ext == ".gif":
                if rate > 100:
                    raise ValueError(f"fps {float(rate):g} is too high for a GIF: its frames last whole hundredths "
                                     "of a second, so 100 fps at most (write .mp4 or .webm instead)")
                _write_gif(tmp, clip, rate)
            else:
                _write_av(tmp, target, clip, rate, track, int(sample_rate), tags, quality)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(target, f"could not write video ({_reason(e)})") from e
    return target


class VideoWriter:
    """Write a video chunk by chunk, as its frames are made (long generations), in constant memory.

        with VideoWriter("out.mp4", fps=8, metadata={...}) as w:
            for chunk in pipe.stream(prompt, seconds=60):
                w.write(chunk)                       # (n, H, W, 3) uint8

    H.264 (``.mp4``/``.mov``/``.mkv``) or VP9 (``.webm``), video only. The file is written beside ``path``
    and renamed into place when closed, so readers never see half a file. If the ``with`` block ends in an
    exception (Ctrl-C included), the frames written so far are still finished into a playable file and
    kept at ``path`` when ``keep_partial`` (the default): an interrupted generation keeps what it made.
    ``frames_written`` counts them.
    """

    def __init__(self, path: PathLike, fps: float | Fraction, *, metadata: dict[str, str] | None = None,
                 quality: str = "high", keep_partial: bool = True) -> None:
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in (".mp4", ".mov", ".mkv", ".webm"):
            raise VideoError(self.path, f"streaming writes need .mp4, .mov, .mkv or .webm, got {ext or '(none)'!r}")
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {QUALITIES}; got {quality!r}")
        self.rate = _fps_fraction(fps)
        self.keep_partial = keep_partial
        self.frames_written = 0
        self._metadata = _tags(metadata)
        self._quality = quality
        self._size: tuple[int, int] | None = None
        self._kept: Path | None = None
        self._container = None
        self._broken = False  # a write failed (a full disk): the file cannot be finished
        if self.path.is_dir():
            raise VideoError(self.path, "could not write video (is a directory)")
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{secrets.token_hex(4)}{self.path.suffix}")
        options = {"movflags": "use_metadata_tags+faststart"} if ext in (".mp4", ".mov") else {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(local_path(self._tmp), "w", options=options)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(self.path, f"could not write video ({_reason(e)})") from None
        for key, value in self._metadata.items():
            self._container.metadata[key] = value
        self._stream = None

    def _open_stream(self, h: int, w: int) -> None:
        self._stream = _add_video_stream(self._container, self.path, self.rate, w + w % 2, h + h % 2, self._quality)
        self._size = (h, w)

    def write(self, frames: Any) -> None:
        """Append (n, H, W, 3) frames (uint8, or float in [0, 1]); every chunk must have the first's size."""
        if self._container is None:
            raise ValueError(f"{self.path}: this VideoWriter is closed")
        clip = _as_uint8_frames(frames)
        if self._stream is None:
            self._open_stream(*clip.shape[1:3])
        if clip.shape[1:3] != self._size:
            raise ValueError(f"frames are {clip.shape[2]}x{clip.shape[1]}, this video is "
                             f"{self._size[1]}x{self._size[0]}")
        try:
            for rgb in _pad_to_even(clip):
                frame = _rgb_frame(rgb)
                frame.pts = self.frames_written
                self._container.mux(self._stream.encode(frame))
                self.frames_written += 1
        except (av.FFmpegError, OSError) as e:
            self._broken = True
            raise VideoError(self.path, f"could not write video ({_reason(e)})") from None

    def close(self, keep: bool = True, path: PathLike | None = None) -> Path | None:
        """Finish the file and move it into place (``keep``: at ``path``, by default the writer's own), else
        delete it. Returns the path kept. A second call returns what the first kept. After a failed write
        (a full disk) nothing is kept: the temp file is removed and None returned."""
        if self._container is None:
            return self._kept
        if self._broken:
            # Flushing the encoder into a muxer whose write failed crashed the process inside FFmpeg (a
            # segfault on a full disk); closing without the flush is safe, and the file is dropped.
            container, self._container = self._container, None
            with contextlib.suppress(av.FFmpegError, OSError):
                container.close()
            self._tmp.unlink(missing_ok=True)
            return None
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode())
            self._container.close()
        except (av.FFmpegError, OSError) as e:
            self._tmp.unlink(missing_ok=True)
            raise VideoError(self.path, f"could not write video ({_reason(e)})") from None
        except BaseException:  # anything else (a tag the muxer can't take, Ctrl-C): no hidden temp file left
            self._tmp.unlink(missing_ok=True)
            raise
        finally:
            self._container = None
        if keep and self.frames_written:
            target = Path(path) if path is not None else self.path
            try:
                os.replace(self._tmp, target)
            except OSError as e:
                self._tmp.unlink(missing_ok=True)
                raise VideoError(target, f"could not write video ({_reason(e)})") from None
            self._kept = target
            return target
        self._tmp.unlink(missing_ok=True)
        return None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(keep=exc_type is None or self.keep_partial)


def read_video_fitted(path: PathLike, width: int, height: int, fps: float, *, start: float = 0.0,
                      end: float | None = None, max_seconds: float | None = None,
                      num_frames: int | None = None, phase: float = 0.0) -> np.ndarray:
    """Read a video for a model: (T, height, width, 3) uint8 at ``fps``, each frame scaled to cover the size
    and centre-cropped as it is decoded, so a long or large camera file never sits in memory whole.

    Frame k of the result shows time start + k / fps by the frames' own timestamps (the latest source frame
    at or before it), so variable-frame-rate footage keeps its real speed. ``max_seconds``: a VideoError if
    the window read is longer (checked against the header before decoding, when it has a duration).
    ``num_frames``: exactly that many frames from ``start`` (``end`` is then implied); a VideoError if the
    file ends more than one source frame before the last of them. ``phase``: sample at start + (k + phase)
    / fps instead (0.5: mid-frame, which reads footage whose frames were held to raise its rate, e.g. 8 fps
    content in a 29.97 fps file, at its own frames rather than one late).
    """
    p = Path(path)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number above 0; got {fps!r}")
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1; got {num_frames}")
        end = start + num_frames / fps

    def fit(rgb: np.ndarray) -> np.ndarray:
        return fit_frames(rgb[None], width, height, mode="crop")[0]

    def shrink(w: int, h: int) -> tuple[int, int] | None:
        """A frame larger than the target is scaled down by FFmpeg (area averaging, in the pass that converts
        it to RGB) to the size that just covers the target; `fit` then only crops it. A 10 s 1080p file read
        for a 64x64 model had peaked at 4 GB and taken 34 s (a float copy of every full frame through torch,
        whose threads also fight the decoder's on a small machine)."""
        f = max(width / w, height / h)
        return None if f >= 1 else (max(width, round(w * f)), max(height, round(h * f)))

    if not (math.isfinite(start) and start >= 0) or (end is not None and not end > start):
        raise ValueError(f"need 0 <= start < end; got start={start}, end={end}")
    too_long = f"at most {max_seconds:g} s can be used here" if max_seconds is not None else ""
    try:
        with _open(p) as container:
            stream = _video_stream(p, container)
            src_fps = _gif_rate(container, stream, _stream_fps(container, stream))
            expected = _stream_duration(container, stream, allow_container=False)
            if max_seconds is not None and expected:  # refuse a long file before decoding all of it
                window = min(expected, end if end is not None else expected) - start
                if window > max_seconds + 0.5:
                    raise VideoError(p, f"video is {window:.2f} s long; {too_long}")
            tol = 0.5 * float(stream.time_base or 0) + 1e-6  # timestamps rounded to the time base (GIF: 1/100 s)
            # With num_frames, frame 0 is the one on screen at `start`, which may have begun before it.
            frames, times, last_end = _decode_frames(p, container, stream, src_fps, start, end, None, transform=fit,
                                           on_screen_at_start=num_frames is not None, prescale=shrink,
                                           samples=(fps, phase, tol, start if num_frames is not None else None))
    except VideoError:
        raise
    except (av.FFmpegError, OSError) as e:
        raise VideoError(p, f"truncated or corrupt video ({_reason(e)})") from None
    if end is None:
        _check_complete(p, times, src_fps or _fps_from_times(times), expected, last_end=last_end)
    frame_step = 1.0 / (src_fps or DEFAULT_FPS)
    # To the end of the last frame's own showing where the file says it (a GIF's last delay may be longer than
    # its others: a 2 s GIF whose last frame held 200 ms had come back 1.875 s long)
    span = (last_end if end is None and last_end is not None else times[-1] + frame_step) - times[0]
    if max_seconds is not None and span > max_seconds + 1e-6:
        raise VideoError(p, f"video is {span:.2f} s long; {too_long}")
    if num_frames is not None:
        t0, n = start, num_frames
        last_needed = (n - 1) / fps
        if last_needed > times[-1] - t0 + 1.5 * frame_step:  # more than one source frame missing
            raise VideoError(p, f"only {times[-1] - t0 + frame_step:.2f} s of video from {start:g} s; "
                                f"{n} frames at {fps:g} fps need {n / fps:.2f} s")
    else:
        t0, n = times[0], max(1, round(span * fps))
    idx = np.searchsorted(np.asarray(times) - t0, (np.arange(n) + phase) / fps + tol, side="right") - 1
    return frames[np.clip(idx, 0, len(frames) - 1)]


# --- images -----------------------------------------------------------------------------------------

def _save_image(path: Path, image: np.ndarray, fmt: str) -> None:
    img = Image.fromarray(image)
    if fmt == "png":
        img.save(path, format="PNG")
    elif fmt == "jpeg":
        img.save(path, format="JPEG", quality=95)
    else:
        img.save(path, format="WEBP", quality=90)


_IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def write_image(path: PathLike, image: Any) -> Path:
    """Write one (H, W, 3) image atomically as PNG, JPEG or WebP (chosen by extension)."""
    target = Path(path)
    fmt = _IMAGE_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise VideoError(target, f"unsupported image extension {target.suffix or '(none)'!r}; "
                                 f"use one of {', '.join(IMAGE_EXTENSIONS)}")
    rgb = _as_uint8_image(image)
    try:
        with atomic_path(target) as tmp:
            _save_image(tmp, rgb, fmt)
    except OSError as e:
        raise VideoError(target, f"could not write image ({_reason(e)})") from e
    return target


def write_frames_png(directory: PathLike, frames: Any) -> list[Path]:
    """Write each frame as ``directory/frame_00000.png``, ``frame_00001.png``, ... (each atomic)."""
    clip = _as_uint8_frames(frames)
    folder = Path(directory)
    return [write_image(folder / f"frame_{i:05d}.png", frame) for i, frame in enumerate(clip)]


def encode_image(image: Any, fmt: str = "png") -> bytes:
    """Encode one (H, W, 3) image as PNG, JPEG or WebP bytes (for HTTP responses and data URLs)."""
    key = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}.get(fmt.lower())
    if key is None:
        raise ValueError(f"fmt must be 'png', 'jpeg' or 'webp'; got {fmt!r}")
    buf = io.BytesIO()
    _save_image(buf, _as_uint8_image(image), key)  # type: ignore[arg-type]  # PIL takes file objects
    return buf.getvalue()


def read_image(path: PathLike, *, max_side: int | None = None) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB. EXIF orientation is applied; alpha is composited onto
    black; grayscale and palette images are expanded to RGB. ``max_side``: the caller will scale it down to
    fit at most this many pixels a side, so a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size as long as
    both sides stay at least that (a 48-megapixel phone photo had taken 630 MB to condition a 64x64 clip)."""
    p = Path(path)
    _check_file(p)
    try:
        with open_image(p, max_side=max_side) as im:  # a JPEG decoded reduced, never below max_side a side
            return pil_to_rgb(im)
    except UnidentifiedImageError:
        raise VideoError(p, "not an image: unrecognised file format (PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF... are "
                            "read)") from None
    except Image.DecompressionBombError:
        raise VideoError(p, f"image is too large to open (over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, the "
                            "decompression-bomb guard): scale it down first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise VideoError(p, f"truncated or corrupt image ({_reason(e)})") from None


# --- reading video ----------------------------------------------------------------------------------

def _reason(e: BaseException) -> str:
    """FFmpeg/OS error text without the file name (VideoError adds that itself)."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoError(path, "no such file") from None
    except OSError as e:
        raise VideoError(path, f"cannot access file ({_reason(e)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(path, "is a directory, not a file")
    if st.st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")


def _looks_like_container(path: Path) -> bool:
    """True if the first bytes carry a known video container signature (so a failed open means a
    damaged video rather than some other kind of file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # mp4 / mov
            or head[:4] == b"\x1a\x45\xdf\xa3"  # matroska / webm (EBML)
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
            or head[:6] in (b"GIF87a", b"GIF89a")
            or head[:4] == b"OggS" or head[:3] == b"FLV")


def _open(path: Path) -> Any:
    """Open ``path`` for reading with PyAV, turning every failure into a VideoError."""
    _check_file(path)
    try:
        return open_video_file(path, metadata_errors="replace")
    except IndirectFileError as e:
        raise VideoError(path, f"not a video: {e}") from None
    except PermissionError:
        raise VideoError(path, "permission denied") from None
    except (av.FFmpegError, OSError) as e:
        if _looks_like_container(path):
            raise VideoError(path, f"truncated or corrupt video ({_reason(e)})") from None
        raise VideoError(path, "not a video: unrecognised file format") from None


def _video_stream(path: Path, container: Any) -> Any:
    """The first real video stream; still images and cover art are 'not a video'."""
    fmt = container.format.name
    # ffmpeg opens PNG/JPEG/... through image demuxers that expose one "video" stream of one frame.
    if fmt == "image2" or (fmt.endswith("_pipe") and fmt != "gif_pipe"):
        # image2 is chosen by the file's extension alone: say "a still image" only of one that decodes as one
        try:
            from PIL import Image

            with Image.open(path, formats=image_formats()) as im:
                im.verify()
        except Exception:
            raise VideoError(path, "not a video or an image: unrecognised file format") from None
        raise VideoError(path, "not a video: no video stream (a still image: give it where an image is expected)")
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:  # album art in audio files
            if stream.codec_context is None:  # PyAV found no decoder for the stream's codec
                raise VideoError(path, "unsupported codec: this FFmpeg build has no decoder for its video "
                                       "stream; re-encode it (for example to H.264)")
            return stream
    raise VideoError(path, "not a video: no video stream")


GIF_GUESS = 99.9  # fps: what FFmpeg reports for GIFs whose delays are under 2 cs and uneven (40 to 75 fps)


def _stream_fps(container: Any, stream: Any) -> float | None:
    """fps from the container: average_rate, then guessed_rate (the other way round for GIF, whose
    centisecond delays make the average drift: 8 fps GIFs average 8.33)."""
    rates = (stream.average_rate, stream.guessed_rate)
    if container.format.name in ("gif", "gif_pipe"):
        rates = rates[::-1]
    for r in rates:
        if r is not None and 0 < float(r) <= 1000:
            return float(r)
    return None


def _gif_rate(container: Any, stream: Any, fps: float | None) -> float | None:
    """``fps`` from _stream_fps, or for a GIF FFmpeg guessed 100 fps for (delays under 2 cs, uneven), its frames
    over its duration, when the header has both (read_video uses the decoded timestamps instead)."""
    if fps is None or fps < GIF_GUESS or container.format.name not in ("gif", "gif_pipe"):
        return fps
    duration = _stream_duration(container, stream)
    return round(stream.frames / duration, 3) if stream.frames and duration else fps


def _stream_duration(container: Any, stream: Any, *, allow_container: bool = True) -> float | None:
    """Seconds of the video stream: its own duration, else matroska's per-stream DURATION tag
    ("00:00:01.334000000"), else (if allowed) the container's, which may include a longer audio
    track."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        with contextlib.suppress(ValueError):
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if allow_container and container.duration:
        return container.duration / av.time_base
    return None


def _container_metadata(container: Any) -> dict[str, str]:
    tags = {str(k): str(v) for k, v in container.metadata.items()}
    if "matroska" in container.format.name:  # matroska stores tag names upper-case
        tags = {k.lower(): v for k, v in tags.items()}
    return tags


def _display_size(stream: Any, width: int, height: int) -> tuple[int, int]:
    """(width, height) a frame is shown at: the stored size with its sample (pixel) aspect ratio applied,
    widening or narrowing it (a 1440x1080 HDV frame of 4:3 pixels shows as 1920x1080)."""
    sar = stream.sample_aspect_ratio or (stream.codec_context.sample_aspect_ratio if stream.codec_context else None)
    if not sar or sar <= 0 or sar == 1 or not 0.2 <= float(sar) <= 5:  # unset, square, or nonsense
        return width, height
    return max(1, round(width * float(sar))), height


def _frames_from(container: Any, stream: Any, start: float, step: float) -> Iterator[tuple[float, Any]]:
    """(seconds from the stream start, frame) in presentation order, from the last keyframe at or before
    ``start`` on. Seeking is exact in mp4 and matroska but rough in MPEG-TS (AVCHD .MTS/.m2ts): a seek there
    can land after ``start`` (a clip would then begin on a later frame, held) or on nothing, so a seek whose
    first frame comes more than a frame late, or that yields none, is tried again 10 s earlier, then from the
    top. Frames before ``start`` are the caller's to skip."""
    tb = stream.time_base
    origin = stream.start_time or 0  # stream.time_base units
    targets = [start] + ([start - 10.0] if start > 10.0 else []) + [0.0] if start > 0 else [0.0]
    for k, target in enumerate(targets):
        last = k == len(targets) - 1
        if target > 0 or k > 0:
            try:  # the top is the container's time 0 (a stream-relative seek to the origin lands late in MPEG-TS)
                if target > 0:
                    container.seek(origin + int(target / tb), stream=stream, backward=True)
                else:
                    container.seek(0, backward=True)
            except (av.FFmpegError, OSError):  # unseekable input: decode from where it is (the top)
                if not last:
                    continue
        n = 0
        for frame in container.decode(stream):
            t = float((frame.pts - origin) * tb) if frame.pts is not None and tb else n * step
            if n == 0 and not last and t > start + 1.5 * step:
                break  # landed late: seek earlier
            n += 1
            yield t, frame
        else:
            if n or last:
                return
            continue  # this seek found no frames at all: seek earlier


def _decode_frames(path: Path, container: Any, stream: Any, fps: float | None, start: float,
                   end: float | None, max_frames: int | None,
                   transform: Callable[[np.ndarray], np.ndarray] | None = None,
                   on_screen_at_start: bool = False,
                   prescale: Callable[[int, int], tuple[int, int] | None] | None = None,
                   samples: tuple[float, float, float, float | None] | None = None,
                   ) -> tuple[np.ndarray, list[float], float | None]:
    """Decode frames in presentation order whose timestamps fall in [start, end); with ``on_screen_at_start``
    the frame on screen at ``start`` leads them when none falls on it (the last one before it, however long
    before: variable-frame-rate files have gaps of several frames).

    Returns (T, H, W, 3) uint8, their timestamps in seconds from the stream start, and when the last frame
    decoded stops showing (its timestamp plus its own duration; None where the file does not say). Display
    rotation (phone videos) is applied in multiples of 90 degrees, and non-square pixels (anamorphic
    DV/HDV footage) are scaled to the display aspect ratio, so a circle stays round. ``prescale`` maps the
    displayed (width, height) to a smaller size FFmpeg's scaler converts each frame at (area averaging, in the
    same pass as the colour conversion), or None for full size: a caller that wants small frames of a large
    file then never holds a full-size RGB frame or its float copy. ``samples`` = (rate, phase, tol, t0): keep
    only the frames some time t0 + (k + phase) / rate + tol (k = 0, 1, ...; t0 None: the first frame's time)
    shows, the latest frame at or before it, plus the first and the last; so a long file read at a low rate
    holds only the frames it gives.
    """
    stream.thread_type = "AUTO"
    step = 1.0 / (fps or DEFAULT_FPS)
    # Timestamps in ms (matroska) or cs (gif) are rounded: a frame within eps of a bound counts as on it. A few
    # milliseconds, at most a quarter frame (a quarter frame at 8 fps had dropped the frame at 1.0 s from [0, 1.02)).
    eps = min(0.25 * step, 0.006)
    frames: list[np.ndarray] = []
    times: list[float] = []
    decoded = 0
    size: tuple[int, int] | None = None
    small: tuple[int, int] | None = None  # what `prescale` asked for, in the stream's orientation
    turns = 0
    flips: tuple[int, ...] = ()  # axes to mirror (a display matrix with a flip: mirrored selfie footage)

    first: tuple[int, int] | None = None  # the first frame's coded size: the clip's shape

    def take(t: float, frame: Any) -> None:
        nonlocal size, turns, small, first, flips
        if size is None:
            first = (frame.width, frame.height)
            size = _display_size(stream, frame.width, frame.height)
            turns, flips = _orientation(frame)
            if prescale is not None:
                shown = prescale(*(size[::-1] if turns % 2 else size))  # the size as displayed, after rotation
                small = None if shown is None else tuple(shown[::-1] if turns % 2 else shown)
        alpha = any(c.is_alpha for c in frame.format.components)  # transparent GIFs, PNGs: onto black
        # threads=1 everywhere below: a scaler with slice threads, made here and inherited by a forked data
        # worker (moviola.data.parallel), deadlocked that worker when it freed it (a CI run hung in a cache test)
        fmt = "rgba" if alpha else "rgb24"
        same = (frame.width, frame.height) == first
        if not same:  # the resolution changed mid-stream: its own display shape, cover-cropped to the clip's below
            own = _display_size(stream, frame.width, frame.height)
            rgb = frame.to_ndarray(format=fmt, width=own[0], height=own[1], threads=1)
        elif small is not None:
            rgb = frame.to_ndarray(format=fmt, width=small[0], height=small[1], interpolation="AREA", threads=1)
        elif (frame.width, frame.height) == size:
            rgb = frame.to_ndarray(format=fmt, threads=1)
        else:  # non-square pixels: scaled to the display aspect ratio
            rgb = frame.to_ndarray(format=fmt, width=size[0], height=size[1], threads=1)
        if alpha:
            rgb = _over_black(rgb)
        if not same:
            want = small or size
            rgb = fit_frames(rgb[None], want[0], want[1], mode="crop")[0]
        rgb = np.rot90(rgb, turns) if turns else rgb
        rgb = np.flip(rgb, flips) if flips else rgb
        frames.append(transform(np.ascontiguousarray(rgb)) if transform is not None else rgb)
        times.append(t)

    def needed(a: float, b: float) -> bool:
        """Whether a sample time of ``samples`` falls in [a, b) (a little wider: kept frames only cost memory)."""
        rate, phase, tol, t0 = samples
        t0 = times[0] if t0 is None else t0
        k = max(0, math.ceil((a - 1e-6 - t0 - tol) * rate - phase))
        return t0 + (k + phase) / rate + tol < b + 1e-6

    pending = None  # with ``samples``: the last frame, undecoded to RGB until the next one's time says if it is needed

    def offer(t: float, frame: Any) -> None:
        nonlocal pending
        if samples is None:
            take(t, frame)
            return
        if pending is not None and (not times or needed(pending[0], t)):  # the first is always kept
            take(*pending)
        pending = (t, frame)

    held = None  # on_screen_at_start: the last frame before start, until the next one shows whether it leads
    last_end = None  # when the last frame decoded stops showing: a GIF or a slideshow may hold it for seconds
    try:
        for t, frame in _frames_from(container, stream, start, step):
            decoded += 1
            shown = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
            last_end = t + shown if shown > 0 else None
            if t < start - eps:
                if on_screen_at_start:
                    held = (t, frame)
                continue
            if held is not None:
                if t > start + eps:  # nothing on start itself: the frame before it is what shows there
                    offer(*held)
                held = None
            if (end is not None and t >= end - eps) or (max_frames is not None and len(frames) >= max_frames):
                break
            offer(t, frame)
            if max_frames is not None and len(frames) >= max_frames:
                break
        if held is not None:  # every frame decoded was before start: the last of them is on screen there
            offer(*held)
        if pending is not None:  # the last is always kept: samples past it show it, and it ends the clip
            take(*pending)
    except (av.FFmpegError, OSError) as e:
        raise VideoError(path, f"truncated or corrupt video (decoding failed after {decoded} frames: "
                               f"{_reason(e)})") from None
    if not frames:
        if decoded == 0:
            raise VideoError(path, "truncated or corrupt video (no decodable frames)")
        window = f"[{start:g}, {end:g})" if end is not None else f"from {start:g} s"
        raise VideoError(path, f"no frames in the requested time range {window}")
    return np.stack(frames), times, last_end


def _read_audio(path: Path, video_origin: float, start: float, stop: float | None
                ) -> tuple[np.ndarray, int] | None:
    """Decode the first audio track as mono float32 covering [start, stop) seconds of the video's
    timeline (None: to the end). Returns None when the file has no audio."""
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        if start > 0:
            with contextlib.suppress(av.FFmpegError, OSError):
                container.seek(int((video_origin + start) * av.time_base), backward=True)
        resampler = av.AudioResampler(format="flt", layout="mono")  # keeps the stream's rate
        chunks: list[np.ndarray] = []
        first: float | None = None
        rate = stream.codec_context.sample_rate
        try:
            for frame in container.decode(stream):
                if first is None:
                    first = float(frame.time) if frame.time is not None else video_origin
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    rate = out.sample_rate
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(path, f"truncated or corrupt audio ({_reason(e)})") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    # Place sample 0 on the video's timeline, then cut the requested window out of it.
    lead = round(((first if first is not None else video_origin) - video_origin - start) * rate)
    if lead > 0:
        samples = np.concatenate([np.zeros(lead, np.float32), samples])
    elif lead < 0:
        samples = samples[-lead:]
    if stop is not None:
        samples = samples[: max(0, round((stop - start) * rate))]
    return np.clip(samples, -1.0, 1.0), int(rate)


def _orientation(frame: Any) -> tuple[int, tuple[int, ...]]:
    """How to show a decoded frame: (quarter turns counter-clockwise, image axes to mirror after turning), from
    its display rotation and display matrix, by FFmpeg's own rules (fftools' autorotate): at 90 degrees
    clockwise its transpose filter, "cclock_flip" (a transpose) where m[3] > 0, else "clock"; at 270,
    "clock_flip" where m[3] < 0, else "cclock"; at 180, left-right if m[0] < 0 and top-bottom if m[4] < 0;
    at 0, top-bottom if m[4] < 0. A mirrored clip (a front camera's) had been shown turned: by 180 degrees
    when upright, by a quarter turn the wrong way when portrait."""
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    matrix = None
    for sd in getattr(frame, "side_data", ()) or ():
        if getattr(getattr(sd, "type", None), "name", "") == "DISPLAYMATRIX":
            raw = bytes(sd)
            matrix = np.frombuffer(raw[:36], "<i4") if len(raw) >= 36 else None
    if matrix is None:
        return turns, ()
    if turns == 3:  # FFmpeg's 90 degrees clockwise
        return (1, (0,)) if matrix[3] > 0 else (3, ())  # a transpose: a quarter turn left, then top-bottom
    if turns == 1:  # FFmpeg's 270
        return (3, (0,)) if matrix[3] < 0 else (1, ())
    flips = tuple(axis for axis, mirrored in ((1, turns == 2 and matrix[0] < 0), (0, matrix[4] < 0)) if mirrored)
    return 0, flips


def _tags(metadata: dict | None) -> dict[str, str]:
    """Container tags as text FFmpeg can store: a file name that is not UTF-8 (its undecodable bytes come to
    Python as lone surrogates) is kept with those bytes escaped (caf\\xe9.mp4), instead of failing the write at
    the end."""
    def text(v: Any) -> str:
        return str(v).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    return {text(k): text(v) for k, v in (metadata or {}).items()}


def _over_black(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA composited onto black, as read_image does: (H, W, 3) uint8."""
    a = rgba[..., 3:].astype(np.uint16)
    return ((rgba[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)


def _fps_from_times(times: list[float]) -> float:
    """Mean frame rate of decoded timestamps; DEFAULT_FPS for a single frame."""
    span = times[-1] - times[0]
    return (len(times) - 1) / span if len(times) > 1 and span > 0 else DEFAULT_FPS


def truncation_margin(expected: float, fps: float, times) -> float:
    """Seconds by which a file's frames (decoded at ``times``) may end before its header's duration and still
    count as whole: two frames and a half (two missing frames pass, three do not), or 3 %, whichever is more
    (headers, edit lists and last-frame durations differ by a frame or two; the margin had been max(0.5 s, 10 %), and a 2 s clip cut at 85 % passed as a 1.6 s
    one). A frame counts as long as the longest the file holds one (a GIF or a slideshow may hold its last for
    seconds); with a single frame, whose length nothing tells, the old margin."""
    if len(times) < 2:
        return max(0.5, 0.1 * expected)
    longest = max(b - a for a, b in zip(times[:-1], times[1:]))
    return max(2.5 / fps, 2.5 * longest, 0.03 * expected)


def _check_complete(path: Path, times: list[float], fps: float, expected: float | None,
                    last_end: float | None = None) -> None:
    """A VideoError if the frames decoded to the end of a file stop well before its header's duration.

    A cut-off mkv/webm (or an mp4 with its index in front, as Moviola writes them) decodes without any
    error up to the cut; only the header tells. The margin tolerates headers that are off by a frame or two
    but catches an interrupted download. (Not the header's frame count: an MP4 cut by stream copy lists the
    frames its edit list drops, and an AVI its empty ones.)"""
    if not expected:
        return
    covered = last_end if last_end is not None else times[-1] + 1.0 / fps  # the last frame shown its own time
    if expected - covered > truncation_margin(expected, fps, times):
        raise VideoError(path, f"truncated or corrupt video (frames stop at {covered:.2f} s of {expected:.2f} s)")


def read_video(path: PathLike, *, max_frames: int | None = None, start: float = 0.0,
               end: float | None = None, with_audio: bool = False) -> Video:
    """Decode a video file (mp4, webm, mov, mkv, gif, avi: anything PyAV opens with a video stream).

    Args:
        path: the file.
        max_frames: stop after this many frames.
        start, end: keep frames whose timestamps (seconds from the start of the stream) lie in
            [start, end).
        with_audio: also decode the first audio track as mono float32, cut to the same time window
            (the whole track when no window or limit is given).

    Returns:
        A Video in presentation order (B-frames are reordered by the decoder). fps comes from the
        container (29.97 footage gives 30000/1001 as a float), else frame timestamps, else 8.
        Raises VideoError for missing, empty, non-video, truncated or undecodable files, and
        ValueError for bad arguments.
    """
    p = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1; got {max_frames}")
    if not (math.isfinite(start) and start >= 0) or (end is not None and not end > start):
        raise ValueError(f"need 0 <= start < end; got start={start}, end={end}")
    try:
        with _open(p) as container:
            stream = _video_stream(p, container)
            fps = _stream_fps(container, stream)
            frames, times, last_end = _decode_frames(p, container, stream, fps, start, end, max_frames)
            metadata = _container_metadata(container)
            origin = float((stream.start_time or 0) * stream.time_base) if stream.time_base else 0.0
            expected = _stream_duration(container, stream, allow_container=False)
            gif = container.format.name in ("gif", "gif_pipe")
        if fps is None:  # no rate in the container: use the timestamps, else the GIF convention
            fps = _fps_from_times(times)
        elif gif and fps >= GIF_GUESS and len(times) > 2:
            # GIF delays are whole centiseconds; FFmpeg guesses 100 fps for 40 to 75 fps GIFs (2.5 to 1.3 cs
            # delays): the timestamps say what the file plays at (only then: a GIF that holds a frame is uneven)
            fps = round(_fps_from_times(times), 3)
        if end is None and max_frames is None:
            _check_complete(p, times, fps, expected, last_end=last_end)
        audio = sample_rate = None
        if with_audio:
            whole = end is None and max_frames is None
            t0 = times[0] if start > 0 else 0.0
            stop = None if whole else times[-1] + 1.0 / fps
            track = _read_audio(p, origin, t0, stop)
            if track is not None:
                audio, sample_rate = track
    except VideoError:
        raise
    except (av.FFmpegError, OSError) as e:  # anything the steps above did not classify
        raise VideoError(p, f"truncated or corrupt video ({_reason(e)})") from None
    return Video(frames=frames, fps=fps, audio=audio, sample_rate=sample_rate, metadata=metadata)


def probe_video(path: PathLike) -> dict[str, Any]:
    """Cheap facts about a video without decoding it all (one frame is decoded, which also proves
    the file is readable and gives the display rotation).

    Returns a dict with width, height (as ``read_video`` returns them: after rotation, in square pixels), fps,
    num_frames (from the container index, else duration * fps), duration (seconds), codec,
    has_audio, container (format name) and rotation (degrees, counter-clockwise).
    """
    p = Path(path)
    try:
        with _open(p) as container:
            stream = _video_stream(p, container)
            fps = _gif_rate(container, stream, _stream_fps(container, stream)) or DEFAULT_FPS
            duration = _stream_duration(container, stream)
            num_frames = stream.frames or (round(duration * fps) if duration else 0)
            codec = stream.codec_context.name
            has_audio = len(container.streams.audio) > 0
            fmt = container.format.name
            try:
                first = next(iter(container.decode(stream)), None)
            except (av.FFmpegError, OSError) as e:
                raise VideoError(p, f"truncated or corrupt video ({_reason(e)})") from None
            if first is None:
                raise VideoError(p, "truncated or corrupt video (no decodable frames)")
            rotation = int(round((getattr(first, "rotation", 0) or 0) / 90) % 4 * 90)
            width, height = _display_size(stream, first.width, first.height)
            if rotation in (90, 270):
                width, height = height, width
    except VideoError:
        raise
    except (av.FFmpegError, OSError) as e:
        raise VideoError(p, f"truncated or corrupt video ({_reason(e)})") from None
    return {"width": width, "height": height, "fps": fps, "num_frames": int(num_frames),
            "duration": duration if duration is not None else num_frames / fps, "codec": codec,
            "has_audio": has_audio, "container": fmt, "rotation": rotation}


# --- reshaping clips --------------------------------------------------------------------------------

def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of (T, H, W, 3) uint8 to (T, height, width, 3), in chunks of frames
    so a long clip never needs more than ~64 MiB of float working memory."""
    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return np.array(frames)
    out = np.empty((t, height, width, 3), np.uint8)
    per_frame = 4 * 3 * (h * w + height * width)
    chunk = max(1, _RESIZE_CHUNK_BYTES // per_frame)
    for s in range(0, t, chunk):
        part = np.ascontiguousarray(frames[s : s + chunk])
        part = part if part.flags.writeable else part.copy()  # torch wants writable memory (PIL's arrays are not)
        x = torch.from_numpy(part).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def fit_frames(frames: Any, width: int, height: int, *, mode: str = "crop") -> np.ndarray:
    """Resize a clip to exactly (T, height, width, 3) uint8 for a model.

    mode "crop": scale to cover the target and centre-crop (keeps aspect ratio, loses edges);
    "pad": scale to fit inside and pad with black (keeps everything); "stretch": plain resize.
    """
    clip = _as_uint8_frames(frames)
    if not (isinstance(width, numbers.Integral) and isinstance(height, numbers.Integral)) \
            or width < 1 or height < 1:
        raise ValueError(f"width and height must be positive ints; got {width}x{height}")
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {FIT_MODES}; got {mode!r}")
    t, h, w, _ = clip.shape
    if mode == "stretch":
        return _resize(clip, height, width)
    if mode == "crop":
        # Crop the source to the target's aspect ratio, then resize once: the same picture as
        # scale-then-crop, without resampling pixels that would be thrown away.
        if w * height > h * width:  # source is wider than the target
            cw, ch = min(w, max(1, round(h * width / height))), h
        else:
            cw, ch = w, min(h, max(1, round(w * height / width)))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return _resize(clip[:, y0 : y0 + ch, x0 : x0 + cw], height, width)
    scale = min(width / w, height / h)
    fw, fh = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    out = np.zeros((t, height, width, 3), np.uint8)
    y0, x0 = (height - fh) // 2, (width - fw) // 2
    out[:, y0 : y0 + fh, x0 : x0 + fw] = _resize(clip, fh, fw)
    return out


def resample_fps(frames: Any, src_fps: float, dst_fps: float) -> Any:
    """Change a clip's frame rate by picking frames, keeping its duration.

    Output frame k shows time k / dst_fps and takes the latest source frame at or before it; the
    output has round(T * dst_fps / src_fps) frames (at least 1), so 60 frames of 29.97 fps footage
    (2.002 s) become 16 frames at 8 fps. Works on numpy arrays and torch tensors (same type back).
    """
    if not (0 < src_fps < math.inf and 0 < dst_fps < math.inf):
        raise ValueError(f"fps must be positive and finite; got src_fps={src_fps}, dst_fps={dst_fps}")
    t = len(frames)
    if t == 0:
        raise ValueError("frames is empty")
    n = max(1, round(t * float(dst_fps) / float(src_fps)))
    # The 1e-6 keeps exact multiples (24 -> 8 fps: 3.0) from flooring to the frame before.
    idx = np.minimum(np.floor(np.arange(n) * (float(src_fps) / float(dst_fps)) + 1e-6), t - 1)
    idx = idx.astype(np.int64)
    if isinstance(frames, torch.Tensor):
        return frames[torch.from_numpy(idx).to(frames.device)]
    return np.asarray(frames)[idx]


def thumbnail(frames: Any, *, index: int | None = None, max_side: int | None = None) -> np.ndarray:
    """One representative frame (H, W, 3) uint8: the middle one unless ``index`` is given, shrunk so
    its longer side is at most ``max_side`` (aspect ratio kept; never enlarged)."""
    t = len(frames)
    if t == 0:
        raise ValueError("frames is empty")
    i = t // 2 if index is None else index
    if not -t <= i < t:
        raise IndexError(f"index {i} out of range for {t} frames")
    i %= t
    frame = _as_uint8_frames(frames[i : i + 1])
    if max_side is not None:
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1; got {max_side}")
        _, h, w, _ = frame.shape
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            frame = _resize(frame, max(1, round(h * s)), max(1, round(w * s)))
    return frame[0]


def sprite_sheet(frames: Any, *, columns: int | None = None, count: int = 16,
                 tile_width: int | None = None) -> np.ndarray:
    """A grid of ``count`` evenly spaced frames (first and last included), row by row, as one
    (rows * th, columns * tw, 3) uint8 image; unused cells are black. ``columns`` defaults to a
    near-square grid; ``tile_width`` shrinks each tile (aspect ratio kept)."""
    t = len(frames)
    if t == 0:
        raise ValueError("frames is empty")
    if count < 1 or (columns is not None and columns < 1) or (tile_width is not None and tile_width < 1):
        raise ValueError("count, columns and tile_width must be >= 1")
    n = min(count, t)
    idx = np.linspace(0, t - 1, n).round().astype(np.int64)
    picked = frames[torch.from_numpy(idx)] if isinstance(frames, torch.Tensor) else np.asarray(frames)[idx]
    tiles = _as_uint8_frames(picked)
    _, h, w, _ = tiles.shape
    if tile_width is not None:
        h, w = max(1, round(h * tile_width / w)), tile_width
        tiles = _resize(tiles, h, w)
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return sheet
