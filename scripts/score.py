"""Score translations: ``python scripts/score.py checkpoint=PATH src=FILE tgt=FILE``.

Prints one line per sentence pair: the model's total log-probability of the target given the
source (natural log, EOS included), its number of target tokens, and the per-token average,
tab-separated. The files are read and checked as training reads them (same cleaning, same
line-count and UTF-8 errors). A multilingual model needs ``tgt_lang=`` (the language of ``tgt``)
when it has several targets.
"""

import logging
import os
import sys

from omegaconf import DictConfig

from mt.checkpoint import load_model
from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import from_hydra
from mt.data.corpus import read_pairs
from mt.data.languages import choose_target
from mt.decoding.scoring import score_pairs
from mt.runtime import use_device

register_configs()


def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    with user_errors():
        scfg = from_hydra(cfg)
        for option in ("src", "tgt"):
            if not os.path.isfile(getattr(scfg, option)):
                raise FileNotFoundError(f"{option}={getattr(scfg, option)} is not a file")
        pairs = list(read_pairs(scfg.src, scfg.tgt, scfg.invalid_utf8))
        loaded = load_model(scfg.checkpoint, use_device(scfg.device))
        scores, cut = score_pairs(
            loaded.model,
            loaded.tokenizer,
            [p["src"] for p in pairs],
            [p["tgt"] for p in pairs],
            batch_tokens=scfg.batch_tokens,
            tgt_lang=choose_target(loaded.config.data, scfg.tgt_lang),
        )
    if cut:
        print(f"{cut} pair(s) cut to the model's maximum length", file=sys.stderr)
    try:
        for s in scores:
            sys.stdout.write(f"{s.log_prob:.4f}\t{s.tokens}\t{s.per_token:.4f}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    run_script(main, __file__, "score")
