"""Building on a trained model: train.init_from (fine-tuning) and data.spm_model."""

import dataclasses

import pytest
import sentencepiece as spm
import torch

from mt.checkpoint import load_checkpoint
from mt.config import DataConfig
from mt.loggers import ListLogger
from mt.training.setup import take_over_model
from mt.training.trainer import Trainer
from tests.conftest import small_run, straight_and_resumed, synthetic_sentences


def with_train(cfg, **changes):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


@pytest.fixture
def source_run(tmp_path):
    """A small model trained for 8 updates, validated at its last step."""
    cfg = small_run(tmp_path, max_steps=8, val_every_steps=8, test_at_end=False)
    Trainer(cfg, tmp_path / "source", logger=ListLogger()).fit()
    return cfg, tmp_path / "source"


def test_init_from_starts_from_the_weights_and_logs_the_score_it_starts_from(source_run):
    cfg, source = source_run
    ours = load_checkpoint(source / "last.pt")
    logger = ListLogger()
    tuned = with_train(cfg, init_from=str(source / "last.pt"), max_steps=4, val_every_steps=4)
    trainer = Trainer(tuned, source.parent / "tuned", logger=logger)
    for name, tensor in ours["model"].items():  # loaded exactly, before any update
        assert torch.equal(trainer.model.state_dict()[name], tensor), name
    trainer.fit()
    start = [m for step, m in logger.records if step == 0 and "val/loss" in m]
    assert start and start[0]["val/loss"] == ours["progress"]["history"][-1]["val/loss"]
    after = load_checkpoint(source.parent / "tuned" / "last.pt")
    assert after["progress"]["step"] == 4  # the step count, optimizer and schedule start fresh
    assert after["tokenizer"] == ours["tokenizer"]  # the new data is read with its tokenizer
    assert after["run_id"] != ours["run_id"]
    assert not torch.equal(after["model"]["embed.weight"], ours["model"]["embed.weight"])


def test_weights_only_checkpoints_can_be_started_from(source_run, tmp_path):
    from mt.checkpoint import save_checkpoint

    cfg, source = source_run
    payload = load_checkpoint(source / "last.pt")
    save_checkpoint(
        tmp_path / "averaged.pt", {k: payload[k] for k in ("model", "config", "tokenizer")}
    )
    tuned = with_train(cfg, init_from=str(tmp_path / "averaged.pt"), max_steps=2)
    Trainer(tuned, tmp_path / "tuned", logger=ListLogger()).fit()
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["progress"]["step"] == 2


def test_a_conflicting_model_size_is_one_line(source_run, tmp_path):
    cfg, source = source_run
    bigger = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=32))
    bigger = with_train(bigger, init_from=str(source / "last.pt"))
    with pytest.raises(ValueError, match=r"has model.d_model=16, this run model.d_model=32: drop"):
        Trainer(bigger, tmp_path / "tuned", logger=ListLogger())


def test_the_checkpoints_model_settings_are_taken_over_unless_given(source_run):
    cfg, source = source_run
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_ff=64, dropout=0.3))
    other = with_train(other, init_from=str(source / "last.pt"))
    taken = take_over_model(other, given := {"model.dropout"})
    assert taken.model.d_ff == cfg.model.d_ff and taken.model.dropout == 0.3, given
    assert take_over_model(other, {"model"}).model == other.model  # a model choice: checked
    assert take_over_model(cfg, set()) is cfg  # no init_from: nothing changes


def test_a_fine_tuning_run_resumes_bit_identically(source_run, tmp_path):
    cfg, source = source_run
    tuned = with_train(
        cfg, init_from=str(source / "last.pt"), max_steps=8, val_every_steps=4, save_every_steps=2
    )
    straight, resumed = straight_and_resumed(tuned, tmp_path / "runs", stop_at=3)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert straight["progress"]["step"] == resumed["progress"]["step"] == 8


def test_data_spm_model_trains_with_an_existing_sentencepiece_model(source_run, tmp_path):
    cfg, source = source_run
    given = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, spm_model=str(source / "spm.model"), vocab_size=8000),
    )  # vocab_size unused
    Trainer(given, tmp_path / "run", logger=ListLogger()).fit()
    assert (tmp_path / "run" / "spm.model").read_bytes() == (source / "spm.model").read_bytes()


def test_a_sentencepiece_model_mt_cannot_use_is_refused(tmp_path, source_run):
    cfg, source = source_run
    text = tmp_path / "text.txt"
    text.write_text("\n".join(synthetic_sentences(200)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "plain"), vocab_size=60
    )  # SentencePiece's own ids: unk 0, bos 1, ...

    def data(path) -> DataConfig:
        return dataclasses.replace(cfg.data, spm_model=str(path))

    for path, message in (
        (tmp_path / "plain.model", r"numbers pad/unk/bos/eos \(-1, 0, 1, 2\), mt needs"),
        (tmp_path / "missing.model", r"data.spm_model=.*missing.model does not exist"),
        (text, r"data.spm_model=.*text.txt is not a SentencePiece model"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            Trainer(dataclasses.replace(cfg, data=data(path)), tmp_path / "x", logger=ListLogger())
    other = with_train(
        dataclasses.replace(cfg, data=data(tmp_path / "plain.model")),
        init_from=str(source / "last.pt"),
    )
    with pytest.raises(ValueError, match="numbers pad/unk"):
        Trainer(other, tmp_path / "y", logger=ListLogger())
