"""Impossible option values fail in one line, naming the option and what to do.

The one place where configs are checked: scripts call these right after composing the config,
and the library objects they feed call them too (e.g. the Translator), so a value that cannot
work never gets as far as a traceback.
"""

import math
import tempfile
from pathlib import Path
from typing import Any

from mt.commands import ServeConfig, TranslateConfig
from mt.config import DataConfig, DecodeConfig, ModelConfig, RunConfig, TrainConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KERNELS = ("auto", "plain")
LR_DECAYS = ("inverse_sqrt", "linear", "cosine")


def validate_run_config(cfg: RunConfig) -> None:
    """Raise ValueError naming the option when a value of a training run cannot work."""
    check_model(cfg.model)
    check_train(cfg.train, cfg.model)
    check_data(cfg.data)
    check_decode(cfg.decode, prefix="decode.")


def check_model(m: ModelConfig) -> None:
    sizes = ["d_model", "n_heads", "d_ff", "n_encoder_layers", "n_decoder_layers", "max_positions"]
    _positive("model.", m, sizes)
    if m.d_model % m.n_heads:
        raise ValueError(
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}: "
            "choose sizes where d_model / n_heads is a whole number"
        )
    check_kernels(m.kernels)
    _probability("model.dropout", m.dropout)
    _probability("model.attention_dropout", m.attention_dropout)


def check_train(t: TrainConfig, m: ModelConfig) -> None:
    counts = [
        "batch_tokens",
        "val_every_steps",
        "log_every_steps",
        "save_every_steps",
        "progress_every_steps",
    ]
    _positive("train.", t, counts + ["max_nonfinite_updates", "accum_steps"])
    check_precision("train.precision", t.precision)
    for name in ("keep_last", "patience", "average_last", "warmup_steps"):
        if getattr(t, name) < 0:
            raise ValueError(f"train.{name}={getattr(t, name)} must be 0 (off) or more")
    for name in ("max_steps", "max_epochs", "max_minutes"):
        value = getattr(t, name)
        if value is not None and not value > 0:
            raise ValueError(f"train.{name}={value} must be positive (or null for no limit)")
    if t.max_steps is None and t.max_epochs is None and t.max_minutes is None:
        raise ValueError("set at least one of train.max_steps, train.max_epochs, train.max_minutes")
    for name in ("lr", "clip_norm", "adam_eps"):
        if not (math.isfinite(getattr(t, name)) and getattr(t, name) > 0):
            raise ValueError(f"train.{name}={getattr(t, name)} must be a positive number")
    for name in ("adam_beta1", "adam_beta2"):
        _probability(f"train.{name}", getattr(t, name))
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
        raise ValueError(f"train.weight_decay={t.weight_decay} must be 0 or more")
    if t.lr_decay not in LR_DECAYS:
        raise ValueError(f"train.lr_decay={t.lr_decay!r} must be one of {', '.join(LR_DECAYS)}")
    _probability("train.label_smoothing", t.label_smoothing)
    check_short_budget(t)
    if not t.rdrop_alpha >= 0:
        raise ValueError(f"train.rdrop_alpha={t.rdrop_alpha} must be 0 (off) or more")
    if t.rdrop_alpha > 0 and m.dropout == 0 and m.attention_dropout == 0:
        raise ValueError(
            f"train.rdrop_alpha={t.rdrop_alpha} compares two dropout masks, but model.dropout "
            "and model.attention_dropout are 0: both passes would be identical. Set a dropout "
            "or train.rdrop_alpha=0"
        )


def check_short_budget(t: TrainConfig) -> None:
    s = t.short_budget
    if not (math.isfinite(s.below_epochs) and s.below_epochs >= 0):
        raise ValueError(
            f"train.short_budget.below_epochs={s.below_epochs} must be 0 (off) or more"
        )
    _probability("train.short_budget.dropout", s.dropout)
    if not s.subword_alpha >= 0:
        raise ValueError(
            f"train.short_budget.subword_alpha={s.subword_alpha} must be 0 (off) or more"
        )
    if not s.batch_tokens >= 0:
        raise ValueError(
            f"train.short_budget.batch_tokens={s.batch_tokens} must be 0 (keep train.batch_tokens) "
            "or a positive token count"
        )


def check_data(d: DataConfig) -> None:
    _positive("data.", d, ["vocab_size", "max_tokens", "spm_max_sentences", "window_pairs"])
    _positive("data.", d, ["num_proc"])
    if d.invalid_utf8 not in ("error", "replace"):
        raise ValueError(f"data.invalid_utf8={d.invalid_utf8!r} must be 'error' or 'replace'")
    if d.src_lang == d.tgt_lang:
        raise ValueError(f"data.src_lang and data.tgt_lang are both {d.src_lang!r}")
    if not (math.isfinite(d.pair_temperature) and d.pair_temperature > 0):
        raise ValueError(
            f"data.pair_temperature={d.pair_temperature} must be positive (1: by corpus size)"
        )
    if (d.pairs or d.langs) and d.streaming:
        raise ValueError(
            "data.streaming=true reads one direction; a multilingual run (data.pairs / "
            "data.langs) loads its training splits in memory: set data.streaming=false"
        )
    if d.max_train_pairs is not None and d.max_train_pairs <= 0:
        raise ValueError(f"data.max_train_pairs={d.max_train_pairs} must be positive")
    if not d.subword_alpha >= 0:
        raise ValueError(f"data.subword_alpha={d.subword_alpha} must be 0 (off) or more")
    if d.subword_alpha == 0:
        return
    if d.spm_model_type not in ("unigram", "bpe"):
        raise ValueError(
            f"data.subword_alpha={d.subword_alpha} samples segmentations, which SentencePiece "
            f"offers for unigram and bpe models only (data.spm_model_type="
            f"{d.spm_model_type!r}); set data.subword_alpha=0 or choose one of those"
        )
    if d.spm_model_type == "bpe" and d.subword_alpha >= 1:
        raise ValueError(
            f"data.subword_alpha={d.subword_alpha} is BPE-dropout's probability of dropping "
            "a merge for a bpe model: it must be below 1 (0.1 is usual)"
        )
    if d.subword_nbest == 0 or d.subword_nbest < -1:
        raise ValueError(
            f"data.subword_nbest={d.subword_nbest} must be -1 (all segmentations) or positive"
        )


def check_decode(dec: DecodeConfig, prefix: str = "") -> None:
    """The decode settings, wherever they come from (``decode.*`` in training, top-level
    options of evaluate / translate / tune_decoding)."""
    if dec.beam_size < 1:
        raise ValueError(f"{prefix}beam_size={dec.beam_size} must be at least 1")
    if dec.sampling:
        _check_sampling(dec, prefix)
    elif not 1 <= dec.n_best <= dec.beam_size:
        raise ValueError(
            f"{prefix}n_best={dec.n_best} must be between 1 and beam_size={dec.beam_size}"
        )
    if not (math.isfinite(dec.length_penalty) and dec.length_penalty >= 0):
        raise ValueError(f"{prefix}length_penalty={dec.length_penalty} must be 0 or more")
    if not (math.isfinite(dec.max_len_a) and dec.max_len_a >= 0):
        raise ValueError(f"{prefix}max_len_a={dec.max_len_a} must be 0 or more")
    _positive(prefix, dec, ["max_len_b", "batch_tokens"])
    if dec.threads is not None and dec.threads < 1:
        raise ValueError(f"{prefix}threads={dec.threads} must be at least 1 (or null: all cores)")
    if dec.workers < 1:
        raise ValueError(f"{prefix}workers={dec.workers} must be at least 1 (1: search here)")
    check_precision(f"{prefix}precision", dec.precision)


def _check_sampling(dec: DecodeConfig, prefix: str) -> None:
    if dec.beam_size != 1:
        raise ValueError(
            f"{prefix}sampling=true draws tokens instead of searching: set {prefix}beam_size=1 "
            f"({prefix}n_best=N then draws N samples)"
        )
    if dec.n_best < 1:
        raise ValueError(f"{prefix}n_best={dec.n_best} must be at least 1")
    if dec.top_k < 0:
        raise ValueError(f"{prefix}top_k={dec.top_k} must be 0 (all tokens) or more")
    if not (math.isfinite(dec.top_p) and 0 < dec.top_p <= 1):
        raise ValueError(f"{prefix}top_p={dec.top_p} must be in (0, 1]")
    if not (math.isfinite(dec.temperature) and dec.temperature > 0):
        raise ValueError(f"{prefix}temperature={dec.temperature} must be positive")


def check_translate(cfg: TranslateConfig) -> None:
    """``scripts/translate.py``'s options: the decode settings and the lines per batch."""
    check_decode(cfg)
    _positive("", cfg, ["batch_size"])


def check_serve(cfg: ServeConfig) -> None:
    """``scripts/serve.py``'s options: the default decode settings and the request limits."""
    check_decode(cfg)
    _positive("", cfg, ["max_lines", "max_line_chars", "max_body_bytes", "max_beam_size"])
    if not (math.isfinite(cfg.max_wait_ms) and cfg.max_wait_ms >= 0):
        raise ValueError(f"max_wait_ms={cfg.max_wait_ms} must be 0 or more")
    if cfg.beam_size > cfg.max_beam_size:
        raise ValueError(
            f"beam_size={cfg.beam_size} is over max_beam_size={cfg.max_beam_size}: raise "
            "max_beam_size or lower beam_size"
        )


def check_kernels(value: str, option: str = "model.kernels") -> None:
    if value not in KERNELS:
        raise ValueError(f"{option}={value!r} must be one of {', '.join(KERNELS)}")


def check_precision(option: str, value: str) -> None:
    if value not in PRECISIONS:
        raise ValueError(f"{option}={value!r} must be one of {', '.join(PRECISIONS)}")


def _positive(prefix: str, obj: Any, names: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:  # NaN too
            raise ValueError(f"{prefix}{name}={value} must be positive")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value} must be in [0, 1)")


def check_output_folder(option: str, path: str) -> None:
    """A folder a command will create and write into: a file in its way, or a place where
    nothing can be written, fails before any work rather than after it."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{option}={path}: {existing} is a file, not a folder; choose another path"
        )
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as err:
        raise ValueError(
            f"{option}={path}: cannot write in {existing} ({err.strerror or err}); "
            "choose a folder you can write to"
        ) from None
