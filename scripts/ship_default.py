"""Copy a trained pipeline folder into the package's default model folder, the DiT stored in fp16.

    python scripts/ship_default.py runs/dit-default/model
    python scripts/ship_default.py runs/dit-default/model --dest /tmp/candidate   # anywhere else, to try it first

The shipped weights must stay within 20 MB together (checked: nothing is replaced when they do not); fp16
halves the DiT (loading casts back to the fp32 parameters, so inference is unchanged apart from fp16 rounding
of the weights). The VAE stays fp32. The new folder is assembled beside the old one (its model card and any
other file it holds carried over) and swapped in only when complete, so a failure leaves the shipped model
as it was.
"""

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from moviola import DEFAULT_MODEL_DIR
from moviola.layout import CONFIG_NAME, LEGACY_CONFIG, WEIGHTS, config_text, missing_parts, part_weights, read_config

MAX_WEIGHT_BYTES = 20_000_000  # issue 4: all shipped weights together at most 20 MB


def build(src_dir: Path, new: Path) -> int:
    """Write the shipped form of `src_dir` into `new` (a copy of the old folder); returns the weights' bytes."""
    for part in ("vae", "dit"):  # the current layout (moviola.layout), whatever layout the source folder has
        (new / part).mkdir(parents=True, exist_ok=True)
        (new / part / CONFIG_NAME).write_text(config_text(part, read_config(src_dir, part)))
    (new / CONFIG_NAME).write_text(config_text("pipeline", read_config(src_dir, "pipeline")))
    shutil.copyfile(part_weights(src_dir, "vae"), new / "vae" / WEIGHTS["vae"])
    for name in [*WEIGHTS.values(), *LEGACY_CONFIG.values()]:  # an older copy in the flat layout
        (new / name).unlink(missing_ok=True)
    # The captions trained on, gzipped (a GPU run's list is 11 MB of JSON); `training_captions` reads either.
    (new / "training_captions.json.gz").write_bytes(
        gzip.compress((src_dir / "training_captions.json").read_bytes(), mtime=0))
    (new / "training_captions.json").unlink(missing_ok=True)
    # Provenance: a summary (counts by source and licence, the full manifest's hash), not the per-clip list of
    # thousands of procedural clips, which the data config and seeds in config.json regenerate exactly.
    from moviola.data.provenance import SUMMARY, manifest_summary

    summary = manifest_summary(src_dir)
    if summary is not None:
        (new / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    dit = {k: (v.half() if v.is_floating_point() else v)
           for k, v in load_file(str(part_weights(src_dir, "dit"))).items()}
    save_file(dit, str(new / "dit" / WEIGHTS["dit"]), metadata={"format": "pt", "dtype": "float16"})
    for p in new.rglob("*"):  # readable by everyone (the writers may leave mkstemp's 0600)
        p.chmod(0o755 if p.is_dir() else 0o644)
    return sum(p.stat().st_size for p in new.rglob("*.safetensors"))


def ship(src_dir: Path, dst: Path) -> int:
    """Replace `dst` with the shipped form of `src_dir`, all or nothing. Returns the weights' bytes."""
    missing = missing_parts(src_dir)
    if missing:
        raise SystemExit(f"{src_dir}: not a Moviola model folder (missing {', '.join(missing)})")
    if not (src_dir / "training_captions.json").is_file():
        raise SystemExit(f"{src_dir}: no training_captions.json (the list `moviola eval world` keeps out of its "
                         "prompts; `moviola train dit` writes it)")
    new, old = dst.with_name(dst.name + ".shipping"), dst.with_name(dst.name + ".replaced")
    for d in (new, old):
        shutil.rmtree(d, ignore_errors=True)  # leftovers of a run that died
    if dst.is_dir():
        shutil.copytree(dst, new)  # the model card and whatever else the folder holds stay
    try:
        size = build(src_dir, new)
        if size > MAX_WEIGHT_BYTES:
            raise SystemExit(f"weights {size / 1e6:.2f} MB together: over the {MAX_WEIGHT_BYTES / 1e6:g} MB limit; "
                             f"{dst} is unchanged")
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if dst.exists():
        dst.rename(old)
    new.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a trained model folder (e.g. runs/dit-default/model)")
    ap.add_argument("--dest", default=str(DEFAULT_MODEL_DIR), help="where to ship it (default: the package's "
                    "default model folder)")
    args = ap.parse_args(argv)
    size = ship(Path(args.model), Path(args.dest))
    print(f"shipped to {args.dest}: weights {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
