"""How fast the streaming data pipeline runs, and that its memory stays bounded.

``python scripts/benchmark.py bench.data_lines=3000000`` writes a synthetic parallel corpus of
that many lines (made-up words, so no real text is needed), trains SentencePiece on a sample, and
streams one epoch through read -> clean -> tokenise (``data.num_proc`` processes) -> filter ->
length-bucketed batches, as training does. It reports lines/s and the process's resident memory
after each window: bounded memory means the last window's RSS is close to the first's, however
many lines went by.
"""

import dataclasses
import gzip
import os
import random
import tempfile
import time
from pathlib import Path

from mt.config import DataConfig
from mt.data.streaming import StreamingTrainData, prepare_streaming


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_synthetic_corpus(folder: Path, n_lines: int, seed: int = 0) -> None:
    """``train.src/.tgt`` of ``n_lines`` (gzip), and small ``val``/``test`` splits."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(alphabet, k=rng.randint(2, 9))) for _ in range(20_000)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_lines), ("val", 100), ("test", 100)):
        with (
            gzip.open(folder / f"{split}.src.gz", "wt", compresslevel=1) as fs,
            gzip.open(folder / f"{split}.tgt.gz", "wt", compresslevel=1) as ft,
        ):
            for _ in range(n):
                sentence = rng.choices(words, k=rng.randint(4, 30))
                fs.write(" ".join(sentence) + "\n")
                ft.write(" ".join(reversed(sentence)) + "\n")


def benchmark_data_pipeline(
    base: DataConfig, n_lines: int, *, batch_tokens: int, workdir: str | None = None
) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp) / "corpus"
        start = time.perf_counter()
        write_synthetic_corpus(folder, n_lines)
        written = time.perf_counter() - start
        cfg = dataclasses.replace(
            base,
            dir=str(folder),
            src_lang="src",
            tgt_lang="tgt",
            train_split="train",
            val_split="val",
            test_split="test",
            hub_name=None,
            streaming=True,
            max_train_pairs=None,
            spm_max_sentences=min(base.spm_max_sentences, 200_000),
            cache_dir=str(Path(tmp) / "cache"),
        )
        start = time.perf_counter()
        data = prepare_streaming(cfg)
        tokenizer_seconds = time.perf_counter() - start
        train: StreamingTrainData = data.train  # type: ignore[assignment]
        rss, batches = [], 0
        start = time.perf_counter()
        try:
            for window in train.windows():
                for group in window.batch_groups(batch_tokens):
                    window.collate(group)
                    batches += 1
                rss.append(round(current_rss_mb(), 1))
        finally:
            train.close()
        seconds = time.perf_counter() - start
    stats = train.filter_stats
    lines = stats.kept + stats.empty + stats.too_long + stats.bad_ratio
    return {
        "lines": lines,
        "window_pairs": cfg.window_pairs,
        "num_proc": cfg.num_proc,
        "lines_per_s": round(lines / seconds, 1),
        "batches": batches,
        "epoch_seconds": round(seconds, 2),
        "tokenizer_training_seconds": round(tokenizer_seconds, 2),
        "corpus_writing_seconds": round(written, 2),
        "rss_mb_first_window": rss[0] if rss else None,
        "rss_mb_last_window": rss[-1] if rss else None,
        "rss_mb_max": max(rss, default=None),
        "rss_mb_per_window": rss,
        "windows": len(rss),
    }
