"""Scoring a model while it trains: validation loss and greedy BLEU, the cross-attention of a
fixed sentence, and the test split translated once at the end.

Kept apart from the loop (mt/training/trainer.py) because none of it changes the weights: it
reads the model in eval mode, in fp32, under ``inference_mode``.
"""

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mt.config import RunConfig
from mt.data.corpus import EvalSet, PreparedData
from mt.data.tokenizer import Tokenizer
from mt.decoding.translator import Translator
from mt.files import hypothesis_file
from mt.kernels import loss_functions
from mt.loggers import MetricLogger
from mt.metrics import Scores, mean_scores, score
from mt.plots.attention import cross_attention, plot

log = logging.getLogger("mt.training.trainer")


@dataclass
class Validator:
    """Scores ``model`` on the prepared splits with the run's decoding settings."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    data: PreparedData
    cfg: RunConfig
    device: torch.device

    @torch.inference_mode()
    def loss_sum(self, eval_set: EvalSet) -> tuple[float, int]:
        """Summed NLL (no smoothing) with teacher forcing, and the target tokens it covers."""
        self.model.eval()
        total, n_tokens = 0.0, 0
        nll = loss_functions(self.cfg.model.kernels).label_smoothed_nll
        for batch in eval_set.ids.batches(self.cfg.train.batch_tokens):
            batch = batch.to(self.device)
            logits = self.model(batch.src, batch.tgt_in)  # (B, T, V)
            _, nll_sum, _ = nll(logits, batch.tgt_out, epsilon=0.0, pad_id=self.tokenizer.pad_id)
            total += float(nll_sum)
            n_tokens += batch.n_tgt_tokens
        return total, n_tokens

    def loss(self, eval_set: EvalSet) -> float:
        """Per-token NLL (no smoothing) with teacher forcing."""
        total, n_tokens = self.loss_sum(eval_set)
        return total / max(n_tokens, 1)

    def translator(self, beam_size: int, tgt_lang: str | None = None) -> Translator:
        """The run's decode settings (``decode.*``) with ``beam_size``, into ``tgt_lang`` (the
        tag of a multilingual model; None: untagged)."""
        settings = replace(self.cfg.decode, beam_size=beam_size, n_best=1)
        return Translator(self.model, self.tokenizer, settings, tgt_lang=tgt_lang)

    @staticmethod
    def selection_score(metrics: dict[str, float]) -> float:
        """What ``best.pt`` is kept by (higher is better): validation BLEU (of several
        directions: their mean), or minus the loss without ``train.val_bleu``."""
        return metrics.get("val/bleu", -metrics["val/loss"])

    def validate(self) -> dict[str, float]:
        """Loss and perplexity; greedy BLEU and chrF too with ``train.val_bleu`` (which then
        selects ``best.pt``: cheap enough to run at every validation, and what is reported).
        Several directions: each one's as ``val/de-en/bleu`` etc., ``val/bleu`` / ``val/chrf``
        their means and ``val/loss`` the loss over all their tokens."""
        metrics, total, n_tokens, scored = {}, 0.0, 0, []
        for val in self.data.val:
            name = "val/" if val.direction is None else f"val/{val.direction}/"
            set_total, set_tokens = self.loss_sum(val)
            total, n_tokens = total + set_total, n_tokens + set_tokens
            metrics[name + "loss"] = set_total / max(set_tokens, 1)
            if self.cfg.train.val_bleu:
                hyps = self.translator(beam_size=1, tgt_lang=val.tgt_lang).translate(val.sources)
                scores = score(hyps, val.references)
                metrics.update({name + "bleu": scores.bleu, name + "chrf": scores.chrf})
                scored.append(scores.as_dict())
        loss = total / max(n_tokens, 1)
        means = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
        if scored:
            mean = mean_scores(scored)
            means.update({"val/bleu": mean["bleu"], "val/chrf": mean["chrf"]})
        return {**means, **metrics}

    def attention_figure(self):
        """The first validation sentence's cross-attention (last layer) as a figure; raises
        ImportError without matplotlib."""
        val = self.data.val[0]
        return plot(cross_attention(self.translator(1, val.tgt_lang), val.sources[0]))

    def log_attention(self, logger: MetricLogger, step: int) -> bool:
        """Log the first validation sentence's cross-attention as a TensorBoard image; False
        (and a warning) when matplotlib is missing, so that the caller stops asking."""
        try:
            figure = self.attention_figure()
        except ImportError:
            log.warning("matplotlib is not installed: no attention heatmaps in TensorBoard")
            return False
        logger.log_figure("val/cross_attention", figure, step)
        # Closed here, where it was made: pyplot keeps every figure until closed, and one per
        # validation would pile up over a long run.
        import matplotlib.pyplot as plt

        plt.close(figure)
        return True

    def test(self, out_dir: Path) -> list[tuple[EvalSet, Scores]]:
        """Translate the test split of each direction with the run's beam settings, write the
        hypotheses to ``out_dir`` (:func:`mt.files.hypothesis_file`) and score them."""
        results = []
        for test in self.data.test:
            translator = self.translator(self.cfg.decode.beam_size, test.tgt_lang)
            hyps = translator.translate(test.sources)
            into = test.direction or self.cfg.data.tgt_lang
            (out_dir / hypothesis_file(test.name, into)).write_text("".join(h + "\n" for h in hyps))
            results.append((test, score(hyps, test.references)))
        return results
