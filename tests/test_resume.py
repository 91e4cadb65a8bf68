"""Exact resume: a run killed (SIGKILL, SIGTERM) and resumed ends with the same weights."""

import json
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
    # One run, resumed four times: its checkpoints all carry one run id (averaging checks it).
    run_ids = {load_checkpoint(p)["run_id"] for p in resumed.glob("step_*.pt")}
    assert run_ids == {b["run_id"]} and b["run_id"] != a["run_id"]
    assert [h["step"] for h in b["progress"]["history"]] == [10, 20, 30, 40]
    # train.keep_last=2, but the default train.average_last=5 keeps five for the average.
    kept = sorted((p.name for p in resumed.glob("step_*.pt")), key=lambda n: int(n[5:-3]))
    assert kept == [f"step_{i}.pt" for i in range(36, 41)]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("val/loss")]
    assert steps == [10, 20, 30, 40]  # no duplicates after the resumes


# Runs scripts/train.py with save_checkpoint (or the test pass) wrapped so that the process
# SIGKILLs itself at one chosen point: MODE is "before" / "after" the Nth checkpoint write, or
# "test" at the start of the test pass.
KILLER = """
import os, runpy, signal, sys
import mt.training.checkpointing as files
from mt.training.validation import Validator
mode, n = sys.argv[1], int(sys.argv[2])
calls, real_save, real_test = 0, files.save_checkpoint, Validator.test

def save(path, payload):
    global calls
    calls += 1
    if mode == "before" and calls == n:
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(path, payload)
    if mode == "after" and calls == n:
        os.kill(os.getpid(), signal.SIGKILL)

def test(self, out_dir):
    if mode == "test":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_test(self, out_dir)

files.save_checkpoint, Validator.test = save, test
sys.argv = ["scripts/train.py", *sys.argv[3:]]
runpy.run_path("scripts/train.py", run_name="__main__")
"""


def outcome(run_dir: Path) -> dict:
    """What a finished run leaves that must not depend on where it was killed."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for timing in ("minutes", "validation_minutes", "tgt_tokens_per_s"):
        metrics["train"].pop(timing)
    return {
        "last": load_checkpoint(run_dir / "last.pt")["model"],
        "best": load_checkpoint(run_dir / "best.pt")["model"],
        "metrics": metrics,
        "test": (run_dir / "test.tgt.hyp").read_text(),
    }


@pytest.mark.slow
def test_killed_at_every_checkpoint_write_and_in_the_test_pass_then_resumed(tmp_path):
    """Kill points: before and after each checkpoint file of the run (validation steps write
    best.pt, step_N.pt and last.pt; the end writes averaged.pt), and in the test pass. Each
    killed run, resumed with train.resume=auto, ends as the uninterrupted run did."""
    corpus, cache = tmp_path / "corpus", tmp_path / "cache"
    reversal_corpus(corpus)
    settings = ["train.max_steps=12", "train.val_every_steps=4", "train.save_every_steps=4"]
    settings += ["train.average_last=2", "data.subword_alpha=0"]

    def train(run_dir: Path, mode: str = "none", n: int = 0) -> int:
        cmd = [sys.executable, "-c", KILLER, mode, str(n)]
        cmd += command(corpus, run_dir, cache)[2:] + settings
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr[-2000:]
        return done.returncode

    train(tmp_path / "straight")
    expected = outcome(tmp_path / "straight")
    points = [("test", 0)]
    n = 1
    while True:  # until a run writes fewer than n files: every write is a kill point
        run_dir = tmp_path / f"before_{n}"
        if train(run_dir, "before", n) == 0:
            break
        points += [("before", n), ("after", n)]
        n += 1
    assert n > 6  # several validation steps and the average were covered
    for mode, n in points:
        run_dir = tmp_path / f"{mode}_{n}"
        if mode != "before":
            assert train(run_dir, mode, n) == -signal.SIGKILL
        assert train(run_dir) == 0  # resumed (train.resume=auto), to the end
        got = outcome(run_dir)
        for name in ("last", "best"):
            for key, tensor in expected[name].items():
                assert torch.equal(tensor, got[name][key]), f"{mode} {n}: {name}.pt {key}"
        assert got["metrics"] == expected["metrics"], f"{mode} {n}"
        assert got["test"] == expected["test"], f"{mode} {n}"
