"""Non-finite losses: skipped and counted; a run of them stops training, the checkpoint intact."""

import json
import time

import pytest
import torch

import mt.kernels.loss
from mt.checkpoint import load_checkpoint
from mt.loggers import ListLogger
from mt.training.progress import TrainingDiverged
from mt.training.trainer import Trainer
from tests.conftest import small_run


def poison(monkeypatch, bad_calls: set[int]):
    """Make the loss NaN on the given (1-based) training calls."""
    real = mt.kernels.loss.label_smoothed_nll
    calls = {"n": 0}

    def loss(logits, target, *, epsilon, pad_id):
        loss_sum, nll_sum, n = real(logits, target, epsilon=epsilon, pad_id=pad_id)
        if epsilon > 0:  # training calls only (validation uses epsilon=0)
            calls["n"] += 1
            if calls["n"] in bad_calls:
                loss_sum = loss_sum * torch.nan
        return loss_sum, nll_sum, n

    monkeypatch.setattr(mt.kernels.loss, "label_smoothed_nll", loss)


def test_nonfinite_updates_are_skipped_and_counted(tmp_path, monkeypatch):
    poison(monkeypatch, {3, 4})
    logger = ListLogger()
    trainer = Trainer(small_run(tmp_path, max_steps=6), tmp_path / "run", logger=logger)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.progress.step == 6  # six updates, two of them skipped on the device
    assert trainer.progress.nonfinite_updates == 2
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    # Adam took four steps: the skipped updates left its state alone too.
    steps = {int(s["step"]) for s in trainer.updater.optimizer.state.values()}
    assert steps == {4}
    logged = [
        m["train/nonfinite_updates"] for _, m in logger.records if "train/nonfinite_updates" in m
    ]
    assert logged[-1] == 2
    assert [name for _, name, _ in logger.figures] == ["val/cross_attention"] * 2  # steps 4, 6
    import matplotlib.pyplot as plt

    open_figures = set(plt.get_fignums())
    assert all(figure.number not in open_figures for _, _, figure in logger.figures)


def test_skipped_update_leaves_weights_unchanged(tmp_path, monkeypatch):
    poison(monkeypatch, {1})
    trainer = Trainer(small_run(tmp_path, max_steps=1), tmp_path / "run", logger=ListLogger())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = next(trainer.data.train.batches(300))
    nll = trainer.train_update([batch], batch.n_tgt_tokens)
    assert float(nll) == 0.0  # a skipped update adds nothing to the logged loss
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_many_nonfinite_updates_in_a_row_stop_with_checkpoint_intact(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(7, 100)))
    trainer = Trainer(
        small_run(tmp_path, max_steps=50, save_every_steps=2, max_nonfinite_updates=3),
        tmp_path / "run",
        logger=ListLogger(),
    )
    good = None
    real_save = trainer.save

    def save(**kwargs):
        nonlocal good
        real_save(**kwargs)
        if trainer.progress.step == 6:
            good = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.save = save
    with pytest.raises(TrainingDiverged, match=r"4 updates in a row.*last.pt"):
        trainer.fit()
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    # Updates 7.. are bad; the check at the log line of step 10 sees 4 in a row (>= 3).
    assert last["progress"]["step"] == 8
    for name, tensor in last["model"].items():  # the skipped updates changed nothing
        assert torch.equal(tensor, good[name]), name


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


def test_test_pass_can_be_left_out(tmp_path):
    cfg = small_run(tmp_path, max_steps=4, test_at_end=False)
    metrics = Trainer(cfg, tmp_path / "run", logger=ListLogger()).fit()
    assert "test" not in metrics and metrics["train"]["steps"] == 4
    assert not list((tmp_path / "run").glob("*.hyp"))
    assert "test" not in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_metrics_speed_counts_training_time_only(tmp_path, monkeypatch):
    """train.tgt_tokens_per_s: target tokens over the loop's time less validation. Validation
    is made slow here, so that a final validation subtracted without being counted in the loop's
    time (as it once was) would leave no training time at all."""
    from mt.training.validation import Validator

    real = Validator.validate

    def slow_validate(self):
        time.sleep(1.0)
        return real(self)

    monkeypatch.setattr(Validator, "validate", slow_validate)
    started = time.monotonic()
    trainer = Trainer(small_run(tmp_path, max_steps=4, val_every_steps=2), tmp_path / "run")
    trainer.fit()
    elapsed = time.monotonic() - started
    p = trainer.progress  # the unrounded times behind metrics.json
    assert 2.0 <= p.validation_seconds < p.train_seconds <= elapsed
    train = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    expected = p.tgt_tokens / (p.train_seconds - p.validation_seconds)
    assert train["tgt_tokens_per_s"] == pytest.approx(expected, rel=1e-3)


def test_ctrl_c_during_the_test_pass_says_how_to_finish_it(tmp_path, monkeypatch):
    from mt.training.progress import TrainingInterrupted
    from mt.training.validation import Validator

    real_test = Validator.test

    def interrupted(self, out_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(Validator, "test", interrupted)
    cfg = small_run(tmp_path, max_steps=4, val_every_steps=2)
    with pytest.raises(TrainingInterrupted, match="test pass was interrupted.*train.resume=auto"):
        Trainer(cfg, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "metrics.json").exists()
    monkeypatch.setattr(Validator, "test", real_test)
    cfg.train.resume = "auto"
    resumed = Trainer(cfg, tmp_path / "run")
    metrics = resumed.fit()  # no more training: the test pass only
    assert resumed.progress.step == 4 and "test" in metrics
    assert (tmp_path / "run" / "metrics.json").exists()
