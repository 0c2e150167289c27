"""Where a model's training data came from: the manifest a run writes, what a saved model carries, and
the model card that says it in words.

Every training run writes ``provenance.jsonl``, one record per clip it trained on (path, sha256 of the
file, caption, span, licence, consent, source; world clips name the generator, seed and a hash of their
scene spec). A saved model folder carries:

- ``provenance.jsonl``: this run's records, then those of the model it was fine-tuned from (each record
  tagged with ``stage``: "this run" or "base: FOLDER"), so a fine-tune still says what its base learned from;
- or, where a base only ships a summary (the packaged default: 4,000 procedural clips need no per-clip
  list), ``provenance.json``: counts by source and licence and the sha256 of the full manifest;
- ``MODEL_CARD.md`` written from the above when the run saves a model (the shipped default has a
  hand-written one instead).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from moviola.layout import write_text_atomic

MANIFEST = "provenance.jsonl"
SUMMARY = "provenance.json"
CARD = "MODEL_CARD.md"


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The per-clip records of a model or run folder ([] if it has none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {i}: not a provenance record ({e.msg}); the file is damaged: "
                                 "restore it, or delete it and the model folder says it has no record") from None
    return rows


def summarize(rows: list[dict[str, Any]], manifest_sha256: str | None = None) -> dict[str, Any]:
    """Counts of clips by source, licence and consent (and stage), plus the manifest's hash."""
    def count(key: str) -> dict[str, int]:
        return dict(Counter(str(r.get(key) or "") for r in rows).most_common())  # "": not recorded

    out = {"clips": len(rows), "by_source": count("source"), "by_licence": count("licence"),
           "by_consent": count("consent")}
    if any("stage" in r for r in rows):
        out["by_stage"] = count("stage")
    if manifest_sha256:
        out["manifest_sha256"] = manifest_sha256
    return out


def manifest_summary(folder: Path) -> dict[str, Any] | None:
    """``summarize`` of a folder's manifest with the manifest file's sha256 (None if it has no manifest):
    what a shipped model keeps instead of thousands of per-clip records."""
    rows = read_manifest(folder)
    if not rows:
        return None
    return summarize(rows, hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest())


def carry(run_manifest: Path | None, base_dir: Path | None, result: Path, *,
          vae_dir: Path | None = None) -> dict[str, Any] | None:
    """Write the saved model's provenance: this run's records followed by its base model's (tagged by
    stage), and the base's summary kept beside them if that is all the base has. A ``vae_dir`` trained on
    footage (``moviola train vae`` writes its records beside its weights) adds those, tagged "vae: FOLDER",
    unless it is the base's own (already among the base's records). Returns the summary of what was written
    (None when nothing is known)."""
    rows = [{**r, "stage": "this run"} for r in (json.loads(line) for line in run_manifest.read_text().splitlines()
                                                 if line.strip())] if run_manifest is not None else []
    if vae_dir is not None and (base_dir is None or Path(base_dir).resolve() not in
                                (Path(vae_dir).resolve(), *Path(vae_dir).resolve().parents)):
        from moviola.layout import part_dir

        # The VAE's own records: a VAE's folder, or a model folder's vae/ (its top-level ones are its DiT's)
        rows += [{**r, "stage": f"vae: {vae_dir}"} for r in read_manifest(part_dir(vae_dir, "vae"))]
    base_summary = None
    if base_dir is not None:
        rows += [{**r, "stage": r.get("stage") if str(r.get("stage", "")).startswith("base") else f"base: {base_dir}"}
                 for r in read_manifest(base_dir)]
        if (Path(base_dir) / SUMMARY).is_file():
            base_summary = json.loads((Path(base_dir) / SUMMARY).read_text())
    if not rows and base_summary is None:
        return None
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if rows:
        write_text_atomic(result / MANIFEST, text)  # a full disk had left a torn manifest in a loadable model
    summary = summarize(rows, hashlib.sha256(text.encode()).hexdigest() if rows else None)
    if base_summary is not None:
        summary["base"] = base_summary
        write_text_atomic(result / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary


def write_card(result: Path, *, title: str, info: dict[str, Any], summary: dict[str, Any] | None,
               figures: dict[str, Any] | None = None) -> Path:
    """A plain model card: what was trained, from what, how, and on which data (from the summary)."""
    lines = [f"# {title}", "", "Written by `moviola train` when it saved this model.", "", "## Training", ""]
    for k, v in info.items():
        if k != "data":
            lines.append(f"- {k}: {v}")
    if "data" in info:
        lines.append(f"- data: `{json.dumps(info['data'])}`")
    lines += ["", "## Data it learned from", ""]
    if summary is None:
        lines.append("No record: the data source kept no per-clip provenance.")
    else:
        lines.append(f"{summary['clips']} clips in `{MANIFEST}` (one record each: path, sha256, caption, span, "
                     "licence, consent, source)" + (f", sha256 {summary['manifest_sha256']}." if summary.get("manifest_sha256") else "."))
        for key in ("by_stage", "by_source", "by_licence", "by_consent"):
            if key in summary:
                lines.append(f"- {key.replace('by_', '')}: " + ", ".join(f"{k or 'not recorded'} ({v})"
                                                                        for k, v in summary[key].items()))
        missing = sum(v for k, v in summary.get("by_licence", {}).items() if not k)
        if missing:
            lines.append(f"- {missing} clips have no licence recorded: add it to the footage manifest "
                         "(licence, consent, source) before sharing this model")
        base, depth = summary.get("base"), 0
        while base:  # the base's base too: a fine-tune of a fine-tune still names the first model's data
            who = "the base" + "'s base" * depth
            lines.append(f"- {who} model's own data "
                         f"(summary in `{SUMMARY}`): {base.get('clips')} clips, "
                         + ", ".join(f"{k or 'not recorded'} ({v})" for k, v in base.get("by_source", {}).items()))
            base, depth = base.get("base"), depth + 1
    if figures:
        lines += ["", "## Figures", ""] + [f"- {k}: {v}" for k, v in figures.items()]
    path = result / CARD
    return write_text_atomic(path, "\n".join(lines) + "\n")
