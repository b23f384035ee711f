"""environment.yml (Binder) and pyproject.toml name the same dependencies, and postBuild installs
the package: the two dependency lists cannot drift apart unnoticed."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent

# PyPI name -> conda-forge name, where they differ
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# packages environment.yml lists that pyproject.toml does not name directly, and why
CONDA_ONLY = {
    "python": "the interpreter",
    "pip": "postBuild installs the package with pip",
    "torch-fidelity": "torchmetrics' `image` extra; conda-forge packages it separately",
}
EXTRAS = ("book", "metrics")  # what Binder needs: the chapters, the book, the metrics


# --------------------------------------------------------------------------- parsing


def pyproject_requirements(pyproject: dict, extras=EXTRAS) -> dict[str, Requirement]:
    """Runtime dependencies plus the given extras (self-references like ddpm[metrics]
    resolved), by canonical conda-forge name."""
    project = pyproject["project"]
    own = canonicalize_name(project["name"])
    found: dict[str, Requirement] = {}
    todo = [Requirement(r) for r in project.get("dependencies", [])]
    seen_extras: set[str] = set()
    for extra in extras:
        todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
        seen_extras.add(extra)
    while todo:
        req = todo.pop(0)
        name = canonicalize_name(req.name)
        if name == own:
            for extra in sorted(req.extras - seen_extras):
                seen_extras.add(extra)
                todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
            continue
        conda = CONDA_NAMES.get(name, name)
        if conda in found:  # listed twice (e.g. scipy): both bounds apply
            merged = Requirement(f"{req.name}{found[conda].specifier & req.specifier}")
            found[conda] = merged
        else:
            found[conda] = req
    return found


CONDA_SPEC_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)\s*(?:(?P<eq>=)(?P<eqver>[^=\s]+)(?:=(?P<eqbuild>\S+))?"
    r"|\s(?P<ver>[^\s]+)(?:\s+(?P<build>\S+))?)?\s*$"
)


def parse_conda_spec(spec: str) -> tuple[str, SpecifierSet, str | None]:
    """(name, version bounds, build string) of a conda match spec as environment.yml writes it:
    ``name``, ``name >=1,<2``, ``name >=1 build*``, ``name=3.11`` (3.11.*), ``name=*=build``."""
    match = CONDA_SPEC_RE.match(spec.strip())
    if not match:
        raise ValueError(f"cannot read the conda spec {spec!r}")
    name = canonicalize_name(match["name"])
    if match["eq"]:
        version, build = match["eqver"], match["eqbuild"]
        bounds = "" if version == "*" else f"=={version.rstrip('.*')}.*"
    else:
        version, build = match["ver"], match["build"]
        bounds = "" if version in (None, "*") else version
        if bounds and not re.match(r"^[<>=!~]", bounds):  # a bare version: conda's exact match
            bounds = f"=={bounds}"
    return name, SpecifierSet(bounds), build


def environment_specs(environment: dict) -> dict[str, tuple[SpecifierSet, str | None]]:
    specs = {}
    for item in environment["dependencies"]:
        if not isinstance(item, str):
            raise ValueError(f"environment.yml: unexpected entry {item!r} (a pip: section?)")
        name, bounds, build = parse_conda_spec(item)
        if name in specs:
            raise ValueError(f"environment.yml lists {name} twice")
        specs[name] = (bounds, build)
    return specs


def _bound(bounds: SpecifierSet, side: str) -> tuple[Version, bool] | None:
    """The tightest lower (side ">") or upper (side "<") bound as (version, inclusive)."""
    found = []
    for spec in bounds:
        if spec.version.endswith("*"):
            continue
        if spec.operator == "==" or spec.operator in (side, side + "="):
            found.append((Version(spec.version), spec.operator != side))
    if not found:
        return None
    if side == ">":  # the largest lower bound; at a tie the exclusive one is tighter
        return max(found, key=lambda b: (b[0], not b[1]))
    return min(found, key=lambda b: (b[0], b[1]))


def implies(narrow: SpecifierSet, wide: SpecifierSet) -> bool:
    """Whether every version allowed by ``narrow`` is allowed by ``wide``, for the >=, >, <, <=
    and == bounds used here (any other specifier of ``wide`` must appear in ``narrow``)."""
    for spec in wide:
        side = spec.operator[0] if spec.operator[0] in "<>" else None
        if side is None:
            if str(spec) not in {str(s) for s in narrow}:
                return False
            continue
        have = _bound(narrow, side)
        if have is None:
            return False
        version, inclusive = have
        limit = Version(spec.version)
        strict = version > limit if side == ">" else version < limit
        if not (strict or (version == limit and (spec.operator.endswith("=") or not inclusive))):
            return False
    return True


def satisfiable(bounds: SpecifierSet) -> bool:
    """Whether some version meets all the bounds (tried at each bound and just past it)."""
    candidates = {Version("0"), Version("99999")}
    for spec in bounds:
        v = Version(spec.version.rstrip(".*"))
        release = list(v.release)
        candidates.add(v)
        for i in range(len(release)):
            candidates.add(Version(".".join(map(str, release[:i] + [release[i] + 1]))))
            if release[i] > 0:
                candidates.add(Version(".".join(map(str, release[:i] + [release[i] - 1]))))
    return any(bounds.contains(c, prereleases=True) for c in candidates)


def drift(pyproject: dict, environment: dict) -> list[str]:
    """Every disagreement between pyproject.toml and environment.yml, as sentences."""
    wanted = pyproject_requirements(pyproject)
    specs = environment_specs(environment)
    problems = []
    for name, req in sorted(wanted.items()):
        if name not in specs:
            problems.append(f"{name} ({req}) is in pyproject.toml but not in environment.yml")
            continue
        bounds, _ = specs[name]
        if not satisfiable(bounds & req.specifier):
            problems.append(f"{name}: environment.yml's {bounds} contradicts pyproject's {req}")
        elif not implies(bounds, req.specifier):
            problems.append(
                f"{name}: environment.yml's bounds '{bounds}' allow versions that pyproject.toml's"
                f" '{req.specifier}' rejects; repeat pyproject's bounds"
            )
    for name in sorted(set(specs) - set(wanted) - set(CONDA_ONLY)):
        problems.append(f"{name} is in environment.yml but in no dependency list of pyproject.toml")
    for name in sorted(set(CONDA_ONLY) - set(specs)):
        problems.append(f"environment.yml lacks {name} ({CONDA_ONLY[name]})")
    python = specs.get("python", (SpecifierSet(), None))[0]
    requires = SpecifierSet(pyproject["project"].get("requires-python", ""))
    pins = [s.version.removesuffix(".*") for s in python if s.operator == "=="]
    if not pins or not requires.contains(pins[0]):
        problems.append(
            f"environment.yml's python '{python}' must pin a version that meets"
            f" requires-python '{requires}'"
        )
    return problems


# --------------------------------------------------------------------------- the real files


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def test_environment_and_pyproject_name_the_same_dependencies(pyproject, environment):
    assert drift(pyproject, environment) == []


def test_environment_is_conda_forge_cpu_pytorch_python_311(environment):
    assert environment["channels"] == ["conda-forge"]
    specs = environment_specs(environment)
    assert specs["python"][0].contains("3.11.7") and not specs["python"][0].contains("3.12.0")
    for name in ("pytorch", "torchvision"):  # the CPU builds: no CUDA libraries in the image
        build = specs[name][1]
        assert build is not None and "cpu" in build, f"{name} needs the *cpu* build string"


def test_postbuild_is_an_executable_script_that_installs_the_package():
    post = ROOT / "postBuild"
    text = post.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert post.stat().st_mode & stat.S_IXUSR, "postBuild must be executable (chmod +x postBuild)"
    subprocess.run(["bash", "-n", str(post)], check=True)


def test_postbuild_runs_pip_install_of_the_checkout_without_dependencies(tmp_path):
    """Run postBuild with a stand-in `python` that records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.txt"
    fake = bindir / "python"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> "{log}"\n', encoding="utf-8")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["bash", str(ROOT / "postBuild")], cwd=ROOT, env=env, check=True)
    calls = log.read_text(encoding="utf-8").splitlines()
    installs = [c.split() for c in calls if c.startswith("-m pip install")]
    assert len(installs) == 1, calls
    assert "--no-deps" in installs[0] and installs[0][-1] == "."
    assert "--editable" in installs[0] or "-e" in installs[0]
    assert any("import ddpm" in c for c in calls), "postBuild should check that ddpm imports"


# --------------------------------------------------------------------------- the checks can fail

PYPROJECT = {
    "project": {
        "name": "pkg",
        "requires-python": ">=3.10",
        "dependencies": ["torch>=2.4", "numpy>=1.24"],
        "optional-dependencies": {
            "book": ["jupyter-book>=1.0.4.post1,<2", "pkg[metrics]"],
            "metrics": ["torchmetrics[image]>=1.4", "scipy>=1.10"],
        },
    }
}
GOOD_ENV = [
    "python=3.11", "pip", "pytorch >=2.4 *cpu*", "numpy >=1.24", "jupyter-book >=1.0.4.post1,<2",
    "torchmetrics >=1.4", "torch-fidelity", "scipy >=1.10",
]  # fmt: skip


def _env(*replace: tuple[str, str | None], extra: tuple[str, ...] = ()) -> dict:
    deps = list(GOOD_ENV)
    for old, new in replace:
        i = deps.index(old)
        if new is None:
            deps.pop(i)
        else:
            deps[i] = new
    return {"channels": ["conda-forge"], "dependencies": deps + list(extra)}


def test_drift_accepts_matching_lists():
    assert drift(PYPROJECT, _env()) == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (_env(("numpy >=1.24", None)), "numpy (numpy>=1.24) is in pyproject.toml but not in"),
        (_env(extra=("pandas",)), "pandas is in environment.yml but in no dependency list"),
        (_env(("pytorch >=2.4 *cpu*", "pytorch <2.4")), "contradicts"),
        (_env(("pytorch >=2.4 *cpu*", "pytorch >=2.1")), "allow versions that pyproject"),
        (_env(("pytorch >=2.4 *cpu*", "pytorch")), "allow versions that pyproject"),
        (_env(("jupyter-book >=1.0.4.post1,<2", "jupyter-book >=1.0.4.post1")), "jupyter-book"),
        (_env(("jupyter-book >=1.0.4.post1,<2", "jupyter-book >=2")), "contradicts"),
        (_env(("torch-fidelity", None)), "lacks torch-fidelity"),
        (_env(("python=3.11", "python=3.9")), "requires-python"),
    ],
)
def test_drift_reports_each_disagreement(env, expected):
    problems = drift(PYPROJECT, env)
    assert any(expected in p for p in problems), problems


def test_drift_follows_self_referencing_extras():
    project = {**PYPROJECT["project"], "optional-dependencies": {
        "book": ["pkg[metrics]"], "metrics": ["scipy>=1.10", "torchmetrics[image]>=1.4",
                                             "jupyter-book>=1.0.4.post1,<2"]}}  # fmt: skip
    assert drift({"project": project}, _env()) == []


@pytest.mark.parametrize(
    ("spec", "name", "bounds", "build"),
    [
        ("pytorch >=2.4 *cpu*", "pytorch", ">=2.4", "*cpu*"),
        ("jupyter-book >=1.0.4.post1,<2", "jupyter-book", "<2,>=1.0.4.post1", None),
        ("python=3.11", "python", "==3.11.*", None),
        ("pytorch=*=cpu*", "pytorch", "", "cpu*"),
        ("pip", "pip", "", None),
        ("numpy 1.26.4", "numpy", "==1.26.4", None),
    ],
)
def test_parse_conda_spec(spec, name, bounds, build):
    got = parse_conda_spec(spec)
    assert (got[0], str(got[1]), got[2]) == (name, bounds, build)


def test_parse_conda_spec_rejects_garbage():
    with pytest.raises(ValueError, match="cannot read"):
        parse_conda_spec("pytorch >=2 cpu extra words")
