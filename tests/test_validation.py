"""Scoring during training (mt/training/validation.py): the validation loss is the per-token
NLL of the model's own forward pass, BLEU is scored on the raw references, and the test pass
writes what it scored; a run says when validating eats into its budget."""

import logging
import math
import time

import torch

from mt.data.prepare import prepare_data
from mt.files import hypothesis_file
from mt.loggers import ListLogger
from mt.metrics import score
from mt.model.transformer import build_model
from mt.training.progress import Progress
from mt.training.report import validation_share_warning
from mt.training.trainer import Trainer
from mt.training.validation import Validator
from tests.conftest import small_run


def make_validator(tmp_path, **train) -> Validator:
    cfg = small_run(tmp_path, **train)
    data = prepare_data(cfg.data, seed=cfg.seed)
    model = build_model(cfg.model, vocab_size=data.tokenizer.vocab_size, pad_id=0)
    return Validator(model, data.tokenizer, data, cfg, torch.device("cpu"))


def test_loss_is_the_mean_nll_of_real_target_tokens(tmp_path):
    validator = make_validator(tmp_path)
    model, (val,) = validator.model, validator.data.val
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in val.ids.batches(10_000):
            log_probs = model(batch.src, batch.tgt_in).log_softmax(-1)  # (B, T, V)
            picked = log_probs.gather(-1, batch.tgt_out[..., None]).squeeze(-1)  # (B, T)
            real = batch.tgt_out != 0
            total -= float(picked[real].sum())
            count += int(real.sum())
    assert math.isclose(validator.loss(val), total / count, rel_tol=1e-5)


def test_validate_scores_bleu_only_when_asked(tmp_path):
    without = make_validator(tmp_path, val_bleu=False).validate()
    assert set(without) == {"val/loss", "val/ppl"}
    assert math.isclose(without["val/ppl"], math.exp(without["val/loss"]), rel_tol=1e-9)
    validator = make_validator(tmp_path, val_bleu=True)
    metrics = validator.validate()
    hyps = validator.translator(beam_size=1).translate(validator.data.val[0].sources)
    expected = score(hyps, validator.data.val[0].references)
    assert metrics["val/bleu"] == expected.bleu and metrics["val/chrf"] == expected.chrf
    # An untrained model scores ~0: with a translator that outputs every second reference the
    # scores must be those of exactly these outputs (so the equality above compares scoring).
    refs = validator.data.val[0].references
    half = [r if i % 2 == 0 else "" for i, r in enumerate(refs)]

    class Echo:
        def translate(self, sources):
            return half

    validator.translator = lambda beam_size, tgt_lang=None: Echo()
    echoed = validator.validate()
    assert echoed["val/bleu"] == score(half, refs).bleu > 10 * max(expected.bleu, 1)
    assert echoed["val/chrf"] == score(half, refs).chrf


def test_test_pass_writes_the_hypotheses_it_scored(tmp_path):
    validator = make_validator(tmp_path)
    ((test, scores),) = validator.test(tmp_path)
    written = (
        (tmp_path / hypothesis_file(test.name, validator.cfg.data.tgt_lang))
        .read_text()
        .splitlines()
    )
    assert len(written) == len(test.sources)
    assert scores.bleu == score(written, test.references).bleu


def test_validation_that_eats_the_budget_is_named_with_an_interval_that_would_not():
    # 17 of 100 minutes validating every 200 updates: ~4x fewer validations bring it to ~5%.
    warning = validation_share_warning(
        Progress(train_seconds=6000, validation_seconds=1020), val_every_steps=200
    )
    assert "17%" in warning and "train.val_every_steps=800 (now 200)" in warning
    ten_percent = Progress(train_seconds=6000, validation_seconds=600)
    assert validation_share_warning(ten_percent, val_every_steps=200) is None
    assert validation_share_warning(Progress(), 200) is None  # nothing timed yet


def test_a_run_warns_once_when_validation_takes_most_of_its_time(tmp_path, monkeypatch, caplog):
    def slow_validation(self):
        time.sleep(0.5)  # far longer than two updates of the small model
        return {"val/loss": 1.0, "val/ppl": 1.0}

    monkeypatch.setattr(Validator, "validate", slow_validation)
    cfg = small_run(tmp_path, max_steps=8, val_every_steps=2)
    with caplog.at_level(logging.WARNING, logger="mt.training.trainer"):
        Trainer(cfg, tmp_path / "run", logger=ListLogger()).fit()
    warnings = [r.getMessage() for r in caplog.records if "validation has taken" in r.getMessage()]
    assert len(warnings) == 1 and "(now 2)" in warnings[0]

    # A run whose only validation is its last is not told to validate less: it has ended.
    caplog.clear()
    cfg = small_run(tmp_path, max_steps=2, val_every_steps=100)
    with caplog.at_level(logging.WARNING, logger="mt.training.trainer"):
        Trainer(cfg, tmp_path / "ended", logger=ListLogger()).fit()
    assert "validation has taken" not in caplog.text
