"""environment.yml mirrors pyproject.toml (and the lab's pins in .ci/constraints.txt)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(req: str) -> tuple[str, str]:
    m = _SPEC.match(req)
    assert m, f"unparseable requirement {req!r}"
    version = m.group(3).replace(" ", "")
    # conda writes an exact pin as `=1.2.3`; pip as `==1.2.3`.
    version = re.sub(r"^=(?!=)", "==", version)
    return _norm(m.group(1)), version


def _constraints() -> dict[str, str]:
    lines = (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    return dict(_parse(ln) for ln in lines if ln.strip() and not ln.startswith("#"))


def _pyproject(pinned: bool = True) -> dict[str, str]:
    """Every package pyproject.toml names; with ``pinned``, the lab's pin where it has one."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"])
    for extra in data["project"].get("optional-dependencies", {}).values():
        reqs += extra
    reqs += data["tool"]["retrylib"]["no-deps-packages"]
    out = dict(_parse(r) for r in reqs)
    out.pop("retrylib", None)  # the `all` extra names the project's own extras
    return {**out, **_constraints()} if pinned else out


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for req in dep["pip"]:
                if not req.startswith("-e"):
                    name, version = _parse(req)
                    out[name] = version
        else:
            name, version = _parse(dep)
            if name not in ("python", "pip"):
                out[name] = version
    return out


def test_same_packages():
    """Both files name the same set of packages."""
    py, env = _pyproject(), _environment()
    assert set(py) == set(env), (
        f"only in pyproject.toml: {sorted(set(py) - set(env))}; "
        f"only in environment.yml: {sorted(set(env) - set(py))}"
    )


def test_same_versions():
    """Every package has the same version constraint in both files."""
    py, env = _pyproject(), _environment()
    differ = {n: (py[n], env[n]) for n in py.keys() & env.keys() if py[n] != env[n]}
    assert not differ, f"version constraints differ (pyproject, environment.yml): {differ}"


def test_environment_installs_the_project():
    """environment.yml ends its pip section with the project itself, editable."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip[-1] == "-e ."
    assert "python=3.11" in env["dependencies"]


def test_constraints_fit_the_ranges():
    """Each pin in .ci/constraints.txt is a version pyproject.toml's range admits."""
    from packaging.specifiers import SpecifierSet

    ranges = _pyproject(pinned=False)
    for name, pin in _constraints().items():
        assert name in ranges, f"{name} is pinned in constraints.txt but not a dependency"
        assert SpecifierSet(ranges[name]).contains(pin.removeprefix("==")), (name, pin, ranges[name])


def test_core_dependencies_are_small():
    """The core install has no compiler step, Jupyter, llama.cpp or pandas, and no exact pins."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = dict(_parse(r) for r in data["project"]["dependencies"])
    heavy = {"llama-cpp-python", "jupyterlab", "papermill", "nbconvert", "pandas", "matplotlib",
             "litellm", "ipykernel", "aiohttp"}
    assert not heavy & set(core), heavy & set(core)
    assert not [n for n, v in core.items() if v.startswith("==")]
    assert "litellm" in data["project"]["optional-dependencies"]["litellm"][0]
