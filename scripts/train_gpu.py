"""Train DiTs (and autoencoders) on one GPU in a fixed wall-clock budget: the world cache built once, with
its clips rendered in parallel, then one `moviola train dit` run per config, side by side on the GPU.

    python scripts/train_gpu.py --minutes 6 --cache runs/gpu-cache --workers 14 \\
        configs/dit/gpu_finetune.toml configs/dit/gpu_wide.toml [--pack OUT]

``--vae CONFIG`` (repeatable) first trains `moviola train vae` configs side by side for ``--vae-minutes``
(batches rendered by ``--workers`` processes shared among them), each the same way: its warm-up, then the
cosine over the clock. Each VAE run also writes ``<out>/init``: the shipped model folder with that VAE in
place of the shipped one, so a DiT config with ``init_from = "<out>/init"`` fine-tunes the shipped DiT in
the new latent space (its cache is then encoded with the new VAE).

Each config is an ordinary `moviola train dit` config; the runs share the first config's world cache
(``data`` sections must agree) through a link ``<out>/cache``. How many steps a GPU makes in the budget
is not known in advance, so each run's learning rate follows the warm-up of its config and then the cosine
over the wall-clock budget instead of over ``optim.steps`` (set it high); every run stops and saves its
model when the budget is spent (``max_minutes``). On a CPU, or to resume exactly, use `moviola train dit`.

``--pack OUT`` writes each run's DiT in fp16 (what `scripts/ship_default.py` ships) and a .tar.gz of its
small files (configs, log, the model's config.json files, training captions, provenance summary) to OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from moviola.layout import CONFIG_NAME, LEGACY_CONFIG, WEIGHTS, config_path, config_text, part_weights, read_config


def _load(path: str, overrides: list[str] = ()):
    from moviola.config import load_config
    from moviola.train.dit import TrainDiTConfig

    return load_config(TrainDiTConfig, path, list(overrides))


def build_cache(cfg, cache: Path, workers: int, device: torch.device) -> None:
    """The world cache of ``cfg.data``, encoded with the run's VAE on ``device``."""
    from moviola.data.latent_cache import build_world_cache
    from moviola.models.text import load_text_encoder
    from moviola.models.vae import CausalVAE
    from moviola.train.dit import _resolve_vae_dir, world_cache_identity

    t0 = time.time()
    vae = CausalVAE.from_pretrained(_resolve_vae_dir(cfg), device=device).eval()
    text = load_text_encoder(None if cfg.text_encoder == "minilm" else cfg.text_encoder, device=device)
    data = dataclasses.replace(cfg.data, render_workers=workers)
    last = [0.0]

    def progress(i: int, n: int) -> None:
        if time.time() - last[0] > 10 or i == n:
            last[0] = time.time()
            print(f"cache {i}/{n} clips, {time.time() - t0:.0f} s", flush=True)

    from moviola.world.extra import extra_colors

    with extra_colors(*cfg.extra_colors):  # opt-in colours (a LoRA teaching pink): rendered into the cache too
        build_world_cache(cache, data, vae, text, on_progress=progress, batch=64,
                          identity=world_cache_identity(cfg, _resolve_vae_dir(cfg), cfg.text_encoder))
    print(f"cache built in {time.time() - t0:.0f} s", flush=True)


def wall_clock_cosine(end: float):
    """lr_at(step, optim) with the cosine over the time left at the end of warm-up (not over steps)."""
    start = [None]

    def lr_at(step: int, cfg) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        now = time.time()
        if start[0] is None:
            start[0] = now
        progress = min(1.0, (now - start[0]) / max(1.0, end - start[0]))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    return lr_at


def with_vae(base: Path, vae: Path, out: Path) -> Path:
    """``out``: a copy of the model folder ``base`` with the VAE of folder ``vae`` in place of its own."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    part = tmp / "vae"  # the new VAE's files in the copy's vae/ folder; an old flat layout's own VAE files go
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir()
    shutil.copyfile(part_weights(vae, "vae"), part / WEIGHTS["vae"])
    (part / CONFIG_NAME).write_text(config_text("vae", read_config(vae, "vae")))
    for name in (WEIGHTS["vae"], LEGACY_CONFIG["vae"]):
        (tmp / name).unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _progress(name: str, t0: float, keys: tuple[str, ...]):
    """A trainer's on_step printing ``keys``, the learning rate and steps per second every 250 steps."""

    def on_step(step: int, total: int, metrics: dict) -> None:
        if step % 250 == 0:
            shown = " ".join(f"{k} {metrics[k]:.4f}" for k in keys)
            print(f"[{name}] step {step} {shown} lr {metrics['lr']:.2e} "
                  f"{step / (time.time() - t0):.1f} steps/s", flush=True)

    return on_step


def vae_child(config: str, end: float, device: str, threads: int, workers: int) -> None:
    """One autoencoder run (its own process): stop at ``end``, learning rate over the clock, then ``init``."""
    import moviola.train.vae as V
    from moviola import DEFAULT_MODEL_DIR
    from moviola.config import load_config

    cfg = load_config(V.TrainVAEConfig, config, [f"device={device}", f"threads={threads}",
                                                   f"data_workers={workers}"])
    cfg.max_minutes = max(0.05, (end - time.time()) / 60)
    V.lr_at = wall_clock_cosine(end)
    t0 = time.time()
    model = V.train_vae(cfg, on_step=_progress(Path(cfg.out).name, t0, ("loss", "l1")))
    init = with_vae(DEFAULT_MODEL_DIR, model, Path(cfg.out) / "init")
    print(f"[{Path(cfg.out).name}] saved {model} (and {init}) after {time.time() - t0:.0f} s", flush=True)


def child(config: str, end: float, device: str, threads: int) -> None:
    """One training run (its own process): stop at ``end`` (epoch seconds), learning rate over the clock."""
    import moviola.train.dit as T

    cfg = _load(config, [f"device={device}", f"threads={threads}"])
    cfg.max_minutes = max(0.1, (end - time.time()) / 60)
    T.lr_at = wall_clock_cosine(end)
    t0 = time.time()
    path = T.train_dit(cfg, on_step=_progress(Path(cfg.out).name, t0, ("loss",)))
    print(f"[{Path(cfg.out).name}] saved {path} after {time.time() - t0:.0f} s", flush=True)


def pack(out_dir: Path, runs: list[Path], vae_runs: list[Path] = ()) -> None:
    from safetensors.torch import load_file, save_file

    from moviola.data.provenance import manifest_summary

    out_dir.mkdir(parents=True, exist_ok=True)

    def add(tar: tarfile.TarFile, run: Path, files: list[Path]) -> None:  # kept at their paths under the run
        for f in files:
            if f.exists():
                tar.add(f, arcname=f"{run.name}/{f.relative_to(run)}")

    for run in vae_runs:  # the VAE in fp32, as it ships
        model = run / "model"
        if not part_weights(model, "vae").exists():
            print(f"{run}: no VAE saved", flush=True)
            continue
        shutil.copyfile(part_weights(model, "vae"), out_dir / f"{run.name}.vae.safetensors")
        with tarfile.open(out_dir / f"{run.name}.tar.gz", "w:gz") as tar:
            add(tar, run, [config_path(model, "vae"), run / "config.json", run / "log.jsonl"])
    for run in runs:
        model = run / "model"
        if (run / "lora").is_dir():  # a LoRA adapter: small, its folder as it is
            with tarfile.open(out_dir / f"{run.name}.tar.gz", "w:gz") as tar:
                tar.add(run / "lora", arcname=f"{run.name}/lora")
                add(tar, run, [run / "config.json", run / "log.jsonl"])
            continue
        if not part_weights(model, "dit").exists():
            print(f"{run}: no model saved", flush=True)
            continue
        dit = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(part_weights(model, "dit"))).items()}
        save_file(dit, str(out_dir / f"{run.name}.dit.safetensors"), metadata={"format": "pt", "dtype": "float16"})
        with tarfile.open(out_dir / f"{run.name}.tar.gz", "w:gz") as tar:
            add(tar, run, [config_path(model, "dit"), config_path(model, "pipeline"), model / "training_captions.json",
                           run / "config.json", run / "log.jsonl"])
            summary = manifest_summary(model)
            if summary is not None:
                blob = (json.dumps(summary, indent=1) + "\n").encode()
                info = tarfile.TarInfo(f"{run.name}/provenance.json")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--minutes", type=float, required=True, help="training budget of every run, from their start")
    ap.add_argument("--vae", action="append", default=[], help="a `moviola train vae` config to train first")
    ap.add_argument("--vae-minutes", type=float, default=0.0, help="budget of the VAE runs")
    ap.add_argument("--cache", default="runs/gpu-cache")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="rendering processes")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=4, help="CPU threads per run")
    ap.add_argument("--pack", default="", help="folder for the fp16 DiTs and small files of each run")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--end", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--vae-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.vae_child:
        return vae_child(args.vae_child, args.end, args.device, args.threads, args.workers)
    if args.child:
        return child(args.child, args.end, args.device, args.threads)
    if not args.configs and not args.vae:
        ap.error("give at least one config")
    if args.vae and args.vae_minutes <= 0:
        ap.error("--vae needs --vae-minutes")
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError: one line, not a traceback
        raise SystemExit(f"train_gpu: error: {e}") from None


def run(args) -> None:
    """The parent: every config and the device checked first, then the VAE stage, the cache, the DiT stage.
    Exits with status 1 when a run failed (after packing what there is)."""
    from moviola.config import load_config
    from moviola.train.common import pick_device
    from moviola.train.vae import TrainVAEConfig

    pick_device(args.device)  # cuda on a machine without one: say so before building anything
    vae_cfgs = [load_config(TrainVAEConfig, config) for config in args.vae]
    for config in args.configs:
        _load(config)
    vae_runs = []
    if args.vae:
        end = time.time() + 60 * args.vae_minutes
        procs = []
        for config, vcfg in zip(args.vae, vae_cfgs):
            vae_runs.append(Path(vcfg.out))
            cmd = [sys.executable, __file__, "--minutes", "0", "--vae-child", config, "--end", str(end),
                   f"--device={args.device}", f"--threads={args.threads}",
                   f"--workers={max(1, args.workers // len(args.vae))}"]
            procs.append(subprocess.Popen(cmd))
        codes = [p.wait() for p in procs]
        print("VAE exit codes", codes, flush=True)
        if args.pack:  # now, so that the autoencoders come back even if a later stage fails
            pack(Path(args.pack), [], vae_runs)
        if any(codes):  # the DiT configs may train in these runs' latent spaces: stop here
            raise SystemExit(f"train_gpu: a VAE run failed (exit codes {codes}); the DiT stage was not started")
    if not args.configs:
        return

    cache = Path(args.cache).resolve()
    first = _load(args.configs[0])
    from moviola.train.dit import _resolve_vae_dir, world_cache_identity

    shared = world_cache_identity(first, _resolve_vae_dir(first), first.text_encoder)
    for config in args.configs:  # checked before the cache is built and any run starts: they share one cache
        cfg = _load(config)
        if world_cache_identity(cfg, _resolve_vae_dir(cfg), cfg.text_encoder) != shared:
            raise SystemExit(f"{config}: its cache would differ from {args.configs[0]}'s (data section, VAE, text "
                             "encoder or extra colours): the runs share one cache, so run it separately")
    build_cache(first, cache, args.workers, torch.device(args.device))
    end = time.time() + 60 * args.minutes
    procs, runs = [], []
    for config in args.configs:
        cfg = _load(config)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "cache").exists():
            (out / "cache").symlink_to(cache, target_is_directory=True)
        runs.append(out)
        cmd = [sys.executable, __file__, "--minutes", "0", "--child", config, "--end", str(end),
               f"--device={args.device}", f"--threads={args.threads}"]
        procs.append(subprocess.Popen(cmd))
    codes = [p.wait() for p in procs]
    print("exit codes", codes, flush=True)
    if args.pack:
        pack(Path(args.pack), runs, vae_runs)
    if any(codes):
        raise SystemExit(f"train_gpu: a DiT run failed (exit codes {codes})")


if __name__ == "__main__":
    main()
