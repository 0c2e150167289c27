"""Moviola: open, self-hostable text-to-video."""

from pathlib import Path

__version__ = "0.1.0"

# The shipped default model (package data, so an installed wheel finds it without the repository).
DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "default"
