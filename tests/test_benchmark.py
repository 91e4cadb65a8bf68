"""The benchmark script runs and writes valid JSON (a tiny setting; the numbers are not tested)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.bench.benchmark import KERNEL_ENVIRONMENT
from mt.checkpoint import model_payload, save_checkpoint
from mt.config import DataConfig, ModelConfig, RunConfig
from mt.cpu import MATRIX_FLAGS
from mt.data.tokenizer import Tokenizer
from mt.model.transformer import build_model
from mt.runtime import (
    DECODING_ONEDNN_CACHE_CAPACITY,
    ONEDNN_CACHE_CAPACITY,
    ONEDNN_CACHE_VARIABLES,
    auto_candidates,
)
from mt.runtime import ONEDNN_CACHE_CHOSEN_BY_MT as CHOSEN
from tests.conftest import (
    INT8_ENGINE,
    synthetic_corpus_overrides,
    synthetic_sentences,
    write_corpus,
)

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = set(auto_candidates(torch.device("cpu")))  # bf16 unless hopeless on this CPU


def corpus_and_checkpoint(tmp_path) -> Path:
    """A small synthetic corpus in ``tmp_path / "corpus"`` and an untrained model's checkpoint."""
    corpus = tmp_path / "corpus"
    for split, n in (("train", 120), ("val", 8), ("test", 8)):
        write_corpus(
            corpus,
            split,
            {"xx": synthetic_sentences(n, seed=1), "yy": synthetic_sentences(n, seed=2)},
        )
    tokenizer = Tokenizer.train(
        synthetic_sentences(200, seed=1) + synthetic_sentences(200, seed=2), vocab_size=300
    )
    model_cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1)
    cfg = RunConfig(data=DataConfig(dir=str(corpus), src_lang="xx", tgt_lang="yy"), model=model_cfg)
    model = build_model(model_cfg, vocab_size=tokenizer.vocab_size, pad_id=0)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model_payload(model, cfg, tokenizer))
    return ckpt


def run_benchmark(tmp_path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    """scripts/benchmark.py on the small corpus and model; its output and benchmark.json."""
    ckpt = corpus_and_checkpoint(tmp_path)
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k not in (*ONEDNN_CACHE_VARIABLES, CHOSEN)}
    result = subprocess.run(
        [
            sys.executable,
            "scripts/benchmark.py",
            *synthetic_corpus_overrides(tmp_path),
            f"checkpoint={ckpt}",
            *options,
            f"hydra.run.dir={out}",
        ],
        cwd=ROOT,
        env=env,  # mt chooses the oneDNN cache capacities
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads((out / "benchmark.json").read_text())


def test_benchmark_writes_json(tmp_path):
    result, data = run_benchmark(
        tmp_path,
        "train.batch_tokens=300",
        "train.precision=bf16",  # also times fp32, for the ratio
        "decode.precision=bf16",
        "bench.warmup_steps=1",
        "bench.train_steps=1",
        "bench.rounds=2",
        "bench.probe_size=64",
        "bench.decode_rounds=1",
        "bench.data_lines=2000",
        "bench.profile=true",
        "data.window_pairs=500",
    )
    train = data["train"]
    for key in (
        "tgt_tokens_per_s",
        "reference_tgt_tokens_per_s",
        "padding_fraction",
        "flops_per_tgt_token",
        "achieved_flop_per_s",
        "matmul_peak_flop_per_s",
        "utilisation",
        "peak_memory_mb",
        "fp32_tgt_tokens_per_s",
        "speedup_vs_fp32",
        "unseen_shapes_tgt_tokens_per_s",
        "unseen_shapes_ratio",
        "fp32_matmul_peak_flop_per_s",
        "fp32_utilisation",
        "plain_kernels_tgt_tokens_per_s",  # the same model with model.kernels=plain
        "speedup_vs_plain_kernels",
        "shapes_matmul_peak_flop_per_s",  # the peak at the model's own matrix shapes
        "shapes_utilisation",
    ):
        assert train[key] > 0 or key == "padding_fraction", key
    assert 0 <= train["padding_fraction"] < 1
    for key, table in (
        ("profile", "profile_train.txt"),
        ("fp32_profile", "profile_train_fp32.txt"),
    ):
        profile = train[key]
        assert 0 < profile["matmul_share"] < 1
        assert profile["ceiling_utilisation"] > 0 and profile["top_ops_share"]
        assert "aten::mm" in (tmp_path / "bench" / table).read_text()
    assert train["minor_page_faults_per_step"] >= 0
    assert train["reference_minor_page_faults_per_step"] >= 0
    decode = data["decode"]
    assert {"mt_bf16", "ctranslate2_float32", "ctranslate2_int8", "summary"} <= set(decode)
    for name in ("mt_bf16", "ctranslate2_float32", "ctranslate2_int8"):
        assert decode[name]["model_mb"] > 0 and decode[name]["peak_memory_mb"] > 0
        for mode in ("greedy", "beam5"):
            assert set(decode[name][mode]) >= {
                "sentences_per_s",
                "words_per_s",
                "bleu",
                "val_bleu",
                "seconds",
            }
    assert decode["mt_bf16"]["precision"] == "bf16"
    for mode in ("greedy", "beam5"):  # what ``auto`` chose, beside fp32 and bf16
        auto = decode["mt_auto"][mode]["auto"]
        assert auto["chosen"] in ("fp32", "bf16") and set(auto["probe_ms"]) == CANDIDATES
        assert decode["summary"][f"{mode}_auto_vs_fp32"] > 0
        assert f"{mode}_auto_bleu_delta" in decode["summary"]
    assert decode["ctranslate2_int8"]["engine"] == INT8_ENGINE
    assert decode["summary"]["ctranslate2_choice"] is None or decode["summary"]["beam5_speedup"] > 0
    assert data["precision"] == "bf16"
    assert set(data["cpu_flags"]) <= set(MATRIX_FLAGS)  # which matrix units this CPU has
    assert set(data["environment"]) <= set(KERNEL_ENVIRONMENT)  # e.g. ONEDNN_MAX_CPU_ISA
    # Training keeps few oneDNN kernels; its decoding children, spawned from it, keep more.
    assert set(data["onednn_caches"].values()) == {str(ONEDNN_CACHE_CAPACITY)}
    for name in ("mt_fp32", "mt_bf16", "mt_auto"):
        assert set(decode[name]["onednn_caches"].values()) == {str(DECODING_ONEDNN_CACHE_CAPACITY)}
    assert data["model"]["d_model"] == 16  # the checkpoint's architecture was measured
    assert "train.tgt_tokens_per_s" in result.stdout
    pipeline = data["data_pipeline"]
    assert pipeline["lines"] == 2000 and pipeline["windows"] == 4
    assert pipeline["lines_per_s"] > 0 and pipeline["rss_mb_max"] > 0


def test_the_benchmark_reports_what_training_precision_auto_chose(tmp_path):
    _, data = run_benchmark(
        tmp_path,
        "train.batch_tokens=300",
        "train.precision=auto",
        "bench.decode=false",
        "bench.warmup_steps=1",
        "bench.train_steps=1",
        "bench.rounds=1",
        "bench.probe_size=64",
    )
    train = data["train"]
    auto = train["auto"]
    assert train["precision"] == auto["chosen"] in ("fp32", "bf16")
    # The candidates are the benchmark process's own: whether bf16 is hopeless is timed in each
    # process, and on a loaded machine two processes may judge a borderline CPU differently.
    candidates = set(auto["probe_ms"])
    assert "fp32" in candidates <= {"fp32", "bf16"} and auto["probe_speedup_vs_fp32"] >= 1
    # Every candidate timed in the steady state too, the chosen one as ``ours``.
    assert set(auto["tgt_tokens_per_s"]) == candidates and auto["speedup_vs_fp32"] > 0
    assert auto["tgt_tokens_per_s"][auto["chosen"]] == train["tgt_tokens_per_s"]


def test_the_serving_load_benchmark_reports_throughput_latency_and_memory(tmp_path):
    result, data = run_benchmark(
        tmp_path,
        "bench.train=false",
        "bench.decode=false",
        "bench.serve=true",
        "bench.serve_seconds=1.5",
        "bench.serve_clients=[1,4]",
        "decode.max_len_b=5",
    )
    serve = data["serve"]
    for clients in (1, 4):
        row = serve[f"clients_{clients}"]
        assert row["errors"] == 0 and row["sentences"] > 0
        assert 0 < row["latency_p50_s"] <= row["latency_p95_s"] <= row["latency_p99_s"]
        assert row["server_peak_rss_mb"] >= row["server_rss_mb"] > 0
    assert serve["clients_4"]["speedup_vs_1_client"] > 0
    assert "serve.clients_4.sentences_per_s" in result.stdout


def test_a_spawned_contestant_reports_its_own_peak_memory_not_its_parents():
    """ru_maxrss survives exec: a decoding contestant spawned after training's rounds reported
    the parent's peak."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    import torch

    from mt.bench.training_speed import peak_memory_mb

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")
    cpu = torch.device("cpu")
    big = torch.ones(600 * 2**20 // 4)  # 600 MB, touched
    del big
    parent = peak_memory_mb(cpu)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as child:
        own = child.submit(peak_memory_mb, cpu).result()
    assert parent > 600 and own < parent - 300
