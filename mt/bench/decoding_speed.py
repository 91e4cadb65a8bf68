"""Decoding speed of a trained checkpoint: mt's own search and its CTranslate2 exports, side by
side on the same test split (with a trained checkpoint only: an untrained model rarely emits
EOS, so its speed says nothing).

Contestants: mt in ``decode.precision``, in each precision ``auto`` chooses among, and with
``auto`` itself (what it chose for each search is reported, beside the alternatives); CTranslate2
exports in float32, int8 and every other type this CPU computes in. Each runs in a
fresh process, so its peak memory is its own, and for ``bench.decode_rounds`` rounds (the
fastest round counts). Each reports, greedy and beam 5: words/s, sentences/s, BLEU on test and
validation (modes are compared on validation), model size on disk and peak memory.
"""

import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

from mt.bench.training_speed import peak_memory_mb
from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.commands import BenchmarkRunConfig
from mt.config import DecodeConfig
from mt.data.corpus import load_split
from mt.decoding.loading import load_translator
from mt.export.convert import QUANTIZATIONS, export_checkpoint
from mt.export.exported import is_exported
from mt.metrics import score
from mt.runtime import auto_candidates, onednn_caches

SEARCHES = (("greedy", 1), ("beam5", 5))
BLEU_MARGIN = 0.5  # a CTranslate2 mode may cost at most this much validation BLEU


def ctranslate2_modes() -> list[str]:
    """float32, int8, then the other types this CPU supports (e.g. bfloat16 with AVX512-BF16)."""
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types("cpu")
    return ["float32", "int8"] + [
        q for q in QUANTIZATIONS if q in supported and q not in ("float32", "int8")
    ]


def benchmark_decoding(cfg: BenchmarkRunConfig, device: torch.device) -> dict:
    """Every contestant's numbers, and ``summary``: the fastest mt path against the fastest
    CTranslate2 mode within ``BLEU_MARGIN`` validation BLEU of mt fp32."""
    splits = {
        name: load_split(cfg.data, split)
        for name, split in (("test", cfg.data.test_split), ("val", cfg.data.val_split))
    }
    texts = {name: (ds["src"], ds["tgt"]) for name, ds in splits.items()}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="mt_bench_export_") as tmp:
        contestants = _contestants(cfg, device, Path(tmp))
        results: dict[str, dict] = {}
        for _ in range(cfg.bench.decode_rounds):
            for name, (path, precision, size) in contestants.items():
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as child:
                    run = child.submit(
                        measure, str(path), precision, str(device), texts, threads, cfg.decode
                    ).result()
                run["model_mb"] = round(size / 2**20, 2)
                results[name] = _faster(results.get(name), run)
    results["summary"] = summarise(results)
    return results


def _contestants(cfg: BenchmarkRunConfig, device: torch.device, tmp: Path) -> dict:
    """name -> (path, precision, model bytes on disk)."""
    checkpoint = Path(cfg.checkpoint)
    weights = tmp / "weights_only.pt"  # what an fp32 model takes without optimizer state
    payload = load_checkpoint(checkpoint)
    save_checkpoint(weights, {k: payload[k] for k in ("model", "config", "tokenizer")})
    size = weights.stat().st_size
    found = {}
    for precision in dict.fromkeys([*auto_candidates(device), cfg.decode.precision, "auto"]):
        found[f"mt_{precision}"] = (checkpoint, precision, size)
    for mode in ctranslate2_modes():
        folder = tmp / mode
        export_checkpoint(checkpoint, folder, mode)
        found[f"ctranslate2_{mode}"] = (folder, "fp32", (folder / "model.bin").stat().st_size)
    return found


def measure(
    path: str, precision: str, device: str, texts: dict, threads: int, decode: DecodeConfig
) -> dict:
    """In a fresh process: greedy and beam 5 over the test split (timed, after a warm-up) and
    the validation split (BLEU only)."""
    torch.set_num_threads(threads)
    settings = replace(decode, n_best=1, precision=precision, threads=threads)
    if is_exported(path):  # CTranslate2 puts batches side by side itself (inter_threads)
        settings = replace(settings, workers=1)
    translator, _ = load_translator(path, settings, device)
    sources, references = texts["test"]
    result: dict = {"engine": translator.engine, "precision": precision}
    result["workers"] = settings.workers
    for name, beam in SEARCHES:
        search = translator.with_settings(replace(settings, beam_size=beam))
        search.translate(sources[:50])  # warm-up (and ``auto``'s timing: not in the clock)
        start = time.perf_counter()
        hyps = search.translate(sources)
        seconds = time.perf_counter() - start
        result[name] = {
            "sentences_per_s": round(len(hyps) / seconds, 1),
            "words_per_s": round(sum(len(h.split()) for h in hyps) / seconds, 1),
            "bleu": score(hyps, references).bleu,
            "val_bleu": score(search.translate(texts["val"][0]), texts["val"][1]).bleu,
            "seconds": round(seconds, 2),
        }
        if precision == "auto":
            choice = translator.precisions.choice(
                batch_tokens=settings.batch_tokens, beam_size=beam
            )
            result[name]["auto"] = choice.report()
    result["peak_memory_mb"] = round(peak_memory_mb(torch.device(device)), 1)
    result["onednn_caches"] = onednn_caches()
    return result


def _faster(best: dict | None, run: dict) -> dict:
    """Per search, the faster of two rounds (outputs are the same; only the clock differs)."""
    if best is None:
        return run
    for name, _ in SEARCHES:
        if run[name]["words_per_s"] > best[name]["words_per_s"]:
            best[name] = run[name]
    best["peak_memory_mb"] = max(best["peak_memory_mb"], run["peak_memory_mb"])
    return best


def summarise(results: dict[str, dict]) -> dict:
    """The issue's yardstick: the fastest CTranslate2 mode whose beam-5 validation BLEU is
    within ``BLEU_MARGIN`` of mt fp32, against mt's fastest path, greedy and beam 5."""
    mt = {k: v for k, v in results.items() if k.startswith("mt_")}
    ct2 = {k: v for k, v in results.items() if k.startswith("ctranslate2_")}
    reference = mt.get("mt_fp32") or next(iter(mt.values()))
    eligible = {
        k: v
        for k, v in ct2.items()
        if v["beam5"]["val_bleu"] >= reference["beam5"]["val_bleu"] - BLEU_MARGIN
    }
    summary: dict = {}
    if "mt_auto" in mt and "mt_fp32" in mt:  # what ``auto`` earns over fp32 (>= 1 if it is right)
        for name, _ in SEARCHES:
            auto, fp32 = mt["mt_auto"][name], mt["mt_fp32"][name]
            summary[f"{name}_auto_vs_fp32"] = round(auto["words_per_s"] / fp32["words_per_s"], 3)
            summary[f"{name}_auto_bleu_delta"] = round(auto["bleu"] - fp32["bleu"], 2)
    if not eligible:
        return {**summary, "ctranslate2_choice": None}
    choice = max(eligible, key=lambda k: eligible[k]["beam5"]["words_per_s"])
    summary["ctranslate2_choice"] = choice
    for name, _ in SEARCHES:
        fastest = max(mt, key=lambda k: mt[k][name]["words_per_s"])
        summary[f"{name}_fastest_mt"] = fastest
        summary[f"{name}_speedup"] = round(
            ct2[choice][name]["words_per_s"] / mt[fastest][name]["words_per_s"], 2
        )
    summary["size_ratio_vs_mt_fp32"] = round(ct2[choice]["model_mb"] / reference["model_mb"], 3)
    summary["val_bleu_delta_vs_mt_fp32"] = round(
        ct2[choice]["beam5"]["val_bleu"] - reference["beam5"]["val_bleu"], 2
    )
    return summary
