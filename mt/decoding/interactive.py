"""The translator's two faces: a prompt for a person, and a stdin -> stdout filter for pipes.

In a pipe, every input line gives exactly one output line, in order (an empty line gives an
empty line); lines are translated ``batch_size`` at a time. Input bytes that are not valid
UTF-8 are replaced (U+FFFD) rather than stopping the stream.
"""

import io
import logging
import sys
from collections.abc import Callable, Iterable
from typing import BinaryIO, TextIO

from mt.config import DataConfig
from mt.data.languages import directions, is_multilingual, parse_direction
from mt.decoding.translator import Translator

log = logging.getLogger(__name__)
PROMPT = "> "
LineHook = Callable[[int, str], None]


def one_line(text: str) -> str:
    """Outputs never contain line breaks, so the one-line-per-input contract holds."""
    return " ".join(text.splitlines())


def note_direction(trained: DataConfig, src_lang: str | None, tgt_lang: str | None) -> None:
    """Log the direction of a multilingual model's translations, and whether it was trained
    (else the model translates it zero-shot, usually worse)."""
    if not is_multilingual(trained) or tgt_lang is None:
        return
    if src_lang is None:
        log.info("translating into %s", tgt_lang)
        return
    direction = parse_direction(f"{src_lang}-{tgt_lang}", "src_lang / tgt_lang")
    if direction in directions(trained):
        log.info("translating %s", direction)
    else:
        trained_on = ", ".join(str(d) for d in directions(trained))
        log.warning("%s was not trained (only %s): translating zero-shot", direction, trained_on)


def translate_stream(
    translator: Translator,
    lines: Iterable[str],
    out: TextIO,
    *,
    batch_size: int = 64,
    n_best: int = 1,
    on_line: LineHook | None = None,
    prefixed: bool = False,
) -> int:
    """Translate ``lines`` (without or with trailing newlines) to ``out``; returns the count.

    With ``n_best`` > 1 each output line holds the n translations separated by tabs.
    ``on_line(line_number, text)`` runs after each line is written (e.g. attention plots).
    ``prefixed``: each line is ``source<TAB>target prefix`` (:func:`split_prefix`).
    """
    count = 0
    chunk: list[str] = []

    def flush() -> None:
        sources, prefixes = zip(*map(split_prefix, chunk)) if prefixed else (chunk, None)
        for nbest in translator.translate_nbest(
            list(sources), n_best=n_best, prefixes=list(prefixes) if prefixes else None
        ):
            out.write("\t".join(one_line(t.text) for t in nbest) + "\n")
        out.flush()
        if on_line:
            for i, text in enumerate(chunk):
                on_line(count - len(chunk) + i + 1, text)
        chunk.clear()

    for line in lines:
        chunk.append(line.rstrip("\r\n"))
        count += 1
        if len(chunk) >= batch_size:
            flush()
    if chunk:
        flush()
    return count


def split_prefix(line: str) -> tuple[str, str]:
    """``source<TAB>target prefix`` -> (source, prefix); a line without a tab has no prefix."""
    source, _, prefix = line.partition("\t")
    return source, prefix


def prompt_loop(
    translator: Translator,
    *,
    n_best: int = 1,
    inp: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    on_line: LineHook | None = None,
    prefixed: bool = False,
) -> None:
    """Read a line, print its translation(s); Ctrl-D or Ctrl-C ends the session quietly."""
    out.write("Type a sentence and press Enter (Ctrl-D to quit).\n")
    number = 0
    while True:
        try:
            out.write(PROMPT)
            out.flush()
            line = inp.readline()
            if not line:
                out.write("\n")
                return
            source, prefix = split_prefix(line.rstrip("\r\n")) if prefixed else (line, "")
            nbest = translator.translate_nbest(
                [source.rstrip("\r\n")], n_best=n_best, prefixes=[prefix] if prefixed else None
            )[0]
        except KeyboardInterrupt:
            out.write("\n")
            return
        if n_best == 1:
            out.write(one_line(nbest[0].text) + "\n")
        else:
            for rank, t in enumerate(nbest, start=1):
                score = "" if t.score is None else f" ({t.score:.3f})"
                out.write(f"{rank}.{score} {one_line(t.text)}\n")
        number += 1
        if on_line:
            on_line(number, line.rstrip("\r\n"))


def text_lines(binary: BinaryIO) -> TextIO:
    """A byte stream as text that never fails on invalid UTF-8, split on ``\n`` only (a stray
    ``\r`` or form feed inside a line does not make it two lines)."""
    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="\n")
