"""Checkpoints: one format for resuming training and for using a model.

A checkpoint is a dict of tensors and plain Python values only (weights, optimizer state,
counters, the config as a dict, the SentencePiece model as bytes), so it loads with
``torch.load(weights_only=True)``: loading never runs code from the file. Writes go to a
temporary file that is flushed, fsynced and renamed over the target, so a crash mid-save leaves
the previous checkpoint intact.
"""

import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mt.config import RunConfig, run_config_from_dict, to_dict
from mt.data.languages import directions, is_multilingual
from mt.data.tokenizer import Tokenizer
from mt.files import METRICS
from mt.kernels import use_kernels
from mt.model.transformer import Transformer, build_model

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(f"could not write checkpoint {path}: {err.strerror or err}") from err
    try:
        digest = {"model_digest": weights_digest(payload["model"])} if "model" in payload else {}
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **payload, **digest}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        # A full disk surfaces from torch.save's writer as a RuntimeError ("unexpected pos").
        if isinstance(err, OSError | RuntimeError):
            raise OSError(
                f"could not write checkpoint {path} ({err}); the previous file is unchanged"
            ) from err
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (no code execution) with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    _check_format(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain "
            f"values, which could run code when loaded ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"checkpoint {path} is truncated or corrupt and cannot be read ({err})"
        ) from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise ValueError(f"{path} is not an mt checkpoint (no model weights / config inside)")
    expected = payload.get("model_digest")
    if expected is not None and expected != weights_digest(payload["model"]):
        raise ValueError(
            f"checkpoint {path} is corrupt: its weights do not match the checksum stored when "
            "it was saved (a damaged copy or disk?). Copy it again, or use another checkpoint"
        )
    return payload


def _check_format(path: Path) -> None:
    """Files that cannot be a checkpoint get a message saying what they are instead."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip container
        return
    if head.startswith(b"version https://git-lfs"):
        raise ValueError(
            f"{path} is a Git LFS pointer, not the checkpoint itself: fetch the file "
            "(git lfs pull) or download it again"
        )
    raise ValueError(
        f"{path} is not an mt checkpoint (not a file written by torch.save; it starts with "
        f"{head[:16]!r}): give the path of a .pt file written by training"
    )


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A checksum of the weights (names, dtypes, shapes and bytes), stored at save time and
    checked at load, so that flipped bytes are found instead of translated."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: RunConfig
    payload: dict[str, Any]


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Everything needed to translate, from the checkpoint alone, in eval mode."""
    payload = load_checkpoint(path)
    config = run_config_from_dict(payload["config"])
    tokenizer = Tokenizer(payload["tokenizer"])
    model = build_model(config.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    use_kernels(model, config.model.kernels)
    load_weights(model, payload["model"], source=str(path))
    model.to(device).eval()
    return LoadedModel(model, tokenizer, config, payload)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict`` with an error that lists which tensors differ and how."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(own[name].shape)}"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    if missing or unexpected or mismatched:
        details = "; ".join(
            mismatched[:5]
            + ([f"missing {missing[:5]}"] if missing else [])
            + ([f"unexpected {unexpected[:5]}"] if unexpected else [])
        )
        raise ValueError(f"checkpoint {source} does not match the model config: {details}")
    model.load_state_dict(state)


def model_payload(model: torch.nn.Module, config: RunConfig, tokenizer: Tokenizer) -> dict:
    """The part of a checkpoint that makes it usable for translation."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": to_dict(config),
        "tokenizer": tokenizer.model_proto,
    }


def average_checkpoints(paths: list[str | Path], *, other_runs: bool = False) -> dict[str, Any]:
    """A checkpoint whose weights are the mean of ``paths``' weights (Vaswani et al. 2017, 6.1).

    Config and tokenizer come from the last path; all must have the same tensors and shapes,
    and come from one training run (``run_id``) unless ``other_runs``: the mean of two
    independently trained models is not a model, even with the same vocabulary. Training state
    (optimizer, progress) is dropped: the result is for translation only.
    """
    if not paths:
        raise ValueError("no checkpoints to average")
    payloads = [load_checkpoint(p) for p in paths]
    reference = payloads[-1]
    total = {k: v.double().clone() for k, v in reference["model"].items()}
    for path, payload in zip(paths[:-1], payloads[:-1]):
        if payload["tokenizer"] != reference["tokenizer"]:
            raise ValueError(f"{path} has another vocabulary than {paths[-1]}: cannot average")
        state = payload["model"]
        if set(state) != set(total) or any(state[k].shape != total[k].shape for k in total):
            raise ValueError(f"{path} does not have the same tensors as {paths[-1]}")
        if not other_runs and payload.get("run_id") != reference.get("run_id"):
            raise ValueError(
                f"{path} and {paths[-1]} come from different training runs (run_id "
                f"{payload.get('run_id')} vs {reference.get('run_id')}): averaging is meant for "
                "checkpoints of one run; to average anyway, pass --other-runs"
            )
        for k in total:
            total[k] += state[k].double()
    model = {k: (v / len(paths)).to(reference["model"][k].dtype) for k, v in total.items()}
    run_ids = {p.get("run_id") for p in payloads}
    return {
        "model": model,
        "config": reference["config"],
        "tokenizer": reference["tokenizer"],
        "averaged_from": [str(p) for p in paths],
        **({"run_id": reference.get("run_id")} if len(run_ids) == 1 else {}),
    }


def checkpoint_summary(payload: dict[str, Any], path: str | Path) -> dict:
    """What a checkpoint is, for people and tools: languages (or a multilingual model's
    directions), size, step, and the scores its run
    recorded for it (validation from the checkpoint, test from the run's ``metrics.json`` when
    that tested this very file)."""
    config = run_config_from_dict(payload["config"])
    progress = payload.get("progress") or {}
    validation = [h for h in progress.get("history", []) if h["step"] == progress.get("step")]
    data, several = config.data, is_multilingual(config.data)
    return {
        "source_checkpoint": str(path),
        "src_lang": None if several else data.src_lang,
        "tgt_lang": None if several else data.tgt_lang,
        **({"directions": [str(d) for d in directions(data)]} if several else {}),
        "step": progress.get("step"),
        "validation": validation[-1] if validation else None,
        "test": _recorded_test(Path(path)),
        "averaged_from": payload.get("averaged_from"),
        "parameters": int(sum(t.numel() for t in payload["model"].values())),
    }


def _recorded_test(checkpoint: Path) -> dict | None:
    try:
        recorded = json.loads((checkpoint.parent / METRICS).read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("test_checkpoint") != checkpoint.name or not recorded.get("test"):
        return None
    keys = ("split", "beam_size", "length_penalty", "bleu", "chrf", "bleu_signature")
    return {k: recorded["test"][k] for k in keys if k in recorded["test"]}
