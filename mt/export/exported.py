"""Loading a directory written by ``scripts/export.py``: the CTranslate2 model, its tokenizer
and the ``mt`` config and scores recorded beside it."""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt.config import RunConfig, run_config_from_dict
from mt.cpu import has_int8_dot_products
from mt.data.tokenizer import Tokenizer
from mt.export.convert import EXPORT_VERSION, METADATA
from mt.files import SPM_MODEL

log = logging.getLogger(__name__)


@dataclass
class ExportedModel:
    path: Path
    metadata: dict
    config: RunConfig
    tokenizer: Tokenizer
    engine: Any  # ctranslate2.Translator
    compute_type: str = "default"
    """CTranslate2's: ``default`` (the exported type), or ``float32`` for int8 weights on a CPU
    without int8 dot products (:func:`int8_compute_type`)."""

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
    compute_type = int8_compute_type(metadata["quantization"], path)
    try:
        engine = ctranslate2.Translator(
            str(path),
            device="cpu",
            compute_type=compute_type,
            inter_threads=threads,
            intra_threads=1,
        )
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"CTranslate2 cannot load {path}: {err}") from None
    return ExportedModel(
        path=path,
        metadata=metadata,
        config=run_config_from_dict(metadata["config"]),
        tokenizer=Tokenizer.load(path / SPM_MODEL),
        engine=engine,
        compute_type=compute_type,
    )


INT8_WITHOUT_VNNI = "MT_INT8_WITHOUT_VNNI"
"""Set to 1 to compute int8 exports with int8 kernels even on a CPU without VNNI."""


def int8_compute_type(quantization: str, path: Path) -> str:
    """``default`` (the exported type), except for int8 weights on a CPU without int8 dot
    products (mt/cpu.py): there CTranslate2's int8 kernels add pairs of products in saturating
    16-bit lanes and lose up to whole BLEU points, so the int8 weights are computed in float32
    instead (the same translations as on a VNNI CPU, at float32's speed) unless
    ``MT_INT8_WITHOUT_VNNI=1`` asks for the int8 kernels anyway."""
    if not quantization.startswith("int8") or has_int8_dot_products():
        return "default"
    if os.environ.get(INT8_WITHOUT_VNNI) == "1":
        log.warning(
            "%s: int8 kernels on a CPU without VNNI (%s=1): large activations saturate and "
            "translations may be worse than the float32 export's",
            path,
            INT8_WITHOUT_VNNI,
        )
        return "default"
    log.warning(
        "%s: this CPU has no VNNI, where int8 kernels saturate and lose accuracy; the int8 "
        "weights are computed in float32 (float32's speed). %s=1 uses the int8 kernels anyway",
        path,
        INT8_WITHOUT_VNNI,
    )
    return "float32"
