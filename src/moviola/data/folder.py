"""A folder of the user's own videos as a captioned dataset, checked before anything trains on it.

Captions come from a manifest in the folder (``manifest.jsonl`` or ``manifest.csv``: path, caption and
optional start / end seconds, licence, consent, source) or, for videos the manifest does not list, from a
sidecar ``NAME.txt`` beside ``NAME.mp4``. A folder made by ``moviola world dataset`` is one too: its
``captions.jsonl`` is read as a manifest (its short caption; the world's extra fields are ignored). ``check_folder`` opens every video once (a header probe plus
one decoded frame, or with ``deep`` every frame) and returns the usable clips and every problem with its
file; training uses the clips and skips the rest, so one bad file never stops a run. ``load_clip`` cuts
one clip out of a file for a model: frames at a target fps, resized and centre-cropped.

    report = check_folder("footage/")
    for p in report.problems:
        print(p.path, p.problem)          # e.g. "clip7.mp4: truncated or corrupt video (...)"
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Camera and broadcast containers too: AVCHD (.mts/.m2ts), MPEG-2 (.mpg/.mpeg/.vob/.ts), phones (.3gp), DV.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi", ".m4v", ".mts", ".m2ts", ".ts", ".mpg",
                    ".mpeg", ".vob", ".3gp", ".3g2", ".dv", ".wmv", ".flv", ".ogv", ".mxf")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "captions.jsonl")  # the last: `moviola world dataset`
MANIFEST_FIELDS = ("path", "caption", "start", "end", "licence", "consent", "source")
WORLD_FIELDS = ("index", "detailed_caption", "spec")  # a world dataset's extras, ignored


class DatasetError(ValueError):
    """The folder or its manifest cannot be used at all (as opposed to one bad clip)."""


@dataclass
class ClipEntry:
    """One usable clip: a file, its caption, the time span to use and where the rights come from."""

    path: str
    caption: str
    start: float = 0.0
    end: float | None = None  # None: to the end of the file
    licence: str = ""
    consent: str = ""
    source: str = ""
    width: int = 0
    height: int = 0
    fps: float = 0.0
    duration: float = 0.0  # seconds of the span that will be used


@dataclass
class Problem:
    path: str
    problem: str


@dataclass
class FolderReport:
    root: str
    clips: list[ClipEntry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"root": self.root, "usable": len(self.clips), "skipped": len(self.problems),
                "seconds": round(sum(c.duration for c in self.clips), 2),
                "problems": [asdict(p) for p in self.problems], "clips": [asdict(c) for c in self.clips]}


def _number(value, what: str, where: str) -> float | None:
    """A manifest's start / end: None when empty, else a finite number of seconds >= 0 (DatasetError)."""
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise DatasetError(f"{where}: {what} must be a number of seconds >= 0, got {value!r}")
    return number


def read_text(path: Path) -> str:
    """A caption file's text: UTF-8 (a byte-order mark, as Excel writes, is dropped), UTF-16 with a byte-order
    mark, else Windows-1252 (what spreadsheets save otherwise); a DatasetError naming the file if none fits."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with its byte-order mark (Notepad's "Unicode")
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode("utf-16")
        raise DatasetError(f"{path}: damaged UTF-16 text; save it as UTF-8")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DatasetError(f"{path}: not UTF-8 text; save it as UTF-8")


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a JSONL or CSV manifest, each with the known fields (missing ones empty).

    A row without ``path``, an unknown field, or a line that is not JSON is a DatasetError naming the line.
    """
    path = Path(path)
    rows: list[tuple[str, dict]] = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{i}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{i}: not a JSON object")
            rows.append((f"{path}:{i}", row))
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        for row in reader:
            i = reader.line_num  # the row's last line: a quoted caption may span several
            if None in row:  # more cells than the header has names
                raise DatasetError(f"{path}:{i}: {len(row) - 1 + len(row[None])} cells, the header names "
                                   f"{len(row) - 1}")
            rows.append((f"{path}:{i}", {k.strip(): v for k, v in row.items()}))
    else:
        raise DatasetError(f"{path}: a manifest must be .jsonl or .csv")
    out = []
    world = path.name == "captions.jsonl"
    for where, row in rows:
        if world:
            row = {k: v for k, v in row.items() if k not in WORLD_FIELDS}
            row.setdefault("source", "procedural: moviola world dataset")
            row.setdefault("licence", "generated (no third-party rights)")
            row.setdefault("consent", "not applicable")  # as world clips rendered on the fly record it
        unknown = sorted(set(row) - set(MANIFEST_FIELDS))
        if unknown:
            raise DatasetError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(MANIFEST_FIELDS)})")
        if not row.get("path"):
            raise DatasetError(f"{where}: no 'path'")
        clean = {k: row.get(k) or "" for k in MANIFEST_FIELDS}
        clean["start"] = _number(row.get("start"), "start", where) or 0.0
        clean["end"] = _number(row.get("end"), "end", where)
        if clean["end"] is not None and clean["end"] <= clean["start"]:
            raise DatasetError(f"{where}: end ({clean['end']:g} s) must be after start ({clean['start']:g} s)")
        clean["where"] = where
        out.append(clean)
    return out


DEFAULT_CACHE_FPS = 8.0  # FolderCacheConfig.fps: the rate `min_seconds=None` measures a file's need at


def check_folder(root: str | Path, *, manifest: str | Path | None = None, min_seconds: float | None = 0.5,
                 need_captions: bool = True, deep: bool = False) -> FolderReport:
    """Validate every video under ``root``; see the module docstring. ``min_seconds=None``: a file must be long
    enough for the shortest of the cache's default buckets (``moviola data check``'s default, so what it
    passes, ``moviola data cache`` can use). With ``need_captions=False`` (an
    autoencoder trains on pixels alone) a clip without a caption is still usable. ``deep=True`` decodes
    every file to its end (``shots.scan_video``), which also catches a file cut off mid-way whose header
    and first frame are intact, and measures durations from the frames rather than the header."""
    from moviola.data.buckets import default_footage_buckets, seconds_needed
    from moviola.data.shots import scan_video
    from moviola.video_io import VideoError, probe_video

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    shortest = min(b.frames for b in default_footage_buckets())  # frames of the cache's shortest bucket
    if manifest is None:
        manifest = next((root / n for n in MANIFEST_NAMES if (root / n).is_file()), None)
    rows = read_manifest(manifest) if manifest else []
    report = FolderReport(str(root))
    listed: set[Path] = set()
    items: list[tuple[Path, dict | None]] = []
    for row in rows:
        p = Path(row["path"])
        p = p if p.is_absolute() else root / p
        listed.add(p.resolve())
        if not p.is_file():
            report.problems.append(Problem(str(p), f"listed in the manifest ({row['where']}) but missing"))
            continue
        items.append((p, row))
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file() and p.resolve() not in listed:
            items.append((p, None))
    for p, row in items:
        if row is None:
            side = p.with_suffix(".txt")
            try:
                caption = read_text(side).strip() if side.is_file() else ""
            except (DatasetError, OSError) as e:
                report.problems.append(Problem(str(p), f"caption file unreadable: {e}"))
                continue
            row = {"caption": caption, "start": 0.0, "end": None, "licence": "", "consent": "", "source": ""}
        if need_captions and not str(row["caption"]).strip():
            report.problems.append(Problem(str(p), "no caption (add it to the manifest or a sidecar .txt)"))
            continue
        try:
            info = probe_video(p)
            if deep:
                info["duration"] = scan_video(p).duration
        except VideoError as e:
            report.problems.append(Problem(str(p), e.problem))
            continue
        end = info["duration"] if row["end"] is None else min(row["end"], info["duration"])
        span = end - row["start"]
        if row["start"] > 0 and span <= 0:
            report.problems.append(Problem(str(p), f"start {row['start']:g} s is past the end of the video "
                                                   f"({info['duration']:.2f} s)"))
            continue
        need = min_seconds
        if need is None:  # what the cache's shortest default bucket needs from a file at this rate
            need = seconds_needed(shortest, DEFAULT_CACHE_FPS, info["fps"])
        if span < need:
            why = f"need {need:g} s" if min_seconds is not None else \
                f"the shortest bucket needs {need:.2f} s at {DEFAULT_CACHE_FPS:g} fps"
            report.problems.append(Problem(str(p), f"too short: {max(span, 0):.2f} s usable, {why}"))
            continue
        report.clips.append(ClipEntry(str(p), str(row["caption"]).strip(), row["start"], row["end"], row["licence"],
                                      row["consent"], row["source"], info["width"], info["height"], info["fps"],
                                      round(span, 3)))
    return report


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (the content hash provenance records)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_clip(path: str | Path, start: float, *, frames: int, width: int, height: int, fps: float,
              src_fps: float) -> "np.ndarray":
    """(frames, height, width, 3) uint8: ``frames`` frames at ``fps`` from ``start`` seconds of the video,
    scaled to cover (width, height) and centre-cropped.

    Frame k shows source time start + k / fps by the frames' timestamps (the latest source frame at or
    before it), so 29.97 fps and variable-frame-rate footage sampled at 8 fps keep their real speed.
    ``src_fps`` is not needed for that (kept for callers). Raises VideoError if the file cannot be decoded
    there or ends more than one source frame early.
    """
    from moviola.video_io import read_video_fitted

    del src_fps  # the timestamps decide; read_video_fitted seeks, so long files stay cheap
    return read_video_fitted(path, width, height, fps, start=start, num_frames=frames)
