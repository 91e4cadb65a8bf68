"""Non-finite losses: skipped and counted; a run of them stops training, the checkpoint intact."""

import pytest
import torch

import mt.trainer
from mt.checkpoint import load_checkpoint
from mt.loggers import ListLogger
from mt.trainer import Trainer, TrainingDiverged
from tests.conftest import small_run


def poison(monkeypatch, bad_calls: set[int]):
    """Make the loss NaN on the given (1-based) training calls."""
    real = mt.trainer.label_smoothed_nll
    calls = {"n": 0}

    def loss(logits, target, *, epsilon, pad_id):
        loss_sum, nll_sum, n = real(logits, target, epsilon=epsilon, pad_id=pad_id)
        if epsilon > 0:  # training calls only (validation uses epsilon=0)
            calls["n"] += 1
            if calls["n"] in bad_calls:
                loss_sum = loss_sum * torch.nan
        return loss_sum, nll_sum, n

    monkeypatch.setattr(mt.trainer, "label_smoothed_nll", loss)


def test_nonfinite_updates_are_skipped_and_counted(tmp_path, monkeypatch):
    poison(monkeypatch, {3, 4})
    logger = ListLogger()
    trainer = Trainer(small_run(tmp_path, max_steps=6), tmp_path / "run", logger=logger)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.progress.step == 6  # six real updates; the two bad batches did not count
    assert trainer.progress.nonfinite_updates == 2
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    logged = [
        m["train/nonfinite_updates"] for _, m in logger.records if "train/nonfinite_updates" in m
    ]
    assert logged[-1] == 2
    assert [name for _, name, _ in logger.figures] == ["val/cross_attention"] * 2  # steps 4, 6


def test_many_nonfinite_updates_in_a_row_stop_with_checkpoint_intact(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(7, 100)))
    trainer = Trainer(
        small_run(tmp_path, max_steps=50, save_every_steps=2, max_nonfinite_updates=3),
        tmp_path / "run",
        logger=ListLogger(),
    )
    with pytest.raises(TrainingDiverged, match="3 updates in a row.*last.pt"):
        trainer.fit()
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["progress"]["step"] == 6
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_filter_counts_reach_the_logger(tmp_path):
    logger = ListLogger()
    Trainer(small_run(tmp_path, max_steps=1), tmp_path / "run", logger=logger)
    first = logger.records[0][1]
    assert first["data/dropped_empty"] == 0
    assert first["data/train_pairs_kept"] + first["data/dropped_length_ratio"] == 200


def test_average_last_checkpoints_at_the_end(tmp_path):
    cfg = small_run(tmp_path, max_steps=6, save_every_steps=2, keep_last=2, average_last=2)
    metrics = Trainer(cfg, tmp_path / "run", logger=ListLogger()).fit()
    assert metrics["averaged"]["from"] == ["step_4.pt", "step_6.pt"]
    assert metrics["test_checkpoint"] in ("best.pt", "averaged.pt")
    assert (tmp_path / "run" / "averaged.pt").is_file()
