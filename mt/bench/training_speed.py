"""Training speed: steady-state target tokens/s of our Transformer next to yardsticks, on the
same batches in the same run, in alternating rounds so that load changes on a noisy machine hit
all alike: ``torch.nn.Transformer`` with the same sizes (mt/bench/reference.py), our model in
fp32 when training runs in another precision, and our model without the kernels of
``mt/kernels`` (``model.kernels=plain``). Model FLOPs count 6 per parameter per token and are
compared with a matrix-multiply probe of the same run.
"""

import copy
import itertools
import math
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mt.bench.reference import ReferenceTransformer
from mt.bench.step_profile import profile_steps
from mt.commands import BenchmarkConfig
from mt.config import RunConfig
from mt.data.batching import Batch
from mt.data.prepare import prepare_data
from mt.data.tokenizer import Tokenizer
from mt.kernels import loss_functions, use_kernels
from mt.model.transformer import Transformer, build_model
from mt.runtime import auto_candidates, autocast, precision_dtype, sync
from mt.training.optim import build_optimizer
from mt.training.precision import choose_training_precision


def parameter_flops_per_step(model: Transformer, src_tokens: int, tgt_tokens: int) -> float:
    """6 FLOPs per parameter per token (forward 2, backward 4)."""
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder"))
    dec = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder"))
    out = model.embed.weight.numel()  # the tied output layer
    return 6.0 * (enc * src_tokens + (dec + out) * tgt_tokens)


def matmul_seconds(
    dtype: torch.dtype,
    size: int = 1024,
    repeats: int = 3,
    device: torch.device | None = None,
    shape: tuple[int, int, int] | None = None,
) -> float:
    """Best-of-``repeats`` seconds of one (size x size) @ (size x size) multiply, or of one
    (m x k) @ (k x n) for ``shape=(m, k, n)``, on ``device`` (the CPU by default; synchronised
    on a GPU)."""
    device = device or torch.device("cpu")
    m, k, n = shape or (size, size, size)
    own = torch.Generator(device).manual_seed(0)  # the global random streams stay untouched
    a = torch.randn(m, k, device=device, generator=own).to(dtype)
    b = torch.randn(k, n, device=device, generator=own).to(dtype)
    a @ b  # first call: kernel selection and buffers
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak(
    device: torch.device, size: int, repeats: int = 10, dtype: torch.dtype = torch.float32
) -> float:
    """Best-of-N FLOP/s of a square matrix multiply in ``dtype``: what the hardware gives us
    (in the precision training runs its matmuls in)."""
    return 2 * size**3 / matmul_seconds(dtype, size, repeats, device)


def step_matmul_shapes(model: nn.Module, rows: int) -> Counter:
    """(m, k, n) -> how many (m x k) @ (k x n) products a training step of ``rows`` tokens per
    side runs in the model's linear layers and tied output layer: per layer the forward
    product, the input's gradient and the weight's gradient. Attention's own products (scores,
    weighted values) are left out: they are small beside these."""
    shapes: Counter = Counter()
    layers = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    embed = getattr(model, "embed", None)
    if embed is not None:
        layers.append(tuple(embed.weight.shape[::-1]))  # (D, V): the output layer
    for k, n in layers:
        shapes.update([(rows, k, n), (rows, n, k), (n, rows, k)])
    return shapes


def shapes_peak(
    model: nn.Module, rows: int, device: torch.device, dtype: torch.dtype, repeats: int = 5
) -> float:
    """FLOP/s of the step's own matrix products (:func:`step_matmul_shapes`), each shape timed
    best-of-``repeats``, weighted by how often it runs: what these shapes can do on this
    hardware, a fairer yardstick for a small model than a large square product."""
    flops = seconds = 0.0
    for (m, k, n), count in step_matmul_shapes(model, rows).items():
        flops += count * 2.0 * m * k * n
        seconds += count * matmul_seconds(dtype, repeats=repeats, device=device, shape=(m, k, n))
    return flops / seconds


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: GPU allocator peak, or the process's peak resident memory on CPU.

    On Linux that is ``VmHWM`` of /proc/self/status, not ``ru_maxrss``: the latter survives
    ``exec``, so a child spawned by a large process (the decoding contestants, after training's
    rounds) would report its parent's peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def minor_page_faults() -> int:
    """This process's minor page faults so far: memory touched for the first time (e.g. a
    large tensor served by fresh pages instead of reused ones)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(
    model: nn.Module,
    optimizer,
    batches: list[Batch],
    device,
    cfg: RunConfig,
    precision: str,
    kernels: str | None = None,
):
    """Seconds for training steps over ``batches`` (synchronised at the end only), in a
    resolved ``precision`` (fp16's loss scaler is left out), with the loss of ``kernels``
    (default ``model.kernels``)."""
    label_smoothed_nll = loss_functions(kernels or cfg.model.kernels).label_smoothed_nll
    model.train()
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            loss_sum, _, _ = label_smoothed_nll(
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


@dataclass
class Run:
    """One contestant: a model, its optimizer, precision and kernels."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: str
    kernels: str
    seconds: float = 0.0
    faults: int = 0

    def time(self, batches: list[Batch], device, cfg: RunConfig) -> float:
        before = minor_page_faults()
        seconds = time_steps(
            self.model, self.optimizer, batches, device, cfg, self.precision, self.kernels
        )
        self.faults += minor_page_faults() - before
        return seconds


def contestants(
    cfg: RunConfig, ours: Transformer, device: torch.device, precision: str
) -> dict[str, Run]:
    """Ours in training's (resolved) ``precision``; the yardstick; ours in fp32 when the
    precision is another, and in every other precision ``auto`` chooses among when it was
    asked for; ours with ``model.kernels=plain`` when the kernels are on."""
    m = cfg.model
    ref = ReferenceTransformer(
        ours, n_heads=m.n_heads, d_ff=m.d_ff, dropout=m.dropout, pre_norm=m.pre_norm
    ).to(device)
    optimizer = build_optimizer(ours, cfg.train)
    runs = {
        "ours": Run(ours, optimizer, precision, m.kernels),
        "ref": Run(ref, build_optimizer(ref, cfg.train), precision, m.kernels),
    }
    others = auto_candidates(device) if cfg.train.precision == "auto" else ["fp32"]
    for other in others:  # the same model and optimizer, in another precision
        if other != precision:
            runs[f"ours_{other}"] = Run(ours, optimizer, other, m.kernels)
    if m.kernels != "plain":
        plain = use_kernels(copy.deepcopy(ours), "plain")
        runs["ours_plain"] = Run(plain, build_optimizer(plain, cfg.train), precision, "plain")
    return runs


def timed_rounds(
    runs: dict[str, Run], timed: list[Batch], bench: BenchmarkConfig, device, cfg: RunConfig
) -> tuple[float, float]:
    """Alternate the contestants over ``bench.rounds`` rounds (load changes hit all alike);
    returns the best matmul peak in training's precision, and in fp32 (0 unless timed)."""
    matmul_dtype = precision_dtype(runs["ours"].precision)  # autocast's matmul dtype
    peak = fp32_peak = 0.0
    per_round = bench.train_steps
    for r in range(bench.rounds):
        chunk = timed[r * per_round : (r + 1) * per_round]
        for run in runs.values():
            run.seconds += run.time(chunk, device, cfg)
        # Probed in every round, the best kept: one probe at a busy moment would understate
        # the peak (and flatter the utilisation).
        peak = max(peak, matmul_peak(device, bench.probe_size, dtype=matmul_dtype))
        if "ours_fp32" in runs:
            fp32_peak = max(fp32_peak, matmul_peak(device, bench.probe_size))
    return peak, fp32_peak


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
    auto = None
    precision = cfg.train.precision
    if precision == "auto":  # as a training run chooses, on a probe batch
        auto = choose_training_precision(cfg, ours, data.tokenizer, device)
        precision = auto.precision
    runs = contestants(cfg, ours, device, precision)
    batches = list(data.train.batches(cfg.train.batch_tokens, np.random.default_rng(cfg.seed)))
    needed = bench.warmup_steps + bench.rounds * bench.train_steps
    batches = (batches * math.ceil(needed / len(batches)))[:needed]
    warm, timed = batches[: bench.warmup_steps], batches[bench.warmup_steps :]
    # Steady state: each contestant first runs every timed batch once, untimed. A step with a
    # new batch shape may grow the heap and fault fresh pages in; a training run pays that in
    # its first minutes only (``minor_page_faults_per_step`` shows what is left).
    for run in runs.values():
        run.time(warm + timed, device, cfg)
        run.faults = 0
    peak, fp32_peak = timed_rounds(runs, timed, bench, device, cfg)
    # A training run meets a new batch shape almost every step; the rounds above only repeat
    # shapes they have run. Batches of another epoch's order (mostly unseen shapes), each run
    # once: a per-shape cost (a kernel plan or graph built per shape) shows as a ratio below 1.
    unseen = data.train.batches(cfg.train.batch_tokens, np.random.default_rng(cfg.seed + 1))
    unseen = list(itertools.islice(unseen, bench.train_steps))
    unseen_seconds = runs["ours"].time(unseen, device, cfg)
    step_flops = [
        parameter_flops_per_step(ours, int((b.src != 0).sum()), b.n_tgt_tokens) for b in timed
    ]
    result = training_report(runs, timed, sum(step_flops), peak, fp32_peak, device)
    rows = round(sum(b.tgt_in.numel() for b in timed) / len(timed))
    own = shapes_peak(ours, rows, device, precision_dtype(precision))
    result["shapes_matmul_peak_flop_per_s"] = round(own)
    result["shapes_utilisation"] = float(f"{result['achieved_flop_per_s'] / own:.3g}")
    result["precision"] = precision
    if auto is not None:
        result["auto"] = {**auto.report(), **steady_alternatives(runs, timed)}
    result["unseen_shapes_tgt_tokens_per_s"] = round(
        sum(b.n_tgt_tokens for b in unseen) / unseen_seconds, 1
    )
    result["unseen_shapes_ratio"] = round(
        result["unseen_shapes_tgt_tokens_per_s"] / result["tgt_tokens_per_s"], 3
    )
    if bench.profile:
        result.update(
            profiles(runs, timed, step_flops, (peak, fp32_peak), bench, device, cfg, out_dir)
        )
    return result


def steady_alternatives(runs: dict[str, Run], timed: list[Batch]) -> dict:
    """Target tokens/s of ours in each precision timed, and the chosen one's over fp32's."""
    tgt = sum(b.n_tgt_tokens for b in timed)
    ours = {runs["ours"].precision: runs["ours"].seconds}
    ours |= {run.precision: run.seconds for k, run in runs.items() if k == f"ours_{run.precision}"}
    return {
        "tgt_tokens_per_s": {p: round(tgt / s, 1) for p, s in ours.items()},
        "speedup_vs_fp32": round(ours["fp32"] / ours[runs["ours"].precision], 3),
    }


def training_report(
    runs: dict[str, Run], timed: list[Batch], flops: float, peak: float, fp32_peak: float, device
) -> dict:
    """The JSON of the timed rounds."""
    tgt = sum(b.n_tgt_tokens for b in timed)
    src = sum(int((b.src != 0).sum()) for b in timed)
    padded = sum(b.src.numel() + b.tgt_out.numel() for b in timed)
    ours = runs["ours"].seconds
    report = {
        "tgt_tokens_per_s": round(tgt / ours, 1),
        "src_tgt_tokens_per_s": round((src + tgt) / ours, 1),
        "reference_tgt_tokens_per_s": round(tgt / runs["ref"].seconds, 1),
        "speedup_vs_reference": round(runs["ref"].seconds / ours, 3),
        "padding_fraction": round(1 - (src + tgt) / padded, 4),
        "flops_per_tgt_token": round(flops / tgt),
        "achieved_flop_per_s": round(flops / ours),
        "matmul_peak_flop_per_s": round(peak),
        "utilisation": float(f"{flops / ours / peak:.3g}"),  # 3 significant digits
        # Not yet steady when high: the heap still grows to fit the step's tensors.
        "minor_page_faults_per_step": round(runs["ours"].faults / len(timed)),
        "reference_minor_page_faults_per_step": round(runs["ref"].faults / len(timed)),
        "steps_timed": len(timed),
        "tgt_tokens_per_step": round(tgt / len(timed), 1),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }
    if "ours_fp32" in runs:
        fp32 = runs["ours_fp32"].seconds
        report["fp32_tgt_tokens_per_s"] = round(tgt / fp32, 1)
        report["speedup_vs_fp32"] = round(fp32 / ours, 3)
        report["fp32_matmul_peak_flop_per_s"] = round(fp32_peak)
        report["fp32_utilisation"] = float(f"{flops / fp32 / fp32_peak:.3g}")
    if "ours_plain" in runs:
        plain = runs["ours_plain"].seconds
        report["plain_kernels_tgt_tokens_per_s"] = round(tgt / plain, 1)
        report["speedup_vs_plain_kernels"] = round(plain / ours, 3)
    return report


def profiles(runs, timed, step_flops, peaks, bench, device, cfg, out_dir) -> dict:
    """The first round's batches again, under the profiler: our step in the training
    precision, and in fp32 when that was timed too (mt/bench/step_profile.py)."""
    chunk = timed[: bench.train_steps]
    ours = runs["ours"]
    targets = [("profile", ours.precision, peaks[0], "profile_train.txt")]
    if "ours_fp32" in runs:
        targets.append(("fp32_profile", "fp32", peaks[1], "profile_train_fp32.txt"))
    result = {}
    for key, prec, prec_peak, table_file in targets:
        prof = profile_steps(
            lambda prec=prec: time_steps(ours.model, ours.optimizer, chunk, device, cfg, prec),
            device,
        )
        result[key] = prof.summary(sum(step_flops[: bench.train_steps]), prec_peak)
        if out_dir is not None:
            (Path(out_dir) / table_file).write_text(prof.table)
    return result
