"""The Colab route: a learner gets the package from a plain (not editable) `pip install` of the
repository, and runs chapters in a folder that is not the checkout.

The test builds the wheel (from a copy of the checkout's files, as pip does from a clone), checks
that it holds every file of the package, installs it into fresh virtual environments and, there:

- with only the base dependencies (no extras), runs `ddpm train` (a few steps) and `ddpm sample`;
- with the `book` extra, executes one theory and one practice chapter, copied into an empty
  folder, in a kernel of that environment (the chapters import the installed copy of `ddpm`,
  never the checkout).

Nothing is downloaded (tests never touch the network): the dependencies are this environment's
own installed distributions, linked into the fresh environment's site-packages (torch is
gigabytes), and only the distributions the wheel's metadata asks for, followed recursively
through their own requirements. `pip check` then confirms that the set is complete, so a
dependency missing from pyproject.toml shows up as an ImportError there.

Slow (about a minute or two), so it runs only when DDPM_WHEEL_TESTS=1 (`make wheel`, a phase of
`make test`).
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUN_WHEEL = os.environ.get("DDPM_WHEEL_TESTS") == "1"
# one chapter of each part (_toc.yml): both import their checkers from ddpm.exercises
CHAPTERS = ("01_forward_process.ipynb", "06_unet.ipynb")
TRAIN_STEPS = 20  # `ddpm train` runs end to end (checkpoint, sample grid) in seconds

pytestmark = pytest.mark.skipif(not RUN_WHEEL, reason="slow: `make wheel` (DDPM_WHEEL_TESTS=1)")


# --------------------------------------------------------------------------- helpers


def checkout_files(root: Path) -> list[str]:
    """The files a clone of the repository holds (with the new files not yet committed, but
    not the git-ignored ones: caches, .venv, data/), relative to ``root``. Outside a git
    checkout (an unpacked archive): what the wheel is built from, pyproject.toml, README.md,
    LICENSE and ddpm/ without byte-code."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout  # fmt: skip
        files = out.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        files = ["pyproject.toml", "README.md", "LICENSE"]
        files += [p.relative_to(root).as_posix() for p in (root / "ddpm").rglob("*")
                  if "__pycache__" not in p.parts]  # fmt: skip
    return [p for p in files if p and (root / p).is_file()]


def applies(req: Requirement, extra: str) -> bool:
    """Whether ``req`` (a Requires-Dist line) belongs to ``extra`` ("": the base requirements)
    and its marker holds here."""
    if (req.marker is not None and "extra" in str(req.marker)) != bool(extra):
        return False
    return req.marker is None or req.marker.evaluate({"extra": extra})


def wheel_requirements(wheel: Path, extras: frozenset[str] = frozenset()) -> list[Requirement]:
    """Requires-Dist of the wheel's METADATA that apply with ``extras`` (self-references to
    other extras, e.g. ddpm[metrics] in the book extra, followed)."""
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(name))
    own = canonicalize_name(meta["Name"])
    wanted, found, todo = set(), [], [""] + sorted(extras)
    while todo:
        extra = todo.pop()
        if extra in wanted:
            continue
        wanted.add(extra)
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if not applies(req, extra):
                continue
            if canonicalize_name(req.name) == own:
                todo += sorted(req.extras)
            else:
                found.append(req)
    return found


def installed_closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The distributions of this environment that meet ``requirements``, and recursively their
    own requirements (with the extras asked for); a clear failure when one is missing."""
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(req, "the wheel") for req in requirements]
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req} (needed by {wanted_by}) is not installed here: install it")
        if not req.specifier.contains(dist.version, prereleases=True):
            pytest.fail(f"{wanted_by} needs {req}, this environment has {dist.version}")
        found[name] = dist
        for extra in [""] + sorted(req.extras):
            if (name, extra) in done:
                continue
            done.add((name, extra))
            for line in dist.requires or []:
                sub = Requirement(line)
                if applies(sub, extra):
                    todo.append((sub, f"{dist.metadata['Name']}[{extra}]" if extra else name))
    return found


def link_distributions(dists, site: Path) -> None:
    """Make ``dists`` importable in ``site`` (a fresh site-packages) as if pip had installed
    them: each top-level entry of each distribution's RECORD becomes a symbolic link."""
    for name, dist in dists.items():
        if not dist.files:
            pytest.fail(f"{name} has no RECORD: cannot tell which files it installed")
        origin = Path(dist.locate_file(""))
        for top in {PurePosixPath(f).parts[0] for f in dist.files}:
            if top in ("..", "__pycache__") or top.startswith("/"):
                continue  # scripts and data outside site-packages, byte-code caches
            target = site / top
            if not target.exists() and (origin / top).exists():
                target.symlink_to(origin / top)


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment a learner's shell would have: this venv first on PATH, nothing that
    points Python at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}  # fmt: skip
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["MPLBACKEND"] = "Agg"
    env.update(extra)
    return env


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with its output (not a bare exit code)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited with {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")  # fmt: skip
    return proc


def site_packages(venv: Path) -> Path:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return site


def fresh_venv(path: Path, wheel: Path, extras: frozenset[str] = frozenset()) -> Path:
    """A new virtual environment (no pip of its own) with the wheel installed by pip, not
    editable, and the dependencies of the wheel with ``extras`` linked in."""
    run([sys.executable, "-m", "venv", "--without-pip", path])
    env = clean_env(path)
    pip = [sys.executable, "-m", "pip", "--python", path / "bin" / "python"]
    run([*pip, "install", "--no-deps", "--no-index", "--quiet", wheel], env=env)
    link_distributions(installed_closure(wheel_requirements(wheel, extras)), site_packages(path))
    run([*pip, "check"], env=env)  # every requirement of every installed distribution is met
    return path


IMPORTED_FROM_THE_VENV = """
import sys
from pathlib import Path
import ddpm, ddpm.exercises, ddpm.paths
site = Path({site!r})
assert Path(sys.prefix) == Path({venv!r}), sys.prefix
assert Path(ddpm.__file__).resolve().is_relative_to(site), ddpm.__file__
assert Path(ddpm.exercises.__file__).resolve().is_relative_to(site), ddpm.exercises.__file__
assert ddpm.paths.repo_root() is None, ddpm.paths.repo_root()
print("ddpm imported from", ddpm.__file__)
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("colab")


@pytest.fixture(scope="module")
def wheel(work) -> Path:
    """The wheel pip builds from a clone (here a copy of the checkout's files: building in the
    checkout would leave build/ and *.egg-info there). Offline: --no-build-isolation uses this
    environment's setuptools instead of downloading one."""
    src = work / "src"
    for rel in checkout_files(ROOT):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", work / "dist", src], cwd=work)  # fmt: skip
    (built,) = (work / "dist").glob("ddpm-*.whl")
    return built


# --------------------------------------------------------------------------- tests


def test_wheel_holds_every_file_of_the_package(wheel):
    package = {p for p in checkout_files(ROOT) if p.startswith("ddpm/")}
    assert "ddpm/exercises/__init__.py" in package
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = sorted(package - names)
    assert not missing, f"the wheel lacks {missing}: see [tool.setuptools] in pyproject.toml"


def test_bare_install_trains_and_samples(wheel, work):
    """`pip install <repo>` with no extras: the default `ddpm train` (fewer steps) and
    `ddpm sample`, from a folder outside the checkout, caching into a fresh data folder."""
    venv = fresh_venv(work / "bare", wheel)
    site = site_packages(venv)
    here = work / "bare-run"
    here.mkdir()
    env = clean_env(venv, DDPM_DATA_DIR=str(work / "bare-data"))
    check = IMPORTED_FROM_THE_VENV.format(site=str(site), venv=str(venv))
    # only the base dependencies: the book's and the tests' packages are not there
    check += "import importlib.util\nassert importlib.util.find_spec('matplotlib') is None\n"
    run([venv / "bin" / "python", "-c", check], cwd=here, env=env)

    run(["ddpm", "train", "--steps", TRAIN_STEPS, "--device", "cpu"], cwd=here, env=env)
    run_dir = work / "bare-data" / "runs" / "digits"
    assert (run_dir / "checkpoints" / f"ckpt_{TRAIN_STEPS:07d}.pt").is_file(), \
        sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))  # fmt: skip
    assert (run_dir / "samples" / f"step_{TRAIN_STEPS:07d}.png").is_file()

    out = run(["ddpm", "sample", run_dir, "--num", "16", "--out", "grid.png", "--raw", "raw.npz"],
              cwd=here, env=env)  # fmt: skip
    assert "16 samples" in out.stdout
    from PIL import Image

    with Image.open(here / "grid.png") as image:
        image.verify()  # a complete PNG
    import numpy as np

    samples = np.load(here / "raw.npz")["samples"]
    assert samples.shape == (16, 1, 8, 8) and np.isfinite(samples).all()


RUN_CHAPTERS = """
import sys
import time
from pathlib import Path

import nbclient
import nbformat

check = sys.argv[1]
for path in map(Path, sys.argv[2:]):
    start = time.time()
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(check))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    print(f"{path.name}: ran {len(nb.cells)} cells in {time.time() - start:.0f} s", flush=True)
"""


def test_chapters_run_from_an_installed_wheel(wheel, work):
    """A theory and a practice chapter, copied into an empty folder, in a kernel of an
    environment with the wheel and its `book` extra (the kernel is that environment's python:
    the native kernel of nbclient's own interpreter)."""
    venv = fresh_venv(work / "book", wheel, frozenset({"book"}))
    folder = work / "learner"
    folder.mkdir()
    for name in CHAPTERS:
        shutil.copy2(ROOT / "book" / name, folder / name)
    check = IMPORTED_FROM_THE_VENV.format(site=str(site_packages(venv)), venv=str(venv))
    env = clean_env(venv, DDPM_DATA_DIR=str(work / "book-data"), DDPM_MODE="quick")
    out = run([venv / "bin" / "python", "-c", textwrap.dedent(RUN_CHAPTERS), check,
               *(folder / name for name in CHAPTERS)], cwd=folder, env=env)  # fmt: skip
    assert out.stdout.count(": ran ") == len(CHAPTERS), out.stdout
    print(out.stdout)  # the time of each chapter (pytest -s, or -rA)
