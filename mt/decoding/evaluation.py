"""Score a checkpoint on a split: translate, then sacreBLEU BLEU / chrF with signatures (of a
multilingual model: per direction, and their mean)."""

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mt.checks import check_decode
from mt.commands import EvaluateConfig, TuneDecodingConfig
from mt.config import DataConfig, decode_settings
from mt.data.corpus import load_split
from mt.data.languages import choose_target, directions, is_multilingual, parse_direction
from mt.data.multilingual import direction_config
from mt.decoding.loading import load_translator
from mt.decoding.translator import Translator
from mt.files import hypothesis_file
from mt.metrics import mean_scores, score

log = logging.getLogger(__name__)


def resolve_split(data: DataConfig, split: str) -> str:
    """``train``/``val``/``test`` name the configured splits; anything else is taken literally."""
    roles = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    return roles.get(split, split)


def apply_overrides(data: DataConfig, overrides: object) -> DataConfig:
    changes = {k: v for k, v in asdict(overrides).items() if v is not None}
    return replace(data, **changes)


@dataclass
class Target:
    """One direction to score: its data (files, splits) and the tag it is translated with."""

    data: DataConfig
    tgt_lang: str | None  # None: an untagged single-direction model
    label: str | None  # ``de-en`` for a multilingual model (file names, scores.json)


def evaluation_targets(
    trained: DataConfig, cfg: EvaluateConfig | TuneDecodingConfig
) -> list[Target]:
    """The directions to score: a single-direction model's own; for a multilingual model the
    one ``src_lang`` -> ``tgt_lang`` names (trained or zero-shot), or else each it was trained
    on. ``data.*`` overrides apply to each."""
    if not is_multilingual(trained):
        choose_target(trained, cfg.tgt_lang)
        if cfg.src_lang not in (None, trained.src_lang):
            raise ValueError(
                f"src_lang={cfg.src_lang}: this model translates {trained.src_lang} -> "
                f"{trained.tgt_lang} only"
            )
        return [Target(apply_overrides(trained, cfg.data), None, None)]
    if cfg.src_lang or cfg.tgt_lang:
        if not (cfg.src_lang and cfg.tgt_lang):
            raise ValueError(
                "a multilingual model: give src_lang and tgt_lang for one direction, or "
                "neither for every direction it was trained on"
            )
        choose_target(trained, cfg.tgt_lang)
        chosen = [parse_direction(f"{cfg.src_lang}-{cfg.tgt_lang}", "src_lang / tgt_lang")]
    else:
        chosen = directions(trained)
    return [
        Target(apply_overrides(direction_config(trained, d), cfg.data), d.tgt, str(d))
        for d in chosen
    ]


def evaluate_checkpoint(cfg: EvaluateConfig, out_dir: str | Path) -> dict:
    """Translate ``cfg.split`` with the checkpoint and score it; write hypotheses and scores.
    A multilingual model: each direction (:func:`evaluation_targets`) and their mean."""
    check_decode(cfg)
    translator, trained = load_translator(
        cfg.checkpoint, decode_settings(cfg), cfg.device, target_required=False
    )
    targets = evaluation_targets(trained.data, cfg)
    if cfg.output and len(targets) > 1:
        raise ValueError(
            f"output={cfg.output} names one file, and this model has {len(targets)} "
            "directions: give src_lang and tgt_lang for one, or leave output out"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [evaluate_target(translator, target, cfg, out_dir) for target in targets]
    result = results[0] if len(results) == 1 else mean_result(results)
    (out_dir / "scores.json").write_text(json.dumps(result, indent=2))
    return result


def evaluate_target(translator: Translator, target: Target, cfg: EvaluateConfig, out_dir: Path):
    """One direction translated and scored; its hypotheses written."""
    data = target.data
    split = resolve_split(data, cfg.split)
    ds = load_split(data, split)
    start = time.perf_counter()
    hyps = translator.with_target(target.tgt_lang).translate(ds["src"])
    seconds = time.perf_counter() - start
    scores = score(hyps, ds["tgt"])
    name = hypothesis_file(split, target.label or data.tgt_lang)
    hyp_path = Path(cfg.output) if cfg.output else out_dir / name
    hyp_path.parent.mkdir(parents=True, exist_ok=True)
    hyp_path.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return {
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


def mean_result(results: list[dict]) -> dict:
    """Several directions' results: the mean BLEU / chrF, and each direction's result."""
    first, mean = results[0], mean_scores(results)
    keys = ("checkpoint", "split", "beam_size", "length_penalty", "precision", "engine")
    return {
        **{k: first[k] for k in keys},
        "bleu": mean["bleu"],
        "chrf": mean["chrf"],
        "bleu_signature": first["bleu_signature"],
        "chrf_signature": first["chrf_signature"],
        "directions": {f"{r['src_lang']}-{r['tgt_lang']}": r for r in results},
    }


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
    translator, trained = load_translator(
        cfg.checkpoint, decode_settings(cfg), cfg.device, target_required=False
    )
    targets = evaluation_targets(trained.data, cfg)
    split = resolve_split(targets[0].data, cfg.split)
    if split == targets[0].data.test_split:
        log.warning("tuning on the test split: its scores are then no longer an unbiased report")
    sets = [(t.tgt_lang, load_split(t.data, split)) for t in targets]
    rows = []
    for settings in grid:
        beam, lp = settings.beam_size, settings.length_penalty
        start = time.perf_counter()
        search = translator.with_settings(settings)
        mean = mean_scores(
            [
                score(search.with_target(lang).translate(ds["src"]), ds["tgt"]).as_dict()
                for lang, ds in sets
            ]
        )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "beam_size": beam,
                "length_penalty": lp if beam > 1 else None,
                "bleu": mean["bleu"],  # of several directions: their mean
                "chrf": mean["chrf"],
                "seconds": round(seconds, 2),
            }
        )
        log.info("beam %d, length penalty %s: BLEU %.2f", beam, lp, rows[-1]["bleu"])
    best = max(rows, key=lambda r: (r["bleu"], -r["beam_size"]))
    result = {"checkpoint": str(cfg.checkpoint), "split": split, "best": best, "table": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_decoding.json").write_text(json.dumps(result, indent=2))
    return result
