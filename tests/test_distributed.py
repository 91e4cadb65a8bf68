"""Data parallelism (gloo on CPU), gradient accumulation and mixed precision give the updates
they promise: the same as one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mt.checkpoint import load_checkpoint
from mt.data.batching import collate
from mt.loggers import ListLogger
from mt.training.distributed import from_env, update_slices
from mt.training.trainer import Trainer
from tests.conftest import small_run, synthetic_corpus_overrides

ROOT = Path(__file__).resolve().parents[1]
NO_DROPOUT = {"dropout": 0.0}  # dropout masks differ between ranks by design


def comparable(name: str) -> bool:
    """Keys' biases get a gradient that is exactly 0 in theory (softmax ignores a constant added
    to all scores) and rounding noise in practice, which Adam scales up to full-size steps: their
    values are noise however the batch is split."""
    return not name.endswith("k_proj.bias")


def test_update_slices_share_batches_between_ranks_and_steps():
    assert update_slices(7, world_size=1, accum_steps=3) == [range(0, 3), range(3, 6), range(6, 7)]
    # 2 ranks: the epoch is cut to an even number of batches, 2 x 2 per update.
    assert update_slices(11, world_size=2, accum_steps=2) == [
        range(0, 4),
        range(4, 8),
        range(8, 10),
    ]


def merged(trainer: Trainer, batches):
    """The batches' sentences as one batch (its own padding)."""
    src, tgt = [], []
    pad = trainer.tokenizer.pad_id
    for b in batches:
        for s_row, t_row in zip(b.src.tolist(), b.tgt_out.tolist()):
            src.append([i for i in s_row if i != pad][:-1])  # drop EOS, re-added by collate
            tgt.append([i for i in t_row if i != pad][:-1])
    return collate(src, tgt, trainer.tokenizer)


def test_more_cuda_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun with more processes than GPUs: an error that says what to start instead, not
    CUDA's 'invalid device ordinal' from deep inside set_device."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1.*--nproc_per_node=1.*train.device=cpu"):
        from_env("cuda")


def test_accumulation_gives_the_update_of_one_larger_batch(tmp_path):
    cfg = small_run(tmp_path, model=NO_DROPOUT, max_steps=1)
    a = Trainer(cfg, tmp_path / "a", logger=ListLogger())
    b = Trainer(cfg, tmp_path / "b", logger=ListLogger())
    batches = list(a.data.train.batches(cfg.train.batch_tokens))[:3]
    tokens = sum(x.n_tgt_tokens for x in batches)
    for _ in range(2):  # two updates: Adam's state takes part too
        nll_a = a.train_update(batches, tokens)
        nll_b = b.train_update([merged(b, batches)], tokens)
        torch.testing.assert_close(nll_a, nll_b, rtol=1e-5, atol=1e-4)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        if comparable(name):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    assert a.progress.step == b.progress.step == 2


def test_accum_steps_run_counts_steps_and_tokens(tmp_path):
    logger = ListLogger()
    trainer = Trainer(
        small_run(tmp_path, max_steps=3, accum_steps=2), tmp_path / "run", logger=logger
    )
    trainer.fit()
    assert trainer.progress.step == 3
    assert trainer.progress.batch_in_epoch == 6  # two batches per update


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_fp32_weights(tmp_path, precision):
    logger = ListLogger()
    cfg = small_run(tmp_path, max_steps=4, precision=precision, log_every_steps=1, lr=5e-3)
    trainer = Trainer(cfg, tmp_path / "run", logger=logger)
    trainer.fit()
    losses = [m["train/loss"] for _, m in logger.records if "train/loss" in m]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (saved["scaler"] is not None) == (precision == "fp16")


def test_unknown_precision_is_rejected():
    from mt.checks import validate_run_config
    from mt.config import RunConfig, TrainConfig

    with pytest.raises(ValueError, match="train.precision='fp8'"):
        validate_run_config(RunConfig(train=TrainConfig(precision="fp8")))


# -- several processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, world: int, port: int) -> None:
    """Make this spawned process rank ``rank`` of ``world`` for torch.distributed (gloo, one
    thread each, so that the ranks do not fight over the cores)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, tmp: str, run_dir: str, train: dict, out: str):
    as_rank(rank, world, port)
    logger = ListLogger()
    trainer = Trainer(small_run(Path(tmp), model=NO_DROPOUT, **train), run_dir, logger=logger)
    try:
        trainer.fit()
    finally:
        trainer.dist.shutdown()
    if rank == 0:
        losses = [m["train/loss"] for _, m in logger.records if "train/loss" in m]
        Path(out).write_text(json.dumps(losses))


def _failing_worker(rank: int, world: int, port: int, tmp: str, run_dir: str):
    """Rank 1 dies on its third update; rank 0 must not wait for it forever."""
    if rank == 1:
        real = Trainer.train_update
        calls = {"n": 0}

        def update(self, batches, tokens):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("rank 1 ran out of memory (simulated)")
            return real(self, batches, tokens)

        Trainer.train_update = update
    _worker(rank, world, port, tmp, run_dir, {"max_steps": 50}, str(Path(tmp) / "unused.json"))


def test_a_failing_rank_ends_the_job_instead_of_hanging(tmp_path, monkeypatch):
    monkeypatch.setenv("MT_DIST_TIMEOUT_S", "60")
    args = (2, free_port(), str(tmp_path), str(tmp_path / "run"))
    start = time.monotonic()
    # spawn re-raises the error of the first process it sees exit: rank 1's own, or rank 0's
    # "connection closed by peer" when rank 0 notices the lost peer first (a race).
    with pytest.raises(
        mp.ProcessRaisedException, match="rank 1 ran out of memory|[Cc]onnection closed by peer"
    ):
        mp.spawn(_failing_worker, args=args, nprocs=2, join=True)
    assert time.monotonic() - start < 120


def run_ranks(world: int, tmp_path: Path, run_dir: Path, **train) -> list[float]:
    out = tmp_path / f"losses_{run_dir.name}.json"
    args = (world, free_port(), str(tmp_path), str(run_dir), train, str(out))
    mp.spawn(_worker, args=args, nprocs=world, join=True)
    return json.loads(out.read_text())


def one_process(tmp_path: Path, run_dir: Path, **train) -> list[float]:
    logger = ListLogger()
    Trainer(small_run(tmp_path, model=NO_DROPOUT, **train), run_dir, logger=logger).fit()
    return [m["train/loss"] for _, m in logger.records if "train/loss" in m]


def assert_same_weights(a: Path, b: Path, exact: bool = False):
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    for name, tensor in wa.items():
        if exact:
            assert torch.equal(tensor, wb[name]), name
        elif comparable(name):
            torch.testing.assert_close(tensor, wb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    train = dict(max_steps=4, log_every_steps=1, save_every_steps=100)
    ddp = run_ranks(2, tmp_path, tmp_path / "ddp", **train)
    single = one_process(tmp_path, tmp_path / "single", accum_steps=2, **train)
    assert len(ddp) == len(single) == 4
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(single), rtol=1e-5, atol=1e-5)
    assert_same_weights(tmp_path / "ddp" / "last.pt", tmp_path / "single" / "last.pt")
    # Only rank 0 writes: one set of files, and a test pass.
    assert (tmp_path / "ddp" / "metrics.json").is_file()


def test_distributed_run_resumes_exactly(tmp_path):
    train = dict(log_every_steps=1, save_every_steps=1)
    run_ranks(2, tmp_path, tmp_path / "straight", max_steps=4, **train)
    run_ranks(2, tmp_path, tmp_path / "resumed", max_steps=2, **train)
    run_ranks(2, tmp_path, tmp_path / "resumed", max_steps=4, resume="auto", **train)
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert saved["progress"]["step"] == 4
    assert len(saved["rng"]["ranks"]) == 2  # each rank's random state is kept
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt", True)


def _precision_worker(rank: int, world: int, port: int, tmp: str, run_dir: str):
    """Rank 1 must not time a probe of its own: it takes rank 0's choice."""
    as_rank(rank, world, port)
    if rank == 1:
        from mt.training import precision

        def refuse(*_args, **_kwargs):
            raise AssertionError("rank 1 timed a probe")

        precision.choose_training_precision = refuse
    cfg = small_run(Path(tmp), model=NO_DROPOUT, max_steps=2, precision="auto")
    trainer = Trainer(cfg, run_dir, logger=ListLogger())
    try:
        trainer.fit()
    finally:
        trainer.dist.shutdown()
    Path(tmp, f"precision_{rank}.txt").write_text(trainer.updater.precision)


def test_ranks_train_in_rank_0s_auto_precision(tmp_path):
    args = (2, free_port(), str(tmp_path), str(tmp_path / "run"))
    mp.spawn(_precision_worker, args=args, nprocs=2, join=True)
    chosen = {(tmp_path / f"precision_{rank}.txt").read_text() for rank in (0, 1)}
    assert len(chosen) == 1 and chosen <= {"fp32", "bf16"}
    assert load_checkpoint(tmp_path / "run" / "last.pt")["precision"] in chosen


@pytest.mark.slow
def test_torchrun_trains_with_two_processes(tmp_path):
    small_run(tmp_path)  # writes the synthetic corpus
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "scripts/train.py",
        *synthetic_corpus_overrides(tmp_path),
        "model.d_model=16",
        "model.n_heads=2",
        "model.d_ff=32",
        "model.n_encoder_layers=1",
        "model.n_decoder_layers=1",
        "train.max_steps=3",
        "train.max_minutes=null",
        "train.batch_tokens=300",
        "train.progress_bar=false",
        "train.num_threads=1",
        "train.device=cpu",  # gloo on CPUs, also on a machine with one GPU
        "decode.beam_size=1",
        "decode.max_len_b=3",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test BLEU") == 1  # rank 0 reports, once
    assert load_checkpoint(run_dir / "last.pt")["progress"]["step"] == 3
