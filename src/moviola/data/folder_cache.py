"""A folder of the user's own videos encoded once: VAE latents per bucket, text embeddings per caption.

    moviola data cache footage/ [--out footage-cache] [--model DIR] [--buckets 64x64x17,112x48x17] [--shots]

``build_folder_cache`` checks the folder (``folder.check_folder``), decodes every usable file once
(``shots.scan_video``: proves it decodes to the end, measures its real duration, finds scene cuts), cuts
each shot into clips and assigns each to a bucket (``buckets.assign_bucket``), then encodes the clips in
parts of ``part_size``: frames sampled at the target fps, cover-resized and centre-cropped to the bucket,
VAE posterior means normalised to unit scale, stored as float16 safetensors. Captions are embedded once.

Safe to interrupt, even with kill -9: every file is written atomically, a part counts as done only when
its rows (``part_NNNN.json``, written first) and its latents (``part_NNNN.safetensors``, written last) both
carry the key of exactly the clips the plan puts there, and ``meta.json``, which ``open_cache`` requires,
is written last of all. A rerun skips done parts and re-encodes the rest, so an interrupted build
finishes as the uninterrupted one would have; a changed folder or config re-encodes only the parts whose
clips changed. Decoding results are kept in ``scan.json`` (keyed by file size, mtime, inode and ctime) so a rerun does
not decode every file again.

Layout:
    meta.json                               the VAE's fingerprint, text encoder, config, skipped files
    scan.json                               per source file: sha256, size, fps, frame times, change scores
    bucket_64x64x17/part_0000.safetensors   latents (n, C, t, h, w) float16; metadata {"key": ...}
    bucket_64x64x17/part_0000.json          {"key": ..., "rows": [one dict per clip], "failed": [...]}
    text.safetensors + text.json            token embeddings (N, L, D) float16, masks, caption -> row
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from moviola.data.buckets import assign_bucket, check_buckets, default_footage_buckets, seconds_needed
from moviola.data.folder import Problem, check_folder, file_sha256, load_clip
from moviola.data.latent_cache import Bucket, build_text, load_text
from moviola.data.shots import SCORE_VERSION, ShotConfig, VideoScan, scan_video, shots
from moviola.video_io import VideoError, atomic_path, atomic_write_bytes, ensure_dir

FORMAT = "moviola-folder-cache"
VERSION = 1


class CacheError(ValueError):
    """A cache that cannot be used as asked: incomplete, another format, or made by another VAE."""


@dataclass
class FolderCacheConfig:
    """How footage becomes training clips."""

    buckets: list[Bucket] = field(default_factory=default_footage_buckets)
    fps: float = 8.0  # frames are sampled at this rate (the model's playback rate)
    shots: ShotConfig = field(default_factory=ShotConfig)
    min_seconds: float = 0.5  # shorter files are skipped by the check
    clips_per_shot: int = 1  # up to this many non-overlapping clips from one long shot, spread evenly
    part_size: int = 32  # clips per shard: the unit of resumption
    batch: int = 4  # clips per VAE call


def vae_fingerprint(path: str | Path) -> str:
    """sha256 of a VAE's weights: ``path`` is ``vae.safetensors``, a VAE's folder or a model folder."""
    from moviola.layout import part_weights

    p = Path(path)
    if p.is_dir():
        p = part_weights(p, "vae")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such VAE weights file")
    return file_sha256(p)


# --- planning -------------------------------------------------------------------------------------

def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _scan_record(path: Path, old: dict | None) -> dict:
    """Decode ``path`` once, unless ``old`` was made from the same file: same size, mtime, inode and ctime (size
    and mtime alone had kept two equal-sized files' records after their names were swapped, `mv` keeping mtimes:
    each caption then sat on the other's latents, under the other's sha256; a rename changes the ctime)."""
    st = path.stat()
    same = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, SCORE_VERSION)
    if old and (old.get("size"), old.get("mtime_ns"), old.get("ino"), old.get("ctime_ns"), old.get("version")) == same:
        return old
    try:
        scan = scan_video(path)
    except VideoError as e:
        rec = {"error": e.problem}
    else:
        rec = {"width": scan.width, "height": scan.height, "fps": scan.fps,
               "times": [round(float(t), 6) for t in scan.times], "scores": [round(float(s), 5) for s in scan.scores]}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "ctime_ns": st.st_ctime_ns,
            "version": SCORE_VERSION, "sha256": file_sha256(path), **rec}


def plan_clips(root: str | Path, cfg: FolderCacheConfig, *, manifest: str | Path | None = None,
               scan_path: Path | None = None,
               on_file: Callable[[int, int], None] | None = None) -> tuple[list[dict], list[Problem]]:
    """Every clip the cache will hold, in cache order (bucket, then path and start), and every file or
    shot that gets skipped with the reason. ``scan_path``: a JSON file that keeps decoding results between
    runs (written atomically every few seconds and at the end)."""
    check_buckets(cfg.buckets)
    if cfg.fps <= 0 or cfg.clips_per_shot < 1 or cfg.part_size < 1 or cfg.batch < 1:
        raise ValueError("fps must be positive and clips_per_shot, part_size and batch at least 1")
    root = Path(root)
    report = check_folder(root, manifest=manifest, min_seconds=cfg.min_seconds)
    problems = list(report.problems)
    scans = json.loads(scan_path.read_text()) if scan_path and scan_path.is_file() else {}
    clips: list[dict] = []
    saved, dirty = time.monotonic(), False
    for n, entry in enumerate(report.clips):
        path = Path(entry.path)
        rel = os.path.relpath(path, root)
        rec = _scan_record(path, scans.get(rel))
        if rec is not scans.get(rel):
            scans[rel], dirty = rec, True
        # Saved every few seconds and at the end, so an interrupted run keeps most of its decoding.
        if scan_path and dirty and (time.monotonic() - saved > 5 or n + 1 == len(report.clips)):
            atomic_write_bytes(scan_path, json.dumps(scans).encode())
            saved, dirty = time.monotonic(), False
        if on_file:
            on_file(n + 1, len(report.clips))
        if "error" in rec:
            problems.append(Problem(str(path), rec["error"]))
            continue
        scan = VideoScan(rec["width"], rec["height"], rec["fps"], np.asarray(rec["times"]), np.asarray(rec["scores"]))
        spans = shots(scan, cfg.shots, entry.start, entry.end)
        shortest = min(seconds_needed(b.frames, cfg.fps, scan.fps) for b in cfg.buckets)
        for k, (s0, s1) in enumerate(spans):
            bi = assign_bucket(scan.width, scan.height, s1 - s0, scan.fps, cfg.buckets, cfg.fps)
            where = f"{path} [{s0:.2f}-{s1:.2f} s]" if len(spans) > 1 else str(path)
            if bi is None:
                problems.append(Problem(where, f"too short for any bucket: {s1 - s0:.2f} s, the shortest "
                                               f"needs {shortest:.2f} s at {cfg.fps:g} fps"))
                continue
            b = cfg.buckets[bi]
            need = seconds_needed(b.frames, cfg.fps, scan.fps)
            # Non-overlapping windows, each centred in an equal share of the shot (away from its edges).
            n_win = max(1, min(cfg.clips_per_shot, int((s1 - s0) // need)))
            share = (s1 - s0) / n_win
            for j in range(n_win):
                start = s0 + j * share + (share - need) / 2
                clips.append({"path": rel, "sha256": rec["sha256"], "caption": entry.caption,
                              "start": round(start, 4), "end": round(start + need, 4),
                              "src_fps": scan.fps, "shot": k, "licence": entry.licence, "consent": entry.consent,
                              "source": entry.source, "bucket": b.name})
    if not report.clips and not problems:
        raise ValueError(f"{root}: no videos found")
    order = {b.name: i for i, b in enumerate(cfg.buckets)}
    clips.sort(key=lambda c: (order[c["bucket"]], c["path"], c["start"]))
    return clips, problems


# --- building -------------------------------------------------------------------------------------

def _part_is_done(path: Path, key: str) -> bool:
    from safetensors import safe_open

    rows = path.with_suffix(".json")
    if not (path.is_file() and rows.is_file()):
        return False
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return False
        return json.loads(rows.read_text()).get("key") == key
    except Exception:  # a part from some other program or version: just redo it
        return False


@torch.no_grad()
def _encode_part(root: Path, items: list[dict], bucket: Bucket, cfg: FolderCacheConfig,
                 vae) -> tuple[torch.Tensor, list[dict], list[dict]]:
    """Latents (n, C, t, h, w) float16 and rows of the clips that load; the ones that fail, with why."""
    device = next(vae.parameters()).device
    frames, rows, failed = [], [], []
    for c in items:
        try:
            arr = load_clip(root / c["path"], c["start"], frames=bucket.frames, width=bucket.width,
                            height=bucket.height, fps=cfg.fps, src_fps=c["src_fps"])
        except (VideoError, ValueError) as e:  # one clip that will not load is skipped, named, never fatal
            problem = e.problem if isinstance(e, VideoError) else str(e)
            failed.append({"path": str(root / c["path"]), "start": c["start"], "problem": problem})
            continue
        frames.append(torch.from_numpy(arr).permute(3, 0, 1, 2))  # (3, T, H, W) uint8
        rows.append({"short": c["caption"], "detailed": c["caption"], "canonical": c["caption"],
                     **{k: v for k, v in c.items() if k != "src_fps"}})
    lat = []
    for k in range(0, len(frames), cfg.batch):
        x = torch.stack(frames[k:k + cfg.batch]).to(device).float().div(127.5).sub(1)  # (B, 3, T, H, W)
        lat.append(vae.normalize(vae.encode(x).mean).half().cpu())  # (B, C, t, h, w)
    c, t, h, w = vae.latent_shape(bucket.frames, bucket.height, bucket.width)
    latents = torch.cat(lat) if lat else torch.zeros(0, c, t, h, w, dtype=torch.float16)
    return latents.contiguous(), rows, failed


def build_folder_cache(root: str | Path, out: str | Path, vae, text_encoder, cfg: FolderCacheConfig | None = None,
                       *, vae_fp: str, text_encoder_name: str = "minilm", manifest: str | Path | None = None,
                       on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Build (or finish, or update) the cache of ``root`` in ``out``; see the module docstring.

    Args:
        vae: a CausalVAE (its ``normalize`` latent statistics are applied).
        text_encoder: anything with ``encode(list[str]) -> (tokens (B, L, D), mask (B, L))``.
        vae_fp: ``vae_fingerprint`` of the VAE's weights, stored so the cache is never used with another.
        on_progress: called as (stage, done, total) with stage "scan" (files) or "encode" (clips).
    Returns:
        A summary: clips per bucket, the skipped files and shots with why, parts encoded and reused.
    """
    from moviola.layout import SAFETENSORS_TEMP, save_tensors

    cfg = cfg or FolderCacheConfig()
    root, out = Path(root), ensure_dir(out, "cache folder (--out)")
    (out / "meta.json").unlink(missing_ok=True)  # the cache is incomplete until meta.json is back
    for tmp in [*out.rglob(".*.tmp-*"), *out.rglob(SAFETENSORS_TEMP)]:  # left by a run killed mid-write
        tmp.unlink(missing_ok=True)
    clips, problems = plan_clips(root, cfg, manifest=manifest, scan_path=out / "scan.json",
                                 on_file=(lambda i, n: on_progress("scan", i, n)) if on_progress else None)
    by_bucket = {b.name: [c for c in clips if c["bucket"] == b.name] for b in cfg.buckets}
    used = [b for b in cfg.buckets if by_bucket[b.name]]
    done = encoded = reused = 0
    for b in cfg.buckets:
        d = out / f"bucket_{b.name}"
        items = by_bucket[b.name]
        parts = [items[s:s + cfg.part_size] for s in range(0, len(items), cfg.part_size)]
        for k, part in enumerate(parts):
            path = d / f"part_{k:04d}.safetensors"
            key = _key({"vae": vae_fp, "bucket": asdict(b) | {"batch_size": 0, "weight": 0}, "fps": cfg.fps,
                        "clips": part})
            if _part_is_done(path, key):
                reused += 1
            else:
                latents, rows, failed = _encode_part(root, part, b, cfg, vae)
                atomic_write_bytes(path.with_suffix(".json"), json.dumps({"key": key, "rows": rows,
                                                                          "failed": failed}).encode())
                with atomic_path(path) as tmp:
                    save_tensors({"latents": latents}, tmp, {"key": key})
                encoded += 1
            done += len(part)
            if on_progress:
                on_progress("encode", done, len(clips))
        # Parts past the plan's end (the folder shrank) and buckets no longer used are stale.
        for stale in sorted(d.glob("part_*")) if d.is_dir() else []:
            if int(stale.stem.split("_")[1]) >= len(parts):
                stale.unlink()
        if d.is_dir() and not parts:
            d.rmdir()
    rows = [r for b in used for r in _rows(out, b)]
    failed = [f for b in used for f in _failed(out, b)]
    problems += [Problem(f["path"], f"{f['problem']} (clip from {f['start']:.2f} s)") for f in failed]
    if not rows:
        listed = "".join(f"\n  {p.path}: {p.problem}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(f"{root}: no usable clips ({len(problems)} skipped){listed}{more}")
    build_text(out, {r["caption"] for r in rows}, text_encoder)
    meta = {"format": FORMAT, "version": VERSION, "vae_fingerprint": vae_fp, "text_encoder": text_encoder_name,
            "root": str(root.resolve()), "config": json.loads(json.dumps(asdict(cfg))),
            "buckets": [asdict(b) for b in used],
            "clips": {b.name: len(_rows(out, b)) for b in used},
            "skipped": [asdict(p) for p in problems]}
    atomic_write_bytes(out / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
    return {"clips": meta["clips"], "skipped": meta["skipped"], "parts_encoded": encoded, "parts_reused": reused}


def _part_meta(out: Path, b: Bucket) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / f"bucket_{b.name}").glob("part_*.json"))]


def _rows(out: Path, b: Bucket) -> list[dict]:
    return [r for m in _part_meta(out, b) for r in m["rows"]]


def _failed(out: Path, b: Bucket) -> list[dict]:
    return [f for m in _part_meta(out, b) for f in m["failed"]]


# --- reading --------------------------------------------------------------------------------------

class FolderCache:
    """A built folder cache in memory, with the attributes of ``LatentCache`` (so the trainer takes
    either): ``buckets``, ``latents`` (per bucket (n, C, t, h, w) float16), ``rows`` (per bucket, per clip:
    short / detailed / canonical captions and provenance), ``caption_row``, ``text_tokens``, ``text_mask``;
    plus ``meta`` and ``provenance()``."""

    def __init__(self, root: str | Path):
        from moviola.data.latent_cache import load_part_file

        root = Path(root)
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        self.buckets = [Bucket(**b) for b in self.meta["buckets"]]
        self.latents: list[torch.Tensor] = []
        self.rows: list[list[dict]] = []
        for b in self.buckets:
            parts = sorted((root / f"bucket_{b.name}").glob("part_*.safetensors"))
            self.latents.append(torch.cat([load_part_file(p)["latents"] for p in parts]))
            self.rows.append(_rows(root, b))
            if len(self.rows[-1]) != len(self.latents[-1]):
                raise CacheError(f"{root}: bucket {b.name} has {len(self.latents[-1])} latents but "
                                 f"{len(self.rows[-1])} rows (rebuild with 'moviola data cache')")
        self.text_tokens, self.text_mask, self.caption_row = load_text(root)

    def captions(self) -> set[str]:
        return {c for rows in self.rows for r in rows for c in (r["short"], r["detailed"], r["canonical"])}

    def provenance(self) -> list[dict]:
        """One record per clip: the file (path under the footage folder's root, sha256 of its bytes), the
        caption, the span used (start / end seconds), licence, consent and source as the manifest gave them."""
        base = Path(self.meta["root"])
        return [{"path": str(base / r["path"]), "sha256": r["sha256"], "caption": r["caption"], "start": r["start"],
                 "end": r["end"], "shot": r["shot"], "licence": r["licence"], "consent": r["consent"],
                 "source": r["source"], "bucket": b.name}
                for b, rows in zip(self.buckets, self.rows) for r in rows]


def open_cache(cache_dir: str | Path, vae_fingerprint: str | None = None) -> FolderCache:
    """Load a complete folder cache. With ``vae_fingerprint`` (of the VAE that will decode the model's
    latents), a cache made by another VAE is a CacheError: its latents would mean nothing to that VAE."""
    d = Path(cache_dir)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such cache folder (build it with 'moviola data cache FOOTAGE --out {d}')")
        raise CacheError(f"{d}: not a complete footage cache (no meta.json; rerun 'moviola data cache' to finish it)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CacheError(f"{d}: not a {FORMAT} version {VERSION} "
                         f"(found {meta.get('format')!r} {meta.get('version')!r})")
    if vae_fingerprint is not None and meta["vae_fingerprint"] != vae_fingerprint:
        raise CacheError(f"{d}: made with another VAE (weights sha256 {meta['vae_fingerprint'][:12]}..., this one "
                         f"{vae_fingerprint[:12]}...); rebuild it with 'moviola data cache --model' for this VAE")
    return FolderCache(d)
