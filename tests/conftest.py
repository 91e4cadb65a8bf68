import gzip
import random
import string
from pathlib import Path

import pytest
import torch

from mt.checkpoint import model_payload, save_checkpoint
from mt.config import DataConfig, DecodeConfig, ModelConfig, RunConfig, TrainConfig
from mt.cpu import has_int8_dot_products
from mt.model.transformer import Transformer, build_model

# The engine an int8 export loads as: float32 compute on a CPU without VNNI (mt/export/exported.py).
INT8_ENGINE = (
    "ctranslate2 (int8)"
    if has_int8_dot_products()
    else "ctranslate2 (int8 weights, float32 compute)"
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_model(**overrides) -> Transformer:
    sizes = dict(
        vocab_size=23,
        pad_id=0,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_encoder_layers=2,
        n_decoder_layers=2,
        dropout=0.0,
        max_positions=64,
    )
    sizes.update(overrides)
    return Transformer(**sizes).eval()


def synthetic_sentences(n: int, seed: int = 0, vocab: int = 40) -> list[str]:
    """Sentences of made-up words (no real corpus text): for tokenizer and pipeline tests."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7)))
        for _ in range(vocab)
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def write_corpus(directory: Path, split: str, pairs: dict[str, list[str]], gz: bool = False):
    directory.mkdir(parents=True, exist_ok=True)
    for lang, lines in pairs.items():
        path = directory / f"{split}.{lang}{'.gz' if gz else ''}"
        text = "".join(line + "\n" for line in lines)
        if gz:
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="session")
def tokenizer():
    from mt.data.tokenizer import Tokenizer

    return Tokenizer.train(synthetic_sentences(400), vocab_size=320)


def random_translator(tokenizer, *, n_decoder_layers: int = 1, **search):
    """An untrained small model behind a Translator: for plumbing tests, not for quality."""
    from mt.decoding.translator import Translator

    model = small_model(
        vocab_size=tokenizer.vocab_size,
        n_encoder_layers=1,
        n_decoder_layers=n_decoder_layers,
        max_positions=40,
    )
    return Translator(model, tokenizer, DecodeConfig(**search))


def untrained_checkpoint(tmp_path, tokenizer, name: str = "model.pt", seed: int = 0) -> Path:
    """A small untrained model saved as ``tmp_path / name`` (its weights drawn from ``seed``)."""
    torch.manual_seed(seed)
    cfg = RunConfig(
        model=ModelConfig(
            d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, max_positions=40
        )
    )
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, pad_id=0)
    path = tmp_path / name
    save_checkpoint(path, model_payload(model, cfg, tokenizer))
    return path


def small_run(tmp_path, model: dict | None = None, **train) -> RunConfig:
    """A run on a small synthetic folder corpus (``xx`` -> ``yy``) with a very small model."""
    corpus = tmp_path / "corpus"
    for split, n in (("train", 200), ("val", 10), ("test", 10)):
        if (corpus / f"{split}.yy").is_file():
            continue  # already written (e.g. by the parent of spawned ranks)
        write_corpus(
            corpus,
            split,
            {"xx": synthetic_sentences(n, seed=1), "yy": synthetic_sentences(n, seed=2)},
        )
    return RunConfig(
        data=DataConfig(
            dir=str(corpus),
            src_lang="xx",
            tgt_lang="yy",
            test_split="test",
            vocab_size=300,
            cache_dir=str(tmp_path / "cache"),
        ),
        model=ModelConfig(
            **{
                **dict(d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1),
                **(model or {}),
            }
        ),
        train=TrainConfig(
            **{
                **dict(
                    batch_tokens=300,
                    val_every_steps=4,
                    log_every_steps=2,
                    val_bleu=False,
                    progress_bar=False,
                    max_minutes=None,
                    precision="fp32",  # comparisons at fp32 tolerances, on any CPU
                    # The suite checks CPU behaviour on any machine: bit-exact resumes are a CPU
                    # promise (a GPU's embedding backward adds with atomics, in varying order),
                    # and two spawned ranks must not ask a one-GPU machine for two GPUs.
                    device="cpu",
                ),
                **train,
            }
        ),
        decode=DecodeConfig(beam_size=1, max_len_b=3),
    )


def straight_and_resumed(cfg: RunConfig, tmp_path: Path, stop_at: int) -> tuple[dict, dict]:
    """Train ``cfg`` once straight through and once stopped after ``stop_at`` updates and resumed
    (``train.resume=auto``), in process; returns both runs' ``last.pt`` contents."""
    import dataclasses

    from mt.checkpoint import load_checkpoint
    from mt.loggers import ListLogger
    from mt.training.trainer import Trainer

    Trainer(cfg, tmp_path / "straight", logger=ListLogger()).fit()
    first = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=stop_at))
    Trainer(first, tmp_path / "resumed", logger=ListLogger()).fit()
    again = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume="auto"))
    Trainer(again, tmp_path / "resumed", logger=ListLogger()).fit()
    return (
        load_checkpoint(tmp_path / "straight" / "last.pt"),
        load_checkpoint(tmp_path / "resumed" / "last.pt"),
    )


def synthetic_corpus_overrides(tmp_path) -> list[str]:
    """Hydra overrides that point a script at the corpus ``small_run`` / tests write in
    ``tmp_path / "corpus"`` (``xx`` -> ``yy``)."""
    return [
        "data=folder",
        f"data.dir={tmp_path / 'corpus'}",
        "data.src_lang=xx",
        "data.tgt_lang=yy",
        "data.vocab_size=300",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
