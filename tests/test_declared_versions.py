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
    floors = dict(re.findall(r'^\s*"([A-Za-z0-9_.-]+)>=([^",]+)",', PYPROJECT, re.M))
    pins = dict(
        re.findall(
            r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "requirements-lowest.txt").read_text(), re.M
        )
    )
    assert len(floors) >= 10 and "torch" in floors  # the pattern reads the dependency list
    for name, version in floors.items():
        assert name in pins and Version(pins[name]) == Version(version), (
            f"{name}: pyproject.toml >={version}, lowest {pins.get(name)}"
        )
