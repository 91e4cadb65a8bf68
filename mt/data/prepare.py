"""A run's data: the held-out splits checked first, then the training split in memory
(mt/data/batching.py) or streamed from disk (mt/data/streaming.py, ``data.streaming=true``), or
several directions' splits pooled (mt/data/multilingual.py, ``data.pairs``).

The one entry point the trainer and the benchmark call; it sits above both ways of holding
the training split, so neither has to know the other.
"""

from mt.config import DataConfig
from mt.data.corpus import PreparedData, ensure_split_files, prepare_in_memory
from mt.data.languages import directions, is_multilingual
from mt.data.multilingual import direction_config, prepare_multilingual
from mt.data.streaming import prepare_streaming
from mt.data.tokenizer import Tokenizer


def prepare_data(
    cfg: DataConfig, *, seed: int = 1, tokenizer: Tokenizer | None = None
) -> PreparedData:
    """Tokenizer (trained on the training split unless given, as when resuming), training data
    and the tokenised validation and test splits.

    The held-out files are looked for first, so a missing one fails before the (slower)
    tokenizer training rather than after training.
    """
    if not cfg.hub_name:
        for d in directions(cfg):
            for split in (cfg.val_split, cfg.test_split):
                ensure_split_files(direction_config(cfg, d), split)
    if is_multilingual(cfg):
        return prepare_multilingual(cfg, seed=seed, tokenizer=tokenizer)
    if tokenizer is not None and tokenizer.language_tags:
        raise ValueError(
            "the given SentencePiece model (data.spm_model, or train.init_from's) is a "
            f"multilingual model's, with tags for {', '.join(tokenizer.language_tags)}: train "
            f"one direction with it as data.pairs=[{cfg.src_lang}-{cfg.tgt_lang}], or use an "
            "untagged SentencePiece model"
        )
    prepare = prepare_streaming if cfg.streaming else prepare_in_memory
    return prepare(cfg, seed=seed, tokenizer=tokenizer)
