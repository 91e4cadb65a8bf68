"""What ``/info`` says about the served model: languages, size, and its recorded scores."""

from pathlib import Path

from mt.checkpoint import checkpoint_summary, load_checkpoint
from mt.export.exported import is_exported, load_exported_metadata


def model_info(path: str | Path) -> dict:
    """The checkpoint's summary (mt/checkpoint.py), or an export's metadata without its config."""
    if is_exported(path):
        meta = load_exported_metadata(path)
        return {k: v for k, v in meta.items() if k != "config"}
    return checkpoint_summary(load_checkpoint(path), path)
