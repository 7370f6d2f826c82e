"""The dependency range pyproject.toml declares is the one .ci/run tests: its minimum-dependency
pass installs .ci/min-dependencies.txt, whose pins must be the declared floors."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")          # Python >= 3.11


def _release(version):
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def _name(requirement):
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_min_dependencies_pin_every_declared_floor():
    pins_file = ROOT / ".ci" / "min-dependencies.txt"
    if not pins_file.exists():
        pytest.skip("not a source checkout")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for requirement in project["dependencies"] + [
            r for extra in project["optional-dependencies"].values() for r in extra]:
        match = re.search(r">=\s*([0-9.]+)", requirement)
        assert match, f"{requirement!r} declares no minimum"
        declared.setdefault(_name(requirement), match.group(1))
    pins = {}
    for line in pins_file.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = version
    assert set(pins) == set(declared)
    for name, floor in declared.items():
        assert _release(pins[name]) == _release(floor), (name, pins[name], floor)
