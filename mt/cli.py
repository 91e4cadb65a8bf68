"""Helpers shared by the thin entry points in ``scripts/``."""

import logging
import sys
from collections.abc import Callable, Iterator
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


def run_script(task: Callable[[Any], Any], script: str, config_name: str) -> None:
    """What ``hydra.main`` does for a script, with the config composed once, here: a mistake
    in the options or an unwritable run directory is one line and exit code 2, like every other
    user error (Hydra would print its own report, or a traceback, and exit 1). Then ``task``
    runs as a Hydra job: run directory, ``.hydra/`` files, logging and ``HydraConfig`` as usual.

    Hydra's own flags (``--help``, ``--cfg job``, ``-m``) are left to ``hydra.main``.
    """
    import hydra
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import run_job
    from hydra.types import HydraContext

    config_dir = str(Path(script).resolve().parent.parent / "configs")
    args = sys.argv[1:]
    if any(arg.startswith("-") for arg in args):
        hydra.main(version_base="1.3", config_path=config_dir, config_name=config_name)(task)()
        return
    hint = f"python {Path(script).name} --cfg job prints every option"
    with initialize_config_dir(config_dir, job_name=Path(script).stem, version_base="1.3"):
        with user_errors():
            cfg = compose_command_line(config_name, args, hint)
            if cfg.hydra.output_subdir is not None or not Path(cfg.hydra.run.dir).is_dir():
                check_output_folder("hydra.run.dir", cfg.hydra.run.dir)
        from hydra._internal.callbacks import Callbacks

        context = HydraContext(GlobalHydra.instance().config_loader(), Callbacks(cfg))
        job = run_job(task, cfg, "hydra.run.dir", None, context, configure_logging=True)
        job.return_value  # noqa: B018 (raises the task's exception, as hydra.main does)


def compose_command_line(config_name: str, args: list[str], hint: str) -> Any:
    """Compose ``config_name`` (in the initialised config folder) with the command line's
    overrides as ``hydra.main`` would, Hydra's own node included, so that a misspelt option, a
    value of the wrong type or an unknown choice is one ``ValueError`` naming it."""
    added = [a for a in args if a.startswith("+") and not a.lstrip("+").startswith("hydra")]
    if added:
        raise ValueError(
            f"{added[0]}: options cannot be added with '+', every option already exists; "
            f"drop the '+' or check the spelling ({hint})"
        )
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = GlobalHydra.instance().hydra.compose_config(
            config_name, args, run_mode=RunMode.RUN, with_log_configuration=True
        )
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"{_one_line(err, args)} ({hint})") from None
    cfg.hydra.mode = RunMode.RUN
    return cfg


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
