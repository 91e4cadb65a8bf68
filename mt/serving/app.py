"""The HTTP API and the page: ``GET /health``, ``GET /info``, ``POST /translate``, ``GET /``.

Errors are JSON ``{"error": "..."}`` with a 4xx status; a 500 would be a bug, logged here and
answered without a traceback. No request can name a file or a checkpoint: the model is the one
the server started with.
"""

import logging
import os
import secrets
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException

from mt.commands import ServeConfig
from mt.decoding.translator import Translator
from mt.plots.attention import cross_attention
from mt.serving.batcher import Batcher
from mt.serving.requests import Languages, RequestError, parse_translate

log = logging.getLogger("mt.serving")
STATIC = Path(__file__).parent / "static"
KEY_COOKIE = "mt_api_key"


def create_app(translator: Translator, cfg: ServeConfig, info: dict) -> FastAPI:
    """The app for one loaded model; ``info`` is what ``/info`` says about it."""
    api_key = cfg.api_key or os.environ.get("MT_API_KEY") or None
    languages = Languages(
        list(translator.tokenizer.language_tags), info.get("tgt_lang"), translator.tgt_lang
    )
    batcher = Batcher(
        translate_function(translator),
        lambda lines: sum(len(ids) + 1 for ids in translator.tokenizer.encode(lines)),
        batch_tokens=cfg.batch_tokens,
        max_wait_s=cfg.max_wait_ms / 1000,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()  # after uvicorn has answered the requests in flight

    app = FastAPI(title="mt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    _errors(app)
    _routes(app, translator, cfg, info, batcher, languages)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key is None or request.url.path == "/health":
            return await call_next(request)
        given = _given_key(request)
        if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
            return JSONResponse(
                {"error": "an API key is required: Authorization: Bearer KEY or X-API-Key"},
                status_code=401,
            )
        response = await call_next(request)
        if request.query_params.get("key"):  # the page keeps it for its own requests
            response.set_cookie(KEY_COOKIE, given, httponly=True, samesite="strict")
        return response

    return app


def _given_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (
        request.headers.get("x-api-key")
        or request.query_params.get("key")
        or request.cookies.get(KEY_COOKIE)
    )


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def client_error(_request: Request, err: RequestError):
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception):
        log.exception("internal error: %s", err)
        return JSONResponse({"error": "internal error (logged by the server)"}, status_code=500)


def _routes(
    app: FastAPI,
    translator: Translator,
    cfg: ServeConfig,
    info: dict,
    batcher: Batcher,
    languages: Languages,
) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def describe():
        return {
            **info,
            "engine": translator.engine,
            "decode": {
                "beam_size": cfg.beam_size,
                "length_penalty": cfg.length_penalty,
                "max_len_a": cfg.max_len_a,
                "max_len_b": cfg.max_len_b,
                "tgt_lang": languages.default,
                "workers": translator.workers.count if translator.workers else 1,
            },
            "target_languages": languages.targets,
            "limits": {
                "max_lines": cfg.max_lines,
                "max_line_chars": cfg.max_line_chars,
                "max_body_bytes": cfg.max_body_bytes,
                "max_beam_size": cfg.max_beam_size,
                "max_source_tokens": translator.max_src_tokens,
            },
            "attention": translator.model is not None,
            "batches": {"run": batcher.batches, "requests": batcher.batched_requests},
        }

    @app.post("/translate")
    async def translate(request: Request):
        body = await _read_body(request, cfg.max_body_bytes)
        lines, beam, n_best, attention, tgt_lang = parse_translate(body, cfg, languages)
        if attention and translator.model is None:
            raise RequestError(
                422, "attention needs a model served from a .pt checkpoint (this one is exported)"
            )
        entries = await batcher.submit(lines, (beam, n_best, tgt_lang), attention=attention)
        answer = {"translations": entries, "beam_size": beam, "n_best": n_best}
        return {**answer, "tgt_lang": tgt_lang} if languages.targets else answer

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()}:  # no paths, only the page's files
            raise HTTPException(404, f"no such file: {name}")
        return FileResponse(path)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {declared} bytes: at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the body is over {limit} bytes")
    return bytes(body)


def translate_function(translator: Translator):
    """The batcher's work, on the model thread: search, then (when asked) attention."""

    def run(settings: tuple, lines: list[str], attention: list[bool]) -> list[dict]:
        beam, n_best, tgt_lang = settings
        search = translator.with_settings(replace(translator.settings, beam_size=beam))
        search = search.with_target(tgt_lang)
        nbests = search.translate_nbest(lines, n_best=n_best)
        out = []
        for line, nbest, wants in zip(lines, nbests, attention):
            entry = {
                "text": nbest[0].text,
                "score": nbest[0].score,
                "truncated": nbest[0].truncated,
            }
            if n_best > 1:
                entry["n_best"] = [{"text": t.text, "score": t.score} for t in nbest]
            if wants and line.strip():
                entry.update(attention_fields(search, line, nbest[0].text))
            out.append(entry)
        return out

    return run


def attention_fields(translator: Translator, line: str, output: str) -> dict:
    """The last decoder layer's cross-attention over ``output``: pieces, head mean and heads."""
    attention = cross_attention(translator, line, output=output)
    weights = attention.weights.astype(float).round(4)  # (H, T, S)
    return {
        "source_tokens": attention.source_pieces,
        "target_tokens": attention.target_pieces,
        "attention": {
            "layer": attention.layer,
            "mean": weights.mean(axis=0).round(4).tolist(),  # (T, S)
            "heads": weights.tolist(),  # (H, T, S)
        },
    }
