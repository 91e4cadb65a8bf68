"""``train.precision=auto`` (mt/training/precision.py): real updates are timed on a copy, the
run's own updates are the same as without the probe, and a resumed run keeps its precision."""

import dataclasses

import pytest
import torch

from mt.checkpoint import load_checkpoint
from mt.loggers import ListLogger
from mt.runtime import PrecisionChoice, auto_candidates
from mt.training import precision as train_precision
from mt.training.distributed import DistContext
from mt.training.precision import choose_training_precision, training_precision
from mt.training.trainer import Trainer
from tests.conftest import small_model, small_run


def test_the_probe_times_real_updates_of_a_copy(tmp_path, tokenizer):
    cfg = small_run(tmp_path, precision="auto")
    model = small_model(vocab_size=tokenizer.vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choice = choose_training_precision(cfg, model, tokenizer, torch.device("cpu"))
    assert choice.precision in ("fp32", "bf16")
    assert set(choice.seconds) == set(auto_candidates(torch.device("cpu")))
    assert min(choice.seconds.values()) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's stream is put back


def _forced(chosen: str, calls: list):
    real = train_precision.choose_by_timing

    def choose(probes, device):
        calls.append(real(probes, device, repeats=1))  # the real updates, timed
        return PrecisionChoice(chosen, calls[-1].seconds)

    return choose


def test_an_auto_run_that_chose_fp32_trains_exactly_as_an_fp32_run(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(train_precision, "choose_by_timing", _forced("fp32", calls))
    fp32 = small_run(tmp_path, max_steps=4)
    auto = dataclasses.replace(fp32, train=dataclasses.replace(fp32.train, precision="auto"))
    Trainer(fp32, tmp_path / "fp32", logger=ListLogger()).fit()
    Trainer(auto, tmp_path / "auto", logger=ListLogger()).fit()
    assert len(calls) == 1  # the fp32 run does not probe
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("fp32", "auto"))
    assert a["precision"] == b["precision"] == "fp32"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(train_precision, "choose_by_timing", _forced("bf16", calls))
    cfg = small_run(tmp_path, max_steps=2, precision="auto")
    Trainer(cfg, tmp_path / "run", logger=ListLogger()).fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["precision"] == "bf16"
    monkeypatch.setattr(train_precision, "choose_by_timing", _forced("fp32", calls))
    more = dataclasses.replace(cfg.train, max_steps=4, resume="auto")
    trainer = Trainer(dataclasses.replace(cfg, train=more), tmp_path / "run", logger=ListLogger())
    assert trainer.updater.precision == "bf16" and len(calls) == 1  # not timed again
    trainer.fit()


@pytest.mark.parametrize("given", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept_without_a_probe(tmp_path, tokenizer, monkeypatch, given):
    monkeypatch.setattr(train_precision, "choose_by_timing", None)  # would fail if called
    cfg = small_run(tmp_path, precision=given)
    model = small_model(vocab_size=tokenizer.vocab_size)
    state = {"precision": "bf16"}
    assert training_precision(cfg, model, tokenizer, DistContext(), state) == given
