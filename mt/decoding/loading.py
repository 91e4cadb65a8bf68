"""One entry for every script: a ``.pt`` checkpoint, an exported folder, or a list of
checkpoints (an ensemble) -> a Translator."""

from typing import Any

import torch

from mt.checkpoint import load_model
from mt.config import DecodeConfig, RunConfig
from mt.data.languages import choose_target
from mt.decoding.ctranslate2 import CTranslate2Translator
from mt.decoding.ensemble import Ensemble
from mt.decoding.translator import Translator
from mt.decoding.workers import SearchWorkers, check_workers, threads_per_worker
from mt.export.exported import is_exported, load_exported
from mt.runtime import DECODING_ONEDNN_CACHE_CAPACITY, use_device


def checkpoint_paths(checkpoint: Any) -> list[str]:
    """``checkpoint=PATH`` or ``checkpoint=[A,B]`` -> the paths, at least one."""
    paths = [str(p) for p in checkpoint] if isinstance(checkpoint, list | tuple) else [checkpoint]
    if not paths or not all(paths):
        raise ValueError("checkpoint=[] is empty: give a checkpoint, or a list of them")
    return paths


def load_translator(
    checkpoint: Any,
    settings: DecodeConfig,
    device: str = "auto",
    tgt_lang: str | None = None,
    *,
    target_required: bool = True,
) -> tuple[Translator, RunConfig]:
    """The translator for ``checkpoint`` with ``settings``, into ``tgt_lang`` (checked against
    the model's directions: mt/data/languages.py), and the config the (first) model was
    trained with. A multilingual model with several targets needs ``tgt_lang`` unless not
    ``target_required`` (then each call names it: :meth:`Translator.with_target`).

    A folder is read as a CTranslate2 export (CPU, in the type it was exported in); a file as a
    checkpoint, translated by mt's own search on ``device``; several files as an ensemble
    (mt/decoding/ensemble.py). ``settings.threads`` sets the CPU threads."""
    translator, config = _load(checkpoint, settings, device)
    target = choose_target(config.data, tgt_lang, required=target_required)
    return translator.with_target(target), config


def _load(checkpoint: Any, settings: DecodeConfig, device: str) -> tuple[Translator, RunConfig]:
    paths = checkpoint_paths(checkpoint)
    if len(paths) == 1 and is_exported(paths[0]):
        check_workers(settings, torch.device("cpu"), exported=True)
        exported = load_exported(paths[0], threads=settings.threads)
        return CTranslate2Translator(exported, settings), exported.config
    if settings.threads or settings.workers > 1:  # a worker's share of them (all of 1)
        torch.set_num_threads(threads_per_worker(settings))
    if any(is_exported(p) for p in paths):
        raise ValueError(f"an ensemble takes .pt checkpoints, not exported folders: {paths}")
    target_device = use_device(device, onednn_cache=DECODING_ONEDNN_CACHE_CAPACITY)
    loaded = [load_model(p, target_device) for p in paths]
    for path, other in zip(paths[1:], loaded[1:]):
        if other.tokenizer.model_proto != loaded[0].tokenizer.model_proto:
            raise ValueError(
                f"{paths[0]} and {path} have different SentencePiece models: an ensemble "
                "needs models trained with one vocabulary"
            )
    model = loaded[0].model if len(loaded) == 1 else Ensemble([x.model for x in loaded])
    translator = Translator(model, loaded[0].tokenizer, settings)
    if settings.workers > 1:
        check_workers(settings, target_device, exported=False)
        translator.workers = SearchWorkers(load_translator, paths, settings, str(target_device))
    return translator, loaded[0].config
