"""Helpers shared by the thin entry points in ``scripts/``."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mt.checks import check_output_folder
from mt.config import compose_command_line

log = logging.getLogger("mt")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user mistake (bad option, missing file, bad data) into one clear line on stderr
    and exit code 2; the run's log file, when there is one, records it too.

    Internal errors keep their traceback: those are bugs to report.
    """
    try:
        yield
    except (ValueError, OSError) as err:  # OSError: missing files, full disk, permissions
        log_to_files(f"error: {err}")
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def log_to_files(message: str) -> None:
    """An ERROR record for the log files only: the console gets the message once, from
    :func:`user_errors`, not a second time through a logging handler."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for logger in (log, logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


def check_command_line(script: str, config_name: str) -> None:
    """Before ``hydra.main`` runs: the options compose, and the run directory can be written.

    Each mistake is one line and exit code 2, like every other user error (Hydra itself would
    print its own report, or a traceback for an unwritable ``hydra.run.dir``, and exit 1).
    """
    with user_errors():
        config_dir = Path(script).resolve().parent.parent / "configs"
        hint = f"python {Path(script).name} --cfg job prints every option"
        cfg = compose_command_line(str(config_dir), config_name, sys.argv[1:], hint)
        if cfg is None:
            return
        run_dir = cfg.hydra.run.dir
        if cfg.hydra.output_subdir is None and Path(run_dir).is_dir():
            return  # a command that writes no files (translate)
        check_output_folder("hydra.run.dir", run_dir)
