"""The shape of ``mt`` (docs/design.md): a wing per stage of the pipeline, data flowing one way.

Each module imports only its own wing or wings listed before it in ``WINGS``; Hydra / OmegaConf
stay in the config modules, ``mt/cli.py`` and the scripts; modules and functions stay small;
docstrings explain code and leave measurements to docs/. Read from the source with ``ast``:
nothing is imported to check it.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lower wings first. The ground floor's modules each form a wing of their own, in this order.
WINGS = [
    "mt.config",
    "mt.commands",  # each script's options (extending the run's) and their registration
    "mt.checks",
    "mt.cli",
    "mt.files",  # the names of the files mt writes
    "mt.cpu",  # what the CPU computes well, from its flags
    "mt.runtime",
    "mt.loggers",
    "mt.metrics",
    "mt.model",  # the plain Transformer: knows nothing of data, training or decoding
    "mt.kernels",  # the fast paths, each a drop-in for a plain function of mt.model
    "mt.data",
    "mt.checkpoint",
    "mt.export",  # checkpoint -> CTranslate2 directory, and loading one: nothing of search
    "mt.decoding",  # search, translator, evaluation: nothing of training
    "mt.plots",
    "mt.serving",  # the HTTP API and page: decoding behind a request queue
    "mt.training",
    "mt.bench",  # on top: nothing in the library imports it
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing_of(module: str) -> str | None:
    matches = [w for w in WINGS if module == w or module.startswith(w + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(path: Path) -> set[str]:
    """Every ``mt`` module ``path`` imports, at any depth (function-level imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from mt.training import distributed`` imports mt.training.distributed.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "mt" or n.startswith("mt.")}


def package_modules() -> list[Path]:
    return sorted((ROOT / "mt").rglob("*.py"))


def test_every_module_belongs_to_a_wing():
    homeless = [
        module_name(p) for p in package_modules() if p.parent != ROOT / "mt" or p.stem != "__init__"
    ]
    homeless = [m for m in homeless if wing_of(m) is None]
    assert not homeless, f"put {homeless} in a wing of WINGS"


def test_wings_import_only_their_own_or_lower_wings():
    rank = {w: i for i, w in enumerate(WINGS)}
    upward = []
    for path in package_modules():
        me = wing_of(module_name(path))
        if me is None:
            continue
        for other in imported_modules(path):
            theirs = wing_of(other)
            if theirs is not None and rank[theirs] > rank[me]:
                upward.append(f"{module_name(path)} imports {other}")
    assert not upward, upward


def test_no_import_cycles():
    graph = {module_name(p): imported_modules(p) for p in package_modules()}
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if node in done or node not in graph:
            return
        for other in sorted(graph[node]):
            if other != node and not node.startswith(other + "."):  # a package's own __init__
                visit(other, trail + [node])
        done.add(node)

    for name in graph:
        visit(name, [])


def test_hydra_and_omegaconf_stay_in_config_cli_and_scripts():
    leaks = []
    for path in package_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("hydra", "omegaconf") for n in names):
                leaks.append(module_name(path))
    leaks = sorted(set(leaks) - {"mt.config", "mt.commands", "mt.cli"})  # schemas; the command line
    assert not leaks, f"library code gets typed dataclasses, not DictConfig: {leaks}"


def test_modules_and_functions_stay_small():
    """Files around 300 lines, none over 400; a function fits on a screen (60 lines)."""
    too_long = []
    for path in package_modules() + sorted((ROOT / "scripts").glob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{module_name(path)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert not too_long, too_long


def test_scripts_stay_thin():
    """Entry points parse config and call into ``mt``: no model, loop or search code of their
    own (a script over ~80 lines has grown logic that belongs in the package)."""
    for script in sorted((ROOT / "scripts").glob("*.py")):
        lines = len(script.read_text().splitlines())
        assert lines <= 80, f"{script.name}: {lines} lines"


# Measurements belong in docs/ and benchmarks/README.md: machine names, and speed-ups quoted
# as "1.8x faster" or "took 31% of", have no place in library code.
MACHINE_NAMES = re.compile(r"\b(EPYC|Xeon|Zen ?\d|H100|H200|A100|V100|Ryzen|Graviton)\b")
QUOTED_SPEED = re.compile(
    r"\b\d+(\.\d+)?x (faster|slower|speed)|\btook \d+(\.\d+)?%|\b\d[\d,]* (target )?tokens/s"
)


def test_library_code_quotes_no_machines_or_measurements():
    found = []
    for path in package_modules():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if MACHINE_NAMES.search(line) or QUOTED_SPEED.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "link to docs/ or benchmarks/README.md instead:\n" + "\n".join(found)
