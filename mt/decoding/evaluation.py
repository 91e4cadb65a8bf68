"""Score a checkpoint on a split: translate, then sacreBLEU BLEU / chrF with signatures."""

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

from mt.checks import check_decode
from mt.commands import EvaluateConfig, TuneDecodingConfig
from mt.config import DataConfig, decode_settings
from mt.data.corpus import load_split
from mt.decoding.loading import load_translator
from mt.files import hypothesis_file
from mt.metrics import score

log = logging.getLogger(__name__)


def resolve_split(data: DataConfig, split: str) -> str:
    """``train``/``val``/``test`` name the configured splits; anything else is taken literally."""
    roles = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    return roles.get(split, split)


def apply_overrides(data: DataConfig, overrides: object) -> DataConfig:
    changes = {k: v for k, v in asdict(overrides).items() if v is not None}
    return replace(data, **changes)


def evaluate_checkpoint(cfg: EvaluateConfig, out_dir: str | Path) -> dict:
    """Translate ``cfg.split`` with the checkpoint and score it; write hypotheses and scores."""
    check_decode(cfg)
    translator, trained = load_translator(cfg.checkpoint, decode_settings(cfg), cfg.device)
    data = apply_overrides(trained.data, cfg.data)
    split = resolve_split(data, cfg.split)
    ds = load_split(data, split)
    start = time.perf_counter()
    hyps = translator.translate(ds["src"])
    seconds = time.perf_counter() - start
    scores = score(hyps, ds["tgt"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hyp_path = Path(cfg.output) if cfg.output else out_dir / hypothesis_file(split, data.tgt_lang)
    hyp_path.parent.mkdir(parents=True, exist_ok=True)
    hyp_path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    result = {
        "checkpoint": str(cfg.checkpoint),
        "split": split,
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        "sentences": len(hyps),
        "beam_size": cfg.beam_size,
        "length_penalty": cfg.length_penalty,
        "precision": translator.precision(),  # ``auto`` resolved; an export: its type
        "engine": translator.engine,
        **scores.as_dict(),
        "translations": str(hyp_path),
        "decode_seconds": round(seconds, 2),
    }
    (out_dir / "scores.json").write_text(json.dumps(result, indent=2))
    return result


def tune_decoding(cfg: TuneDecodingConfig, out_dir: str | Path) -> dict:
    """BLEU of every (beam size, length penalty) on ``cfg.split``; the best one, and the table."""
    for name in ("beam_sizes", "length_penalties"):
        if not getattr(cfg, name):
            raise ValueError(f"{name}=[] is empty: give at least one value, e.g. {name}=[1,5]")
    # Greedy search (beam 1) ignores the length penalty: one run of it.
    grid = [
        replace(decode_settings(cfg), beam_size=beam, length_penalty=lp, n_best=1)
        for beam in cfg.beam_sizes
        for lp in (cfg.length_penalties if beam > 1 else cfg.length_penalties[:1])
    ]
    for settings in grid:
        check_decode(settings)
    translator, trained = load_translator(cfg.checkpoint, decode_settings(cfg), cfg.device)
    data = apply_overrides(trained.data, cfg.data)
    split = resolve_split(data, cfg.split)
    if split == data.test_split:
        log.warning("tuning on the test split: its scores are then no longer an unbiased report")
    ds = load_split(data, split)
    rows = []
    for settings in grid:
        beam, lp = settings.beam_size, settings.length_penalty
        start = time.perf_counter()
        hyps = translator.with_settings(settings).translate(ds["src"])
        seconds = time.perf_counter() - start
        scores = score(hyps, ds["tgt"])
        rows.append(
            {
                "beam_size": beam,
                "length_penalty": lp if beam > 1 else None,
                "bleu": scores.bleu,
                "chrf": scores.chrf,
                "seconds": round(seconds, 2),
            }
        )
        log.info("beam %d, length penalty %s: BLEU %.2f", beam, lp, scores.bleu)
    best = max(rows, key=lambda r: (r["bleu"], -r["beam_size"]))
    result = {"checkpoint": str(cfg.checkpoint), "split": split, "best": best, "table": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_decoding.json").write_text(json.dumps(result, indent=2))
    return result
