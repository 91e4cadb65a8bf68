"""Helpers shared by the thin entry points in ``scripts/``."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

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
