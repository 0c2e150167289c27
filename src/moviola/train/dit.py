"""Train (or fine-tune) the text-to-video diffusion transformer: flow matching in the VAE's latent space.

    moviola train dit --config configs/dit/default.toml [--optim.steps=6000] [--out runs/dit]
    torchrun --nproc_per_node=2 -m moviola.cli train dit --config configs/dit/default.toml   # DDP, same curve
    moviola train dit --config configs/dit/lora_pink.toml      # LoRA fine-tune of the shipped default

Two phases, both resumable by rerunning the same command:
1. a latent cache: world clips rendered per (size, frames) bucket, encoded once by the VAE, captions
   embedded once by the text encoder (``moviola.data.latent_cache``); or ``data.cache_dir``, a cache of
   your own footage made by ``moviola data cache``;
2. training: each step draws one bucket (so a batch has one shape) with a batch size that keeps the
   token count per step constant, captions short or detailed, dropped to "" with ``caption_dropout``
   for classifier-free guidance; flow-matching loss with logit-normal times shifted by token count;
   AdamW with warm-up and cosine decay; EMA. The global batch and its noise are a pure function of
   (seed, step): every rank draws the same one and keeps its slice (``train.distributed``), so a resumed
   run, or one on another number of processes, continues the same loss curve. Every ``eval_every``
   steps the EMA model generates a few clips for fixed prompts and the world scorer grades them; every
   ``sample_every`` steps it writes clips for ``sample_prompts`` to out/samples/.

Fine-tuning: ``init_from`` names a model folder ("default" = the shipped one) whose DiT is the start and
whose VAE and text encoder are used. ``[lora] rank > 0`` trains low-rank adapters only
(``moviola.models.lora``); the result is ``out/lora`` (adapter: ``moviola generate --lora out/lora``) or,
with ``lora.merge = true``, a normal model folder ``out/model``. ``preserve_except`` adds prior
preservation (DreamBooth's remedy for a fine-tune's drift, here as distillation): clips whose caption names
none of its words learn the base model's own prediction, not their data, so the fine-tune teaches what the
words name and leaves the rest where the base had it.

Only rank 0 writes: config, logs (JSONL, optional TensorBoard), samples, checkpoints and the model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from moviola.config import save_config, to_dict
from moviola.data.latent_cache import (LatentCache, WorldCacheConfig, build_world_cache, buckets_of,
                                      cache_identity)
from moviola.flow.path import (add_noise, flow_loss, frame_noise, sample_time, shift_for_tokens, temporal_loss,
                               velocity_target)
from moviola.layout import missing_parts, model_dir, part_weights, read_config, staged_writes
from moviola.models.dit import DiT, DiTConfig, PRESETS, frame_cond, with_conditioning, with_extras
from moviola.models.lora import LoRAConfig, inject_lora, lora_disabled, merge_lora, save_lora
from moviola.models.text import load_text_encoder
from moviola.models.vae import CausalVAE
from moviola.train import distributed as D
from moviola.train.common import (EMA, JsonlLog, OptimConfig, autocast, check_finite, check_run_numbers, lr_at,
                                  make_optimizer, read_checkpoint, remove_stale_temps, restore_module, restore_rng,
                                  write_checkpoint)
from moviola.video_io import atomic_path, ensure_dir

if TYPE_CHECKING:  # the pipeline imports the training side lazily; here only for annotations
    from moviola.pipeline import PipelineConfig


@dataclass
class DataConfig(WorldCacheConfig):
    """World clips (the fields of WorldCacheConfig), or a cache of your own footage."""

    cache_dir: str = ""  # a cache made by `moviola data cache` (its buckets and batch sizes rule); "" = world clips
    # World caches: relative weights for drawing clips of 1, 2, 3 ... objects (a curriculum towards simple
    # scenes, say [3, 1, 1]); empty = every cached clip alike.
    objects_weights: list[float] = field(default_factory=list)


EVAL_PROMPTS = [
    "a small red circle moves right on a black background",
    "a large blue square spins on a white background",
    "a large green triangle falls on a gray background",
    "a small yellow circle bounces on a navy background",
    "a large cyan circle moves left while a small orange square stays still on a black background",
    "a small purple circle grows on a white background",
    "a large yellow square shrinks on a navy background",
    "a small blue triangle moves down on a gray background",
]


@dataclass
class SamplingDefaults:
    """The sampler settings written to the saved model's config.json (what `generate` uses unless told
    otherwise), or for a LoRA adapter to its lora.json (used while it is applied); each one left at its
    "keep" value keeps the base model's, or the built-in default."""

    steps: int = 0  # > 0: sampler steps
    guidance: float = 0.0  # > 0: classifier-free guidance scale
    shift: float = -1.0  # >= 0: time shift (0 = from the token count)
    sampler: str = ""  # "": keep


@dataclass
class TrainDiTConfig:
    # With init_from only model.abs_pos, model.text_refiner and model.gradient_checkpointing are read: the first two
    # add absolute-position embeddings or text refiner blocks (starting as the identity) to a base without them,
    # the third trades compute for memory; every other field is the base's.
    model: DiTConfig = field(default_factory=lambda: dataclasses.replace(PRESETS["small"]))
    vae: str = ""  # folder with vae.safetensors; "" = the shipped default model folder (or init_from's)
    text_encoder: str = "minilm"  # unused with init_from (the folder's config.json names it)
    init_from: str = ""  # a model folder to fine-tune ("default" = the shipped one); "" = train from scratch
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank 0 = train every weight
    data: DataConfig = field(default_factory=DataConfig)
    extra_colors: list[str] = field(default_factory=list)  # opt-in colours beyond WORLD.md's (e.g. ["pink"])
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=300, batch_size=32,
                                                                   steps=6000, ema_decay=0.998, min_lr_ratio=0.1))
    grad_accum: int = 1  # micro-batches per rank and step (same global batch, less memory)
    parallel: str = "ddp"  # under torchrun: "ddp", or "fsdp" (FSDP2 per block: big models on GPUs)
    caption_dropout: float = 0.1
    cond_prob: float = 0.0  # share of clips trained with known frames (`random_frame_mask`); > 0 widens the model
    cond_kinds: list[float] = field(default_factory=lambda: list(MASK_KINDS.values()))  # weights of first, prefix, suffix, ends
    # Share of a step's clips (in buckets that have them: data.transitions > 0) swapped for a scene change (a
    # dissolving into b), trained with connect's known frames (a's first, b's last): joining unrelated clips.
    transition_prob: float = 0.0
    # Fine-tunes only: words naming what the run teaches (e.g. ["pink"]). A clip whose full caption names none
    # of them is trained towards the base model's prediction for the same input (adapters off, or a frozen
    # copy for a full fine-tune) instead of its data velocity. [] = off. Costs one forward pass more a step.
    preserve_except: list[str] = field(default_factory=list)
    detailed_prob: float = 0.5  # share of steps' captions that are the detailed ones (else short)
    time_mean: float = 0.0  # logit-normal time sampling
    time_uniform: float = 0.0  # share of each batch with uniform times instead (the path's ends trained too)
    time_std: float = 1.0
    motion_loss: float = 0.0  # > 0: add this times `temporal_loss` (frame-to-frame change of the error)
    shift: float = 0.0  # 0 = shift_for_tokens
    # > 0: the noise's latent frames correlate by this (`flow.path.correlate_frames`, PYoCo's mixed prior), in
    # training and, through the saved model's config, in sampling; 0 = independent frames, or a base model's own
    noise_frame_corr: float = 0.0
    out: str = "runs/dit"
    device: str = "auto"
    threads: int = 0
    max_minutes: float = 0.0  # > 0: stop (and save) when the wall-clock budget is spent
    stop_after: int = 0  # > 0: stop (and save) after this step, as if interrupted; the schedule still ends at optim.steps
    log_every: int = 25
    log_tensorboard: bool = False  # also write scalars to out/tensorboard (needs the tensorboard package)
    ckpt_every: int = 250
    eval_every: int = 500
    eval_prompts: int = 8
    eval_steps: int = 12
    sample_every: int = 0  # > 0: write 64x64 2 s clips of sample_prompts to out/samples/ every N steps
    sample_prompts: list[str] = field(default_factory=lambda: EVAL_PROMPTS[:2])
    sample_steps: int = 16
    guidance: float = 4.0  # the watch scorer's and samples' guidance (and a new model's default unless sampling.guidance)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    def __post_init__(self) -> None:
        if self.optim.steps < 1:
            raise ValueError(f"optim.steps must be at least 1, got {self.optim.steps}")
        if self.max_minutes < 0 or self.stop_after < 0:
            raise ValueError(f"max_minutes and stop_after must be at least 0 (0: no limit), got "
                             f"{self.max_minutes}, {self.stop_after}")
        check_run_numbers(self, shares=("caption_dropout", "cond_prob", "transition_prob", "detailed_prob",
                                        "time_uniform"))


# What a run's checkpoint was made of: a rerun into the same --out must ask for the same (optimiser, schedule
# length, logging, threads and world size may change between runs: the model card's runs lengthened optim.steps).
RUN_IDENTITY = ("model", "lora", "data", "init_from", "vae", "text_encoder", "extra_colors", "preserve_except",
                "noise_frame_corr", "cond_prob", "cond_kinds", "transition_prob")
# how the cache is made and how much memory a step takes, not what is learned
_OPERATIONAL = ("data.render_workers", "model.gradient_checkpointing")


def check_resumable(cfg: TrainDiTConfig, saved: dict) -> None:
    """A ValueError listing what differs between ``cfg`` and the config of the checkpoint it would resume (a run
    folder reused with other data had trained nothing more while its model card and provenance named the new
    data; with a step or more left it had mixed the two datasets in one model)."""
    from moviola.config import to_dict

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    now, was = flat(to_dict(cfg)), flat(saved)
    differ = [k for k in sorted(set(now) | set(was)) if k.split(".")[0] in RUN_IDENTITY and k not in _OPERATIONAL
              and k in was and _normal(k, now.get(k)) != _normal(k, was.get(k))]
    if differ:
        shown = "; ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in differ[:6])
        raise ValueError(f"{cfg.out} holds a run with other settings ({shown}{'; ...' if len(differ) > 6 else ''}): "
                         "train into a new --out, or rerun with the run's own settings to resume it "
                         "(optim.*, logging, threads and the number of processes may change)")


def _normal(key: str, value):
    """A setting as compared across runs: folders by where they are, lists as lists (TOML tuples)."""
    if key in ("init_from", "vae", "data.cache_dir") and value and value != "default":
        return str(Path(value).expanduser().resolve())
    if isinstance(value, (tuple, list)):
        return [_normal(key, v) for v in value]
    return value


class _LazyText:
    """The text encoder, loaded on first use: a run whose cache already holds every caption's embedding
    (a resumed run, every rank but 0) never loads it."""

    dim = None  # unknown until loaded: a Pipeline made to save the model must not load it to check its width

    def __init__(self, name: str):
        self.name, self._encoder = name, None

    def __getattr__(self, attr):
        if self._encoder is None:
            self._encoder = load_text_encoder(None if self.name == "minilm" else self.name)
        return getattr(self._encoder, attr)


def _resolve_vae_dir(cfg: TrainDiTConfig) -> Path:
    from moviola import DEFAULT_MODEL_DIR

    d = Path(cfg.vae) if cfg.vae else (init_dir(cfg) or DEFAULT_MODEL_DIR)
    if not part_weights(d, "vae").is_file():
        raise FileNotFoundError(f"{d}: no VAE here (train one with 'moviola train vae' and pass --vae)")
    return d


def init_dir(cfg: TrainDiTConfig) -> Path | None:
    """The model folder to fine-tune, or None to train from scratch."""
    if not cfg.init_from:
        return None
    d = model_dir(cfg.init_from)
    missing = missing_parts(d)
    if missing:
        raise FileNotFoundError(f"init_from {cfg.init_from!r}: {d} is not a Moviola model folder "
                                f"(missing {', '.join(missing)})")
    return d


def names_any(r: dict, words: list[str]) -> bool:
    """Whether a clip's full caption (a world cache's canonical one, a footage cache's own) names one of
    ``words`` (whole words, any case)."""
    text = (r.get("canonical") or r.get("caption") or r.get("detailed") or "").lower()
    found = set("".join(c if c.isalnum() else " " for c in text).split())
    return any(w.lower() in found for w in words)


def _row_text(r: dict, detailed: bool) -> str:
    """A clip's caption: world caches hold short and detailed ones, footage caches one ``caption``."""
    return r.get("detailed" if detailed else "short") or r.get("caption") or r.get("short") or ""


# How conditioned clips split between the abilities they teach (``random_frame_mask``).
MASK_KINDS = {"first": 0.4, "prefix": 0.25, "suffix": 0.15, "ends": 0.2}


def random_frame_mask(frames: int, cond_prob: float, rng: np.random.Generator,
                      weights: list[float] | None = None) -> np.ndarray:
    """A (frames,) float32 mask of known latent frames for one training clip: all zero (text only) with
    probability 1 - cond_prob, else one of: the first frame (image-to-video), a prefix of 1 to frames - 1
    (extension, long videos), a suffix of 1 or 2 (backward extension), or a prefix of 1 or 2 plus the last
    frame (connect, loop). At least one frame is always left to generate."""
    m = np.zeros(frames, np.float32)
    if frames < 2 or rng.random() >= cond_prob:
        return m
    w = np.asarray(list(MASK_KINDS.values()) if weights is None else weights, dtype=np.float64)
    if w.shape != (len(MASK_KINDS),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"cond_kinds must be {len(MASK_KINDS)} non-negative weights ({', '.join(MASK_KINDS)}), got {weights}")
    kind = rng.choice(list(MASK_KINDS), p=w / w.sum())
    if kind == "first":
        m[0] = 1
    elif kind == "prefix":
        m[:int(rng.integers(1, frames))] = 1
    elif kind == "suffix":
        m[frames - int(rng.integers(1, min(2, frames - 1) + 1)):] = 1
    elif frames >= 3:  # ends
        m[:int(rng.integers(1, min(2, frames - 2) + 1))] = 1
        m[-1] = 1
    else:
        m[0] = 1
    return m


class Batches:
    """Global training batches as a pure function of (seed, step); ``local`` is one rank's slice."""

    def __init__(self, cache, cfg: TrainDiTConfig, patch: tuple[int, int, int], frame_corr: float = 0.0):
        self.cache, self.cfg, self.frame_corr = cache, cfg, frame_corr
        w = np.array([b.weight for b in cache.buckets], dtype=np.float64)
        self.weights = w / w.sum()
        self.tokens = [int(np.prod([s // q for s, q in zip(lat.shape[2:], patch)])) for lat in cache.latents]
        base = self.tokens[int(np.argmax(self.weights))]  # the main bucket gets optim.batch_size
        # A bucket's own batch size wins (footage caches); else one that keeps the tokens per step constant.
        self.sizes = [getattr(b, "batch_size", 0) or max(1, round(cfg.optim.batch_size * base / t))
                      for b, t in zip(cache.buckets, self.tokens)]
        self.empty = cache.caption_row[""]
        self.clip_p = [self._clip_p(rows) for rows in cache.rows] if cfg.data.objects_weights else None

    def _clip_p(self, rows: list[dict]) -> np.ndarray:
        """Each clip's draw probability in its bucket from its object count (``data.objects_weights``)."""
        w = self.cfg.data.objects_weights
        counts = [len(r["spec"]["objects"]) if r.get("spec") else 0 for r in rows]
        if min(counts) < 1 or max(counts) > len(w):
            raise ValueError(f"data.objects_weights has {len(w)} weights; the cache has clips of "
                             f"{min(counts)} to {max(counts)} objects (and needs world clips' specs)")
        p = np.array([w[c - 1] for c in counts], dtype=np.float64)
        if p.sum() <= 0 or (p < 0).any():
            raise ValueError(f"data.objects_weights must be >= 0 with a positive sum, got {w}")
        return p / p.sum()

    def batch(self, step: int) -> dict:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.data.seed, 7, step])
        b = int(rng.choice(len(self.weights), p=self.weights))
        lat = self.cache.latents[b]
        # Unweighted, without replacement while the bucket has the clips (drawn with it, a clip had come twice in
        # about half the steps of a small footage set, often on two ranks at once); weighted (objects_weights), with
        # it, so the weights hold (once per batch at most would cap a heavy clip's share near the batch size)
        p = None if self.clip_p is None else self.clip_p[b]
        n, size = lat.shape[0], self.sizes[b]
        idx = rng.choice(n, size=size, replace=p is not None or n < size, p=p)
        x0 = lat[torch.from_numpy(idx)].float()
        rows_t = torch.tensor([self._caption(self.cache.rows[b][int(i)], rng) for i in idx])
        g = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        noise = frame_noise(x0.shape, g, self.frame_corr)
        shift = cfg.shift or shift_for_tokens(self.tokens[b])
        t = sample_time(x0.shape[0], g, mean=cfg.time_mean, std=cfg.time_std, shift=shift,
                        uniform_share=cfg.time_uniform)
        out = {"x0": x0, "noise": noise, "t": t, "context": self.cache.text_tokens[rows_t].float(),
               "context_mask": self.cache.text_mask[rows_t], "bucket": b}
        if cfg.preserve_except:  # (b,) True: learn the base's prediction (decided by the clip, not its drawn caption)
            out["prior"] = torch.tensor([not names_any(self.cache.rows[b][int(i)], cfg.preserve_except)
                                         for i in idx])
        if cfg.cond_prob > 0:  # its own stream, so runs without conditioning keep their batches bit for bit
            mrng = np.random.default_rng([cfg.data.seed, 11, step])
            out["frame_mask"] = torch.from_numpy(np.stack([random_frame_mask(x0.shape[2], cfg.cond_prob, mrng, cfg.cond_kinds)
                                                           for _ in range(x0.shape[0])]))
            self._swap_transitions(out, b, step)
        return out

    def _caption(self, r: dict, rng: np.random.Generator) -> int:
        """A clip's text-embedding row: "" with caption_dropout, else its detailed or short caption."""
        if rng.random() < self.cfg.caption_dropout:
            return self.empty
        return self.cache.caption_row[_row_text(r, rng.random() < self.cfg.detailed_prob)]

    def _swap_transitions(self, out: dict, b: int, step: int) -> None:
        """Replace some of the batch's clips by scene changes, with connect's known frames (its own stream)."""
        from moviola.data.latent_cache import transition_known

        cfg = self.cfg
        pool = getattr(self.cache, "transitions", None)
        pool = pool[b] if pool else None
        if cfg.transition_prob <= 0 or pool is None:
            return
        trng = np.random.default_rng([cfg.data.seed, 13, step])
        T = out["x0"].shape[2]
        head, tail = transition_known()
        rows = self.cache.transition_rows[b]
        for i in np.flatnonzero(trng.random(out["x0"].shape[0]) < cfg.transition_prob):
            j = int(trng.integers(pool.shape[0]))
            out["x0"][i] = pool[j].float()
            row = self._caption(rows[j], trng)
            out["context"][i] = self.cache.text_tokens[row].float()
            out["context_mask"][i] = self.cache.text_mask[row]
            if "prior" in out:
                out["prior"][i] = not names_any(rows[j], cfg.preserve_except)
            m = torch.zeros(T)
            m[:head], m[T - tail:] = 1, 1
            out["frame_mask"][i] = m

    def local(self, step: int, world: D.World) -> dict:
        """This rank's slice of step's global batch; ``n`` is the global batch size."""
        b = self.batch(step)
        sl = D.local_slice(b["x0"].shape[0], world)
        out = {k: (v[sl] if torch.is_tensor(v) else v) for k, v in b.items()}
        out["n"] = b["x0"].shape[0]
        return out


def micro_batches(n_local: int, grad_accum: int, n_global: int, world_size: int) -> list[slice]:
    """This rank's share of a step's batch cut into micro-batches, as many on every rank (FSDP's gathers and
    reductions are collective: a rank with one clip more had run one micro-batch more, and the run hung):
    ``grad_accum`` of them, fewer where the smallest share (n_global // world_size) is smaller, their sizes
    differing by at most one."""
    count = max(1, min(grad_accum, n_global // world_size, n_local))
    base, extra = divmod(n_local, count)
    bounds = [0]
    for i in range(count):
        bounds.append(bounds[-1] + base + (i < extra))
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@torch.no_grad()
def watch_scorer(pipe, n: int, steps: int, guidance: float) -> dict:
    """Generate 64x64 2 s clips for fixed prompts and score them with the world scorer."""
    from moviola.world.score import score_clip

    attrs: dict[str, list[float]] = {}
    overall = []
    for i, p in enumerate(EVAL_PROMPTS[:n]):
        frames = pipe(p, width=64, height=64, seconds=2, steps=steps, guidance=guidance, seed=1000 + i)
        rep = score_clip(frames, p, fps=pipe.config.fps)
        overall.append(rep["overall"])
        for k, v in rep["attributes"].items():
            if v is not None:
                attrs.setdefault(k, []).append(v)
    return {"eval_overall": round(100 * float(np.mean(overall)), 1),
            **{f"eval_{k}": round(100 * float(np.mean(v)), 1) for k, v in attrs.items()}}


@torch.no_grad()
def write_samples(pipe, prompts: list[str], folder: Path, step: int, steps: int, guidance: float) -> list[Path]:
    """One 64x64 2 s clip per fixed prompt (fixed seeds), as out/samples/step_NNNNNN_K.mp4."""
    from moviola.video_io import write_video

    paths = []
    for k, p in enumerate(prompts):
        frames = pipe(p, width=64, height=64, seconds=2, steps=steps, guidance=guidance, seed=2000 + k)
        path = folder / f"step_{step:06d}_{k}.mp4"
        write_video(path, frames, pipe.config.fps, metadata={"comment": f"moviola training sample; step {step}",
                                                              "moviola_prompt": p})
        paths.append(path)
    return paths


def world_cache_identity(cfg: TrainDiTConfig, vae_dir: Path, text_encoder: str) -> dict:
    """What this run's world cache must be made from (`latent_cache.cache_identity`): a cache built ahead of the
    run (scripts/train_gpu.py, tests) passes the same to `build_world_cache` so the run takes it as its own."""
    from moviola.data.folder_cache import vae_fingerprint

    return cache_identity(cfg.data, vae=vae_fingerprint(vae_dir), text_encoder=text_encoder,
                          extra_colors=cfg.extra_colors)


def _open_cache(cfg: TrainDiTConfig, vae, vae_dir: Path, text, out: Path, world: D.World, on_cache):
    """The latent cache this run trains on: a footage cache, or world clips built here (rank 0 builds)."""
    from moviola.data import folder_cache

    if cfg.data.cache_dir:
        # A cache made by another VAE is refused: its latents would mean nothing to this model's decoder.
        return folder_cache.open_cache(cfg.data.cache_dir, vae_fingerprint=folder_cache.vae_fingerprint(vae_dir))
    cache_dir = out / "cache"
    if world.main:
        from moviola.world.extra import extra_colors

        # The run folder's cache is this run's: one made with another VAE, text encoder or data is rebuilt.
        identity = world_cache_identity(cfg, vae_dir, text.name)
        with extra_colors(*cfg.extra_colors):
            why = build_world_cache(cache_dir, cfg.data, vae, text, on_progress=on_cache, identity=identity)
        if why:
            print(f"moviola: rebuilt {cache_dir}: " + ("it held latents of another VAE, text encoder or data"
                  if why == "different" else "it was made before caches recorded what made them"),
                  file=sys.stderr, flush=True)
    D.barrier(world)
    return LatentCache(cache_dir, buckets_of(cfg.data))


def _check_footage_cache(cache, pcfg: PipelineConfig, base_dir: Path | None) -> PipelineConfig:
    """A footage cache's captions must come from the model's text encoder (another encoder of the same width
    would train on rows that mean nothing to it), and its clips' frame rate is the model's: from scratch the
    model takes the cache's rate (motion learned at 12 fps played at 8 is 1.5x slow), a fine-tune refuses
    another one. Returns the pipeline config to save."""
    def same(a: str, b: str) -> bool:
        return a == b or ("minilm" not in (a, b) and Path(a).expanduser().resolve() == Path(b).expanduser().resolve())

    meta, root = cache.meta, cache.meta.get("root", "")
    made_with = str(meta.get("text_encoder", "minilm"))
    if not same(made_with, pcfg.text_encoder):
        raise ValueError(f"the footage cache of {root} holds captions encoded by {made_with!r}, the model uses "
                         f"{pcfg.text_encoder!r}: rebuild it with 'moviola data cache ... --text-encoder "
                         f"{pcfg.text_encoder}'")
    fps = float(meta.get("config", {}).get("fps", pcfg.fps))
    if abs(fps - pcfg.fps) > 1e-6:
        if base_dir is not None:
            raise ValueError(f"the footage cache of {root} holds clips at {fps:g} fps; the model being fine-tuned "
                             f"makes {pcfg.fps:g} fps: rebuild it with 'moviola data cache ... --fps {pcfg.fps:g}'")
        pcfg = dataclasses.replace(pcfg, fps=fps)
    return pcfg


_ADDABLE = ("abs_pos", "text_refiner", "gradient_checkpointing", "cond_channels")  # what a fine-tune may add


def _check_model_settings(asked: DiTConfig, base: DiTConfig, base_dir: Path) -> None:
    """A ValueError when a fine-tune asks for an architecture its base does not have (model.depth=2 with
    init_from had been ignored, while the run's config.json recorded it): a model.* setting away from the
    default preset must be the base's, save those a fine-tune adds."""
    default, asked_d, base_d = PRESETS["small"].to_dict(), asked.to_dict(), base.to_dict()
    wrong = [k for k in asked_d if k not in _ADDABLE and asked_d[k] != default.get(k) and asked_d[k] != base_d.get(k)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"model.{k} = {asked_d[k]!r}, but init_from's model ({base_dir}) has {base_d.get(k)!r}: a "
                         "fine-tune keeps its base's architecture (only model.abs_pos, model.text_refiner and "
                         "model.gradient_checkpointing may be added); leave model.* out, or train from scratch")


def _build_model(cfg: TrainDiTConfig, base_dir: Path | None, device: torch.device) -> DiT:
    if base_dir is None:
        torch.manual_seed(cfg.data.seed)
        mcfg = cfg.model
        if cfg.cond_prob > 0 and not mcfg.cond_channels:
            mcfg = dataclasses.replace(mcfg, cond_channels=mcfg.in_channels + 1)
        return DiT(mcfg)
    model = DiT.from_pretrained(base_dir).train()
    _check_model_settings(cfg.model, model.config, base_dir)
    if cfg.cond_prob > 0:
        model = with_conditioning(model)  # a text-only base learns known frames from zero-initialised inputs
    # Parts the base lacks (absolute positions, text refiner blocks) start as the identity and learn from there.
    model = with_extras(model, abs_pos=cfg.model.abs_pos, text_refiner=cfg.model.text_refiner)
    model.gradient_checkpointing = cfg.model.gradient_checkpointing or model.config.gradient_checkpointing
    return model


def _save_checkpoint(path: Path, model, ema: EMA, opt, step: int, cfg: TrainDiTConfig, world: D.World,
                     train_seconds: float = 0.0) -> None:
    """Full (unsharded) tensors, the same layout for any world size; rank 0 writes, atomically.
    ``train_seconds``: wall time of the run so far, every process that worked on it together."""
    state = {"model": D.full_state_dict(model), "ema": D.full_state_dict(ema.model),
             "optimizer": D.full_optimizer_state(opt), "step": step, "config": to_dict(cfg),
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
             "extra": {"world_size": world.size, "parallel": world.parallel, "train_seconds": train_seconds}}
    if world.main:
        write_checkpoint(path, state)
    D.barrier(world)


def _plain_ema(ema: EMA, world: D.World, template) -> DiT | None:
    """The EMA model as an ordinary module on rank 0 (gathered under FSDP; a collective); None elsewhere."""
    if not (world.distributed and world.parallel == "fsdp"):
        return ema.model if world.main else None
    sd = D.full_state_dict(ema.model)
    if not world.main:
        return None
    m = template()
    m.load_state_dict(sd)
    return m.eval()


class _Scalars:
    """JSONL log, and TensorBoard when asked for (rank 0 only)."""

    def __init__(self, out: Path, cfg: TrainDiTConfig, main: bool):
        self.main = main
        self.jsonl = JsonlLog(out / "log.jsonl") if main else None
        self.tb = None
        if main and cfg.log_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("log_tensorboard = true needs the tensorboard package "
                                 "(pip install 'moviola[tensorboard]')") from None
            self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, step: int, **row) -> None:
        if not self.main:
            return
        self.jsonl.write(step=step, **row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train_dit(cfg: TrainDiTConfig, *, on_step=None, on_cache=None) -> Path:
    """Build the cache if needed, train (or resume), and save the model folder (or LoRA adapter) on rank 0;
    returns its path (on every rank)."""
    from moviola.pipeline import Pipeline, PipelineConfig, check_vae_factors

    t_start = time.time()
    if cfg.grad_accum < 1:
        raise ValueError(f"grad_accum must be at least 1, got {cfg.grad_accum}")
    if cfg.init_from and cfg.vae:
        raise ValueError("give init_from (its folder's VAE is used) or vae, not both")
    if cfg.motion_loss < 0:
        raise ValueError(f"motion_loss must be >= 0, got {cfg.motion_loss}")
    if not 0 <= cfg.noise_frame_corr < 1:  # here, before the VAE is loaded or a cache made
        raise ValueError(f"noise_frame_corr must be in [0, 1), got {cfg.noise_frame_corr}")
    if cfg.transition_prob > 0 and not cfg.cond_prob > 0:
        raise ValueError("transition_prob needs cond_prob > 0: scene changes are trained with known frames")
    if cfg.transition_prob > 0 and (cfg.data.cache_dir or not cfg.data.transitions > 0):  # it had been ignored
        raise ValueError("transition_prob needs data.transitions > 0 (scene-change clips of the world in the cache); "
                         "a cache of your own footage (data.cache_dir) has none")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # denormals make CPU kernels 10-100x slower late in training
    world = D.setup(cfg.device, cfg.parallel)
    device = world.device
    out = Path(cfg.out)
    try:
        base_dir = init_dir(cfg)
        if cfg.lora.rank > 0 and base_dir is None:  # adapters on a random, frozen model that is never saved
            raise ValueError("lora.rank > 0 needs init_from (the model the adapter fine-tunes, e.g. init_from=default)")
        vae_dir = _resolve_vae_dir(cfg)  # both before the run folder is made: a wrong path leaves nothing behind
        if (out / "ckpt.pt").exists():  # before config.json is rewritten: a refused rerun leaves the run as it was
            check_resumable(cfg, read_checkpoint(out / "ckpt.pt", mmap=True).get("config") or {})  # no tensor read
        if world.main:
            ensure_dir(out, "run folder (--out)")
            save_config(cfg, out / "config.json")
        log = _Scalars(out, cfg, world.main)  # first: a missing optional logger fails before any work
        vae = CausalVAE.from_pretrained(vae_dir, device=device)
        check_vae_factors(vae.config)  # before a cache is made in a latent space the pipeline cannot use
        if base_dir is not None:
            pcfg = PipelineConfig.from_dict(read_config(base_dir, "pipeline"))
        else:
            pcfg = PipelineConfig(text_encoder=cfg.text_encoder, fps=cfg.data.fps, guidance=cfg.guidance)
        pcfg = _with_sampling(pcfg, cfg.sampling)
        if cfg.noise_frame_corr:  # else a fine-tune keeps its base's prior
            pcfg = dataclasses.replace(pcfg, noise_frame_corr=cfg.noise_frame_corr)
        text = _LazyText(pcfg.text_encoder)
        model = _build_model(cfg, base_dir, device)
        mcfg = model.config
        teacher = None  # the base's prediction for preserve_except: a frozen copy (full fine-tune) or adapters off
        if cfg.preserve_except:
            if base_dir is None:
                raise ValueError("preserve_except needs init_from: it keeps a base model's behaviour")
            if cfg.lora.rank == 0:
                teacher = copy.deepcopy(model).requires_grad_(False).eval()
        if mcfg.in_channels != vae.config.latent_channels:
            raise ValueError(f"model.in_channels {mcfg.in_channels} != the VAE's latent channels "
                             f"{vae.config.latent_channels}")
        cache = _open_cache(cfg, vae, vae_dir, text, out, world, on_cache)
        if cfg.data.cache_dir:
            pcfg = _check_footage_cache(cache, pcfg, base_dir)
        if cache.text_tokens.shape[-1] != mcfg.text_dim:
            raise ValueError(f"{cfg.data.cache_dir or out / 'cache'}: the text embeddings are "
                             f"{cache.text_tokens.shape[-1]}-d, the model wants model.text_dim={mcfg.text_dim} "
                             f"(text encoder {pcfg.text_encoder!r})")
        batches = Batches(cache, cfg, mcfg.patch, frame_corr=pcfg.noise_frame_corr)
        if min(batches.sizes) < world.size:
            raise ValueError(f"a global batch of {min(batches.sizes)} clips cannot be split over {world.size} "
                             f"processes: raise optim.batch_size (batch sizes per bucket: {batches.sizes})")
        provenance = _write_provenance(cache, out, world)
        if world.main and cfg.data.cache_dir:  # footage: say how often each clip will be seen, bucket by bucket
            counts = [len(r) for r in cache.rows]
            mean = sum(w * sz for w, sz in zip(batches.weights, batches.sizes)) / max(1, sum(counts))
            for b, n, w, sz in zip(cache.buckets, counts, batches.weights, batches.sizes):
                if n:
                    print(f"moviola: bucket {b.name}: {n} clips, {100 * w:.0f} % of steps (batch {sz}): each clip "
                          f"{w * sz / n / mean:.1f}x the average draws", file=sys.stderr, flush=True)

        lora = cfg.lora.rank > 0
        if lora:
            torch.manual_seed(cfg.data.seed)  # the adapters' random halves: the same run, the same adapter
            inject_lora(model, cfg.lora)

        def template() -> DiT:  # a plain copy of the architecture (with adapters), for FSDP's gathered EMA
            m = DiT(mcfg)
            if lora:
                inject_lora(m, cfg.lora, freeze=False)
            return m

        ckpt = out / "ckpt.pt"
        step, state, prior_seconds = 0, None, 0.0
        if ckpt.exists():
            state = read_checkpoint(ckpt)
            prior_seconds = float(state.get("extra", {}).get("train_seconds", 0.0))  # earlier processes' time
            restore_module(model, state, ckpt, "model")
            step = state["step"]
        model.to(device)
        ema = EMA(model, cfg.optim.ema_decay)
        if state is not None:
            restore_module(ema.model, state, ckpt, "ema")
        D.shard_like(ema.model, world)
        trained = D.wrap(model, world)
        opt = make_optimizer(trained, cfg.optim)
        if state is not None:
            D.load_optimizer_state(opt, state["optimizer"])
            restore_rng(state)  # the GPUs' too (it had restored the CPU's only)
            del state
        if world.main:  # a run killed before its first checkpoint starts over at 0: its rows go too
            log.jsonl.truncate_after(step)
            remove_stale_temps(out)

        t_last, n_tok, t_prev = time.time(), 0, time.time()
        end = min(cfg.optim.steps, cfg.stop_after or cfg.optim.steps)
        while step < end:
            if cfg.max_minutes:  # every rank stops at the same step: rank 0's clock decides
                late = torch.tensor([float((time.time() - t_start) / 60 > cfg.max_minutes and world.main)])
                if D.all_sum(late, world).item() > 0:
                    log.write(step=step, stopped="max_minutes")
                    break
            lr = lr_at(step, cfg.optim)
            for g in opt.param_groups:
                g["lr"] = lr
            b = batches.local(step, world)
            n_local = b["x0"].shape[0]
            trained.train()
            opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            micro = micro_batches(n_local, cfg.grad_accum, b["n"], world.size)
            for k, sl in enumerate(micro):
                x0, noise, t = b["x0"][sl].to(device), b["noise"][sl].to(device), b["t"][sl].to(device)
                xt, cond, keep = add_noise(x0, noise, t), None, None
                if "frame_mask" in b:  # known frames enter clean (in x and in cond) and carry no loss
                    fm = b["frame_mask"][sl].to(device)  # (b, T)
                    known = fm[:, None, :, None, None].bool()  # (b, 1, T, 1, 1)
                    xt, cond, keep = torch.where(known, x0, xt), frame_cond(x0, fm), ~known
                ctx, ctx_mask = b["context"][sl].to(device), b["context_mask"][sl].to(device)
                target = None
                if "prior" in b:  # the whole micro-batch, on every rank: FSDP's gathers are collective
                    with torch.no_grad(), autocast(device):
                        if teacher is not None:
                            v_base = teacher(xt, t, ctx, ctx_mask, cond)
                        else:
                            with lora_disabled(D.unwrap(trained)) as base:
                                v_base = base(xt, t, ctx, ctx_mask, cond)
                    prior = b["prior"][sl].to(device)[:, None, None, None, None]
                    target = torch.where(prior, v_base.float(), velocity_target(x0, noise))
                with D.no_sync(trained, k < len(micro) - 1), autocast(device):
                    v = trained(xt, t, ctx, ctx_mask, cond)
                    per = flow_loss(v.float(), x0, noise, mask=keep, target=target)  # mean over this micro-batch
                    total = per
                    if cfg.motion_loss > 0:  # logged loss stays the flow loss, comparable across runs
                        total = per + cfg.motion_loss * temporal_loss(v.float(), x0, noise, mask=keep, target=target)
                    # DDP averages gradients over ranks; this weighting makes the result the gradient of
                    # the global batch's mean loss, whatever the slice and micro-batch sizes.
                    (total * (x0.shape[0] * world.size / b["n"])).backward()
                loss_sum += per.detach() * x0.shape[0]
            gnorm = torch.nn.utils.clip_grad_norm_([p for p in trained.parameters() if p.requires_grad],
                                                   cfg.optim.grad_clip)
            opt.step()
            ema.update(D.unwrap(trained), step)
            step += 1
            loss = (D.all_sum(loss_sum, world) / b["n"]).item()
            check_finite(loss, step)  # every rank sees the same summed loss: all stop together
            n_tok += b["n"] * batches.tokens[b["bucket"]]
            now = time.time()
            metrics = {"loss": loss, "grad_norm": float(D.full_tensor(gnorm)), "lr": lr,
                       "tokens_per_s": b["n"] * batches.tokens[b["bucket"]] / max(now - t_prev, 1e-9)}
            t_prev = now
            if step % cfg.log_every == 0 or step == cfg.optim.steps:
                row = {k: round(x, 6) for k, x in metrics.items()}
                row["tokens_per_s"] = round(n_tok / max(now - t_last, 1e-9))  # over the logging interval
                log.write(step=step, **row)
                t_last, n_tok = now, 0
            want_eval = cfg.eval_every and step % cfg.eval_every == 0
            want_samples = cfg.sample_every and step % cfg.sample_every == 0
            if want_eval or want_samples:
                dit = _plain_ema(ema, world, template)
                if dit is not None:
                    pipe = Pipeline(vae, dit, text, pcfg, device)
                    if want_eval:
                        ev = watch_scorer(pipe, cfg.eval_prompts, cfg.eval_steps, cfg.guidance)
                        log.write(step=step, **ev)
                        metrics.update(ev)
                    if want_samples:
                        write_samples(pipe, cfg.sample_prompts, out / "samples", step, cfg.sample_steps, cfg.guidance)
            if step % cfg.ckpt_every == 0 or step == cfg.optim.steps:
                _save_checkpoint(ckpt, trained, ema, opt, step, cfg, world, prior_seconds + time.time() - t_start)
            if on_step and world.main:
                on_step(step, cfg.optim.steps, metrics)
        _save_checkpoint(ckpt, trained, ema, opt, step, cfg, world, prior_seconds + time.time() - t_start)
        log.close()
        dit = _plain_ema(ema, world, template)
        result = out / ("lora" if lora and not cfg.lora.merge else "model")
        if world.main:
            with staged_writes():  # weights, configs, captions, provenance and card land together
                _save_result(cfg, result, dit, vae, text, pcfg, base_dir, vae_dir, step, t_start - prior_seconds,
                             cache, provenance)
        D.barrier(world)
        return result
    finally:
        D.teardown(world)


def _with_sampling(pcfg, s: SamplingDefaults):
    """pcfg with the sampler defaults the run's config sets (the others kept)."""
    from moviola.flow.samplers import SAMPLERS

    if s.sampler and s.sampler not in SAMPLERS:
        raise ValueError(f"sampling.sampler {s.sampler!r} is not one of {', '.join(SAMPLERS)}")
    return dataclasses.replace(pcfg, **_sampling_set(s))


def _sampling_set(s: SamplingDefaults) -> dict:
    """The sampler settings ``s`` sets (those not left at their "keep" value)."""
    return {**({"steps": s.steps} if s.steps > 0 else {}), **({"guidance": s.guidance} if s.guidance > 0 else {}),
            **({"shift": s.shift} if s.shift >= 0 else {}), **({"sampler": s.sampler} if s.sampler else {})}


def _write_provenance(cache, out: Path, world: D.World) -> Path | None:
    """The clips this run trains on (path, hash, caption, licence...), when the cache can say."""
    if not (world.main and hasattr(cache, "provenance")):
        return None
    rows = cache.provenance()
    path = out / "provenance.jsonl"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _save_result(cfg, result: Path, dit: DiT, vae, text, pcfg, base_dir, vae_dir, step, t_start, cache,
                 provenance: Path | None) -> None:
    from moviola.pipeline import CAPTIONS_FILE, Pipeline, training_captions

    # The data as trained on: a cache's own buckets when it came from one (the world settings were not used then)
    data = asdict(cfg.data) if not cfg.data.cache_dir else {
        "cache_dir": cfg.data.cache_dir, "clips": sum(len(r) for r in cache.rows),
        "buckets": [asdict(b) for b in cache.buckets]}
    info = {"trained_steps": step, "train_minutes": round((time.time() - t_start) / 60, 1), "vae": str(vae_dir),
            "data": data, **({"extra_colors": cfg.extra_colors} if cfg.extra_colors else {})}
    if base_dir is not None:
        info["init_from"] = str(base_dir)
    if cfg.lora.rank > 0 and not cfg.lora.merge:
        # An adapter carries its run's [sampling] settings: Pipeline.load_lora uses them while it is applied.
        sampling = _sampling_set(cfg.sampling)
        save_lora(dit, result, cfg.lora, extra={"base_model": str(base_dir) if base_dir else None, **info,
                                                **({"sampling": sampling} if sampling else {})})
    else:
        if cfg.lora.rank > 0:
            merge_lora(dit)
        pcfg.extra = {**({"base": pcfg.extra} if base_dir is not None and pcfg.extra else {}), **info}
        Pipeline(vae, dit, text, pcfg, vae.latent_mean.device).save_pretrained(result)
    # The captions trained on (a fine-tune's and its base model's), so evaluation can use prompts the
    # model never saw verbatim.
    captions = set(cache.captions()) | (training_captions(base_dir) if base_dir is not None else set())
    with atomic_path(result / CAPTIONS_FILE) as tmp:
        tmp.write_text(json.dumps(sorted(captions)))
    # What the model learned from travels with it: this run's clips, then its base model's.
    from moviola.data.provenance import carry, write_card

    summary = carry(provenance, base_dir, result, vae_dir=vae_dir)
    kind = "LoRA adapter" if cfg.lora.rank > 0 and not cfg.lora.merge else "Moviola model"
    write_card(result, title=f"{kind}: {result}", summary=summary,
               info={**info, **({"lora": {**asdict(cfg.lora), "alpha": cfg.lora.alpha or cfg.lora.rank}}
                                if cfg.lora.rank > 0 else {})})
