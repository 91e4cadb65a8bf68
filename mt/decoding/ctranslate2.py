"""The Translator on a CTranslate2 export: the same cleaning, cutting, empty lines and settings
as mt's own search (mt/decoding/translator.py), with CTranslate2 doing the search.

What the two engines would otherwise do differently is set here:

- length: ``mt`` caps each sentence at ``max_len_a * source_length + max_len_b`` tokens, EOS
  included; CTranslate2 takes one cap per call, EOS excluded. A call gets the batch's largest
  cap; the few sentences whose output passes their own cap are searched again with it. (At its
  cap, mt's beam search forces EOS and scores it; CTranslate2 ends the hypothesis unscored, so
  outputs that reach the cap may differ.)
- the length penalty: both divide the log-probability, EOS included, by length ** penalty;
- PAD, BOS and a multilingual model's language tags are never generated
  (``suppress_sequences``): both engines take them out of the distribution before normalising
  it;
- the source is not truncated by CTranslate2 (``max_input_length=0``): lines are cut here.
"""

from contextlib import nullcontext

import torch

from mt.config import DecodeConfig
from mt.data.batching import pad
from mt.decoding.search import max_output_lengths, room_for_prefix
from mt.decoding.translator import Translation, Translator
from mt.export.exported import ExportedModel

# CTranslate2 splits a call into batches of at most this many source tokens (or
# ``batch_tokens`` if smaller) and runs them side by side, one per thread: small batches keep
# every thread busy and waste little on finished sentences (chosen on validation data,
# benchmarks/README.md).
SUB_BATCH_TOKENS = 512


class CTranslate2Translator(Translator):
    """Translate with an exported model (:func:`mt.export.exported.load_exported`)."""

    def __init__(
        self,
        exported: ExportedModel,
        settings: DecodeConfig | None = None,
        tgt_lang: str | None = None,
    ) -> None:
        self.model = None  # no PyTorch model: nothing for attention plots to hook
        self.exported = exported
        self._configure(exported.tokenizer, settings, exported.max_positions, tgt_lang)
        pieces = [self.tokenizer.id_to_piece(i) for i in range(self.tokenizer.vocab_size)]
        self.pieces = pieces
        banned = (self.ids.pad, self.ids.bos, *self.ids.never)
        self.suppressed = [[pieces[i]] for i in banned]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def engine(self) -> str:
        quantization = self.exported.metadata["quantization"]
        if self.exported.compute_type != "default":  # int8 weights on a CPU without VNNI
            return f"ctranslate2 ({quantization} weights, {self.exported.compute_type} compute)"
        return f"ctranslate2 ({quantization})"

    def _inference(self):
        return nullcontext()

    def precision(self) -> str:
        """The type the model was exported in computes; ``decode.precision`` does not apply."""
        return self.exported.metadata["quantization"]

    def _batches(self, todo: list[int], encoded: list[list[int]]) -> list[list[int]]:
        """One call for everything: CTranslate2 sorts and batches by tokens itself."""
        return [todo] if todo else []

    def _search(
        self, sources: list[list[int]], n_best: int, prefixes: list[list[int]] | None
    ) -> list[list[Translation]]:
        eos = self.pieces[self.ids.eos]
        src = [[self.pieces[i] for i in ids] + [eos] for ids in sources]
        forced = [[self.pieces[i] for i in ids] for ids in prefixes] if prefixes else None
        caps = self._caps(sources, prefixes)  # EOS included, as mt counts
        results = self._call(src, n_best, max(caps) - 1, forced)
        over = [i for i, r in enumerate(results) if any(len(h) > caps[i] - 1 for h in r[0])]
        for cap in sorted({caps[i] for i in over}):
            again = [i for i in over if caps[i] == cap]
            redo = self._call(
                [src[i] for i in again],
                n_best,
                cap - 1,
                [forced[i] for i in again] if forced else None,
            )
            for i, redone in zip(again, redo):
                results[i] = redone
        return [self._translations(hyps, scores) for hyps, scores in results]

    def _caps(self, sources: list[list[int]], prefixes: list[list[int]] | None) -> list[int]:
        """Each sentence's length limit, EOS included, computed as mt's search computes it."""
        dec, ids, limit = self.settings, self.ids, self.max_positions - 1
        src = pad(sources, ids.pad, suffix=ids.eos)
        caps = max_output_lengths(src, ids.pad, dec.max_len_a, dec.max_len_b, limit)
        prefix = pad(prefixes, ids.pad) if prefixes else None
        return room_for_prefix(caps, prefix, ids.pad, limit).tolist()

    def _call(
        self, src: list[list[str]], n_best: int, max_length: int, prefix: list | None
    ) -> list[tuple]:
        dec = self.settings
        if dec.sampling:  # CTranslate2 samples with its own generator, seeded per call
            import ctranslate2

            ctranslate2.set_random_seed(dec.seed)
        results = self.exported.engine.translate_batch(
            src,
            target_prefix=prefix,
            beam_size=dec.beam_size,
            num_hypotheses=n_best,
            length_penalty=dec.length_penalty,
            max_decoding_length=max_length,
            max_input_length=0,
            max_batch_size=min(dec.batch_tokens, SUB_BATCH_TOKENS),
            batch_type="tokens",
            suppress_sequences=self.suppressed,
            return_scores=True,
            sampling_topk=(dec.top_k or 0) if dec.sampling else 1,
            sampling_topp=dec.top_p if dec.sampling else 1.0,
            sampling_temperature=dec.temperature if dec.sampling else 1.0,
        )
        return [(r.hypotheses, r.scores) for r in results]

    def _translations(self, hyps: list[list[str]], scores: list[float]) -> list[Translation]:
        texts = [self.tokenizer.sp.decode_pieces(h) for h in hyps]
        # mt reports scores for beam search only
        beam = self.settings.beam_size > 1 and not self.settings.sampling
        return [Translation(t, float(s) if beam else None) for t, s in zip(texts, scores)]
