"""Exact resume: a run killed (SIGKILL, SIGTERM) and resumed ends with the same weights."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mt.checkpoint import load_checkpoint
from tests.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[1]


def reversal_corpus(folder: Path) -> None:
    rng = random.Random(0)
    for split, n in (("train", 600), ("val", 20), ("test", 20)):
        src = [" ".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 8))) for _ in range(n)]
        write_corpus(folder, split, {"src": src, "tgt": [" ".join(s.split()[::-1]) for s in src]})


def command(corpus: Path, run_dir: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "scripts/train.py",
        "data=folder",
        f"data.dir={corpus}",
        "data.src_lang=src",
        "data.tgt_lang=tgt",
        "data.vocab_size=270",
        f"data.cache_dir={cache}",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.n_encoder_layers=1",
        "model.n_decoder_layers=1",
        "train.max_steps=40",
        "train.max_minutes=null",
        "train.max_epochs=null",
        "train.batch_tokens=250",
        "train.val_every_steps=10",
        "train.save_every_steps=1",
        "train.keep_last=2",
        "data.subword_alpha=0",
        "train.log_every_steps=5",
        "train.progress_bar=false",
        "train.num_threads=1",
        "train.device=cpu",  # bit-exact resume is a CPU promise (see tests/conftest.py)
        "train.resume=auto",
        "decode.beam_size=1",
        f"hydra.run.dir={run_dir}",
    ]


def saved_step(run_dir: Path) -> int:
    try:
        return load_checkpoint(run_dir / "last.pt")["progress"]["step"]
    except (FileNotFoundError, ValueError):
        return -1


def interrupt(cmd: list[str], run_dir: Path, sig: int, after_step: int, rng: random.Random):
    """Start the run, wait until it has saved past ``after_step``, then send ``sig``."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while saved_step(run_dir) <= after_step and proc.poll() is None:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.3))  # land anywhere: mid-step, mid-save, mid-validation
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path):
    corpus = tmp_path / "corpus"
    reversal_corpus(corpus)
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    subprocess.run(
        command(corpus, straight, cache), cwd=ROOT, check=True, capture_output=True, timeout=600
    )

    resumed = tmp_path / "resumed"
    cmd = command(corpus, resumed, cache)
    rng = random.Random(1)
    first, *later = sorted(rng.sample(range(2, 34), 4))
    code, _, err = interrupt(cmd, resumed, signal.SIGTERM, first, rng)
    assert code == 130, err  # finished the step, saved, said how to resume
    assert "train.resume=auto" in err
    for after in later:
        code, _, _ = interrupt(cmd, resumed, signal.SIGKILL, max(after, saved_step(resumed)), rng)
        assert code == -signal.SIGKILL
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)

    a = load_checkpoint(straight / "last.pt")
    b = load_checkpoint(resumed / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == 40
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["progress"]["best_step"] == b["progress"]["best_step"]
    assert [h["step"] for h in b["progress"]["history"]] == [10, 20, 30, 40]
    # train.keep_last=2, but the default train.average_last=5 keeps five for the average.
    kept = sorted((p.name for p in resumed.glob("step_*.pt")), key=lambda n: int(n[5:-3]))
    assert kept == [f"step_{i}.pt" for i in range(36, 41)]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("val/loss")]
    assert steps == [10, 20, 30, 40]  # no duplicates after the resumes
