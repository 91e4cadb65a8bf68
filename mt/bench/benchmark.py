"""Measure training and decoding speed on the machine at hand, next to a yardstick.

Training: steady-state target tokens/s of our Transformer and, on the same batches in the same
run, of ``torch.nn.Transformer`` with the same sizes, embeddings and output layer. The two are
measured in alternating rounds so that load changes on a noisy machine hit both alike. Model
FLOPs count 6 per parameter per token (encoder parameters x source tokens, decoder and output
layer parameters x target tokens) and are compared with a matrix-multiply probe of the same run.

Decoding (with a trained checkpoint only: an untrained model rarely emits EOS, so its speed says
nothing): sentences/s, output words/s, target tokens/s and BLEU, greedy and beam 5.

Legend: B batch, S source length, T target length, D d_model, V vocabulary.
"""

import itertools
import json
import math
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mt.bench.data_pipeline import benchmark_data_pipeline
from mt.bench.step_profile import profile_steps
from mt.checkpoint import LoadedModel, load_model
from mt.config import BenchmarkConfig, BenchmarkRunConfig, RunConfig
from mt.data.batching import Batch
from mt.data.corpus import load_split
from mt.data.prepare import prepare_data
from mt.data.tokenizer import Tokenizer
from mt.decoding.translator import Translator
from mt.kernels import loss_functions, use_kernels
from mt.metrics import score
from mt.model.embeddings import PositionalEncoding, TokenEmbedding
from mt.model.masks import causal_mask
from mt.model.transformer import Transformer, build_model
from mt.runtime import (
    autocast,
    matmul_seconds,
    precision_dtype,
    resolve_precision,
    set_seed,
    sync,
    use_device,
)
from mt.training.optim import build_optimizer


class ReferenceTransformer(nn.Module):
    """``torch.nn.Transformer`` wrapped with our embeddings and tied output layer."""

    def __init__(
        self, ours: Transformer, *, n_heads: int, d_ff: int, dropout: float, pre_norm: bool
    ) -> None:
        super().__init__()
        d_model = ours.embed.weight.size(1)
        self.pad_id = ours.pad_id
        self.embed = TokenEmbedding(
            vocab_size=ours.embed.weight.size(0), d_model=d_model, pad_id=ours.pad_id
        )
        self.pos = PositionalEncoding(
            d_model=d_model, max_positions=ours.max_positions, dropout=dropout
        )
        self.core = nn.Transformer(
            d_model=d_model,
            nhead=n_heads,
            num_encoder_layers=len(ours.encoder_layers),
            num_decoder_layers=len(ours.decoder_layers),
            dim_feedforward=d_ff,
            dropout=dropout,
            batch_first=True,
            norm_first=pre_norm,
        )

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
        t = tgt_in.size(1)
        causal = ~causal_mask(t, src.device)[0, 0]  # nn.Transformer: True = may NOT attend
        hidden = self.core(
            self.pos(self.embed(src)),
            self.pos(self.embed(tgt_in)),
            tgt_mask=causal,
            src_key_padding_mask=src == self.pad_id,
            memory_key_padding_mask=src == self.pad_id,
            tgt_is_causal=True,
        )
        return self.embed.logits(hidden)


def parameter_flops_per_step(model: Transformer, src_tokens: int, tgt_tokens: int) -> float:
    """6 FLOPs per parameter per token (forward 2, backward 4)."""
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder"))
    dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder"))
    out = model.embed.weight.numel()  # the tied output layer
    return 6.0 * (enc * src_tokens + (dec + out) * tgt_tokens)


def matmul_peak(
    device: torch.device, size: int, repeats: int = 10, dtype: torch.dtype = torch.float32
) -> float:
    """Best-of-N FLOP/s of a square matrix multiply in ``dtype``: what the hardware gives us
    (in the precision training runs its matmuls in)."""
    return 2 * size**3 / matmul_seconds(dtype, size, repeats, device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: GPU allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def minor_page_faults() -> int:
    """This process's minor page faults so far: memory touched for the first time (e.g. a
    large tensor served by fresh pages instead of reused ones)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(
    model: nn.Module, optimizer, batches: list[Batch], device, cfg: RunConfig, precision: str
):
    """Seconds for training steps over ``batches`` (synchronised at the end only), in a
    resolved ``precision`` (fp16's loss scaler is left out)."""
    model.train()
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            loss_sum, _, _ = loss_functions(cfg.model.kernels).label_smoothed_nll(
                model(batch.src, batch.tgt_in),
                batch.tgt_out,
                epsilon=cfg.train.label_smoothing,
                pad_id=0,
            )
        (loss_sum / batch.n_tgt_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def benchmark_training(
    cfg: RunConfig,
    bench: BenchmarkConfig,
    tokenizer: Tokenizer | None,
    device: torch.device,
    out_dir: str | Path | None = None,
) -> dict:
    data = prepare_data(cfg.data, seed=cfg.seed, tokenizer=tokenizer)
    ours = build_model(cfg.model, vocab_size=data.tokenizer.vocab_size, pad_id=0).to(device)
    use_kernels(ours, cfg.model.kernels)
    ref = ReferenceTransformer(
        ours,
        n_heads=cfg.model.n_heads,
        d_ff=cfg.model.d_ff,
        dropout=cfg.model.dropout,
        pre_norm=cfg.model.pre_norm,
    ).to(device)
    opts = {m: build_optimizer(m, cfg.train) for m in (ours, ref)}
    batches = list(data.train.batches(cfg.train.batch_tokens, np.random.default_rng(cfg.seed)))
    per_round = bench.train_steps
    needed = bench.warmup_steps + bench.rounds * per_round
    batches = (batches * math.ceil(needed / len(batches)))[:needed]
    warm, timed = batches[: bench.warmup_steps], batches[bench.warmup_steps :]
    # Training's precision (``train.precision``, ``auto`` resolved). When that is not fp32,
    # our model is also timed in fp32 in the same rounds: what the lower precision buys here.
    precision = resolve_precision(cfg.train.precision, device)
    runs = [("ours", ours, precision), ("ref", ref, precision)]
    if precision != "fp32":
        runs.append(("ours_fp32", ours, "fp32"))
    # Steady state: each model first runs every timed batch once, untimed. A step with a new
    # batch shape may grow the heap and fault fresh pages in; a training run pays that in its
    # first minutes only. (Measured: the yardstick still faulted ~2,400 pages per timed step
    # after 5 warm-up steps, ours none; ``minor_page_faults_per_step`` shows it.)
    for _, model, prec in runs:
        time_steps(model, opts[model], warm + timed, device, cfg, prec)
    # Under bf16/fp16 autocast the matmuls run in that dtype: the peak is probed in it too.
    matmul_dtype = precision_dtype(precision)
    seconds = {name: 0.0 for name, _, _ in runs}
    faults = {name: 0 for name, _, _ in runs}
    peak = fp32_peak = 0.0
    for r in range(bench.rounds):  # alternate, so that load changes hit all
        chunk = timed[r * per_round : (r + 1) * per_round]
        for name, model, prec in runs:
            before = minor_page_faults()
            seconds[name] += time_steps(model, opts[model], chunk, device, cfg, prec)
            faults[name] += minor_page_faults() - before
        # The peak is probed in every round and the best kept: one probe at a busy moment
        # would understate it (and flatter the utilisation).
        peak = max(peak, matmul_peak(device, bench.probe_size, dtype=matmul_dtype))
        if "ours_fp32" in seconds:  # the fp32 step's utilisation, of the fp32 peak
            fp32_peak = max(fp32_peak, matmul_peak(device, bench.probe_size))
    # A training run meets a new batch shape almost every step; the rounds above only repeat
    # shapes they have run. Batches of another epoch's order (mostly unseen shapes), each run
    # once: a per-shape cost (a kernel plan or graph built per shape) shows as a ratio below 1.
    unseen = data.train.batches(cfg.train.batch_tokens, np.random.default_rng(cfg.seed + 1))
    unseen = list(itertools.islice(unseen, per_round))
    unseen_seconds = time_steps(ours, opts[ours], unseen, device, cfg, precision)
    unseen_tgt = sum(b.n_tgt_tokens for b in unseen)
    tgt = sum(b.n_tgt_tokens for b in timed)
    src = sum(int((b.src != 0).sum()) for b in timed)
    padded = sum(b.src.numel() + b.tgt_out.numel() for b in timed)
    step_flops = [
        parameter_flops_per_step(ours, int((b.src != 0).sum()), b.n_tgt_tokens) for b in timed
    ]
    flops = sum(step_flops)
    achieved = flops / seconds["ours"]
    profiles = {}
    if bench.profile:  # the first round's batches again, under the profiler
        chunk = timed[:per_round]
        # Our step in the training precision, and in fp32 when that was timed too.
        targets = [("profile", precision, peak, "profile_train.txt")]
        if "ours_fp32" in seconds:
            targets.append(("fp32_profile", "fp32", fp32_peak, "profile_train_fp32.txt"))
        for key, prec, prec_peak, table_file in targets:
            prof = profile_steps(
                lambda prec=prec: time_steps(ours, opts[ours], chunk, device, cfg, prec), device
            )
            profiles[key] = prof.summary(sum(step_flops[:per_round]), prec_peak)
            if out_dir is not None:
                (Path(out_dir) / table_file).write_text(prof.table)
    return {
        "tgt_tokens_per_s": round(tgt / seconds["ours"], 1),
        "src_tgt_tokens_per_s": round((src + tgt) / seconds["ours"], 1),
        "reference_tgt_tokens_per_s": round(tgt / seconds["ref"], 1),
        "speedup_vs_reference": round(seconds["ref"] / seconds["ours"], 3),
        "padding_fraction": round(1 - (src + tgt) / padded, 4),
        "flops_per_tgt_token": round(flops / tgt),
        "achieved_flop_per_s": round(achieved),
        "matmul_peak_flop_per_s": round(peak),
        "utilisation": float(f"{achieved / peak:.3g}"),  # 3 significant digits
        # Not yet steady when high: the heap still grows to fit the step's tensors.
        "minor_page_faults_per_step": round(faults["ours"] / len(timed)),
        "reference_minor_page_faults_per_step": round(faults["ref"] / len(timed)),
        "steps_timed": len(timed),
        "unseen_shapes_tgt_tokens_per_s": round(unseen_tgt / unseen_seconds, 1),
        "unseen_shapes_ratio": round(unseen_tgt / unseen_seconds / (tgt / seconds["ours"]), 3),
        **(
            {
                "fp32_tgt_tokens_per_s": round(tgt / seconds["ours_fp32"], 1),
                "speedup_vs_fp32": round(seconds["ours_fp32"] / seconds["ours"], 3),
                "fp32_matmul_peak_flop_per_s": round(fp32_peak),
                "fp32_utilisation": float(f"{flops / seconds['ours_fp32'] / fp32_peak:.3g}"),
            }
            if "ours_fp32" in seconds
            else {}
        ),
        "tgt_tokens_per_step": round(tgt / len(timed), 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        **profiles,
    }


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
