"""Joint SentencePiece subwords: training, and the id space of the whole toolkit.

One model serves source and target (the embedding table is shared, see model.py). Byte fallback
is on, so any input, in any script, maps to ids: unknown characters become UTF-8 byte pieces
instead of <unk>. The model is kept as serialized bytes, which a checkpoint stores, so a
checkpoint alone is enough to translate.
"""

import io
import random
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_TAG = re.compile(r"<2(.+)>")


def language_tag(lang: str) -> str:
    """The piece that asks a multilingual model for ``lang`` (``<2fr>``), put before the source
    (mt/data/languages.py). It is a SentencePiece control symbol: no text encodes to it and it
    decodes to nothing, so a user's ``<2fr>`` typed in a sentence stays plain text."""
    return f"<2{lang}>"


class Tokenizer:
    """Strings <-> subword ids, from a serialized SentencePiece model."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.language_tags = self._language_tags()
        """Target language -> its tag's id; empty for a single-direction model."""

    def _language_tags(self) -> dict[str, int]:
        tags = {}
        for i in range(self.sp.get_piece_size()):
            match = _TAG.fullmatch(self.sp.id_to_piece(i)) if self.sp.is_control(i) else None
            if match:
                tags[match.group(1)] = i
        return tags

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_proto)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls(Path(path).read_bytes())

    @classmethod
    def load_checked(cls, path: str | Path, option: str) -> "Tokenizer":
        """A user's SentencePiece model, refused in one line (naming ``option``) when it is
        missing, not a model, or numbers its special pieces otherwise than mt does."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{option}={path} does not exist")
        try:
            tokenizer = cls.load(path)
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{option}={path} is not a SentencePiece model ({err})") from None
        sp = tokenizer.sp
        found = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"{option}={path} numbers pad/unk/bos/eos {found}, mt needs "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}: train it with --pad_id=0 --unk_id=1 "
                "--bos_id=2 --eos_id=3, or give an mt run's spm.model"
            )
        return tokenizer

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        model_type: str = "unigram",
        max_sentences: int = 2_000_000,
        seed: int = 1,
        target_languages: list[str] = (),
    ) -> "Tokenizer":
        """Train on ``texts`` (source and target sentences together).

        At most ``max_sentences`` are used, drawn uniformly (reservoir sampling), so memory stays
        bounded on large corpora. ``target_languages`` reserves a tag piece for each
        (:func:`language_tag`), numbered right after the four special ids.
        """
        sample = reservoir_sample(texts, max_sentences, seed)
        if not sample:
            raise ValueError("cannot train SentencePiece: the training split has no text")
        # SentencePiece's own sampler is off: we sampled already, reproducibly.
        options = dict(
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            input_sentence_size=0,
            control_symbols=[language_tag(lang) for lang in target_languages],
            num_threads=2,
            minloglevel=2,
        )
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sample), model_writer=writer, **options
            )
        except RuntimeError as err:
            message = str(err).strip()
            if "smaller than required" in message:  # byte pieces + characters do not fit
                raise ValueError(
                    f"data.vocab_size={vocab_size} is too small for this corpus: the 256 byte "
                    f"pieces, special tokens and every character need more "
                    f"(SentencePiece: {message}); raise data.vocab_size"
                ) from None
            if "Vocabulary size" in message:
                raise ValueError(
                    f"data.vocab_size={vocab_size} is too large for this corpus "
                    f"(SentencePiece: {message}); lower data.vocab_size"
                ) from None
            raise
        return cls(writer.getvalue())


def reservoir_sample(texts: Iterable[str], k: int, seed: int) -> list[str]:
    """At most ``k`` of the non-empty ``texts``, drawn uniformly in one pass."""
    rng = random.Random(seed)
    sample: list[str] = []
    for i, text in enumerate(texts):
        if not text:
            continue
        if len(sample) < k:
            sample.append(text)
        else:
            j = rng.randint(0, i)
            if j < k:
                sample[j] = text
    return sample
