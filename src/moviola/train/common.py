"""Pieces every trainer shares: optimiser config, warm-up schedule, EMA, checkpoints, logging, devices.

Checkpoints hold model, EMA, optimiser, step, RNG state and the resolved config, written atomically, so a
run killed at any moment resumes from its last checkpoint and continues the same loss curve (batches are
a pure function of the step, see ``moviola.data.clips``).
"""

from __future__ import annotations

import copy
import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from moviola.video_io import atomic_path


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at the last step
    warmup_steps: int = 200
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    batch_size: int = 8
    steps: int = 2000

    def __post_init__(self) -> None:
        """A ValueError naming the first setting out of range (``--optim.batch_size=0`` had crashed deep in
        torch or trained nothing, ``--optim.steps=-5`` saved an untrained model)."""
        checks = [("lr", self.lr > 0), ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1),
                  ("warmup_steps", self.warmup_steps >= 0), ("weight_decay", self.weight_decay >= 0),
                  ("beta1", 0 <= self.beta1 < 1), ("beta2", 0 <= self.beta2 < 1), ("grad_clip", self.grad_clip >= 0),
                  ("ema_decay", 0 <= self.ema_decay < 1), ("batch_size", self.batch_size >= 1),
                  ("steps", self.steps >= 0)]
        need = {"lr": "more than 0", "min_lr_ratio": "in [0, 1]", "beta1": "in [0, 1)", "beta2": "in [0, 1)",
                "ema_decay": "in [0, 1)", "batch_size": "at least 1"}
        for name, ok in checks:
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise ValueError(f"optim.{name} must be {need.get(name, 'at least 0')}, got {value!r}")


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    # No weight decay on gains, biases and other 1-D parameters.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


class EMA:
    """Exponential moving average of a model's parameters and buffers (a frozen copy)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm the average up: early on, a short memory (1 + step) / (10 + step) tracks the fast changes.
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class TrainingDiverged(ValueError):
    """The loss stopped being a number: the run stops before anything more is saved (its last checkpoint, made
    before, is kept), instead of saving weights that make black frames."""


def check_finite(loss: float, step: int, what: str = "loss") -> None:
    """A TrainingDiverged naming the step if ``loss`` is NaN or infinite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the {what} became {loss} at step {step}: training diverged (a learning rate too "
                               "high for this model, or a bad setting such as a non-finite lora.alpha); nothing "
                               "after the last checkpoint was saved. Lower optim.lr and run again with a new --out")


def check_run_numbers(cfg, shares: tuple[str, ...] = ()) -> None:
    """A ValueError naming the setting: log_every and ckpt_every at least 1 (0 had been a ZeroDivisionError after
    the cache was built and the first step made), threads and the *_every of evaluations at least 0, and each
    of ``shares`` (probabilities) in [0, 1] (caption_dropout = 2 had dropped every caption without a word)."""
    for name in ("log_every", "ckpt_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1 (steps between them), got {getattr(cfg, name)}")
    for name in ("threads", "eval_every", "sample_every"):
        if getattr(cfg, name, 0) < 0:
            raise ValueError(f"{name} must be at least 0 (0: {'torch decides' if name == 'threads' else 'off'}), "
                             f"got {getattr(cfg, name)}")
    for name in shares:
        value = getattr(cfg, name)
        if not 0 <= value <= 1:
            raise ValueError(f"{name} is a share of clips: it must be in [0, 1], got {value}")


def pick_device(name: str = "auto") -> torch.device:
    # Denormal floats (tiny gradients late in training) make CPU kernels 10-100x slower; flush them.
    torch.set_flush_denormal(True)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA GPU that torch can use (device = \"cpu\" or \"auto\")")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: Moviola trains on cpu or cuda")
    return device


def autocast(device: torch.device):
    """bf16 autocast on GPUs; plain fp32 on CPUs (bf16 is far slower than fp32 on this kind of CPU)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def save_checkpoint(path: Path, *, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, step: int,
                    config: dict, extra: dict | None = None) -> None:
    """Everything needed to resume, written atomically (temp file, then rename)."""
    state = {
        "model": model.state_dict(),
        "ema": ema.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "config": config,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "extra": extra or {},
    }
    write_checkpoint(path, state)


def write_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` through a temp file renamed into place (the previous checkpoint survives any failure);
    a failure to write (a full disk shows up as torch's 'unexpected pos') is a ValueError saying so."""
    import shutil

    try:
        with atomic_path(path, fsync=True) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as e:
        free = shutil.disk_usage(path.parent).free / 2**20 if path.parent.exists() else 0.0
        raise ValueError(f"{path}: could not write the checkpoint ({str(e).splitlines()[0]}); {free:.0f} MB free "
                         "there (the previous checkpoint, if any, is intact)") from None


def remove_stale_temps(folder: Path) -> int:
    """Delete the temp files (``.NAME.tmp-XXXX.ext``, see ``atomic_path``) an earlier process of this run left
    when it was killed mid-write. Returns how many. Only for a folder one process writes."""
    from moviola.layout import SAFETENSORS_TEMP

    n = 0
    # its own files, and the saved model's or adapter's (a save killed while its files were staged)
    for t in [*Path(folder).glob(".*.tmp-*"), *Path(folder).glob("model/**/.*.tmp-*"),
              *Path(folder).glob("lora/.*.tmp-*"), *Path(folder).glob("model/**/" + SAFETENSORS_TEMP),
              *Path(folder).glob("lora/" + SAFETENSORS_TEMP)]:
        with contextlib.suppress(OSError):
            t.unlink()
            n += 1
    return n


def read_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """A run's ``ckpt.pt``; a ValueError naming it, and what to do, when it cannot be read. ``mmap``: its tensors
    mapped from the file, read only when touched (to look at its config)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=False)  # the legacy format does not map
    except Exception as e:  # truncated zip, not a checkpoint at all, unpickling errors
        raise ValueError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "delete it to start the run over, or train into another --out") from None
    if not isinstance(state, dict) or not {"model", "step"} <= set(state):
        raise ValueError(f"{path}: not a Moviola training checkpoint; delete it or train into another --out")
    return state


def restore_module(module: nn.Module, state: dict, path: Path, what: str = "model") -> None:
    """Load a checkpoint's ``what`` into ``module``; a run folder made with another architecture is a one-line
    ValueError saying so, not PyTorch's page of size mismatches."""
    from moviola.layout import load_state

    try:
        load_state(module, state[what], f"{path} ({what})")
    except ValueError as e:
        raise ValueError(f"{e}: this run folder was trained with another model config; train into another --out, "
                         "or delete its ckpt.pt to start over") from None


def load_checkpoint(path: Path, *, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer) -> dict:
    """Restore a checkpoint in place; returns it (step, config, extra)."""
    state = read_checkpoint(path)
    restore_module(model, state, path, "model")
    restore_module(ema.model, state, path, "ema")
    optimizer.load_state_dict(state["optimizer"])
    restore_rng(state)
    return state


def restore_rng(state: dict) -> None:
    """The global random states a checkpoint saved: torch's CPU one and, where there are GPUs, theirs."""
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


class JsonlLog:
    """Append-only JSONL scalars (one line per logged step), flushed each write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def write(self, **row) -> None:
        row = {"time": round(time.time() - self.t0, 2), **row}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step`` (a resumed run rewrites them; 0 when it starts over) and any line a crash
        or a full disk left half-written, so the log stays one JSON object a line."""
        if not self.path.exists():
            return
        keep = []
        for ln in self.path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:
                continue  # torn
            if isinstance(row, dict) and row.get("step", 0) <= step:
                keep.append(ln)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in keep))
