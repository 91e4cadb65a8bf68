"""Measure training and decoding speed on the machine at hand, next to yardsticks.

Training: mt/bench/training_speed.py.

Decoding (with a trained checkpoint only: an untrained model rarely emits EOS, so its speed says
nothing): sentences/s, output words/s, target tokens/s and BLEU, greedy and beam 5.

"""

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mt.bench.data_pipeline import benchmark_data_pipeline
from mt.bench.training_speed import benchmark_training, peak_memory_mb
from mt.checkpoint import LoadedModel, load_model
from mt.config import BenchmarkRunConfig, RunConfig
from mt.data.corpus import load_split
from mt.data.prepare import prepare_data
from mt.decoding.translator import Translator
from mt.metrics import score
from mt.runtime import resolve_precision, set_seed, use_device


def benchmark_decoding(loaded: LoadedModel, cfg: RunConfig, device: torch.device) -> dict:
    """Greedy and beam 5 over the test split in ``decode.precision`` (``greedy``, ``beam5``),
    and again in the precision ``auto`` picks here when that differs (``greedy_bf16``, ...):
    the speed a lower precision buys, beside the BLEU it gives."""
    ds = load_split(cfg.data, cfg.data.test_split)
    sources, references = ds["src"], ds["tgt"]
    model = loaded.model.to(device)
    chosen = resolve_precision(cfg.decode.precision, device)
    runs = [("", chosen)]
    if (fast := resolve_precision("auto", device)) != chosen:
        runs.append((f"_{fast}", fast))
    results = {}
    for suffix, precision in runs:
        for name, beam in (("greedy", 1), ("beam5", 5)):
            settings = replace(cfg.decode, beam_size=beam, n_best=1, precision=precision)
            translator = Translator(model, loaded.tokenizer, settings)
            translator.translate(sources[:50])  # warm-up
            start = time.perf_counter()
            hyps = translator.translate(sources)
            seconds = time.perf_counter() - start
            n_tokens = sum(len(ids) + 1 for ids in loaded.tokenizer.encode(hyps))
            results[name + suffix] = {
                "precision": precision,
                "sentences_per_s": round(len(hyps) / seconds, 1),
                "words_per_s": round(sum(len(h.split()) for h in hyps) / seconds, 1),
                "tokens_per_s": round(n_tokens / seconds, 1),
                "bleu": score(hyps, references).bleu,
                "seconds": round(seconds, 2),
                "peak_memory_mb": round(peak_memory_mb(device), 1),
            }
    return results


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        name = next(
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {torch.get_num_threads()} threads"


def run_benchmark(cfg: BenchmarkRunConfig, out_dir: str | Path) -> dict:
    """Measure, write ``benchmark.json`` in ``out_dir`` and return the result."""
    set_seed(cfg.seed)
    device = use_device(cfg.train.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(cfg.checkpoint) if cfg.checkpoint else None
    if loaded:  # measure the checkpoint's architecture and vocabulary
        cfg.model = loaded.config.model
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_description(device),
        "torch": torch.__version__,
        "model": asdict(cfg.model),
        "batch_tokens": cfg.train.batch_tokens,
        "precision": resolve_precision(cfg.train.precision, device),
    }
    tokenizer = loaded.tokenizer if loaded else None
    if cfg.bench.data_lines > 0:  # first: its memory readings start from a small process
        result["data_pipeline"] = benchmark_data_pipeline(
            cfg.data, cfg.bench.data_lines, batch_tokens=cfg.train.batch_tokens
        )
    if cfg.bench.train:
        result["train"] = benchmark_training(cfg, cfg.bench, tokenizer, device, out)
    if cfg.bench.opennmt_python:
        from mt.bench.opennmt_compare import (
            compare_with_opennmt,  # it builds on mt.training.trainer
        )

        result["opennmt"] = compare_with_opennmt(
            cfg,
            prepare_data(cfg.data, seed=cfg.seed, tokenizer=tokenizer),
            python=cfg.bench.opennmt_python,
            steps=cfg.bench.opennmt_steps,
            rounds=cfg.bench.opennmt_rounds,
            out=Path(out_dir) / "opennmt",
            device=str(device),
        )
    if loaded:
        result["decode"] = benchmark_decoding(loaded, cfg, device)
    else:
        result["decode"] = "skipped: give checkpoint=PATH (a trained model) to measure decoding"
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    return result


def flatten(values: dict, prefix: str) -> list[tuple[str, object]]:
    """Nested dicts as dotted rows: ``{"profile": {"matmul_share": 0.6}}`` ->
    ``("train.profile.matmul_share", 0.6)``."""
    rows = []
    for k, v in values.items():
        if isinstance(v, dict):
            rows += flatten(v, f"{prefix}.{k}")
        else:
            rows.append((f"{prefix}.{k}", v))
    return rows


def format_table(result: dict) -> str:
    rows = [("machine", result["machine"])]
    for section in ("data_pipeline", "train", "opennmt"):
        rows += flatten(result.get(section, {}), prefix=section)
    if isinstance(result["decode"], dict):
        for name, values in result["decode"].items():
            rows += [(f"decode.{name}.{k}", v) for k, v in values.items()]
    else:
        rows.append(("decode", result["decode"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        f"{k:<{width}}  {v:,}" if isinstance(v, (int, float)) else f"{k:<{width}}  {v}"
        for k, v in rows
    )
