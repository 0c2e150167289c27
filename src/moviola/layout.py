"""Where a model folder keeps each part (torch-free, so the server can read limits without loading a model).

    MODEL/config.json                       the pipeline: text encoder, fps, size and duration limits, sampler
    MODEL/vae/vae.safetensors + config.json the causal VAE (weights with latent statistics; architecture)
    MODEL/dit/dit.safetensors + config.json the diffusion transformer
    MODEL/MODEL_CARD.md, provenance.json, training_captions.json(.gz)

Each part's folder stands alone too: ``moviola train vae`` saves ``vae.safetensors`` + ``config.json`` and that
folder is what ``--vae`` and ``eval vae --model`` take. Every ``config.json`` names its part in ``_class_name``
(the diffusers convention), so a part is never saved over another's config. Folders written by earlier
versions (before 2026-12-04 evening) kept the parts flat with their own JSON names (``pipeline.json``,
``vae.json``, ``dit.json``); they still load, and are never written.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path

CONFIG_NAME = "config.json"
CLASS_KEY = "_class_name"
WEIGHTS = {"vae": "vae.safetensors", "dit": "dit.safetensors"}
CLASS_NAMES = {"vae": "CausalVAE", "dit": "DiT", "pipeline": "Pipeline"}
LEGACY_CONFIG = {"vae": "vae.json", "dit": "dit.json", "pipeline": "pipeline.json"}


def model_dir(name: str | Path) -> Path:
    """A model folder named as configs and commands name it: ``default`` is the shipped model, anything else a
    path (one rule for every init_from, so a run's provenance and weights come from the same folder)."""
    if str(name) == "default":
        from moviola import DEFAULT_MODEL_DIR

        return DEFAULT_MODEL_DIR
    return Path(name)


def part_dir(folder: str | Path, part: str) -> Path:
    """The folder holding ``part``'s files: ``folder/part`` in a model folder, else ``folder`` itself (a part
    saved alone, or a model folder of the old flat layout)."""
    d = Path(folder)
    sub = d / part
    return sub if (sub / WEIGHTS[part]).is_file() or (sub / CONFIG_NAME).is_file() else d


def part_weights(folder: str | Path, part: str) -> Path:
    """``part``'s safetensors file under ``folder`` (which may not exist: callers say what is missing)."""
    return part_dir(folder, part) / WEIGHTS[part]


def config_path(folder: str | Path, part: str) -> Path:
    """``part``'s config file under ``folder`` (which may not exist): its ``config.json``, or the old flat
    layout's name where that is the one present. For "pipeline", ``folder`` is the model folder itself. A
    ``config.json`` beside no weights of ``part`` is not taken for the part's (it is the model folder's)."""
    folder = Path(folder)
    if part == "pipeline":
        d, own = folder, True
    else:
        d = part_dir(folder, part)
        own = d != folder or (d / WEIGHTS[part]).is_file()
    new, old = d / CONFIG_NAME, d / LEGACY_CONFIG[part]
    if new.is_file() and own:
        return new
    if old.is_file():
        return old
    return new if part == "pipeline" else folder / part / CONFIG_NAME


def read_config(folder: str | Path, part: str) -> dict:
    """``part``'s config as a dict without its ``_class_name``; FileNotFoundError naming the file if absent,
    ValueError if the ``config.json`` found belongs to another part."""
    path = config_path(folder, part)
    if not path.is_file():
        raise FileNotFoundError(f"{Path(folder)}: no {part} config (expected {path})")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    found = cfg.pop(CLASS_KEY, CLASS_NAMES[part])
    if found != CLASS_NAMES[part]:
        raise ValueError(f"{path} is the config of a {found}, not of a {CLASS_NAMES[part]}")
    return cfg


def config_text(part: str, cfg: dict) -> str:
    """The ``config.json`` text for ``part``: its class name first, then ``cfg``."""
    return json.dumps({CLASS_KEY: CLASS_NAMES[part], **cfg}, indent=2) + "\n"


def check_writable(folder: str | Path, part: str) -> None:
    """Refuse to save ``part`` where ``folder/config.json`` is another part's (a model folder's own config, say)."""
    path = Path(folder) / CONFIG_NAME
    if path.is_file():
        try:
            found = json.loads(path.read_text()).get(CLASS_KEY)
        except (json.JSONDecodeError, AttributeError):
            found = None
        if found is not None and found != CLASS_NAMES[part]:
            raise ValueError(f"{path} is a {found}'s config: save the {part} in its own folder "
                             f"(a model folder keeps it in {Path(folder) / part})")


def is_model_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a whole model (pipeline config, VAE and DiT weights) in either layout."""
    return (config_path(folder, "pipeline").is_file() and part_weights(folder, "vae").is_file()
            and part_weights(folder, "dit").is_file())


def missing_parts(folder: str | Path) -> list[str]:
    """The files a model folder lacks (empty if it is whole), named as the current layout names them."""
    d = Path(folder)
    miss = [] if config_path(d, "pipeline").is_file() else [CONFIG_NAME]
    for part in ("vae", "dit"):
        if not part_weights(d, part).is_file():
            miss.append(f"{part}/{WEIGHTS[part]}")
    return miss


# The writes a `staged_writes` block holds back: (finished temp file, its final path), in the order written;
# (None, path) for a file to remove.
_STAGED: ContextVar[list[tuple[Path | None, Path]] | None] = ContextVar("moviola_staged_writes", default=None)


@contextmanager
def staged_writes() -> Iterator[None]:
    """Within the block, every atomic write (this module's, ``video_io.atomic_path`` and what uses them) is
    kept as a finished temp file beside its target; when the block ends they are all renamed into place, in
    the order written, and if it fails none is. A model folder is then saved whole or not at all (but for the
    instant of the renames): a run killed while saving had left new weights under the old config.json,
    sampler settings, captions and card, a mixed folder that loads. Nested blocks join the outer one.
    Reading a file written earlier in the same block sees its old version."""
    if _STAGED.get() is not None:
        yield
        return
    pending: list[tuple[Path | None, Path]] = []
    done = 0  # how many of pending are in place
    token = _STAGED.set(pending)
    try:
        yield
        for tmp, path in pending:
            if tmp is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(tmp, path)
            done += 1
    except BaseException:
        for tmp, _ in pending[done:]:  # those not yet in place (the block failed, or a rename): no temp left
            if tmp is not None:
                with suppress(OSError):
                    tmp.unlink(missing_ok=True)
        raise
    finally:
        _STAGED.reset(token)


def remove_or_stage(path: Path) -> None:
    """``path.unlink(missing_ok=True)``, or inside a ``staged_writes`` block, done when it ends (a failed save
    had already removed the folder's old records)."""
    pending = _STAGED.get()
    if pending is None:
        Path(path).unlink(missing_ok=True)
    else:
        pending.append((None, Path(path)))


def replace_or_stage(tmp: Path, path: Path) -> None:
    """``os.replace(tmp, path)``, or inside a ``staged_writes`` block, held until the block ends."""
    pending = _STAGED.get()
    if pending is None:
        os.replace(tmp, path)
    else:
        pending.append((Path(tmp), Path(path)))


@contextmanager
def _atomic(path: Path):
    """A temporary name beside ``path``, renamed onto it when the block succeeds and deleted when it fails."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        replace_or_stage(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically (a full disk leaves the old file, not a torn one)."""
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(text)
    return path


# safetensors' save_file writes NAME through a temp file of its own beside it (".tmp" and six letters or digits),
# which a kill mid-write leaves: 21 MB beside a model's dit.safetensors had survived the rerun that finished it.
# A glob pattern, for the cleanups of run and cache folders.
SAFETENSORS_TEMP = ".tmp" + "[A-Za-z0-9]" * 6
_UMASK = os.umask(0o022)  # read once, at import (setting it to read it is process-wide: not per save, in threads)
os.umask(_UMASK)


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, its failures an OSError naming the file and the free space (SafetensorError is
    no OSError: a full disk had ended a command in a traceback)."""
    import errno
    import shutil

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
        # safetensors writes through its own temp file and gives the result mode 0600: make it the mode any new
        # file of this user has (a model folder copied or served by another user could not read its weights)
        with suppress(OSError):  # a file system without modes (some mounts) keeps what it has
            os.chmod(path, 0o666 & ~_UMASK)
    except SafetensorError as e:
        path = Path(path)
        try:
            free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MB free there"
        except OSError:
            free = ""
        raise OSError(errno.EIO, f"could not write {path.name} ({e}){free}", str(path)) from None


def save_part(folder: str | Path, part: str, tensors: dict, cfg: dict) -> None:
    """Write ``part``'s weights (safetensors) and ``config.json`` into ``folder``, its own folder (a model
    folder's ``vae/`` or ``dit/``), each atomically; a folder whose config.json is another part's is refused."""

    d = Path(folder)
    check_writable(d, part)
    d.mkdir(parents=True, exist_ok=True)
    with staged_writes():  # the weights and their config land together
        with _atomic(d / WEIGHTS[part]) as tmp:
            save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, {"format": "pt"})
        with _atomic(d / CONFIG_NAME) as tmp:
            tmp.write_text(config_text(part, cfg))


def load_part(folder: str | Path, part: str, device: str = "cpu") -> tuple[dict, dict]:
    """(config, weights) of ``part`` under ``folder`` (its own folder, a model folder, or the old flat layout);
    FileNotFoundError naming the file expected when the weights are missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = part_weights(folder, part)
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {CLASS_NAMES[part]} here (expected {weights}; see "
                                f"{CLASS_NAMES[part]}.save_pretrained)")
    config = read_config(folder, part)  # first: a misplaced config says what it is before any weights load
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # not the file's fault: say what is
            raise ValueError(f"device {str(device)!r}: this machine has no CUDA GPU that torch can use")
    try:
        tensors = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as e:  # truncated, not safetensors, unreadable
        raise ValueError(f"{weights}: unreadable weights ({str(e) or type(e).__name__}); the file is damaged or "
                         "not a safetensors file") from None
    return config, tensors


def load_state(module, state: dict, where: str | Path) -> None:
    """``module.load_state_dict(state)``, with a one-line ValueError naming ``where`` and the first difference
    when the tensors do not fit the module (another architecture, a config edited after training) instead of
    PyTorch's page of mismatches."""
    own = module.state_dict()
    wrong = [f"{k} is {tuple(state[k].shape)} there, {tuple(v.shape)} here" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    problems = wrong[:1] + ([f"{len(missing)} tensors missing (first {missing[0]})"] if missing else []) + \
        ([f"{len(extra)} tensors this model has no place for (first {extra[0]})"] if extra else [])
    if problems:
        raise ValueError(f"{where}: the weights do not fit the model its config describes ({'; '.join(problems)})")
    module.load_state_dict(state)
