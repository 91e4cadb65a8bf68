"""Helpers shared by the thin entry points in ``scripts/``."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("mt")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user mistake (bad option, missing file, bad data) into one clear line and exit 2.

    Internal errors keep their traceback: those are bugs to report.
    """
    try:
        yield
    except (ValueError, OSError) as err:  # OSError: missing files, full disk, permissions
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
