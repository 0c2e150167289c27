"""The text-to-video pipeline: text encoder -> diffusion transformer + ODE sampler -> VAE decoder.

    pipe = Pipeline.from_pretrained(DEFAULT_MODEL_DIR)
    frames = pipe("a small red circle moves right", width=64, height=64, seconds=2, seed=0)  # (T, H, W, 3) uint8
    frames = pipe.image_to_video("a red circle falls", image)              # frame 0 is the image
    frames = pipe.extend(clip, "the circle keeps moving", seconds=2)      # clip + 2 s (backward=True: before it)
    frames = pipe.remix(clip, "a blue square instead", strength=0.6)       # video to video
    frames = pipe.connect(a, b, "...", seconds=1); pipe.loop("...", seconds=3)
    for chunk in pipe.stream("...", seconds=60): ...                       # long videos, constant memory
    for chunk in pipe.storyboard([Card(0, "..."), Card(3, "...")], seconds=6): ...

Every ability is one mechanism: some latent frames are known (an image, the tail of the clip so far, the
head of the next one), the rest are sampled by a DiT trained with random conditioning masks
(``moviola.models.dit.frame_cond``). Known pixels become known latents by encoding a window of the clip
with the causal VAE: a prefix encodes exactly as it will decode (causality), a suffix is encoded after a
cross-fade standing in for the frames still to be made. Output clips keep the given frames as given, except
that a clip following generated frames (backward extension, connect's second clip) has its first 3 frames
cross-faded from the generated ones (``SEAM_BLEND``), so the seam does not jump.

A model folder holds ``config.json`` (text encoder, frame rate, the sizes and durations the model supports,
sampler defaults) and a folder per part with its safetensors and ``config.json`` (``vae/``, ``dit/``; see
``moviola.layout``, which also reads the old flat layout). Everything loads from disk; nothing is
downloaded. Generation uses only the learned parts: the world's renderer is never imported here.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from moviola.flow.path import add_noise, shift_for_tokens, timesteps
from moviola.flow.samplers import SOLVERS, cfg_model_fn, known_frames_fn, make_noise
from moviola.layout import CONFIG_NAME, config_text, missing_parts, read_config
from moviola.models.dit import DiT, frame_cond
from moviola.models.text import load_text_encoder
from moviola.models.vae import CausalVAE
from moviola.sizes import size_for

PIPELINE_FILE = CONFIG_NAME  # the model folder's own config.json (moviola.layout)
# The captions a model (or adapter) trained on, its base model's included, so evaluation can avoid them.
CAPTIONS_FILE = "training_captions.json"


def training_captions(folder: str | Path) -> set[str]:
    """The captions listed in ``folder``'s CAPTIONS_FILE, or in its gzipped copy (``.gz``: the shipped model
    keeps its list of 116,559 captions that way); none if it has neither."""
    path, gz = Path(folder) / CAPTIONS_FILE, Path(folder) / (CAPTIONS_FILE + ".gz")
    if path.is_file():
        return set(json.loads(path.read_text()))
    if gz.is_file():
        import gzip

        return set(json.loads(gzip.decompress(gz.read_bytes())))
    return set()


class GenerationError(ValueError):
    """A request the model cannot serve (size, duration, steps...), with the allowed range."""


def check_vae_factors(cfg) -> None:
    """The window arithmetic here (4k + 1 frames, known latent frames, sizes in multiples of 16 for a 2x2
    patch) is the field's 4x temporal, 8x spatial autoencoder's: another VAE would be accepted and then
    regenerate frames it was given, so it is refused. ``cfg``: a VAEConfig."""
    if (cfg.temporal_factor, cfg.spatial_factor) != (4, 8):
        raise ValueError(f"the VAE compresses {cfg.temporal_factor}x in time and {cfg.spatial_factor}x in space; "
                         "Moviola's pipeline and DiT training need 4x and 8x (temporal_downsample with two True, "
                         "channel_mult with four levels)")


@dataclass
class PipelineConfig:
    """What a model folder says about how to run it."""

    text_encoder: str = "minilm"  # "minilm" (the packaged default) or a local folder with T5/UMT5/CLIP
    fps: float = 8.0
    min_side: int = 32
    max_side: int = 128
    side_multiple: int = 16  # VAE 8x times the DiT's 2x2 patch
    max_seconds: float = 4.0  # one window (one-shot generation); longer clips are made window by window
    max_total_seconds: float = 120.0  # the longest clip made window by window (stream, extend, storyboard)
    steps: int = 16
    guidance: float = 4.0
    # Flow times [lo, hi] where guidance applies (conditional pass alone elsewhere; see cfg_model_fn).
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    sampler: str = "euler"
    shift: float = 0.0  # 0: shift_for_tokens picks one from the latent token count
    # Correlation between the latent frames of the starting noise: the prior the DiT was trained on (its
    # trainer's noise_frame_corr, written here); 0 = independent frames
    noise_frame_corr: float = 0.0
    extra: dict = field(default_factory=dict)  # provenance: how the model was trained

    def __post_init__(self) -> None:
        """A ValueError naming the first setting out of its range (a hand-edited config.json, lora.json's
        [sampling]): caught here rather than as a TypeError or a division by zero mid-generation."""
        def bad(name: str, need: str) -> ValueError:
            return ValueError(f"{PIPELINE_FILE}: {name} must be {need}, got {getattr(self, name)!r}")

        for name in ("fps", "max_seconds", "max_total_seconds", "guidance", "shift", "noise_frame_corr"):
            if not math.isfinite(getattr(self, name)):
                raise bad(name, "a finite number")
        if not 0 < self.fps <= 240:
            raise bad("fps", "in (0, 240]")
        if not 1 <= self.side_multiple <= self.min_side <= self.max_side:
            raise ValueError(f"{PIPELINE_FILE}: need 1 <= side_multiple <= min_side <= max_side, got "
                             f"{self.side_multiple}, {self.min_side}, {self.max_side}")
        if not 0 < self.max_seconds <= self.max_total_seconds:
            raise ValueError(f"{PIPELINE_FILE}: need 0 < max_seconds <= max_total_seconds, got "
                             f"{self.max_seconds}, {self.max_total_seconds}")
        if self.max_seconds * self.fps < 8:  # a window is at least 9 frames (fewer had made long clips loop for ever)
            raise ValueError(f"{PIPELINE_FILE}: max_seconds {self.max_seconds:g} at {self.fps:g} fps is under 8 "
                             "frames; a window needs 9")
        if self.steps < 1:
            raise bad("steps", "at least 1")
        if self.guidance < 0 or self.shift < 0:
            raise bad("guidance" if self.guidance < 0 else "shift", ">= 0")
        lo, hi = self.guidance_interval
        if not 0 <= lo <= hi <= 1:
            raise bad("guidance_interval", "[lo, hi] with 0 <= lo <= hi <= 1")
        if self.sampler not in SOLVERS:
            raise bad("sampler", f"one of {', '.join(SOLVERS)}")
        if not 0 <= self.noise_frame_corr < 1:
            raise bad("noise_frame_corr", "in [0, 1)")

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        """From a model folder's config.json: unknown keys, wrong types and values out of range are ValueErrors
        naming the key."""
        from moviola.config import ConfigError, from_dict

        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} in {PIPELINE_FILE} (known: {', '.join(sorted(known))})")
        try:
            return from_dict(cls, d)
        except ConfigError as e:
            raise ValueError(f"{PIPELINE_FILE}: {e}") from None


# Known frames carried from one window to the next: 5 frames = 2 latent frames (the first encodes alone),
# enough to show where things are and which way they move. A suffix is one latent frame (4 pixel frames).
CONTEXT_FRAMES = 5
SUFFIX_FRAMES = 4
# A transition (connect, and a loop's way back to its start) starts from the cross-fade of the frames on its
# two sides noised to this level rather than from noise: the model still remakes it, but more gradually
# (`moviola eval abilities`, seam medians over the clip's median frame difference: same-scene connect 1.65 ->
# 1.30 (9 -> 15 of 16 seams <= 2), two unrelated scenes 5.22 -> 4.19, loop 1.72 -> 1.63 (16 loops); 0.7 gave
# 1.51 / 4.49). The lower it is, the more the transition is a dissolve and the less the model's own.
# With the eased cross-fade (`dissolve`) and connect's guidance of 1, 0.35 gave unrelated scenes 2.48 -> 2.10
# (1 s) and 1.66 -> 1.37 (2 s) on the scene-change model; 0.25 gave 2.03 / 1.22, mostly the cross-fade itself.
TRANSITION_STRENGTH = 0.35
MAX_FPS = 120.0  # the highest output rate a call may ask for
MIN_INPUT_SIDE = 8  # pixels: the smallest image or video side worth scaling up to condition on
# Connect's default guidance. Its transition runs between known frames on both sides, and text guidance pulls
# the frames next to them away from them (see SUFFIX_GUIDANCE): a 2 s transition's first latent frames, guided
# at 5, jumped from the first clip (seam medians 2.52 -> 1.66 at guidance 1, scene-change model, strength 0.5).
# The conditional pass alone still follows the prompt; `guidance=` (`--guidance`) overrides it.
TRANSITION_GUIDANCE = 1.0


@dataclass
class Card:
    """One storyboard card: from ``start`` seconds the clip follows ``prompt``; an optional ``image``
    (H, W, 3) uint8 becomes the first frame of its segment."""

    start: float
    prompt: str
    image: np.ndarray | None = None


def frames_for(seconds: float, fps: float, temporal_factor: int = 4) -> tuple[int, int]:
    """(frames to generate = 4k + 1 covering the duration, frames to keep = round(seconds * fps))."""
    keep = max(1, int(round(seconds * fps)))
    k = math.ceil((keep - 1) / temporal_factor)
    return 1 + temporal_factor * k, keep


class Pipeline:
    """Text encoder + DiT + VAE, with the sampler settings of ``PipelineConfig``."""

    def __init__(self, vae: CausalVAE, dit: DiT, text_encoder, config: PipelineConfig | None = None,
                 device: str | torch.device = "cpu"):
        if vae.config.latent_channels != dit.config.in_channels:
            raise ValueError(f"the VAE makes {vae.config.latent_channels}-channel latents but the DiT takes "
                             f"{dit.config.in_channels}: they were not trained together")
        check_vae_factors(vae.config)
        text_dim = getattr(text_encoder, "dim", None)
        if isinstance(text_dim, int) and text_dim != dit.config.text_dim:  # else the first call fails inside the DiT
            raise ValueError(f"the text encoder ({getattr(text_encoder, 'path', type(text_encoder).__name__)}) makes "
                             f"{text_dim}-wide token embeddings but the DiT reads {dit.config.text_dim}: a DiT is "
                             "trained with one text encoder")
        self.device = torch.device(device)
        self.vae = vae.to(self.device).eval()
        self.dit = dit.to(self.device).eval()
        self.text_encoder = text_encoder
        self.config = config or PipelineConfig()
        self.source_dir: Path | None = None  # the folder it was loaded from: its card, provenance, captions
        self._lora: tuple[Path, float] | None = None  # the adapter applied (folder, scale)

    # --- files ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None, device: str | torch.device = "cpu") -> "Pipeline":
        """Load a model folder (default: the shipped model) onto ``device`` ("cpu", "cuda", "cuda:N", "mps")."""
        device = _usable_device(device)
        if directory is None:
            from moviola import DEFAULT_MODEL_DIR

            directory = DEFAULT_MODEL_DIR
        d = Path(directory).expanduser()
        missing = missing_parts(d)
        if missing:
            raise FileNotFoundError(f"{d}: not a Moviola model folder (missing {', '.join(missing)})")
        try:
            cfg = PipelineConfig.from_dict(read_config(d, "pipeline"))
        except ValueError as e:
            raise ValueError(f"{d}: {e}") from None
        vae = CausalVAE.from_pretrained(d, device=device)
        dit = DiT.from_pretrained(d, device=device)
        if vae.config.latent_channels != dit.config.in_channels:
            raise ValueError(f"{d}: its VAE makes {vae.config.latent_channels}-channel latents but its DiT takes "
                             f"{dit.config.in_channels}: the two parts were not trained together")
        spec = cfg.text_encoder
        if spec != "minilm" and not Path(spec).expanduser().is_absolute() and (d / spec).exists():
            spec = str(d / spec)  # a folder named relative to the model folder (it had been read from the cwd)
        # on the GPU too, in bf16 there (a UMT5-XXL is 23 GB in fp32); its embeddings come back in fp32
        text = load_text_encoder(None if spec == "minilm" else spec, device=device,
                                 dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
        pipe = cls(vae, dit, text, cfg, device)
        pipe.source_dir = d
        return pipe

    def save_pretrained(self, directory: str | Path) -> None:
        """Write a model folder ``from_pretrained`` loads. With a LoRA adapter applied, the DiT is saved with it
        merged in (at its scale) beside the settings it runs with: the folder makes what this pipeline makes."""
        from moviola.models.lora import lora_modules, merge_lora
        from moviola.video_io import atomic_write_bytes

        from moviola.layout import check_writable, staged_writes

        d = Path(directory)
        check_writable(d, "pipeline")  # not over a part's own folder (its config.json would be replaced)
        d.mkdir(parents=True, exist_ok=True)
        dit = self.dit
        if lora_modules(dit):
            dit = copy.deepcopy(dit)
            merge_lora(dit)
        with staged_writes():  # every file of the folder lands together (a kill mid-save had mixed two saves)
            self.vae.save_pretrained(d / "vae")
            dit.save_pretrained(d / "dit")
            atomic_write_bytes(d / PIPELINE_FILE, config_text("pipeline", asdict(self.config)).encode())
            self._save_record(d)

    def _save_record(self, d: Path) -> None:
        """What a model says about itself travels with it: the model card, the provenance of its data and the
        captions it trained on, from the folder it was loaded from; with a LoRA applied, the adapter's folder's
        provenance and captions (a run's hold its base's too) and both cards, saying what was merged."""
        from moviola.data.provenance import CARD, MANIFEST, SUMMARY
        from moviola.layout import remove_or_stage
        from moviola.video_io import atomic_write_bytes

        adapter = self._lora[0] if self._lora is not None else None
        order = [f for f in (adapter, self.source_dir) if f is not None]  # where each file is looked for first
        copied = set()
        for name in (MANIFEST, SUMMARY, CAPTIONS_FILE, CAPTIONS_FILE + ".gz"):
            f = next((o / name for o in order if (o / name).is_file()), None)
            if name.endswith(".gz") and CAPTIONS_FILE in copied:
                continue  # the plain list is read first (training_captions): an adapter's holds its base's too
            if f is not None:
                copied.add(name)
                if f.resolve() != (d / name).resolve():
                    atomic_write_bytes(d / name, f.read_bytes())
        if order:  # a record left in the folder by an earlier save would be read as this model's
            for name in {MANIFEST, SUMMARY, CAPTIONS_FILE, CAPTIONS_FILE + ".gz"} - copied:
                remove_or_stage(d / name)  # with the save's files, not before them
        cards = [(o / CARD).read_text() for o in (self.source_dir, adapter) if o is not None and (o / CARD).is_file()]
        if adapter is not None:
            cards.insert(1 if self.source_dir is not None and (self.source_dir / CARD).is_file() else 0,
                         f"## Saved with a LoRA adapter merged\n\nWritten by `Pipeline.save_pretrained`: the model "
                         f"above ({self.source_dir or 'not loaded from a folder'}) with the adapter {adapter} merged "
                         f"into its DiT at scale {self._lora[1]:g}; the adapter's own card follows.\n")
        if cards and not (self.source_dir is not None and adapter is None
                          and (self.source_dir / CARD).resolve() == (d / CARD).resolve()):
            atomic_write_bytes(d / CARD, "\n".join(cards).encode())

    def load_lora(self, path: str | Path, scale: float = 1.0) -> "Pipeline":
        """Apply a LoRA adapter (``moviola train dit`` with ``[lora]``: a folder with lora.safetensors and
        lora.json) to the DiT, replacing any applied before; ``scale`` 0 gives the base model back. The
        adapter's sampler defaults (its run's ``[sampling]``, e.g. a lower guidance) replace the base's
        while it is applied; a call's own arguments still win. A LoRAError (a ValueError) if it was trained
        on another base model or names an unknown sampler setting."""
        from moviola.models.lora import LoRAError, load_lora, read_lora

        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or abs(scale) > 10:
            raise LoRAError(f"LoRA scale must be a finite number from -10 to 10, got {scale!r}")
        scale = float(scale)
        # Everything is checked before the DiT is touched: a call that raises leaves the pipeline as it was.
        adapter = read_lora(path)
        meta = adapter[0]
        base = getattr(self, "_base_config", self.config)
        sampling = meta.get("sampling") or {}
        unknown = sorted(set(sampling) - {"steps", "guidance", "shift", "sampler"})
        if unknown:
            raise LoRAError(f"{path}: unknown sampling setting {unknown[0]!r} in lora.json")
        try:
            config = PipelineConfig.from_dict({**asdict(base), **sampling}) if scale else base
        except ValueError as e:
            raise LoRAError(f"{path}: lora.json's sampling: {e}") from None
        load_lora(self.dit, path, scale=scale, adapter=adapter)  # a LoRAError (another base) before any change
        self.dit.to(self.device).eval()
        self._base_config, self.config = base, config
        self._lora = (Path(path), float(scale)) if scale else None
        return self

    # --- validation ----------------------------------------------------------------------------

    @property
    def window_frames(self) -> int:
        """The most frames one window makes (4k + 1 within ``max_seconds``); longer clips take several."""
        c = self.config
        return 1 + 4 * max(1, int(c.max_seconds * c.fps) // 4)

    def check_request(self, width: int, height: int, seconds: float | None, num_frames: int | None,
                      steps: int, guidance: float, *, max_seconds: float | None = None,
                      sampler: str | None = None, fps: float | None = None, seed: int = 0,
                      prompt: str = "", negative_prompt: str = "") -> None:
        """A GenerationError naming the first bad argument. ``max_seconds`` is the duration limit of the
        ability (default: the longest clip made window by window); with ``fps`` (the output rate), the
        clip's frames must also fit in what that limit allows at the model's own rate, so a high --fps
        cannot make a clip of any length."""
        c = self.config
        limit = c.max_total_seconds if max_seconds is None else max_seconds
        integer, number = (int, np.integer), (int, float, np.integer, np.floating)
        for name, value, kinds, what in (("width", width, integer, "an int"), ("height", height, integer, "an int"),
                                         ("steps", steps, integer, "an int"), ("guidance", guidance, number, "a number"),
                                         ("seconds", seconds, number, "a number"), ("seed", seed, integer, "an int"),
                                         ("num_frames", num_frames, integer, "an int"), ("fps", fps, number, "a number")):
            if (value is not None or name == "seed") and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise GenerationError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
        if not isinstance(prompt, str):
            raise GenerationError(f"prompt must be a string, got {type(prompt).__name__}")
        if not isinstance(negative_prompt, str):
            raise GenerationError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        if not 0 <= seed < 2**63:
            raise GenerationError(f"seed must be from 0 to {2**63 - 1}, got {seed}")
        for name, side in (("width", width), ("height", height)):
            if not (c.min_side <= side <= c.max_side) or side % c.side_multiple:
                raise GenerationError(f"{name} {side} is outside this model's range: multiples of "
                                      f"{c.side_multiple} from {c.min_side} to {c.max_side}")
        if num_frames is not None:
            if not isinstance(num_frames, (int, np.integer)) or num_frames < 1 or num_frames > round(limit * c.fps):
                raise GenerationError(f"num_frames must be 1 to {round(limit * c.fps)}, got {num_frames}")
        elif seconds is not None and not (0 < seconds <= limit and math.isfinite(seconds)):
            raise GenerationError(f"seconds must be more than 0 and at most {limit:g}, got {seconds:g}")
        if fps is not None:
            if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
                raise GenerationError(f"fps must be more than 0 and at most {MAX_FPS:g}, got {fps:g}")
            budget = round(limit * c.fps)
            # by the frames it makes (6 s at 8.1 fps had made 49 of a budget of 48)
            if seconds is not None and num_frames is None and math.isfinite(seconds) and round(seconds * fps) > budget:
                raise GenerationError(f"{seconds:g} s at {fps:g} fps is {round(seconds * fps)} frames; this model "
                                      f"makes at most {budget} frames ({limit:g} s at its {c.fps:g} fps)")
        if not 1 <= steps <= 1000:
            raise GenerationError(f"steps must be 1 to 1000, got {steps}")
        if not 0 <= guidance <= 50:
            raise GenerationError(f"guidance must be 0 to 50, got {guidance}")
        if sampler is not None and sampler not in SOLVERS:
            raise GenerationError(f"unknown sampler {sampler!r}; choose one of {', '.join(SOLVERS)}")

    def _needs_conditioning(self, what: str) -> None:
        if not self.dit.config.cond_channels:
            raise GenerationError(f"{what} needs a model trained with known frames; this one is text-to-video "
                                  "only (fine-tune it with: moviola train dit --config configs/dit/cond.toml)")

    def fit_image(self, image, width: int, height: int, name: str = "image") -> np.ndarray:
        """An image as (height, width, 3) uint8: scaled to cover and centre-cropped. Takes what video_io
        writes: (H, W, 3) or grayscale (H, W) / (H, W, 1), uint8 or float in [0, 1], numpy, torch or PIL."""
        from PIL import Image

        from moviola.images import pil_to_rgb
        from moviola.video_io import _as_uint8_image, fit_frames

        try:
            a = pil_to_rgb(image) if isinstance(image, Image.Image) else _as_uint8_image(image)
        except (ValueError, TypeError) as e:
            raise GenerationError(f"{name} is not an image to condition on: {e}") from None
        if min(a.shape[:2]) < MIN_INPUT_SIDE:
            raise GenerationError(f"{name} is {a.shape[1]}x{a.shape[0]}: too small to condition on "
                                  f"({MIN_INPUT_SIDE} px a side at least)")
        return fit_frames(a[None], width, height, mode="crop")[0]

    def fit_video(self, video, width: int, height: int, name: str = "video") -> np.ndarray:
        """A (T, H, W, 3) uint8 clip, already at the model's fps, as (T, height, width, 3): scaled to cover
        and centre-cropped (real footage of any size and aspect ratio)."""
        from moviola.video_io import fit_frames

        a = np.asarray(video)
        if a.ndim != 4 or a.shape[3] != 3 or a.dtype != np.uint8 or len(a) < 1:
            raise GenerationError(f"{name} must be a (T, H, W, 3) uint8 RGB array with T >= 1, got {a.dtype} {a.shape}")
        if min(a.shape[1:3]) < MIN_INPUT_SIDE:
            raise GenerationError(f"{name} is {a.shape[2]}x{a.shape[1]}: too small ({MIN_INPUT_SIDE} px a side at least)")
        return fit_frames(a, width, height, mode="crop")

    def _fit_source(self, video, width: int | None, height: int | None,
                    name: str = "video") -> tuple[np.ndarray, int, int]:
        """A source clip fitted to (width, height), by default the trained size nearest its aspect ratio."""
        a = np.asarray(video)
        if (width is None) != (height is None):  # one side alone had been dropped for the default size
            raise GenerationError(f"give both width and height, or neither (the trained size nearest the {name}'s "
                                  f"aspect ratio); got width={width!r}, height={height!r}")
        if width is None or height is None:
            width, height = self.size_for(a.shape[2], a.shape[1]) if a.ndim == 4 and min(a.shape[1:3]) else (64, 64)
        return self.fit_video(video, width, height, name), width, height

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The size this model makes from a (width, height) source: the trained size nearest in aspect ratio
        that it allows, else its allowed size nearest in shape (``moviola.sizes.size_for``, as the server)."""
        c = self.config
        return size_for(width, height, c.min_side, c.max_side, c.side_multiple)

    # --- one window ------------------------------------------------------------------------------

    def _text(self, prompt: str, negative_prompt: str) -> tuple[dict, dict]:
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(text, str):
                raise GenerationError(f"{name} must be a string, got {type(text).__name__}")
            if hasattr(self.text_encoder, "warn_if_truncated"):
                self.text_encoder.warn_if_truncated(text, name.replace("_", " "))
        ctx, mask = self.text_encoder.encode([prompt])
        uctx, umask = self.text_encoder.encode([negative_prompt])
        return ({"context": ctx.to(self.device), "context_mask": mask.to(self.device)},
                {"context": uctx.to(self.device), "context_mask": umask.to(self.device)})

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """(T = 4k + 1, H, W, 3) uint8 -> normalised latents (1, C, 1 + k, H / 8, W / 8), streamed."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(3, 0, 1, 2)[None]
        return self.vae.normalize(self.vae.encode_video(x.float() / 127.5 - 1).mean)

    @torch.no_grad()
    def decode_frames(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latents (1, C, t, h, w) -> (1 + 4(t - 1), 8h, 8w, 3) uint8, through the streaming decoder."""
        video = self.vae.decode_video(self.vae.denormalize(z), clamp=True)  # (1, 3, T, H, W)
        frames = ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return np.ascontiguousarray(frames.cpu().numpy())  # row-major: writes to a pipe or file need it

    @torch.no_grad()
    def window(self, prompt: str, *, width: int, height: int, frames: int, steps: int, guidance: float,
               seed: int, negative_prompt: str = "", sampler: str | None = None,
               prefix: np.ndarray | None = None, suffix: np.ndarray | None = None,
               init: np.ndarray | None = None, strength: float = 1.0,
               callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Sample and decode one window of ``frames`` = 4k + 1 frames: (frames, height, width, 3) uint8.

        Args:
            prefix: (P, H, W, 3) known first frames, P = 4j + 1 (1: an image; 5: a clip's tail).
            suffix: (S, H, W, 3) known last frames, S = 4j (the head of what follows).
            init: (frames, H, W, 3) a clip to start from (remix): the sampler runs the last
                round(steps * strength) of its steps (SDEdit), from the clip's latents noised to the time
                those steps start at on the shifted grid (above strength itself: with shift 2 and 24 steps,
                strength 0.25 starts at t = 0.40, 0.5 at 0.67); strength 1 starts from pure noise.
        The known frames come back as the decoder makes them; callers paste the given pixels.
        """
        C, t, h, w = self.vae.latent_shape(frames, height, width)
        P = 0 if prefix is None else len(prefix)
        S = 0 if suffix is None else len(suffix)
        if (P and (P - 1) % 4) or S % 4:
            raise GenerationError(f"known frames: a prefix takes 4j + 1 frames and a suffix 4j, got {P} and {S}")
        first, last = (1 + (P - 1) // 4 if P else 0), S // 4  # known latent frames at the start and the end
        mask = torch.zeros(t, device=self.device)  # (t,) 1 = known latent frame
        mask[:first] = 1
        mask[t - last:t] = 1
        if mask.sum() >= t:
            raise GenerationError(f"a window of {frames} frames has nothing left to generate after "
                                  f"{P} known first and {S} known last frames")
        known = None
        if init is not None or P or S:
            pixels = np.array(init) if init is not None else _bridge(prefix, suffix, frames)
            if P:
                pixels[:P] = prefix
            if S:
                pixels[frames - S:] = suffix
            known = self.encode_frames(pixels)  # (1, C, t, h, w)
        conditioned = bool(mask.any())
        if conditioned:
            self._needs_conditioning("generating from known frames (an image, a clip)")
        cond, uncond = self._text(prompt, negative_prompt)
        if self.dit.config.cond_channels:  # the same known frames in both passes: guidance is on the text
            fc = frame_cond(known if known is not None else torch.zeros(1, C, t, h, w, device=self.device), mask)
            cond["cond"] = uncond["cond"] = fc
        model_fn = cfg_model_fn(self.dit, cond, uncond, _seam_guidance(guidance, t, last, self.device, prefix=first),
                                interval=self.config.guidance_interval)
        noise = make_noise((1, C, t, h, w), seed, self.device, frame_corr=self.config.noise_frame_corr)
        if conditioned:
            model_fn = known_frames_fn(model_fn, known, mask, noise)
        p = self.dit.config.patch
        shift = self.config.shift or shift_for_tokens((t // p[0]) * (h // p[1]) * (w // p[2]))
        ts = timesteps(steps, shift=shift)
        x = noise
        if init is not None and strength < 1:
            skip = steps - _steps_at(steps, strength)  # SDEdit: start part-way down the same grid
            ts = ts[skip:]
            x = add_noise(known, noise, float(ts[0]))
        z = SOLVERS[sampler or self.config.sampler](model_fn, x, ts, callback=callback)
        if conditioned:
            z = torch.where(mask.bool()[None, None, :, None, None], known, z)
        return self.decode_frames(z)

    # --- generation ----------------------------------------------------------------------------

    def _settings(self, steps, guidance, sampler, fps) -> tuple[int, float, str, float]:
        """A call's settings, the model's defaults where it gave none (None: 0 is a value, and check_request
        refuses it rather than quietly using the default)."""
        c = self.config
        return (c.steps if steps is None else steps, c.guidance if guidance is None else guidance,
                c.sampler if sampler is None else sampler, c.fps if fps is None else fps)

    def _plan(self, total: int, first_prefix: int) -> list[tuple[int, int, int]]:
        """Windows that make ``total`` new frames after a first known prefix of 0, 1 or 5 frames:
        (window frames, prefix frames, new frames kept) each; later windows carry 5 frames of context."""
        W, plan, made, P = self.window_frames, [], 0, first_prefix
        while made < total:
            need = total - made
            # At least 9 frames a window, the shortest clips the model trained on (an image is frame 0 of one).
            if P == 0:
                frames = min(W, max(9, 1 + 4 * math.ceil((need - 1) / 4)))
                new = min(need, frames)
            else:
                frames = min(W, max(9, P + 4 * math.ceil(need / 4)))
                new = min(need, frames - P)
            plan.append((frames, P, new))
            made += new
            P = CONTEXT_FRAMES if (P + new >= CONTEXT_FRAMES) else 1
        return plan

    def _forward(self, prompt: str, total: int, *, tail: np.ndarray | None, width: int, height: int,
                 steps: int, guidance: float, seed: int, negative_prompt: str, sampler: str,
                 progress: "_Progress", source: np.ndarray | None = None, strength: float = 1.0) -> Iterator[np.ndarray]:
        """Make ``total`` frames window by window, each after the last frames made (or ``tail``, frames that
        precede them), yielding each window's new frames (n, H, W, 3). Only the tail is kept between
        windows, so memory does not grow with length. ``source`` (total frames): remix it at ``strength``."""
        if tail is not None:
            tail = _context(tail)
        made = 0
        for k, (frames, P, new) in enumerate(self._plan(total, 0 if tail is None else len(tail))):
            init = None
            if source is not None:  # the source frames this window covers, after the context
                init = np.concatenate(([tail] if P else []) + [source[made:made + frames - P]])
                init = np.concatenate([init, np.repeat(init[-1:], frames - len(init), axis=0)])
            out = self.window(prompt, width=width, height=height, frames=frames, steps=steps, guidance=guidance,
                              seed=seed + 7919 * k, negative_prompt=negative_prompt, sampler=sampler,
                              prefix=tail if P else None, init=init, strength=strength, callback=progress.window())
            chunk = out[P:P + new] if not P else _spread_prefix(out[P:P + new], tail[-1], out[P - 1])
            # The next window's context is taken before the chunk is handed out: the caller may draw on it.
            context = _context(chunk if tail is None else np.concatenate([tail, chunk]))
            yield chunk
            made += new
            tail = context

    @torch.no_grad()
    def __call__(self, prompt: str, *, width: int = 64, height: int = 64, seconds: float | None = 2.0,
                 num_frames: int | None = None, fps: float | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
                 sampler: str | None = None, callback: Callable[[int, int], None] | None = None,
                 image: np.ndarray | None = None, last_image: np.ndarray | None = None,
                 loop: bool = False) -> np.ndarray:
        """Generate a clip. Returns frames (T, H, W, 3) uint8, T = round(seconds * fps) (or num_frames); with a
        ``last_image`` the clip is one window ending on it, so T is rounded to 4k + 1 (``image_to_video``).

        Up to ``max_seconds`` it is one window of 4k + 1 frames (the VAE's native length), its extra tail
        trimmed; longer clips are made window by window (``stream``). ``image`` / ``last_image`` make it
        image-to-video, ``loop`` a seamless loop. ``fps`` only sets the playback rate the duration is
        counted in; the model's motion is learned at its own fps (``config.fps``).
        """
        if loop:
            if image is not None or last_image is not None:
                raise GenerationError("a loop cannot also start or end on a given image")
            return self.loop(prompt, width=width, height=height, seconds=seconds, num_frames=num_frames, fps=fps,
                             steps=steps, guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                             sampler=sampler, callback=callback)
        if image is not None or last_image is not None:
            return self.image_to_video(prompt, image, last_image=last_image, width=width, height=height,
                                       seconds=seconds, num_frames=num_frames, fps=fps, steps=steps,
                                       guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                                       sampler=sampler, callback=callback)
        chunks = list(self.stream(prompt, width=width, height=height, seconds=seconds, num_frames=num_frames,
                                  fps=fps, steps=steps, guidance=guidance, seed=seed,
                                  negative_prompt=negative_prompt, sampler=sampler, callback=callback))
        return np.concatenate(chunks)

    def _total(self, seconds: float | None, num_frames: int | None, fps: float) -> int:
        if seconds is None and num_frames is None:
            raise GenerationError("give seconds or num_frames")
        return num_frames if num_frames is not None else max(1, int(round(seconds * fps)))

    def stream(self, prompt: str, *, width: int = 64, height: int = 64, seconds: float | None = 2.0,
               num_frames: int | None = None, fps: float | None = None, steps: int | None = None,
               guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
               sampler: str | None = None, callback: Callable[[int, int], None] | None = None,
               image: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Generate a clip of any length up to ``max_total_seconds``, yielding frames (n, H, W, 3) uint8 as
        each window is made: write them as they come and memory stays constant (``moviola generate
        --seconds 60``). Each window after the first starts from the last 5 frames of the one before;
        ``image`` becomes frame 0. Arguments are checked before any work starts."""
        steps, guidance, sampler, fps = self._settings(steps, guidance, sampler, fps)
        self.check_request(width, height, seconds, num_frames, steps, guidance, sampler=sampler, fps=fps, seed=seed, prompt=prompt,
                           negative_prompt=negative_prompt)
        total = self._total(seconds, num_frames, fps)
        tail = None
        if image is not None:
            tail = self.fit_image(image, width, height)[None]
        if total > self.window_frames and not self.dit.config.cond_channels:
            raise GenerationError(f"seconds must be at most {self.config.max_seconds:g} for this text-only model; "
                                  "a longer clip needs a model trained with known frames (fine-tune it with: "
                                  "moviola train dit --config configs/dit/cond.toml)")
        if tail is not None and total > 1:
            self._needs_conditioning("image-to-video")
        return self._stream(prompt, total, tail, width=width, height=height, steps=steps, guidance=guidance,
                            seed=seed, negative_prompt=negative_prompt, sampler=sampler, callback=callback)

    def _stream(self, prompt, total, tail, *, callback, **kw) -> Iterator[np.ndarray]:
        if tail is not None:  # the given image is frame 0, as given (a copy: the caller may draw on it)
            yield tail.copy()
            total -= 1
        if total <= 0:
            return
        progress = _Progress(callback, len(self._plan(total, 0 if tail is None else 1)) * kw["steps"])
        yield from _no_grad_chunks(self._forward(prompt, total, tail=tail, progress=progress, **kw))

    @torch.no_grad()
    def image_to_video(self, prompt: str, image: np.ndarray | None = None, *, last_image: np.ndarray | None = None,
                       width: int = 64, height: int = 64, seconds: float | None = 2.0, num_frames: int | None = None,
                       fps: float | None = None, steps: int | None = None, guidance: float | None = None,
                       seed: int = 0, negative_prompt: str = "", sampler: str | None = None,
                       callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Animate an image: frame 0 is ``image`` (scaled and centre-cropped to the size), the rest follow
        the prompt. ``last_image`` ends the clip on an image instead (or as well): the clip is then one
        window whose length is rounded to the model's 4k + 1 frames (at least 9)."""
        if image is None and last_image is None:
            raise GenerationError("image_to_video needs image, last_image or both")
        steps, guidance, sampler, fps = self._settings(steps, guidance, sampler, fps)
        if last_image is None:
            return np.concatenate(list(self.stream(prompt, width=width, height=height, seconds=seconds,
                                                   num_frames=num_frames, fps=fps, steps=steps, guidance=guidance,
                                                   seed=seed, negative_prompt=negative_prompt, sampler=sampler,
                                                   callback=callback, image=image)))
        self.check_request(width, height, seconds, num_frames, steps, guidance, sampler=sampler, fps=fps, seed=seed, prompt=prompt,
                           # one window's frames: 33 had been refused ("1 to 32") though the window is made of 33
                           max_seconds=self.window_frames / self.config.fps, negative_prompt=negative_prompt)
        first = None if image is None else self.fit_image(image, width, height)
        last = self.fit_image(last_image, width, height, "last_image")
        self._needs_conditioning("image-to-video")
        total = self._total(seconds, num_frames, fps)
        frames = min(self.window_frames, max(9, 1 + 4 * round((total - 1) / 4)))
        out = self.window(prompt, width=width, height=height, frames=frames, steps=steps, guidance=guidance,
                          seed=seed, negative_prompt=negative_prompt, sampler=sampler,
                          prefix=None if first is None else first[None],
                          suffix=np.repeat(last[None], SUFFIX_FRAMES, axis=0),
                          callback=_Progress(callback, steps).window())
        if first is not None:
            out[1:] = _spread_prefix(out[1:], first, out[0])
            out[0] = first
        out[-1] = last
        return out

    @torch.no_grad()
    def extend(self, video: np.ndarray, prompt: str, *, seconds: float = 2.0, backward: bool = False,
               width: int | None = None, height: int | None = None, fps: float | None = None,
               steps: int | None = None, guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
               sampler: str | None = None, callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Continue a clip (T, H, W, 3) uint8 at the model's fps by ``seconds`` (before it with
        ``backward``). Returns the whole clip: the source (scaled and cropped to the size, which defaults
        to the trained size nearest its aspect ratio) with the new frames after (or before) it."""
        if not isinstance(backward, (bool, np.bool_)):  # "no" had extended backwards (a non-empty string is true)
            raise GenerationError(f"backward must be True or False, got {backward!r}")
        if not backward:
            return np.concatenate(list(self.extend_stream(
                video, prompt, seconds=seconds, width=width, height=height, fps=fps, steps=steps, guidance=guidance,
                seed=seed, negative_prompt=negative_prompt, sampler=sampler, callback=callback)))
        src, total, kw = self._extend_request(video, prompt, seconds, width, height, fps, steps, guidance, seed,
                                              negative_prompt, sampler)
        steps = kw["steps"]
        # Backward: each window ends on the first 4 frames made so far (a known suffix) and makes what
        # comes before them.
        W, made, parts, k = self.window_frames, 0, [src.copy()], 0
        n_windows = math.ceil(total / (W - SUFFIX_FRAMES))
        progress = _Progress(callback, n_windows * steps)
        while made < total:
            head = np.concatenate(parts[-1:] if len(parts[-1]) >= SUFFIX_FRAMES else parts[::-1])[:SUFFIX_FRAMES]
            head = np.concatenate([np.repeat(head[:1], SUFFIX_FRAMES - len(head), axis=0), head])
            need = min(total - made, W - SUFFIX_FRAMES)
            # window = n + 4 = 4j + 1 frames, at least 9 as every window (1 new frame had made a 5-frame window)
            n = max(5, 1 + 4 * math.ceil((need - 1) / 4))
            out = self.window(prompt, frames=n + SUFFIX_FRAMES, suffix=head, callback=progress.window(),
                              **{**kw, "seed": seed + 7919 * k})
            made_now = out[n - need:n].copy()
            if len(parts[-1]) >= SUFFIX_FRAMES:
                kb = min(SEAM_BEFORE, len(made_now))
                made_now[len(made_now) - kb:], parts[-1][:SEAM_BLEND] = _blend_seam(
                    made_now[len(made_now) - kb:], out[n:n + SEAM_BLEND], parts[-1][:SEAM_BLEND])
            parts.append(made_now)
            made, k = made + need, k + 1
        return np.concatenate(parts[::-1])

    def extend_stream(self, video: np.ndarray, prompt: str, *, seconds: float = 2.0, width: int | None = None,
                      height: int | None = None, fps: float | None = None, steps: int | None = None,
                      guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
                      sampler: str | None = None, callback: Callable[[int, int], None] | None = None
                      ) -> Iterator[np.ndarray]:
        """``extend`` forwards as frame chunks (n, H, W, 3): the fitted source first, then each window's new
        frames as they are made, so a long extension is written as it comes (``moviola extend``) in constant
        memory. Everything is checked when it is called, before the first chunk is asked for."""
        src, total, kw = self._extend_request(video, prompt, seconds, width, height, fps, steps, guidance, seed,
                                              negative_prompt, sampler)
        progress = _Progress(callback, len(self._plan(total, 5 if len(src) >= 5 else 1)) * kw["steps"])

        def chunks() -> Iterator[np.ndarray]:
            yield src.copy()  # the caller may draw on it; the windows start from src
            yield from _no_grad_chunks(self._forward(prompt, total, tail=src, progress=progress, **kw))

        return chunks()

    def _extend_request(self, video, prompt, seconds, width, height, fps, steps, guidance, seed, negative_prompt,
                        sampler) -> tuple[np.ndarray, int, dict]:
        """An extension's checks, both directions: (the fitted source, frames to make, the window kwargs)."""
        steps, guidance, sampler, fps = self._settings(steps, guidance, sampler, fps)
        src, width, height = self._fit_source(video, width, height)
        self.check_request(width, height, seconds, None, steps, guidance, sampler=sampler, fps=fps, seed=seed, prompt=prompt,
                           negative_prompt=negative_prompt)
        self._needs_conditioning("extend")
        kw = dict(width=width, height=height, steps=steps, guidance=guidance, seed=seed,
                  negative_prompt=negative_prompt, sampler=sampler)
        return src, self._total(seconds, None, fps), kw

    @torch.no_grad()
    def remix(self, video: np.ndarray, prompt: str, *, strength: float = 0.6, width: int | None = None,
              height: int | None = None, fps: float | None = None, steps: int | None = None,
              guidance: float | None = None, seed: int = 0, negative_prompt: str = "", sampler: str | None = None,
              callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Video to video with a new prompt: the last round(steps * strength) sampler steps are run from the
        clip's latents noised to where they start (0 keeps the clip, 1 ignores it; the time shift puts that
        start above ``strength``, so 0.5 already remakes much of it). Clips longer than a window are remixed window by
        window, each after the last 5 frames remixed. Returns as many frames as the (fitted) source. ``fps``: the
        rate ``video`` is at (default the model's), for the length checks only: the clip is remixed frame for
        frame, nothing is resampled (the model takes its frames as if at its own rate), so the result has the
        source's frame count and rate."""
        return np.concatenate(list(self.remix_stream(
            video, prompt, strength=strength, width=width, height=height, fps=fps, steps=steps, guidance=guidance,
            seed=seed, negative_prompt=negative_prompt, sampler=sampler, callback=callback)))

    def remix_stream(self, video: np.ndarray, prompt: str, *, strength: float = 0.6, width: int | None = None,
                     height: int | None = None, fps: float | None = None, steps: int | None = None,
                     guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
                     sampler: str | None = None, callback: Callable[[int, int], None] | None = None
                     ) -> Iterator[np.ndarray]:
        """``remix`` as frame chunks (n, H, W, 3), window by window as they are made, so a long remix is written
        as it comes (``moviola remix``). Everything is checked when it is called, before the first chunk."""
        _check_strength(strength)
        steps, guidance, sampler, fps = self._settings(steps, guidance, sampler, fps)
        src, width, height = self._fit_source(video, width, height)
        self.check_request(width, height, None, None, steps, guidance, sampler=sampler, fps=fps, seed=seed, prompt=prompt,
                           negative_prompt=negative_prompt)
        if len(src) > round(self.config.max_total_seconds * fps):  # at the call's frame rate, as the frames play
            raise GenerationError(f"video has {len(src)} frames; remix takes at most "
                                  f"{self.config.max_total_seconds:g} s ({round(self.config.max_total_seconds * fps)} "
                                  f"frames at {fps:g} fps)")
        if strength == 0:
            return iter([src])
        if len(src) > self.window_frames:
            self._needs_conditioning("remixing a clip longer than one window")
        progress = _Progress(callback, len(self._plan(len(src), 0)) * _steps_at(steps, strength))
        return _no_grad_chunks(self._forward(prompt, len(src), tail=None, width=width, height=height, steps=steps,
                                             guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                                             sampler=sampler, progress=progress, source=src, strength=strength))

    @torch.no_grad()
    def connect(self, a: np.ndarray, b: np.ndarray, prompt: str, *, seconds: float = 1.0,
                width: int | None = None, height: int | None = None, fps: float | None = None,
                steps: int | None = None, guidance: float | None = None, seed: int = 0, negative_prompt: str = "",
                sampler: str | None = None, strength: float = TRANSITION_STRENGTH,
                callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Join two clips (each (T, H, W, 3) uint8 at the model's fps) with a generated transition of about
        ``seconds`` (a multiple of 4 frames) that starts from a's last frames and ends on b's first ones.
        ``strength`` (0 < s <= 1): 1 samples the transition from noise; lower starts it from a cross-fade of
        a's last frame into b's first, of whose sampler steps the last round(steps * strength) are run (SDEdit,
        as ``remix``), so it changes more gradually.
        ``guidance`` defaults to TRANSITION_GUIDANCE (1: the conditional pass alone), not the model's.
        Returns a + transition + b at one size (default: the trained size nearest a's aspect ratio)."""
        _check_strength(strength, low_open=True)
        guidance = TRANSITION_GUIDANCE if guidance is None else guidance
        steps, guidance, sampler, fps = self._settings(steps, guidance, sampler, fps)
        first, width, height = self._fit_source(a, width, height, "first clip")
        frames = self.window_frames - len(_context(first)) - SUFFIX_FRAMES  # one window: a's tail, it, b's head
        longest = frames / self.config.fps
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > longest:
            raise GenerationError(f"a transition can be at most {longest:g} s with this model ({frames} frames), "
                                  f"asked for {seconds:g} s")
        self.check_request(width, height, seconds, None, steps, guidance, sampler=sampler, fps=fps, seed=seed,
                           prompt=prompt, max_seconds=longest, negative_prompt=negative_prompt)
        if seconds is None:  # check_request takes None as "no duration"; a transition needs one
            raise GenerationError("seconds must be a number (the transition's length), got None")
        second = self.fit_video(b, width, height, "second clip")
        self._needs_conditioning("connect")
        mid, head = self._transition(first, second, prompt, seconds * fps, width=width, height=height, steps=steps,
                                     guidance=guidance, seed=seed, negative_prompt=negative_prompt, sampler=sampler,
                                     strength=strength, callback=callback)
        return np.concatenate([first, mid, head, second[len(head):]])

    def _transition(self, a: np.ndarray, b: np.ndarray, prompt: str, frames: float, *, callback,
                    strength: float = TRANSITION_STRENGTH, **kw) -> tuple[np.ndarray, np.ndarray]:
        """The frames between clip a's end and clip b's start: one window with a's tail as prefix and b's
        head as suffix, started from their cross-fade noised to ``strength``. Returns them and b's first
        frames cross-faded in from the model's own decoding of them (``_blend_seam``)."""
        prefix = _context(a)
        P = len(prefix)
        head = b[:SUFFIX_FRAMES]
        head = np.concatenate([np.repeat(head[:1], SUFFIX_FRAMES - len(head), axis=0), head])
        M = max(4, 4 * round(frames / 4))
        longest = self.window_frames - P - SUFFIX_FRAMES
        if M > longest:
            raise GenerationError(f"a transition can be at most {longest / self.config.fps:g} s with this model "
                                  f"({longest} frames), asked for {frames / self.config.fps:g} s")
        n = P + M + SUFFIX_FRAMES
        init = _bridge(prefix, head, n) if strength < 1 else None
        out = self.window(prompt, frames=n, prefix=prefix, suffix=head, init=init, strength=strength,
                          callback=_Progress(callback, _steps_at(kw["steps"], strength)).window(), **kw)
        mid = _spread_prefix(out[P:P + M], prefix[-1], out[P - 1])
        if len(b) < SUFFIX_FRAMES:  # a padded head: b's frames are not where the decoded ones are
            return mid, b[:0]
        kb = min(SEAM_BEFORE, M)
        mid[M - kb:], head = _blend_seam(mid[M - kb:], out[P + M:P + M + SEAM_BLEND], b[:SEAM_BLEND])
        return mid, head

    @torch.no_grad()
    def loop(self, prompt: str, *, width: int = 64, height: int = 64, seconds: float | None = 3.0,
             num_frames: int | None = None, fps: float | None = None, steps: int | None = None,
             guidance: float | None = None, seed: int = 0, negative_prompt: str = "", sampler: str | None = None,
             callback: Callable[[int, int], None] | None = None) -> np.ndarray:
        """A seamless loop: a clip, then a generated transition (1 s) from its end back to its start, so the
        last frame leads into the first. Returns T = round(seconds * fps) frames, at least 16 (the 1 s
        transition, the context before it and a few frames of clip: 2 s at the default 8 fps)."""
        steps, guidance, sampler, fps = self._settings(steps, guidance, sampler, fps)
        self.check_request(width, height, seconds, num_frames, steps, guidance, sampler=sampler, fps=fps, seed=seed, prompt=prompt,
                           negative_prompt=negative_prompt)
        total = self._total(seconds, num_frames, fps)
        M = max(4, 4 * round(self.config.fps / 4))
        if total < M + CONTEXT_FRAMES + 3:
            need = M + CONTEXT_FRAMES + 3
            raise GenerationError(f"a loop needs at least {need} frames ({need / fps:g} s at {fps:g} fps), "
                                  f"asked for {total}")
        if M > self.window_frames - CONTEXT_FRAMES - SUFFIX_FRAMES:
            raise GenerationError(f"this model's windows ({self.window_frames} frames) are too short for a loop's "
                                  f"{M}-frame transition")
        self._needs_conditioning("a loop")
        kw = dict(width=width, height=height, steps=steps, guidance=guidance, negative_prompt=negative_prompt,
                  sampler=sampler)
        K = LOOP_SKIP
        progress = _Progress(callback, len(self._plan(total - M + K, 0)) * steps + _steps_at(steps, TRANSITION_STRENGTH))
        made = np.concatenate(list(self._forward(prompt, total - M + K, tail=None, seed=seed, progress=progress, **kw)))
        clip = made[K:]  # without the opening frames (see LOOP_SKIP); the transition returns to clip[0]
        mid, head = self._transition(clip, clip, prompt, M, seed=seed + 1, callback=progress.window(), **kw)
        return np.concatenate([head, clip[len(head):], mid])

    def storyboard(self, cards: Sequence[Card], *, seconds: float | None = None, width: int = 64, height: int = 64,
                   fps: float | None = None, steps: int | None = None, guidance: float | None = None, seed: int = 0,
                   negative_prompt: str = "", sampler: str | None = None, transition: str = "cut",
                   callback: Callable[[int, int], None] | None = None) -> Iterator[np.ndarray]:
        """One continuous clip from cards: segment i runs from card i's start to the next card's (the last to
        ``seconds``, default its start + 2 s) and follows its prompt; a card's image is its first frame.
        ``transition``: "cut" starts each segment afresh (a film cut), "continue" starts it from the last
        frame of the one before (the scene carries on and changes under the new prompt; one frame rather than
        the 5 a long clip carries between its windows, so the new card's prompt is not held back by the old
        scene's motion: its segments scored 45.8 % with 5, 54.9 % with 1, against 59.0 % for single-prompt
        clips, `moviola eval abilities`). Yields frames
        as they are made; the whole board is checked before any work starts."""
        steps, guidance, sampler, fps = self._settings(steps, guidance, sampler, fps)
        cards = list(cards)
        check_cards(cards, seconds, self.config.max_total_seconds)
        if transition not in ("cut", "continue"):
            raise GenerationError(f"transition must be 'cut' or 'continue', got {transition!r}")
        end = seconds if seconds is not None else cards[-1].start + 2.0
        self.check_request(width, height, end, None, steps, guidance, sampler=sampler, fps=fps, seed=seed,
                           negative_prompt=negative_prompt)
        bounds = [round(c.start * fps) for c in cards] + [round(end * fps)]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            if b <= a:
                what = f"card {i + 2} starts" if i + 1 < len(cards) else "the board ends"
                # starts are rounded to whole frames: two starts a frame apart can round to one (0.1875 and 0.3125 s)
                raise GenerationError(f"{what} on the same frame as card {i + 1} (starts are rounded to whole frames "
                                      f"at {fps:g} fps: frame {b} and {a}); move it at least one frame "
                                      f"({1 / fps:g} s) later")
        images = [None if c.image is None else self.fit_image(c.image, width, height, f"card {i + 1} image")
                  for i, c in enumerate(cards)]
        if any(im is not None for im in images) or transition == "continue" or \
                max(b - a for a, b in zip(bounds, bounds[1:])) > self.window_frames:
            self._needs_conditioning("this storyboard (image cards, 'continue' or segments longer than a window)")
        kw = dict(width=width, height=height, steps=steps, guidance=guidance, negative_prompt=negative_prompt,
                  sampler=sampler)
        # made under no_grad, yielded outside it (a no_grad block around the yields had turned gradients off in
        # the caller's own loop over the chunks)
        return _no_grad_chunks(self._board(cards, bounds, images, transition, seed, callback, kw))

    def _board(self, cards, bounds, images, transition, seed, callback, kw) -> Iterator[np.ndarray]:
        windows = 0  # counted first, for one progress bar over the whole board
        for i in range(len(cards)):
            n = bounds[i + 1] - bounds[i]
            first = 1 if images[i] is not None or (transition == "continue" and i > 0) else 0
            windows += len(self._plan(n - (images[i] is not None), first))
        progress = _Progress(callback, windows * kw["steps"])
        tail = None
        for i, c in enumerate(cards):
            n = bounds[i + 1] - bounds[i]
            start = None if transition == "cut" or tail is None else tail[-1:]  # a card change: its last frame
            if images[i] is not None:
                yield images[i][None].copy()
                start, n = images[i][None], n - 1
                tail = start
            for chunk in self._forward(c.prompt, n, tail=start, seed=seed + 104729 * i, progress=progress, **kw):
                tail = _context(chunk if tail is None else np.concatenate([tail, chunk]))  # before the caller has it
                yield chunk


def check_cards(cards: Sequence[Card], seconds: float | None, limit: float) -> None:
    """A GenerationError for an empty, unordered or overlapping board, or one beyond ``limit`` seconds."""
    if not cards:
        raise GenerationError("a storyboard needs at least one card")
    for i, c in enumerate(cards):
        if not isinstance(c, Card):
            raise GenerationError(f"card {i + 1} must be a moviola.pipeline.Card(start, prompt, image=None), "
                                  f"got {type(c).__name__}")
        if not isinstance(c.prompt, str):
            raise GenerationError(f"card {i + 1}: prompt must be text")
        if not (isinstance(c.start, (int, float, np.floating, np.integer)) and math.isfinite(c.start) and c.start >= 0):
            raise GenerationError(f"card {i + 1}: start must be a number of seconds >= 0, got {c.start!r}")
    if cards[0].start != 0:
        raise GenerationError(f"the first card must start at 0 s, got {cards[0].start:g}")
    for i, (a, b) in enumerate(zip(cards, cards[1:])):
        if b.start <= a.start:
            raise GenerationError(f"cards must be in order of start time without overlap: card {i + 2} starts "
                                  f"at {b.start:g} s, not after card {i + 1} at {a.start:g} s")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.floating, np.integer))
                                or not math.isfinite(seconds)):
        raise GenerationError(f"seconds must be a number, got {type(seconds).__name__} {seconds!r}")
    end = seconds if seconds is not None else cards[-1].start + 2.0
    if end <= cards[-1].start:
        raise GenerationError(f"the board ends at {end:g} s, not after its last card starts ({cards[-1].start:g} s)")
    if end > limit:
        raise GenerationError(f"the board lasts {end:g} s; this model makes at most {limit:g} s")


# A loop drops the first LOOP_SKIP frames of the clip it is made from. A clip's opening frames step further than
# the rest (the causal VAE codes frame 0 alone, and a text-only window settles in its first frames): over 8 loops
# the first step was 1.3-3.4x the median, and in a loop those steps sit right after the way back. Dropping frame 0
# (`moviola eval abilities`' loops, 3 s, the same 17-frame window either way): shipped model 1.56 -> 1.36 over 16
# loops (14 better, 15 of 16 within 2x either way); the scene-change model of configs/dit/cond_transitions.toml
# 2.02 -> 1.53 over 8 (3 -> 6 within 2x). Dropping 2 or 4 frames changes the window and gave 1.54 / 1.32 (8 loops).
LOOP_SKIP = 1


def _usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device this machine has, or a ValueError naming the argument (a bad string had
    surfaced as damaged weights, "mps" as a bare torch error)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if dev.type not in available:
        raise ValueError(f"device {device!r}: Moviola runs on cpu, cuda or mps")
    if not available[dev.type]:
        raise ValueError(f"device {device!r}: this machine has no {dev.type} device that torch can use")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cpu") if dev.type == "cpu" else dev  # "cpu:0" is the CPU (safetensors takes no index)


def _no_grad_chunks(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Each chunk made under no_grad, and yielded outside it: a `with torch.no_grad()` around a yield would
    leave gradients off in the caller's code while the generator waits."""
    while True:
        with torch.no_grad():
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


def _context(frames: np.ndarray) -> np.ndarray:
    """The known frames a next window starts from: the last CONTEXT_FRAMES, or the last one when there
    are fewer (a prefix takes 4j + 1 frames)."""
    # A copy: the frames were yielded, and a caller that draws on them in place must not change what comes next.
    return (frames[-CONTEXT_FRAMES:] if len(frames) >= CONTEXT_FRAMES else frames[-1:]).copy()


# A known suffix's seam. The decoder remakes a suffix only approximately (its latents were encoded before
# the frames that precede it existed), so the given pixels differ from the model's decoding of them by a
# residual e; pasting them right after the generated frames showed that residual as a jump. The jump is
# spread over SEAM_BEFORE + SEAM_BLEND + 1 steps: the last SEAM_BEFORE generated frames take on a growing
# share of e (they were decoded leading into the model's version of the suffix), and the first SEAM_BLEND
# given frames are cross-faded in from the model's decoding, so each step carries a fraction of e and the
# given frames keep most of their pixels (>= 30 dB PSNR; measured in the model card). Spreading it further
# (SEAM_BEFORE 5 or 8) moved the seam medians by under 0.2: the rest of the jump was guidance (below).
SEAM_BLEND = 3
SEAM_BEFORE = 3
# Guidance just before a known suffix, as a share r of the extra guidance (g = 1 + r (guidance - 1)), for the
# latent frames nearest the suffix first (each is 4 frames); frames further back get the full guidance. Text
# guidance pulls those frames away from the given ones and the seam shows it (`moviola eval abilities`, 8
# clips each, seam / wrap medians over the clip's median frame difference, guidance 5): with () backward
# extension 2.18, same-scene connect 2.13, loop 2.29; with (0, 0.5) 2.11 / 1.73 / 1.74; with (0, 0) 1.78 /
# 1.65 / 1.72. Guidance 2 everywhere gave 2.06 / 1.80 / 1.85 but weakens the whole clip's prompt.
SUFFIX_GUIDANCE: tuple[float, ...] = (0.0, 0.0)


def _blend_seam(before: np.ndarray, decoded: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spread the residual ``given - decoded`` across a suffix seam.

    Args:
        before: (kb, H, W, 3) uint8, the last generated frames before the seam (kb may be 0).
        decoded: (k, H, W, 3) uint8, the model's decoding of the first given frames.
        given: (k, H, W, 3) uint8, the given frames.
    Returns:
        (before', given'): before + (i / n) e_0 for i = 1..kb, and decoded + (w_j) (given - decoded) with
        w_j = (kb + j) / n for j = 1..k, where n = kb + SEAM_BLEND + 1.
    """
    kb, k = len(before), min(len(decoded), len(given))
    n = kb + SEAM_BLEND + 1
    if k == 0:
        return before, given[:0]
    d, g = decoded[:k].astype(np.float32), given[:k].astype(np.float32)
    wb = (np.arange(1, kb + 1, dtype=np.float32) / n)[:, None, None, None]
    out_before = (before.astype(np.float32) + wb * (g[0] - d[0])).clip(0, 255).round().astype(np.uint8)
    w = ((kb + np.arange(1, k + 1, dtype=np.float32)) / n)[:, None, None, None]
    return out_before, ((1 - w) * d + w * g).round().astype(np.uint8)


# A known prefix's seam, the mirror of the suffix's: the new frames were decoded after the model's decoding of the
# prefix, which differs from the given pixels by the VAE's residual e (0.3-1.4x the clip's median frame step), so
# pasting the given frames before them showed e as a jump. The first PREFIX_SPREAD new frames carry a falling share
# of e, (1 - j / (PREFIX_SPREAD + 1)) for j = 1.., and the step out of the given frames is the model's own.
# Measured on the shipped model (8 clips each, `moviola eval abilities`' clips and seeds, over the clip's median
# frame step): the step across the seam, forward extension 1.80 -> 1.65 (4 -> 6 of 8 within 2x), image to video
# 1.30 -> 1.14 (6 -> 7), spreading over 2, 5 or 8 frames moved those medians by 0.01; the largest of that step and
# the 3 after it (so the jump is not just moved on) 2.05 -> 1.87 and 1.30 -> 1.14.
PREFIX_SPREAD = 3


def _spread_prefix(new: np.ndarray, given: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """The frames made after a known prefix, with the residual ``given - decoded`` of its last frame faded
    out over their first PREFIX_SPREAD.

    Args:
        new: (n, H, W, 3) uint8, the generated frames right after the prefix.
        given: (H, W, 3) uint8, the prefix's last frame as given (what the output shows before ``new``).
        decoded: (H, W, 3) uint8, the model's decoding of that frame (what ``new`` was decoded after).
    Returns:
        (n, H, W, 3) uint8: new[j] + (1 - (j + 1) / (PREFIX_SPREAD + 1)) e for j < PREFIX_SPREAD, the rest as is.
    """
    k = min(PREFIX_SPREAD, len(new))
    out = new.copy()
    if k:
        e = given.astype(np.float32) - decoded.astype(np.float32)
        w = (1 - np.arange(1, k + 1, dtype=np.float32) / (PREFIX_SPREAD + 1))[:, None, None, None]
        out[:k] = (new[:k].astype(np.float32) + w * e).clip(0, 255).round().astype(np.uint8)
    return out


# Guidance just after a known prefix, as SUFFIX_GUIDANCE before a suffix (nearest first): the first latent frame
# after the given ones (4 frames) is sampled with guidance 1, so the text does not pull it away from them. On the
# shipped model (8 clips each, with PREFIX_SPREAD; the largest of the step across the seam and the 3 after it, over
# the clip's median frame step): () extend forwards 1.87 (5 of 8 within 2x), image to video 1.14 (7 of 8);
# (0,) 1.19 (7) / 1.16 (8). On the step across alone, (0, 0.5) 1.00 / 1.06 and (0.5,) 1.19 / 1.13 against (0,)'s
# 1.01 / 1.03. The world scorer on those 16 clips: () 66.0, (0,) 64.1, (0, 0.5) 64.6, (0.5,) 61.6 % (a row moves
# by about 4 points from noise alone). Over 32 clips each: () 1.88 (19 of 32) / 1.30 (25), (0,) 1.33 (29) / 1.07
# (27); world scorer on those 64 clips 64.2 / 64.4 %.
PREFIX_GUIDANCE: tuple[float, ...] = (0.0,)


def _seam_guidance(guidance: float, t: int, suffix: int, device, prefix: int = 0) -> float | torch.Tensor:
    """Guidance per latent frame for a window that ends on ``suffix`` known latent frames: the frames just
    before them are guided less (1 + r (g - 1), r from SUFFIX_GUIDANCE nearest first), so the text does not
    pull the frames that must lead into the given ones away from them; likewise the frames just after
    ``prefix`` known first latent frames with PREFIX_GUIDANCE. A number when nothing changes."""
    rules = [(r, t - suffix - 1 - k) for k, r in enumerate(SUFFIX_GUIDANCE) if suffix] + \
            [(r, prefix + k) for k, r in enumerate(PREFIX_GUIDANCE) if prefix]
    rules = [(r, i) for r, i in rules if prefix <= i < t - suffix]
    if not rules or guidance == 1.0:
        return guidance
    g = torch.full((t,), float(guidance), device=device)
    for r, i in rules:
        g[i] = min(float(g[i]), 1.0 + r * (guidance - 1.0))
    return g.view(1, 1, t, 1, 1)


def _check_strength(strength, low_open: bool = False) -> None:
    """A GenerationError unless 0 <= strength <= 1 (0 < strength with ``low_open``)."""
    ok = (isinstance(strength, (int, float, np.floating, np.integer)) and not isinstance(strength, (bool, np.bool_))
          and 0.0 <= strength <= 1.0)
    if not ok or (low_open and strength == 0):
        allowed = "above 0 and at most 1" if low_open else "between 0 and 1"
        raise GenerationError(f"strength must be {allowed}, got {strength!r}")


def _steps_at(steps: int, strength: float) -> int:
    """Sampler steps run when starting from a clip noised to ``strength`` (SDEdit): at least one."""
    return max(1, round(steps * strength))


def dissolve(n: int) -> np.ndarray:
    """Weights of the second scene for the ``n`` frames between two known ones, (n,) float32 in (0, 1):
    smootherstep (6x^5 - 15x^4 + 10x^3) of x = k / (n + 1), so the dissolve starts and ends at rest (first and
    second derivatives zero) and its steps next to the known frames are small. A linear cross-fade's first
    step is 1 / (n + 1) of the change: between two unrelated scenes over 1 s, about 2x the clips' own motion.
    """
    x = np.arange(1, n + 1, dtype=np.float64) / (n + 1)
    return (x ** 3 * (x * (6 * x - 15) + 10)).astype(np.float32)


def _bridge(prefix: np.ndarray | None, suffix: np.ndarray | None, frames: int) -> np.ndarray:
    """A stand-in for the frames of a window that are still to be made: the prefix's last frame, then a
    ``dissolve`` into the suffix's first over the frames between them, then that frame (the known frames'
    places are overwritten by the caller; only what the causal encoder sees before a suffix depends on it)."""
    a = (prefix[-1] if prefix is not None else suffix[0]).astype(np.float32)
    b = (suffix[0] if suffix is not None else prefix[-1]).astype(np.float32)
    P = 0 if prefix is None else len(prefix)
    S = 0 if suffix is None else len(suffix)  # window() has checked that P + S < frames
    w = np.concatenate([np.zeros(P), dissolve(frames - P - S), np.ones(S)]).astype(np.float32)[:, None, None, None]
    return ((1 - w) * a + w * b).round().astype(np.uint8)


class _Progress:
    """One progress count over several windows: ``window()`` is the sampler callback for the next one."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback, self.total, self.done = callback, max(1, total), 0

    def window(self) -> Callable[[int, int], None] | None:
        if self.callback is None:
            return None
        base = self.done

        def cb(i: int, n: int) -> None:
            self.done = base + i
            self.callback(min(self.done, self.total), self.total)

        return cb
