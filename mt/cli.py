"""Helpers shared by the thin entry points in ``scripts/``."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mt.checks import check_output_folder

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


def compose_command_line(config_dir: str, config_name: str, args: list[str], hint: str) -> Any:
    """Compose ``config_name`` with the command line's overrides the way ``hydra.main`` will,
    so that a misspelt option, a value of the wrong type or an unknown choice is one
    ``ValueError`` naming it (Hydra itself reports those with exit code 1 and its own layout).

    Returns the composed config, Hydra's own node included; None for Hydra's flags (``--help``,
    ``--cfg``, ``-m``), which are left to Hydra.
    """
    if any(arg.startswith("-") for arg in args):
        return None
    added = [a for a in args if a.startswith("+") and not a.lstrip("+").startswith("hydra")]
    if added:
        raise ValueError(
            f"{added[0]}: options cannot be added with '+', every option already exists; "
            f"drop the '+' or check the spelling ({hint})"
        )
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return compose(config_name, overrides=args, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"{_one_line(err, args)} ({hint})") from None


def _one_line(err: BaseException, args: list[str]) -> str:
    """Hydra's multi-line composition report as one line, from the exception's own fields:
    which option failed and why."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    first = str(err).splitlines()[0].strip()
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, choice = err.missing_cfg_file.rpartition("/")
        if group and err.options:
            return f"{group}={choice}: no such choice; the choices: {', '.join(err.options)}"
        return f"{first}; check the name"
    if isinstance(err, OverrideParseException):
        return f"cannot read the option {_unreadable(args)!r}: {first}; write options as key=value"
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    reason = str(cause).splitlines()[0].strip() if cause is not None else ""
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and key:
        return f"unknown option {key}: {reason}; check its spelling"
    if isinstance(cause, ValidationError) and key:
        return f"option {key}: {reason}"
    return f"{first}: {reason}" if reason else first


def _unreadable(args: list[str]) -> str:
    """The first command-line argument Hydra's override grammar cannot parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in args:
        try:
            parser.parse_overrides([arg])
        except OverrideParseException:
            return arg
    return " ".join(args)
