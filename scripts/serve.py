"""Serve a model over HTTP: ``python scripts/serve.py checkpoint=PATH [port=8000]``.

PATH is a ``.pt`` checkpoint or a folder written by ``scripts/export.py``. The server listens on
127.0.0.1 (this machine only) unless ``host=`` says otherwise; ``/`` is a web page, ``POST
/translate`` the API (README.md, "Serving"). SIGTERM or Ctrl-C: stop accepting, answer the
requests in flight, exit 0.
"""

import logging
import signal
import socket
import sys

from omegaconf import DictConfig

from mt.checks import check_serve
from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import decode_settings, from_hydra
from mt.decoding.loading import load_translator
from mt.serving.info import model_info

register_configs()


def listen(host: str, port: int) -> socket.socket:
    """Bind now, so that a port in use is one line, not a server that starts and dies."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # from now on connections wait in the backlog, never refused
    except OSError as err:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): choose another port= "
            "(0 picks a free one) or host="
        ) from None
    return sock


def main(cfg: DictConfig) -> None:
    import uvicorn

    from mt.serving.app import create_app

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    with user_errors():
        scfg = from_hydra(cfg)
        check_serve(scfg)
        sock = listen(scfg.host, scfg.port)
        translator, _ = load_translator(
            scfg.checkpoint,
            decode_settings(scfg),
            scfg.device,
            scfg.tgt_lang,
            target_required=False,
        )
        translator.precision()  # ``auto`` is timed now, not during the first request
        app = create_app(translator, scfg, model_info(scfg.checkpoint))
    host, port = sock.getsockname()[:2]
    print(f"serving {scfg.checkpoint} on http://{host}:{port}/", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=60)
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then raises the signal again for the
    # handler it found: a quiet one makes that a clean exit 0.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    run_script(main, __file__, "serve")
