"""Translate text: ``python scripts/translate.py checkpoint=PATH [beam_size=5] [n_best=1]``.

PATH is a ``.pt`` checkpoint or a folder written by ``scripts/export.py`` (CTranslate2).

A multilingual model translates into ``tgt_lang=fr`` (``src_lang=de`` is for the log: a
direction it was not trained on is translated zero-shot, and said so).

At a terminal it prompts for sentences; in a pipe it reads stdin and writes one translation
per input line to stdout (``cat in.txt | python scripts/translate.py checkpoint=... > out``).
"""

import logging
import os
import sys

from omegaconf import DictConfig

from mt.checks import check_translate
from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import decode_settings, from_hydra
from mt.decoding.interactive import note_direction, prompt_loop, text_lines, translate_stream
from mt.decoding.loading import load_translator
from mt.plots.attention import attention_writer

register_configs()


def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    with user_errors():
        tcfg = from_hydra(cfg)
        check_translate(tcfg)
        translator, trained = load_translator(
            tcfg.checkpoint, decode_settings(tcfg), tcfg.device, tcfg.tgt_lang
        )
        note_direction(trained.data, tcfg.src_lang, translator.tgt_lang)
        on_line = (
            attention_writer(translator, tcfg.attention_plot, tcfg.attention_layer)
            if tcfg.attention_plot
            else None
        )
    try:
        if sys.stdin.isatty():
            prompt_loop(translator, n_best=tcfg.n_best, on_line=on_line, prefixed=tcfg.prefix)
        else:
            lines = text_lines(sys.stdin.buffer)
            translate_stream(
                translator,
                lines,
                sys.stdout,
                batch_size=tcfg.batch_size,
                n_best=tcfg.n_best,
                on_line=on_line,
                prefixed=tcfg.prefix,
            )
    except KeyboardInterrupt:  # Ctrl-C in a pipe: stop quietly, what was written stays
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): no error at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except ChildProcessError as err:  # a decoding worker died: what was written stays
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # e.g. a full disk: what was written stays, the rest is not lost
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"error: cannot write the translations: {err.strerror or err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_script(main, __file__, "translate")
