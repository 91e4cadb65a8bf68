"""What a client may send, checked: one place for every 4xx answer and its message."""

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mt.commands import ServeConfig


class TranslateRequest(BaseModel):
    """``POST /translate``: strict types (``"5"`` is not a beam size), no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str]
    beam_size: int | None = None
    n_best: int | None = None
    attention: bool = False
    tgt_lang: str | None = None


class RequestError(Exception):
    """A client mistake: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Languages:
    """What the served model translates into: a multilingual model's tags (``targets``), or
    the one target of a single-direction model (``single``)."""

    targets: list[str]
    single: str | None
    default: str | None = None  # serve's tgt_lang: for requests that name none

    def choose(self, requested: str | None) -> str | None:
        """The tag a request translates with (None: untagged), or a 422 naming the choices."""
        if not self.targets:
            if requested not in (None, self.single):
                raise RequestError(
                    422, f"tgt_lang={requested}: this model translates into {self.single} only"
                )
            return None
        lang = requested or self.default or (self.targets[0] if len(self.targets) == 1 else None)
        if lang is None:
            raise RequestError(
                422, f"tgt_lang is required: this model translates into {', '.join(self.targets)}"
            )
        if lang not in self.targets:
            raise RequestError(
                422, f"tgt_lang={lang}: this model translates into {', '.join(self.targets)}"
            )
        return lang


def parse_translate(body: bytes, limits: ServeConfig, languages: Languages) -> tuple:
    """A request body -> (lines, beam_size, n_best, attention, tgt_lang), or a
    :class:`RequestError`."""
    try:
        raw: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON ({err})") from None
    try:
        request = TranslateRequest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["loc"] and first["loc"][0] == "text" and first["type"] != "missing":
            where, first["msg"] = "text", "must be a string or a list of strings"
        raise RequestError(422, f"{where}: {first['msg']}") from None
    lines = [request.text] if isinstance(request.text, str) else request.text
    if len(lines) > limits.max_lines:
        raise RequestError(
            413, f"{len(lines)} lines in one request: at most {limits.max_lines} (serve.max_lines)"
        )
    for n, line in enumerate(lines):
        if len(line) > limits.max_line_chars:
            raise RequestError(
                413, f"text[{n}] has {len(line)} characters: at most {limits.max_line_chars}"
            )
    beam = limits.beam_size if request.beam_size is None else request.beam_size
    if not 1 <= beam <= limits.max_beam_size:
        raise RequestError(422, f"beam_size={beam} must be between 1 and {limits.max_beam_size}")
    n_best = 1 if request.n_best is None else request.n_best
    if not 1 <= n_best <= beam:
        raise RequestError(422, f"n_best={n_best} must be between 1 and beam_size={beam}")
    return lines, beam, n_best, request.attention, languages.choose(request.tgt_lang)
