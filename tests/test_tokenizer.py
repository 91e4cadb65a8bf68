import pytest

from mt.data.tokenizer import Tokenizer
from tests.conftest import synthetic_sentences


def test_special_ids(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert tokenizer.id_to_piece(3) == "</s>"


@pytest.mark.parametrize("text", ["Ünïcödé façade", "猫が好き", "שלום עולם", "emoji 🤖🎉"])
def test_byte_fallback_round_trips_unseen_scripts(tokenizer, text):
    ids = tokenizer.encode([text])[0]
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode([ids])[0] == text


def test_round_trip_and_serialisation(tmp_path, tokenizer):
    line = synthetic_sentences(1, seed=9)[0]
    path = tmp_path / "spm.model"
    tokenizer.save(path)
    again = Tokenizer.load(path)
    assert again.encode([line]) == tokenizer.encode([line])
    assert again.decode(again.encode([line])) == [line]


def test_vocabulary_too_large_names_the_option():
    with pytest.raises(ValueError, match="data.vocab_size=50000 is too large"):
        Tokenizer.train(synthetic_sentences(50), vocab_size=50000)


def test_vocabulary_too_small_says_so():
    with pytest.raises(ValueError, match="data.vocab_size=100 is too small"):
        Tokenizer.train(synthetic_sentences(50), vocab_size=100)
