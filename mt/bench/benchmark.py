"""Measure training and decoding speed on the machine at hand, next to yardsticks.

Training: mt/bench/training_speed.py.

Decoding: mt/bench/decoding_speed.py (mt's search and its CTranslate2 exports).

"""

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from mt.bench.data_pipeline import benchmark_data_pipeline
from mt.bench.decoding_speed import benchmark_decoding
from mt.bench.training_speed import benchmark_training
from mt.checkpoint import load_model
from mt.commands import BenchmarkRunConfig
from mt.cpu import cpu_flags
from mt.data.prepare import prepare_data
from mt.runtime import onednn_caches, set_seed, use_device


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


KERNEL_ENVIRONMENT = (
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
)
"""Variables that change which kernels run: a run under any of them measures another machine."""


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
        "cpu_flags": cpu_flags(),
        "environment": {k: os.environ[k] for k in KERNEL_ENVIRONMENT if k in os.environ},
        # kernels oneDNN keeps built, here (training); each decoding contestant reports its own
        "onednn_caches": onednn_caches(),
        "torch": torch.__version__,
        "model": asdict(cfg.model),
        "batch_tokens": cfg.train.batch_tokens,
        "precision": cfg.train.precision,  # as asked; ``train.auto`` says what auto chose
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
    if cfg.bench.serve:
        if not loaded:
            raise ValueError("bench.serve=true needs checkpoint=PATH (a trained model)")
        from mt.bench.serving_load import benchmark_serving

        result["serve"] = benchmark_serving(cfg)
    if loaded and cfg.bench.decode:
        result["decode"] = benchmark_decoding(cfg, device)
    else:
        result["decode"] = (
            "skipped: bench.decode=false"
            if loaded
            else "skipped: give checkpoint=PATH (a trained model) to measure decoding"
        )
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
    for section in ("data_pipeline", "train", "opennmt", "serve"):
        rows += flatten(result.get(section, {}), prefix=section)
    if isinstance(result["decode"], dict):
        rows += flatten(result["decode"], prefix="decode")
    else:
        rows.append(("decode", result["decode"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        f"{k:<{width}}  {v:,}" if isinstance(v, (int, float)) else f"{k:<{width}}  {v}"
        for k, v in rows
    )
