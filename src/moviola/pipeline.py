"""The text-to-video pipeline: text encoder -> diffusion transformer + ODE sampler -> VAE decoder.

    pipe = Pipeline.from_pretrained(DEFAULT_MODEL_DIR)
    frames = pipe("a small red circle moves right", width=64, height=64, seconds=2, seed=0)  # (T, H, W, 3) uint8

A model folder holds one file pair per part (``vae.safetensors`` + ``vae.json``, ``dit.safetensors`` +
``dit.json``) and ``pipeline.json`` (text encoder, frame rate, the sizes and durations the model supports,
sampler defaults). Everything loads from disk; nothing is downloaded. Generation uses only the learned
parts: the world's renderer is never imported here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from moviola.flow.path import shift_for_tokens
from moviola.flow.samplers import cfg_model_fn, make_noise, sample
from moviola.models.dit import DiT
from moviola.models.text import load_text_encoder
from moviola.models.vae import CausalVAE

PIPELINE_FILE = "pipeline.json"


class GenerationError(ValueError):
    """A request the model cannot serve (size, duration, steps...), with the allowed range."""


@dataclass
class PipelineConfig:
    """What a model folder says about how to run it."""

    text_encoder: str = "minilm"  # "minilm" (the packaged default) or a local folder with T5/UMT5/CLIP
    fps: float = 8.0
    min_side: int = 32
    max_side: int = 128
    side_multiple: int = 16  # VAE 8x times the DiT's 2x2 patch
    max_seconds: float = 4.0  # one-shot generation; longer clips are made chunk by chunk
    steps: int = 16
    guidance: float = 4.0
    sampler: str = "euler"
    shift: float = 0.0  # 0: shift_for_tokens picks one from the latent token count
    extra: dict = field(default_factory=dict)  # provenance: how the model was trained

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} in {PIPELINE_FILE} (known: {', '.join(sorted(known))})")
        return cls(**d)


def frames_for(seconds: float, fps: float, temporal_factor: int = 4) -> tuple[int, int]:
    """(frames to generate = 4k + 1 covering the duration, frames to keep = round(seconds * fps))."""
    keep = max(1, int(round(seconds * fps)))
    k = math.ceil((keep - 1) / temporal_factor)
    return 1 + temporal_factor * k, keep


class Pipeline:
    """Text encoder + DiT + VAE, with the sampler settings of ``PipelineConfig``."""

    def __init__(self, vae: CausalVAE, dit: DiT, text_encoder, config: PipelineConfig | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.vae = vae.to(self.device).eval()
        self.dit = dit.to(self.device).eval()
        self.text_encoder = text_encoder
        self.config = config or PipelineConfig()

    # --- files ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "Pipeline":
        d = Path(directory)
        for name in (PIPELINE_FILE, "vae.safetensors", "dit.safetensors"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d}: not a Moviola model folder (missing {name})")
        cfg = PipelineConfig.from_dict(json.loads((d / PIPELINE_FILE).read_text()))
        vae = CausalVAE.from_pretrained(d, device=device)
        dit = DiT.from_pretrained(d, device=device)
        text = load_text_encoder(None if cfg.text_encoder == "minilm" else cfg.text_encoder)
        return cls(vae, dit, text, cfg, device)

    def save_pretrained(self, directory: str | Path) -> None:
        from moviola.video_io import atomic_write_bytes

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(d)
        self.dit.save_pretrained(d)
        atomic_write_bytes(d / PIPELINE_FILE, (json.dumps(asdict(self.config), indent=2) + "\n").encode())

    def load_lora(self, path: str | Path, scale: float = 1.0) -> "Pipeline":
        """Apply a LoRA adapter (``moviola train dit`` with ``[lora]``: a folder with lora.safetensors and
        lora.json) to the DiT, replacing any applied before; ``scale`` 0 gives the base model back. A
        LoRAError (a ValueError) if it was trained on another base model."""
        from moviola.models.lora import load_lora

        load_lora(self.dit, path, scale=scale)
        self.dit.to(self.device).eval()
        return self

    # --- validation ----------------------------------------------------------------------------

    def check_request(self, width: int, height: int, seconds: float | None, num_frames: int | None,
                      steps: int, guidance: float) -> None:
        c = self.config
        for name, side in (("width", width), ("height", height)):
            if not (c.min_side <= side <= c.max_side) or side % c.side_multiple:
                raise GenerationError(f"{name} {side} is outside this model's range: multiples of "
                                      f"{c.side_multiple} from {c.min_side} to {c.max_side}")
        if num_frames is not None:
            if num_frames < 1 or num_frames > c.max_seconds * c.fps + 1:
                raise GenerationError(f"num_frames must be 1 to {int(c.max_seconds * c.fps) + 1}, got {num_frames}")
        elif seconds is not None and not (0 < seconds <= c.max_seconds):
            raise GenerationError(f"seconds must be more than 0 and at most {c.max_seconds:g} for one-shot "
                                  f"generation, got {seconds:g}")
        if not 1 <= steps <= 1000:
            raise GenerationError(f"steps must be 1 to 1000, got {steps}")
        if not 0 <= guidance <= 50:
            raise GenerationError(f"guidance must be 0 to 50, got {guidance}")

    # --- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def latents(self, prompt: str, *, width: int, height: int, frames: int, steps: int, guidance: float,
                seed: int, negative_prompt: str = "", sampler: str | None = None,
                callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Sample normalised latents (1, C, t, h, w) for a prompt."""
        s = self.vae.spatial_factor
        C, t, h, w = self.vae.latent_shape(frames, height, width)
        ctx, mask = self.text_encoder.encode([prompt])
        uctx, umask = self.text_encoder.encode([negative_prompt])
        cond = {"context": ctx.to(self.device), "context_mask": mask.to(self.device)}
        uncond = {"context": uctx.to(self.device), "context_mask": umask.to(self.device)}
        model_fn = cfg_model_fn(self.dit, cond, uncond, guidance)
        noise = make_noise((1, C, t, h, w), seed, self.device)
        p = self.dit.config.patch
        tokens = (t // p[0]) * (h // p[1]) * (w // p[2])
        shift = self.config.shift or shift_for_tokens(tokens)
        return sample(model_fn, noise, steps, sampler=sampler or self.config.sampler, shift=shift, callback=callback)

    @torch.no_grad()
    def __call__(self, prompt: str, *, width: int = 64, height: int = 64, seconds: float | None = 2.0,
                 num_frames: int | None = None, fps: float | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
                 sampler: str | None = None, callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Generate a clip. Returns frames (T, H, W, 3) uint8, T = round(seconds * fps) (or num_frames).

        The model always makes 4k + 1 frames (its VAE's native length) and the extra tail is trimmed.
        ``fps`` only sets the playback rate the duration is counted in; the model's motion is learned at
        its own fps (``config.fps``).
        """
        c = self.config
        fps = fps or c.fps
        steps = steps or c.steps
        guidance = c.guidance if guidance is None else guidance
        self.check_request(width, height, seconds, num_frames, steps, guidance)
        if num_frames is not None:
            make, keep = 1 + 4 * math.ceil((num_frames - 1) / 4), num_frames
        else:
            make, keep = frames_for(seconds, fps)
        z = self.latents(prompt, width=width, height=height, frames=make, steps=steps, guidance=guidance,
                         seed=seed, negative_prompt=negative_prompt, sampler=sampler, callback=callback)
        video = self.vae.decode(self.vae.denormalize(z), clamp=True)  # (1, 3, T, H, W) in [-1, 1]
        frames = ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return frames[:keep].cpu().numpy()
