"""One entry for every script: a ``.pt`` checkpoint or an exported folder -> a Translator."""

from pathlib import Path

import torch

from mt.checkpoint import load_model
from mt.config import DecodeConfig, RunConfig
from mt.decoding.ctranslate2 import CTranslate2Translator
from mt.decoding.translator import Translator
from mt.export.exported import is_exported, load_exported
from mt.runtime import use_device


def load_translator(
    path: str | Path, settings: DecodeConfig, device: str = "auto"
) -> tuple[Translator, RunConfig]:
    """The translator for ``path`` with ``settings``, and the config the model was trained with.

    A folder is read as a CTranslate2 export (CPU, in the type it was exported in); a file as a
    checkpoint, translated by mt's own search on ``device``. ``settings.threads`` sets the CPU
    threads of either."""
    if is_exported(path):
        exported = load_exported(path, threads=settings.threads)
        return CTranslate2Translator(exported, settings), exported.config
    if settings.threads:
        torch.set_num_threads(settings.threads)
    loaded = load_model(path, use_device(device))
    return Translator(loaded.model, loaded.tokenizer, settings), loaded.config
