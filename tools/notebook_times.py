"""Print how long each notebook took to run, in the nbval pass and in the strict book build.

``make test`` runs every chapter twice: ``pytest --nbval-lax`` (which writes its per-cell times to
``_build/nbval-junit.xml``) and the strict Jupyter Book build (myst-nb records each notebook's
execution time in the Sphinx environment, ``_build/.doctrees/environment.pickle``). This joins
the two into one table, printed and written to ``_build/notebook-times.txt``. A missing source
shows as ``-``; the script never fails the run over a missing file.

    python tools/notebook_times.py [--build _build]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def nbval_times(junit_xml: Path) -> dict[str, float]:
    """Seconds per notebook (``book/NN_name``) in the nbval run: the sum over its cells.

    pytest's JUnit report names a cell ``classname="book.NN_name"`` (the path, dotted, without
    ``.ipynb``) and its time includes set-up, so the kernel's start-up counts too.
    """
    if not junit_xml.is_file():
        return {}
    times: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        classname = case.get("classname", "")
        if not classname:
            continue
        times[_docname(classname)] += float(case.get("time") or 0.0)
    return dict(times)


def _docname(classname: str) -> str:
    """``book.01_forward_process`` (or ``book.01_forward_process.ipynb``) -> its docname."""
    name = classname.removesuffix(".ipynb")
    folder, _, stem = name.rpartition(".")
    return f"{folder.replace('.', '/')}/{stem}" if folder else stem


def build_times(doctrees: Path) -> dict[str, float]:
    """Seconds per notebook in the book build, as myst-nb recorded them in the environment."""
    pickled = doctrees / "environment.pickle"
    if not pickled.is_file():
        return {}
    try:
        with open(pickled, "rb") as f:
            env = pickle.load(f)  # our own build's file; needs sphinx and myst-nb importable
    except Exception as error:  # an environment from another Sphinx version, say
        print(f"notebook times: cannot read {pickled}: {error}", file=sys.stderr)
        return {}
    times = {}
    for docname, data in getattr(env, "nb_metadata", {}).items():
        runtime = (data.get("exec_data") or {}).get("runtime")
        if runtime is not None:
            times[docname] = float(runtime)
    return times


def table(nbval: dict[str, float], build: dict[str, float]) -> str:
    names = sorted(set(nbval) | set(build))
    width = max([len("notebook"), *map(len, names)])

    def cell(value):
        return f"{value:9.1f}" if value is not None else f"{'-':>9}"

    lines = [f"{'notebook':<{width}}  nbval (s)  build (s)"]
    for name in names:
        lines.append(f"{name:<{width}}  {cell(nbval.get(name))}  {cell(build.get(name))}")
    lines.append(
        f"{'total':<{width}}  {cell(sum(nbval.values()) if nbval else None)}"
        f"  {cell(sum(build.values()) if build else None)}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, default=ROOT / "_build", help="the build folder")
    args = parser.parse_args(argv)
    nbval = nbval_times(args.build / "nbval-junit.xml")
    build = build_times(args.build / ".doctrees")
    if not nbval and not build:
        print(f"notebook times: no nbval report nor book build in {args.build} yet")
        return 0
    text = "Seconds per notebook (nbval pass, strict build execution)\n" + table(nbval, build)
    print(text)
    (args.build / "notebook-times.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
