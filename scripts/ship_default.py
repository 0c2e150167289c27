"""Copy a trained pipeline folder into the package's default model folder, the DiT stored in fp16.

    python scripts/ship_default.py runs/dit-default/model

The shipped weights must stay within 20 MB together; fp16 halves the DiT (loading casts back to the
fp32 parameters, so inference is unchanged apart from fp16 rounding of the weights). The VAE stays fp32.
"""

import gzip
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from moviola import DEFAULT_MODEL_DIR
from moviola.layout import CONFIG_NAME, LEGACY_CONFIG, WEIGHTS, config_text, missing_parts, part_weights, read_config


def main(src: str) -> None:
    src_dir, dst = Path(src), DEFAULT_MODEL_DIR
    missing = missing_parts(src_dir)
    if missing:
        sys.exit(f"{src_dir}: not a Moviola model folder (missing {', '.join(missing)})")
    for part in ("vae", "dit"):  # the current layout (moviola.layout), whatever layout the source folder has
        (dst / part).mkdir(parents=True, exist_ok=True)
        (dst / part / CONFIG_NAME).write_text(config_text(part, read_config(src_dir, part)))
    (dst / CONFIG_NAME).write_text(config_text("pipeline", read_config(src_dir, "pipeline")))
    shutil.copyfile(part_weights(src_dir, "vae"), dst / "vae" / WEIGHTS["vae"])
    for name in [*WEIGHTS.values(), *LEGACY_CONFIG.values()]:  # an older copy in the flat layout
        (dst / name).unlink(missing_ok=True)
    # The captions trained on, gzipped (a GPU run's list is 11 MB of JSON); `training_captions` reads either.
    (dst / "training_captions.json.gz").write_bytes(
        gzip.compress((src_dir / "training_captions.json").read_bytes(), mtime=0))
    (dst / "training_captions.json").unlink(missing_ok=True)
    # Provenance: a summary (counts by source and licence, the full manifest's hash), not the per-clip list of
    # thousands of procedural clips, which the data config and seeds in config.json regenerate exactly.
    from moviola.data.provenance import SUMMARY, manifest_summary

    summary = manifest_summary(src_dir)
    if summary is not None:
        (dst / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    dit = {k: (v.half() if v.is_floating_point() else v)
           for k, v in load_file(str(part_weights(src_dir, "dit"))).items()}
    save_file(dit, str(dst / "dit" / WEIGHTS["dit"]), metadata={"format": "pt", "dtype": "float16"})
    for p in dst.rglob("*"):  # readable by everyone (the writers may leave mkstemp's 0600)
        p.chmod(0o755 if p.is_dir() else 0o644)
    total = sum(p.stat().st_size for p in dst.rglob("*.safetensors"))
    print(f"shipped to {dst}: weights {total / 2 ** 20:.2f} MiB")


if __name__ == "__main__":
    main(sys.argv[1])
