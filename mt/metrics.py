"""Corpus BLEU and chrF with sacreBLEU, on detokenised cased text, with their signatures.

The signature (e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.0``) is what makes
a score reproducible and comparable; every reported score carries it.
"""

from dataclasses import dataclass

import sacrebleu


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_lowercase: float

    def as_dict(self) -> dict:
        return {
            "bleu": self.bleu,
            "chrf": self.chrf,
            "bleu_lowercase": self.bleu_lowercase,
            "bleu_signature": self.bleu_signature,
            "chrf_signature": self.chrf_signature,
        }


def mean_scores(rows: list[dict]) -> dict[str, float]:
    """Several directions' scores (``bleu``, ``chrf``, ``bleu_lowercase`` of each, as
    :meth:`Scores.as_dict` gives them) -> their means, rounded as each score is."""
    keys = ("bleu", "chrf", "bleu_lowercase")
    return {k: round(sum(r[k] for r in rows) / len(rows), 2) for k in keys}


def score(hypotheses: list[str], references: list[str]) -> Scores:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = sacrebleu.BLEU()
    chrf = sacrebleu.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    lower = sacrebleu.BLEU(lowercase=True).corpus_score(hypotheses, [references])
    return Scores(
        bleu=round(b.score, 2),
        chrf=round(c.score, 2),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_lowercase=round(lower.score, 2),
    )
