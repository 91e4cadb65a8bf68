"""The dependency direction of ``mt`` (../STYLE.md): data flows one way, so each module imports
only modules listed before it here, and Hydra / OmegaConf stay in ``mt/config.py`` and the
scripts. Read from the source with ``ast``: nothing is imported to check it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lower layers first. A new module goes where its imports put it; a module that needs one listed
# after it is a sign that an idea sits in the wrong place.
LAYERS = [
    "mt.config",
    "mt.cli",
    "mt.masks",
    "mt.metrics",
    "mt.loggers",
    "mt.runtime",
    "mt.progress",
    "mt.distributed",
    "mt.curves",
    "mt.tokenizer",
    "mt.modules.dropout",
    "mt.modules.attention",
    "mt.modules.embeddings",
    "mt.modules.layers",
    "mt.model",
    "mt.loss",
    "mt.optim",
    "mt.search",
    "mt.batching",
    "mt.subword_sampling",
    "mt.data",
    "mt.streaming",
    "mt.prepare",
    "mt.checkpoint",
    "mt.translator",
    "mt.attention_plot",
    "mt.interactive",
    "mt.evaluation",
    "mt.validation",
    "mt.trainer",
    "mt.data_benchmark",
    "mt.step_profile",
    "mt.opennmt_compare",
    "mt.benchmark",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from mt import distributed`` imports the module mt.distributed.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_modules() -> list[Path]:
    return [p for p in sorted((ROOT / "mt").rglob("*.py")) if p.name != "__init__.py"]


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in package_modules() if module_name(p) not in LAYERS]
    assert not missing, f"add {missing} to LAYERS, after the modules they import"


def test_modules_import_only_lower_layers():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in package_modules():
        me = module_name(path)
        for other in imported_modules(path):
            if other in rank and rank[other] >= rank[me]:
                upward.append(f"{me} imports {other}")
    assert not upward, upward


def test_hydra_and_omegaconf_stay_in_config_and_scripts():
    leaks = [
        module_name(p)
        for p in package_modules()
        if module_name(p) != "mt.config"
        and any(n.split(".")[0] in ("hydra", "omegaconf") for n in imported_modules(p))
    ]
    assert not leaks, f"library code gets typed dataclasses, not DictConfig: {leaks}"


def test_scripts_stay_thin():
    """Entry points parse config and call into ``mt``: no model, loop or search code of their
    own (a script over ~80 lines has grown logic that belongs in the package)."""
    for script in sorted((ROOT / "scripts").glob("*.py")):
        lines = len(script.read_text().splitlines())
        assert lines <= 80, f"{script.name}: {lines} lines"
