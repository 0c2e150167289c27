"""World clips encoded once: VAE latents per (size, frames) bucket and text embeddings per caption.

Training a diffusion model on a CPU is only affordable if the autoencoder and the text encoder run once
per clip, not once per step. ``build_world_cache`` renders clips, encodes them with the VAE (posterior
means, normalised to unit scale) and stores them in shards of safetensors, resumable part by part;
captions are embedded once per unique string.

With ``transitions > 0`` it also stores scene changes for connecting unrelated clips: scene a's first
frames, an eased dissolve, scene b's last frames (``transition_clip``), captioned as scene b. World clips
never change scene, so without them a model asked to join two scenes cuts from one to the other.

Layout of a cache folder:
    bucket_64x64x17/part_0000.safetensors   latents (n, C, t, h, w) float16
    bucket_64x64x17/part_0000.json          per clip: short and detailed captions, spec
    bucket_64x64x17/transition_0000.*       scene changes (only with transitions > 0), the same layout
    text.safetensors + text.json            token embeddings (N, L, D) float16, masks, caption -> row
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moviola.video_io import atomic_path, atomic_write_bytes

PART = 256  # clips per shard


@dataclass
class Bucket:
    """One training shape: every clip in it is (3, frames, height, width); ``weight`` is its share of steps."""

    width: int
    height: int
    frames: int  # 4k + 1
    weight: float = 1.0
    batch_size: int = 0  # clips per step; 0 = the trainer's rule (constant tokens per step)

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


@dataclass
class WorldCacheConfig:
    n_clips: int = 6000
    # (width, height, seconds, weight): the shipped model covers 64x64, 96x64, 64x96 and 1 to 4 s.
    buckets: list[tuple[int, int, float, float]] = field(default_factory=lambda: [
        (64, 64, 2.0, 0.45), (64, 64, 1.0, 0.1), (64, 64, 3.0, 0.1), (64, 64, 4.0, 0.1),
        (96, 64, 2.0, 0.125), (64, 96, 2.0, 0.125)])
    fps: float = 8.0
    holdout: str = "default"  # "default": the generalisation-test combinations; "": none; or "a+b,c+d"
    occlusion_prob: float = 0.1
    seed: int = 0
    transitions: int = 0  # > 0: also this many scene-change clips (a dissolving into b), over buckets of 2 s and more
    render_workers: int = 0  # > 1: render parts in this many processes while the VAE encodes (the same clips)


def holdout_combos(text: str) -> list[frozenset[str]]:
    from moviola.world.spec import DEFAULT_HOLDOUT, parse_holdout

    return list(DEFAULT_HOLDOUT) if text == "default" else parse_holdout(text)


def buckets_of(cfg: WorldCacheConfig) -> list[Bucket]:
    from moviola.pipeline import frames_for

    return [Bucket(w, h, frames_for(sec, cfg.fps)[0], wt) for w, h, sec, wt in cfg.buckets]


def _render_part(cfg: WorldCacheConfig, b_index: int, bucket: Bucket, start: int, count: int):
    from moviola.world.caption import caption
    from moviola.world.render import render
    from moviola.world.sample import sample_scene
    from moviola.world.truth import spec_to_dict

    seconds = (bucket.frames - 1) / cfg.fps
    holdout = holdout_combos(cfg.holdout)
    clips, rows = [], []
    for i in range(start, start + count):
        rng = np.random.default_rng([cfg.seed, b_index, i])
        spec = sample_scene(rng, sizes=[(bucket.width, bucket.height)], fps_choices=[cfg.fps],
                            seconds_range=(max(seconds, 1.0), max(seconds, 1.0)), holdout=holdout,
                            occlusion_prob=cfg.occlusion_prob)
        clip = render(spec, num_frames=bucket.frames)
        clips.append(torch.from_numpy(clip.frames).permute(3, 0, 1, 2))
        rows.append({"short": caption(spec, rng=rng), "detailed": caption(spec, detailed=True, rng=rng),
                     "canonical": caption(spec, detailed=True), "spec": spec_to_dict(spec),
                     "seed": [cfg.seed, b_index, i]})  # the clip is a pure function of this seed
    return torch.stack(clips), rows


def transition_clip(a: np.ndarray, b: np.ndarray, head: int, tail: int) -> np.ndarray:
    """Scene a's first ``head`` frames, scene b's last ``tail`` frames and a dissolve between them (the eased
    one `connect` starts from, ``moviola.pipeline.dissolve``): (T, H, W, 3) uint8 from two clips of one shape.
    Both scenes keep moving through the dissolve."""
    from moviola.pipeline import dissolve

    T = len(a)
    if b.shape != a.shape or T < head + tail + 1:
        raise ValueError(f"a transition needs two clips of one shape with more than {head + tail} frames, "
                         f"got {a.shape} and {b.shape}")
    alpha = np.concatenate([np.zeros(head), dissolve(T - head - tail), np.ones(tail)])[:, None, None, None]
    return np.round((1 - alpha) * a + alpha * b).astype(np.uint8)


def transition_known(temporal_factor: int = 4) -> tuple[int, int]:
    """(known latent frames at the start, at the end) of a transition clip: the frames ``connect`` gives
    (the pipeline's context before, its suffix after)."""
    from moviola.pipeline import CONTEXT_FRAMES, SUFFIX_FRAMES

    return 1 + (CONTEXT_FRAMES - 1) // temporal_factor, SUFFIX_FRAMES // temporal_factor


def _render_transitions(cfg: WorldCacheConfig, b_index: int, bucket: Bucket, start: int, count: int):
    from moviola.pipeline import CONTEXT_FRAMES, SUFFIX_FRAMES
    from moviola.world.caption import caption
    from moviola.world.render import render
    from moviola.world.sample import sample_scene
    from moviola.world.truth import spec_to_dict

    seconds = max((bucket.frames - 1) / cfg.fps, 1.0)
    holdout = holdout_combos(cfg.holdout)
    clips, rows = [], []
    for i in range(start, start + count):
        rng = np.random.default_rng([cfg.seed, 1000 + b_index, i])  # apart from the plain clips' seeds
        a, b = (sample_scene(rng, sizes=[(bucket.width, bucket.height)], fps_choices=[cfg.fps],
                             seconds_range=(seconds, seconds), holdout=holdout, occlusion_prob=cfg.occlusion_prob)
                for _ in range(2))
        frames = transition_clip(render(a, num_frames=bucket.frames).frames, render(b, num_frames=bucket.frames).frames,
                                 CONTEXT_FRAMES, SUFFIX_FRAMES)
        clips.append(torch.from_numpy(frames).permute(3, 0, 1, 2))
        rows.append({"short": caption(b, rng=rng), "detailed": caption(b, detailed=True, rng=rng),
                     "canonical": caption(b, detailed=True), "spec": spec_to_dict(b),
                     "from_spec": spec_to_dict(a), "transition": "dissolve", "seed": [cfg.seed, 1000 + b_index, i]})
    return torch.stack(clips), rows


def _plan(buckets: list[Bucket], n: int, eligible=lambda b: True):
    """(bucket index, bucket, clips) for n clips split over the eligible buckets by weight."""
    chosen = [(bi, b) for bi, b in enumerate(buckets) if eligible(b)]
    total_w = sum(b.weight for _, b in chosen)
    return [(bi, b, max(1, round(n * b.weight / total_w))) for bi, b in chosen] if n > 0 and chosen else []


@torch.no_grad()
def load_part_file(path: Path) -> dict:
    """The tensors of one cache file; a ValueError naming it (and the fix) if it is damaged."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError
        raise ValueError(f"{path}: damaged cache file ({str(e) or type(e).__name__}); delete its cache folder "
                         f"({path.parent.parent if path.parent.name.startswith('bucket_') else path.parent}) "
                         "and it is rebuilt") from None


def cache_identity(cfg: WorldCacheConfig, *, vae: str, text_encoder: str, extra_colors=()) -> dict:
    """What a world cache's contents depend on: the VAE (its weights' hash), the text encoder and every data
    setting that changes which clips are rendered (not ``render_workers``, which renders the same clips)."""
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "render_workers"}
    return json.loads(json.dumps({"vae": vae, "text_encoder": text_encoder, "extra_colors": sorted(extra_colors),
                                  "data": data}))  # tuples as lists, as the file stores them


def _claim_cache(out: Path, identity: dict | None) -> str | None:
    """Make ``out`` hold a cache of ``identity``: a cache of anything else (another VAE, other data, or one
    from before caches recorded what made them) is removed, since its latents or captions would be silently
    wrong for this run. Returns why it was ("different" / "unrecorded"), None if nothing was. A cache
    reached through a link is shared with other runs (scripts/train_gpu.py): it is never removed, a
    mismatch is an error. ``identity=None``: keep whatever is there (callers that manage the folder)."""
    if identity is None:
        return None
    path = out / "identity.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    if old == identity:
        return None
    stale = [*out.glob("bucket_*"), *out.glob("text.*")]
    if stale and out.is_symlink():
        raise ValueError(f"{out} links to a shared cache made from other settings (VAE, text encoder or data) "
                         "than this run's: give this run a cache of its own")
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    atomic_write_bytes(path, json.dumps(identity, indent=1).encode())
    return ("unrecorded" if old is None else "different") if stale else None


@torch.no_grad()  # the VAE's weights require grad: without this every part's encoder activations were kept
# for autograd (18.8 GB peak for 200 clips; the 4,000-clip recipes were killed for memory on this 24 GB machine)
def build_world_cache(out: Path, cfg: WorldCacheConfig, vae, text_encoder, *,
                      on_progress: Callable[[int, int], None] | None = None, batch: int = 16,
                      identity: dict | None = None) -> str | None:
    """Render, encode and store ``cfg.n_clips`` clips across the buckets; skips parts already written.

    ``identity`` (``cache_identity``): what the cache must have been made from; a cache in ``out`` made from
    anything else is rebuilt. Returns why an existing cache was thrown away ("different", "unrecorded"), else
    None.
    """
    from moviola.layout import save_tensors

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rebuilt = _claim_cache(out, identity)
    buckets = buckets_of(cfg)
    head, tail = transition_known()
    plan = [(bi, b, n, "part", _render_part) for bi, b, n in _plan(buckets, cfg.n_clips)]
    # a transition needs connect's known latent frames at both ends and at least one to generate between
    plan += [(bi, b, n, "transition", _render_transitions)
             for bi, b, n in _plan(buckets, cfg.transitions, lambda b: (b.frames - 1) // 4 + 1 > head + tail)]
    total = sum(n for _, _, n, _, _ in plan)
    done = 0
    device = next(vae.parameters()).device
    jobs = []  # (shard path, make, bucket index, bucket, first clip, clips) still to build
    for bi, b, n, kind, make in plan:
        d = out / f"bucket_{b.name}"
        d.mkdir(exist_ok=True)
        for part, start in enumerate(range(0, n, PART)):
            count = min(PART, n - start)
            path = d / f"{kind}_{part:04d}.safetensors"
            if path.exists() and path.with_suffix(".json").exists():
                done += count
                if on_progress:
                    on_progress(done, total)
                continue
            jobs.append((path, make, bi, b, start, count))
    for (path, _, _, _, _, count), (frames, rows) in zip(jobs, _rendered(cfg, jobs)):
        lat = []
        for k in range(0, count, batch):
            x = frames[k:k + batch].to(device).float().div(127.5).sub(1)
            lat.append(vae.normalize(vae.encode(x).mean).half().cpu())
            done += min(batch, count - k)
            if on_progress:
                on_progress(done, total)
        with atomic_path(path) as tmp:
            save_tensors({"latents": torch.cat(lat).contiguous()}, tmp)
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(rows).encode())
    _build_text(out, text_encoder)
    return rebuilt


def _rendered(cfg: WorldCacheConfig, jobs: list) -> Iterable[tuple[torch.Tensor, list[dict]]]:
    """(frames, rows) of each job, in order: rendered here, or by ``cfg.render_workers`` forked processes
    (which inherit the world's colours, `extra_colors` included) while the caller encodes. Every clip is a
    pure function of its seed, so the cache is the same either way. At most two parts per worker wait."""
    from moviola.data.parallel import ordered_map

    for frames, rows in ordered_map(_render_job, [(cfg, *job[1:]) for job in jobs], cfg.render_workers):
        yield torch.from_numpy(frames), rows


def _render_job(job) -> tuple[np.ndarray, list[dict]]:
    """One part rendered (in a worker or here), frames as numpy so that they cross processes cheaply."""
    cfg, make, bi, b, start, count = job
    frames, rows = make(cfg, bi, b, start, count)
    return frames.numpy(), rows


def _build_text(out: Path, text_encoder) -> None:
    """Embed every unique caption of the cache (and the empty prompt) once."""
    caps = set()
    for meta in sorted([*out.glob("bucket_*/part_*.json"), *out.glob("bucket_*/transition_*.json")]):
        for r in json.loads(meta.read_text()):
            caps.update((r["short"], r["detailed"], r["canonical"]))
    build_text(out, caps, text_encoder)


@torch.no_grad()
def build_text(out: Path, captions: Iterable[str], text_encoder, batch: int = 64) -> None:
    """``out/text.safetensors`` (tokens (N, L, D) float16, mask (N, L)) and ``out/text.json`` (the sorted
    captions, "" included, giving each one's row); skipped when the captions are already the stored ones."""
    from moviola.layout import save_tensors

    caps = sorted(set(captions) | {""})
    index_path = out / "text.json"
    # Which encoder made the rows: the same captions from another encoder (same width or not) are other rows.
    encoder = str(getattr(text_encoder, "path", None) or getattr(text_encoder, "name", ""))
    # The rows' key, in the embeddings' own file too: text.json alone had decided, so a run killed between
    # writing the new embeddings and the new text.json, then rerun on the old captions, kept rows of the new
    key = hashlib.sha256(json.dumps({"captions": caps, "encoder": encoder}).encode()).hexdigest()
    if index_path.exists() and _text_key(out / "text.safetensors") == key:
        stored = json.loads(index_path.read_text())
        if stored["captions"] == caps and stored.get("encoder", encoder) == encoder:
            return
    toks, masks = [], []
    for k in range(0, len(caps), batch):
        t, m = text_encoder.encode(caps[k:k + batch])
        toks.append(t.half().cpu())
        masks.append(m.cpu())
    L = max(t.shape[1] for t in toks)
    toks = [torch.nn.functional.pad(t, (0, 0, 0, L - t.shape[1])) for t in toks]
    masks = [torch.nn.functional.pad(m, (0, L - m.shape[1])) for m in masks]
    with atomic_path(out / "text.safetensors") as tmp:
        save_tensors({"tokens": torch.cat(toks).contiguous(), "mask": torch.cat(masks).contiguous()}, tmp,
                     {"key": key})
    atomic_write_bytes(index_path, json.dumps({"captions": caps, "encoder": encoder}).encode())


def _text_key(path: Path) -> str | None:
    """The key stored in a text.safetensors (None for none, or no readable file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # missing, torn, not safetensors: rebuilt
        return None


def load_text(root: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """A cache's caption embeddings: tokens (N, L, D), masks (N, L) and caption -> row."""
    text = load_part_file(Path(root) / "text.safetensors")
    rows = {c: i for i, c in enumerate(json.loads((Path(root) / "text.json").read_text())["captions"])}
    return text["tokens"], text["mask"], rows


class LatentCache:
    """A built cache loaded in memory: latents per bucket, caption rows, text embeddings."""

    def __init__(self, root: Path, buckets: Iterable[Bucket]):
        root = Path(root)
        self.buckets = list(buckets)
        self.latents: list[torch.Tensor] = []
        self.rows: list[list[dict]] = []
        self.transitions: list[torch.Tensor | None] = []  # per bucket: scene-change clips, or None
        self.transition_rows: list[list[dict]] = []
        for b in self.buckets:
            d = root / f"bucket_{b.name}"
            parts = sorted(d.glob("part_*.safetensors"))
            if not parts:
                raise FileNotFoundError(f"{d}: no cached latents (build the cache first)")
            self.latents.append(torch.cat([load_part_file(p)["latents"] for p in parts]))
            self.rows.append([r for p in parts for r in json.loads(p.with_suffix(".json").read_text())])
            trans = sorted(d.glob("transition_*.safetensors"))
            self.transitions.append(torch.cat([load_part_file(p)["latents"] for p in trans]) if trans else None)
            self.transition_rows.append([r for p in trans for r in json.loads(p.with_suffix(".json").read_text())])
        self.text_tokens, self.text_mask, self.caption_row = load_text(root)

    def captions(self) -> set[str]:
        return {c for rows in (*self.rows, *self.transition_rows) for r in rows
                for c in (r["short"], r["detailed"], r["canonical"])}

    def provenance(self) -> list[dict]:
        """One record per clip of where it came from. World clips have no file: they are rendered from a
        scene spec and a seed, so the record names the generator, the seed and a hash of the spec."""
        out = []
        for b, rows in [*zip(self.buckets, self.rows), *zip(self.buckets, self.transition_rows)]:
            for r in rows:
                spec = r.get("spec")
                spec = {"from": r["from_spec"], "to": spec} if "from_spec" in r else spec
                spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest() if spec else None
                source = "procedural: moviola.world" + (" (two scenes, dissolve)" if "from_spec" in r else "")
                out.append({"path": None, "sha256": None, "source": source,
                            "seed": r.get("seed"), "spec_sha256": spec_hash, "caption": r["canonical"],
                            "start": 0.0, "end": round((b.frames - 1) / r["spec"]["fps"], 3) if spec else None,
                            "licence": "generated (no third-party rights)", "consent": "not applicable",
                            "bucket": b.name})
        return out
