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

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi", ".m4v")
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
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {what} must be a number of seconds, got {value!r}") from None


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a JSONL or CSV manifest, each with the known fields (missing ones empty).

    A row without ``path``, an unknown field, or a line that is not JSON is a DatasetError naming the line.
    """
    path = Path(path)
    rows: list[tuple[str, dict]] = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f), 2):
                rows.append((f"{path}:{i}", row))
    else:
        raise DatasetError(f"{path}: a manifest must be .jsonl or .csv")
    out = []
    world = path.name == "captions.jsonl"
    for where, row in rows:
        if world:
            row = {k: v for k, v in row.items() if k not in WORLD_FIELDS}
            row.setdefault("source", "procedural: moviola world dataset")
            row.setdefault("licence", "generated (no third-party rights)")
        unknown = sorted(set(row) - set(MANIFEST_FIELDS))
        if unknown:
            raise DatasetError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(MANIFEST_FIELDS)})")
        if not row.get("path"):
            raise DatasetError(f"{where}: no 'path'")
        clean = {k: row.get(k) or "" for k in MANIFEST_FIELDS}
        clean["start"] = _number(row.get("start"), "start", where) or 0.0
        clean["end"] = _number(row.get("end"), "end", where)
        clean["where"] = where
        out.append(clean)
    return out


def check_folder(root: str | Path, *, manifest: str | Path | None = None, min_seconds: float = 0.5,
                 need_captions: bool = True, deep: bool = False) -> FolderReport:
    """Validate every video under ``root``; see the module docstring. With ``need_captions=False`` (an
    autoencoder trains on pixels alone) a clip without a caption is still usable. ``deep=True`` decodes
    every file to its end (``shots.scan_video``), which also catches a file cut off mid-way whose header
    and first frame are intact, and measures durations from the frames rather than the header."""
    from moviola.data.shots import scan_video
    from moviola.video_io import VideoError, probe_video

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
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
            caption = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
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
        if span < min_seconds:
            report.problems.append(Problem(str(p), f"too short: {max(span, 0):.2f} s usable, need {min_seconds:g} s"))
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

    Frame k shows source time start + k / fps (the latest source frame at or before it), so 29.97 fps
    footage sampled at 8 fps keeps its real speed. Raises VideoError if the file cannot be decoded there
    or ends more than one frame early.
    """
    import numpy as np

    from moviola.video_io import VideoError, fit_frames, read_video

    # One source frame of margin past the last needed time; read_video seeks, so long files stay cheap.
    vid = read_video(path, start=start, end=start + (frames - 1) / fps + 1.5 / src_fps)
    idx = np.floor(np.arange(frames) * (vid.fps / fps) + 1e-6).astype(np.int64)
    if idx[-1] > vid.num_frames:  # more than one frame missing: the span is not really there
        raise VideoError(path, f"only {vid.num_frames} frames from {start:.2f} s, need {frames} at {fps:g} fps")
    clip = vid.frames[np.minimum(idx, vid.num_frames - 1)]
    return fit_frames(clip, width, height, mode="crop")
