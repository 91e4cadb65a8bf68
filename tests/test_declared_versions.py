"""What pyproject.toml declares is what CI tests: its lowest Python runs in .ci/run with the
lowest versions, and each dependency's floor is the version requirements-lowest.txt installs.
(Read as text: Python 3.10, which the suite also runs on, has no tomllib.)"""

import re
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def test_the_lowest_declared_python_runs_in_ci_with_the_lowest_versions():
    lowest = re.search(r'^requires-python = ">=(\d+\.\d+)"', PYPROJECT, re.M)
    assert lowest, "pyproject.toml: requires-python is not of the form >=X.Y"
    runs = re.findall(
        r"^fast_tests_on (\d+\.\d+)\.\d+ (MT_\w+)", (ROOT / ".ci/run").read_text(), re.M
    )
    assert (lowest.group(1), "MT_LOWEST") in runs, runs


def test_every_dependency_floor_is_the_version_ci_installs_at_the_lowest():
    # Every quoted "name>=version" in pyproject.toml: the dependencies and the extras.
    floors = dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([^",;\s]+)"', PYPROJECT))
    runtime = re.search(r"^dependencies = \[(.*?)^\]", PYPROJECT, re.M | re.S)
    assert runtime, "pyproject.toml: no dependencies = [...] list"
    required = re.findall(r'"([A-Za-z0-9_.-]+)>=', runtime.group(1))
    pins = dict(
        re.findall(
            r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "requirements-lowest.txt").read_text(), re.M
        )
    )
    assert len(required) >= 10 and "torch" in required  # the pattern reads the dependency list
    missing = [name for name in required if name not in pins]
    assert not missing, f"requirements-lowest.txt pins no version of {missing}"
    for name, version in pins.items():
        assert name in floors and Version(floors[name]) == Version(version), (
            f"{name}: pyproject.toml >={floors.get(name)}, lowest {version}"
        )
