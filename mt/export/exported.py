"""Loading a directory written by ``scripts/export.py``: the CTranslate2 model, its tokenizer
and the ``mt`` config and scores recorded beside it."""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt.config import RunConfig, run_config_from_dict
from mt.data.tokenizer import Tokenizer
from mt.export.convert import EXPORT_VERSION, METADATA, SPM_MODEL


@dataclass
class ExportedModel:
    path: Path
    metadata: dict
    config: RunConfig
    tokenizer: Tokenizer
    engine: Any  # ctranslate2.Translator

    @property
    def max_positions(self) -> int:
        return self.config.model.max_positions


def is_exported(path: str | Path) -> bool:
    """A folder is an exported model (or meant as one); a checkpoint is a file."""
    return Path(path).is_dir()


def load_exported_metadata(path: str | Path) -> dict:
    """``mt_export.json`` of an export folder, checked."""
    path = Path(path)
    meta_path = path / METADATA
    if not meta_path.is_file():
        raise ValueError(
            f"{path} is a folder but not a model exported by mt (no {METADATA}): give a .pt "
            "checkpoint, or a folder written by scripts/export.py"
        )
    try:
        metadata = json.loads(meta_path.read_text())
    except ValueError as err:
        raise ValueError(f"{meta_path} is damaged ({err}): export the checkpoint again") from None
    if metadata.get("export_version") != EXPORT_VERSION:
        raise ValueError(
            f"{path} was exported in format {metadata.get('export_version')}, this mt reads "
            f"format {EXPORT_VERSION}: export the checkpoint again with this version"
        )
    return metadata


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """The model of an export directory on the CPU, computing in the type it was exported in.

    ``threads`` (None: one per core this process may use) translate batches side by side, one
    thread each (CTranslate2's ``inter_threads``): a decoding step's matrices are too small to
    share well between cores, whole batches are not (benchmarks/README.md)."""
    path = Path(path)
    metadata = load_exported_metadata(path)
    for name in ("model.bin", SPM_MODEL):
        if not (path / name).is_file():
            raise ValueError(f"{path} lacks {name}: the export is incomplete; export it again")
    import ctranslate2

    threads = threads or len(os.sched_getaffinity(0))
    try:
        engine = ctranslate2.Translator(
            str(path), device="cpu", compute_type="default", inter_threads=threads, intra_threads=1
        )
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"CTranslate2 cannot load {path}: {err}") from None
    return ExportedModel(
        path=path,
        metadata=metadata,
        config=run_config_from_dict(metadata["config"]),
        tokenizer=Tokenizer.load(path / SPM_MODEL),
        engine=engine,
    )
