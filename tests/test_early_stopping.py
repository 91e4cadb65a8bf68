"""``train.patience``: training ends when validation has stopped improving, on every rank at
once, and a resumed run that had stopped early does not train on."""

import json
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from mt.checks import validate_run_config
from mt.config import RunConfig, TrainConfig
from mt.loggers import ListLogger
from mt.training.trainer import Trainer
from mt.training.validation import Validator
from tests.conftest import small_run
from tests.test_distributed import as_rank, free_port

# Validation losses at steps 2, 4, 6, ...: the best (2.0) at step 4, then two that are worse.
SCRIPTED_LOSSES = [3.0, 2.0, 2.5, 2.2, 1.0, 0.5, 0.4, 0.3]


def script_validation(validator_cls) -> None:
    """Replace validation by the scripted losses (the training itself is real)."""
    losses = iter(SCRIPTED_LOSSES)
    validator_cls.validate = lambda self: {"val/loss": next(losses), "val/ppl": 1.0}


def test_training_stops_after_patience_validations_without_improvement(tmp_path, monkeypatch):
    monkeypatch.setattr(Validator, "validate", Validator.validate)  # restored after the test
    script_validation(Validator)
    cfg = small_run(tmp_path, max_steps=100, val_every_steps=2, patience=2)
    trainer = Trainer(cfg, tmp_path / "run", logger=ListLogger())
    trainer.fit()
    assert trainer.progress.step == 8  # validations at 6 and 8 did not beat step 4
    assert trainer.progress.best_step == 4
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["stopped_early"] is True
    assert [h["step"] for h in metrics["validation_history"]] == [2, 4, 6, 8]
    assert "test" in metrics  # the test pass still runs, with best.pt

    # Resuming the finished run does not train on: it stopped for a reason.
    cfg.train.resume = "auto"
    resumed = Trainer(cfg, tmp_path / "run", logger=ListLogger())
    resumed.fit()
    assert resumed.progress.step == 8
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["stopped_early"]


def test_without_patience_training_runs_to_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Validator, "validate", Validator.validate)
    script_validation(Validator)
    trainer = Trainer(
        small_run(tmp_path, max_steps=10, val_every_steps=2), tmp_path / "run", logger=ListLogger()
    )
    trainer.fit()
    assert trainer.progress.step == 10 and not trainer.stopped_early


def test_negative_patience_is_rejected():
    with pytest.raises(ValueError, match="train.patience=-1"):
        validate_run_config(RunConfig(train=TrainConfig(patience=-1)))


def _worker(rank: int, world: int, port: int, tmp: str, out: str) -> None:
    as_rank(rank, world, port)
    script_validation(Validator)  # only rank 0 validates; the others learn its verdict
    cfg = small_run(Path(tmp), max_steps=100, val_every_steps=2, patience=2)
    trainer = Trainer(cfg, Path(tmp) / "run", logger=ListLogger())
    try:
        trainer.fit()
    finally:
        trainer.dist.shutdown()
    Path(f"{out}.{rank}").write_text(json.dumps([trainer.progress.step, trainer.stopped_early]))


def test_all_ranks_stop_together(tmp_path, monkeypatch):
    monkeypatch.setenv("MT_DIST_TIMEOUT_S", "60")
    out = str(tmp_path / "ended")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), out), nprocs=2, join=True)
    ended = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert ended == [[8, True], [8, True]]
