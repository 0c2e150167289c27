"""Low-rank adapters (LoRA) for the DiT's Linear layers: fine-tune a few million numbers, not the model.

A wrapped Linear computes ``base(x) + scale * (alpha / rank) * x A^T B^T`` with A (rank, in) drawn like
a Linear's weight (Kaiming uniform) and B (out, rank) zero, so a fresh adapter changes nothing and
training starts from the base model exactly. Targets are names of nn.Linear modules, matched on whole
dotted components from the end: ``"attn.qkv"`` hits ``blocks.0.attn.qkv`` ... ``blocks.5.attn.qkv``.

    inject_lora(dit, LoRAConfig(rank=8, alpha=8, targets=["attn.qkv", "cross.kv"]))
    ... train (only the adapters require grad) ...
    save_lora(dit, folder, cfg)     # lora.safetensors (A and B only) + lora.json (rank, alpha, the base's config,
                                    #   and any sampler defaults the adapter wants: {"sampling": {"guidance": 2}})
    merge_lora(dit)                 # or fold the adapters into the weights: a plain DiT again
    load_lora(dit, folder, scale=1) # apply a saved adapter to a base model (checked against it)
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

LORA_WEIGHTS = "lora.safetensors"
LORA_CONFIG = "lora.json"
# The attention and MLP projections of every block: what a fine-tune usually needs to move.
DEFAULT_TARGETS = ("attn.qkv", "attn.proj", "cross.q", "cross.kv", "cross.proj", "mlp.fc1", "mlp.fc2")


class LoRAError(ValueError):
    """An adapter that does not fit its model: an unknown target, a different base, a bad file."""


@dataclass
class LoRAConfig:
    """``rank`` 0 means no adapter (full fine-tune). ``merge``: the trainer saves the base with the
    adapters folded in (a normal model folder) instead of a separate adapter file."""

    rank: int = 0
    alpha: float = 0.0  # 0 = rank (scale 1)
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    merge: bool = False

    def __post_init__(self) -> None:
        if self.rank < 0 or not (math.isfinite(self.alpha) and self.alpha >= 0):  # nan had trained an adapter of NaNs
            raise ValueError(f"lora.rank and lora.alpha must be finite and at least 0 (rank 0: a full fine-tune), got "
                             f"rank {self.rank}, alpha {self.alpha}")

    @property
    def scaling(self) -> float:
        return (self.alpha or self.rank) / self.rank


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, scale: float = 1.0) -> None:
        super().__init__()
        if rank < 1:
            raise LoRAError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scale = scale  # the user's strength multiplier (Pipeline.load_lora's scale), on top of alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear does to its weight

    @property
    def factor(self) -> float:
        return self.scale * self.alpha / self.rank

    def delta(self) -> Tensor:
        """The update to the base weight, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.factor

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        # Two thin matmuls through the rank, never the (out, in) product: cheap for any width.
        return self.base(x) + (x @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype) * self.factor


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def find_targets(model: nn.Module, targets: list[str] | tuple[str, ...]) -> list[str]:
    """Names of the nn.Linear modules that ``targets`` name; a LoRAError for a target that names none."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    found: list[str] = []
    for t in targets:
        hits = [n for n in linears if _matches(n, t)]
        if not hits:
            known = sorted({".".join(n.split(".")[-2:]) if n.startswith("blocks.") else n for n in linears})
            raise LoRAError(f"LoRA target {t!r} matches no Linear layer of the model; known: {', '.join(known)}")
        found += [h for h in hits if h not in found]
    return found


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(model: nn.Module, cfg: LoRAConfig, *, freeze: bool = True) -> list[str]:
    """Wrap the target Linears of ``model`` in place (and freeze everything else); returns their names."""
    if lora_modules(model):
        raise LoRAError("the model already has LoRA adapters (merge or remove them first)")
    names = find_targets(model, cfg.targets)
    if freeze:
        model.requires_grad_(False)
    for n in names:
        _set(model, n, LoRALinear(model.get_submodule(n), cfg.rank, cfg.alpha or cfg.rank))
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and unwrap it; the model is a plain one again. Returns
    how many were merged."""
    mods = lora_modules(model)
    for n, m in mods.items():
        m.base.weight += m.delta().to(m.base.weight.dtype)
        _set(model, n, m.base)
    return len(mods)


def remove_lora(model: nn.Module) -> None:
    """Unwrap every adapter without merging: the base model as it was."""
    for n, m in lora_modules(model).items():
        _set(model, n, m.base)


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's own weights, adapters left out (a wrapped Linear counts as the Linear it wraps): what
    an adapter records of the base it was trained on, so it is not applied to another model of the same shape."""
    import hashlib

    h = hashlib.sha256()
    own = {n.replace(".base.", "."): t for n, t in model.state_dict().items() if not n.endswith((".lora_A", ".lora_B"))}
    for name, t in sorted(own.items()):  # by the plain model's names: wrapped or not, the same order
        h.update(name.encode() + b"\0")
        # + 0.0 turns -0.0 into 0.0: the trainer's EMA (e + w (p - e)) does the same to the base's negative zeros
        h.update((t.detach().to("cpu", torch.float32) + 0.0).contiguous().numpy().tobytes())
    return h.hexdigest()


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters: ``{"<module>.lora_A": (r, in), "<module>.lora_B": (out, r)}``."""
    out = {}
    for n, m in lora_modules(model).items():
        out[f"{n}.lora_A"] = m.lora_A.detach().cpu().contiguous()
        out[f"{n}.lora_B"] = m.lora_B.detach().cpu().contiguous()
    return out


def save_lora(model: nn.Module, directory: str | Path, cfg: LoRAConfig, *, extra: dict | None = None) -> Path:
    """Write ``lora.safetensors`` and ``lora.json`` (rank, alpha, targets, the base DiT's config and the SHA-256 of
    its weights) atomically."""
    from moviola.layout import save_tensors, staged_writes
    from moviola.video_io import atomic_path, atomic_write_bytes

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = lora_state_dict(model)
    if not tensors:
        raise LoRAError("the model has no LoRA adapters to save")
    base = getattr(model, "config", None)
    meta = {"rank": cfg.rank, "alpha": cfg.alpha or cfg.rank, "targets": list(cfg.targets),
            "modules": sorted(lora_modules(model)), "base": base.to_dict() if hasattr(base, "to_dict") else None,
            "base_sha256": base_fingerprint(model), **(extra or {})}
    with staged_writes():  # the weights and their settings land together
        with atomic_path(d / LORA_WEIGHTS) as tmp:
            save_tensors(tensors, tmp, {"format": "pt"})
        atomic_write_bytes(d / LORA_CONFIG, (json.dumps(meta, indent=2) + "\n").encode())
    return d


def read_lora(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, tensors) of an adapter: a folder holding lora.safetensors + lora.json, or either file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    d = p if p.is_dir() else p.parent
    if not (d / LORA_WEIGHTS).is_file() or not (d / LORA_CONFIG).is_file():
        raise FileNotFoundError(f"{p}: not a LoRA adapter (expected {LORA_WEIGHTS} and {LORA_CONFIG} there)")
    try:
        meta = json.loads((d / LORA_CONFIG).read_text())
        tensors = load_file(str(d / LORA_WEIGHTS))
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise LoRAError(f"{d}: unreadable LoRA adapter ({e})") from None
    if not isinstance(meta, dict) or not {"rank", "alpha", "modules"} <= set(meta):
        raise LoRAError(f"{d / LORA_CONFIG}: missing rank, alpha or modules")
    return meta, tensors


def load_lora(model: nn.Module, path: str | Path, scale: float = 1.0, *,
              adapter: tuple[dict, dict[str, Tensor]] | None = None) -> dict:
    """Apply a saved adapter to ``model`` (replacing one already applied), unmerged so ``scale`` can be
    changed later (``set_lora_scale``). Returns its lora.json metadata (modules, rank, ``sampling``...).
    A LoRAError when it was trained on a different base. ``adapter``: what ``read_lora(path)`` returned, when
    the caller has read it already."""
    meta, tensors = adapter if adapter is not None else read_lora(path)
    base = meta.get("base")
    cfg = getattr(model, "config", None)
    if base and hasattr(cfg, "to_dict"):
        mine = cfg.to_dict()
        diff = [k for k in base if k != "gradient_checkpointing" and base[k] != mine.get(k)]
        if diff:
            k = diff[0]
            raise LoRAError(f"{path}: adapter was trained on a different base model ({k} {base[k]!r}, "
                            f"this model has {mine.get(k)!r})")
    if meta.get("base_sha256") and meta["base_sha256"] != base_fingerprint(model):  # same shape, other weights
        trained_on = f" ({meta['base_model']})" if meta.get("base_model") else ""
        raise LoRAError(f"{path}: adapter was trained on other weights{trained_on} than this model's: give that "
                        "model (generate --model) to apply it to")
    # Every check before the model is touched: an adapter that doesn't fit leaves the one applied before in place.
    modules = dict(model.named_modules())
    for n in meta["modules"]:
        lin = modules.get(n)
        lin = lin.base if isinstance(lin, LoRALinear) else lin
        a, b = tensors.get(f"{n}.lora_A"), tensors.get(f"{n}.lora_B")
        if not isinstance(lin, nn.Linear):
            raise LoRAError(f"{path}: adapter names {n!r}, which is no Linear layer of this model")
        if a is None or b is None:
            raise LoRAError(f"{path}: adapter lacks the weights of {n!r}")
        if a.shape != (meta["rank"], lin.in_features) or b.shape != (lin.out_features, meta["rank"]):
            raise LoRAError(f"{path}: adapter shapes for {n!r} ({tuple(b.shape)} x {tuple(a.shape)}) do not fit "
                            f"its Linear ({lin.out_features} x {lin.in_features})")
    remove_lora(model)
    modules = dict(model.named_modules())
    for n in meta["modules"]:
        m = LoRALinear(modules[n], int(meta["rank"]), float(meta["alpha"]), scale)
        with torch.no_grad():
            m.lora_A.copy_(tensors[f"{n}.lora_A"])
            m.lora_B.copy_(tensors[f"{n}.lora_B"])
        m.requires_grad_(False)
        _set(model, n, m)
    return meta


def set_lora_scale(model: nn.Module, scale: float) -> None:
    for m in lora_modules(model).values():
        m.scale = scale


@contextmanager
def lora_disabled(model: nn.Module):
    """Within the block the adapted model computes what its base does (every adapter's scale 0)."""
    mods = lora_modules(model).values()
    scales = [m.scale for m in mods]
    try:
        for m in mods:
            m.scale = 0.0
        yield model
    finally:
        for m, s in zip(mods, scales):
            m.scale = s
