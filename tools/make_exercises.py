"""Write the learner notebooks: the book's chapters with every coding solution taken out.

In a chapter, the learner's part of a coding solution sits between ``# BEGIN SOLUTION`` and
``# END SOLUTION`` lines (the nbgrader convention), inside the exercise's solution block
(``solution-start`` ... ``solution-end``). The learner version of the chapter

- replaces each such region by ``raise NotImplementedError("Exercise N.M: title")``, indented
  like the region (the exercise's number and title come from its ``exercise-start`` line,
  "N.M, coding: title");
- turns the solution block's ``assert check_xxx(fn)`` into a plain call ``check_xxx(fn);``, so
  that running the cell prints the checker's verdict ("[NOT YET] ... not solved yet", a hint,
  or "[PASS]") instead of stopping at an AssertionError;
- rewrites the exercise and solution directives (which only the built book renders) as plain
  Markdown: a heading per exercise, derivation solutions folded in ``<details>``;
- strips outputs. The first cell (the Colab install cell) stays, so learner notebooks run in
  Binder and Colab as the chapters do; nothing is read by relative path.

Usage (``make exercises``)::

    python tools/make_exercises.py                       # every chapter of _toc.yml -> exercises/
    python tools/make_exercises.py --out DIR book/06_unet.ipynb

A learner notebook that was edited since it was written is not overwritten (``--force`` does).
Malformed markers are one-line errors naming the file and the cell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"

# A MyST directive fenced by ``` or ::: (3 or more), with its :option: lines and body. The gated
# forms (exercise-start, solution-end, ...) have an empty body.
DIRECTIVE_RE = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{(?P<name>exercise|solution)(?P<gate>-start|-end)?\}"
    r"[ \t]*(?P<arg>[^\n]*)\n(?P<opts>(?:[ \t]*:[\w-]+:[^\n]*\n)*)(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.M | re.S,
)
TITLE_RE = re.compile(r"^(?P<number>\d+\.\d+),\s*(?P<kind>[\w -]+?):\s*(?P<title>.+)$")
CHECK_RE = re.compile(r"^(?P<indent>\s*)assert\s+(?P<call>check_\w+\(.*\))\s*(?:#.*)?$")
LEARNER_KEY = "ddpm_learner"  # notebook / cell metadata written by this tool

SOLUTION_HINT = (
    "**Your solution.** Replace the `raise NotImplementedError(...)` line in the cell below with\n"
    "your code, then run the cell: the checker prints `[PASS]`, or `[NOT YET]` and what is wrong."
)


DETAILS_OPEN = "<details>\n<summary>Solution (try the exercise first)</summary>"


class ExerciseError(Exception):
    """A malformed chapter; the message is one line naming the file and the cell."""


@dataclass
class Exercise:
    label: str
    number: str
    kind: str
    title: str


@dataclass
class SolutionBlock:
    label: str  # the exercise it solves
    start: tuple[int, int]  # (cell index, directive index in the cell)
    end: tuple[int, int] | None = None
    code_cells: list[int] = field(default_factory=list)
    coding: bool = False  # holds a BEGIN/END SOLUTION region


def chapter_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in book order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    paths = []
    for name in files:
        path = root / name
        path = path if path.suffix == ".ipynb" else path.with_name(path.name + ".ipynb")
        if path.is_file():
            paths.append(path)
    return paths


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def _option(opts: str, name: str) -> str | None:
    match = re.search(rf"^[ \t]*:{name}:[ \t]*(.*)$", opts, re.M)
    return match[1].strip() if match else None


def _parse_title(arg: str, where: str) -> tuple[str, str, str]:
    match = TITLE_RE.match(arg.strip())
    if not match:
        raise ExerciseError(
            f"{where}: exercise title {arg.strip()!r} must read 'N.M, kind: title'"
            " (e.g. '6.1, coding: the timestep embedding')"
        )
    return match["number"], match["kind"].strip(), match["title"].strip()


def _scan(cells: list[dict], name: str) -> tuple[dict, dict, list[SolutionBlock]]:
    """Find the exercises (by label, and by (cell, directive) place) and the solution blocks,
    and check that every BEGIN/END SOLUTION region is inside a solution block."""
    exercises: dict[str, Exercise] = {}
    exercise_at: dict[tuple[int, int], Exercise] = {}
    blocks: list[SolutionBlock] = []
    open_block: SolutionBlock | None = None
    for index, cell in enumerate(cells):
        where = f"{name}, cell {index}"
        text = _source(cell)
        if cell["cell_type"] == "markdown":
            for k, m in enumerate(DIRECTIVE_RE.finditer(text)):
                kind = m["name"] + (m["gate"] or "")
                if kind in ("exercise", "exercise-start"):
                    label = _option(m["opts"], "label") or f"(unlabelled, {where})"
                    exercises[label] = Exercise(label, *_parse_title(m["arg"], where))
                    exercise_at[index, k] = exercises[label]
                elif kind in ("solution", "solution-start"):
                    label = m["arg"].strip()
                    if label not in exercises:
                        raise ExerciseError(f"{where}: solution for unknown exercise {label!r}")
                    if open_block is not None:
                        raise ExerciseError(f"{where}: solution-start inside another solution")
                    block = SolutionBlock(label, (index, k))
                    blocks.append(block)
                    if kind == "solution-start":
                        open_block = block
                    else:
                        block.end = (index, k)
                elif kind == "solution-end":
                    if open_block is None:
                        raise ExerciseError(f"{where}: solution-end without solution-start")
                    open_block.end = (index, k)
                    open_block = None
        elif cell["cell_type"] == "code":
            lines = [line.strip() for line in text.splitlines()]
            has_markers = BEGIN in lines or END in lines
            if open_block is not None:
                open_block.code_cells.append(index)
                open_block.coding |= has_markers
            elif has_markers:
                raise ExerciseError(
                    f"{where}: a {BEGIN} / {END} region outside an exercise's solution block"
                    " (solution-start ... solution-end)"
                )
    if open_block is not None:
        raise ExerciseError(f"{name}: solution-start for {open_block.label!r} is never closed")
    return exercises, exercise_at, blocks


def plain_text(title: str) -> str:
    """A title without its TeX markup, for a Python message: "$L_\\text{simple}$" -> "L_simple"."""
    text = re.sub(r"\\(?:text|mathrm|mathbf|operatorname)\{([^{}]*)\}", r"\1", title)
    text = re.sub(r"\\(bar|tilde|hat)\s*\{?\\?([A-Za-z]+)\}?", r"\2-\1", text)  # alpha-bar
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)  # \epsilon -> epsilon
    return re.sub(r"[$\\{}]", "", text)


def _string_literal(text: str) -> str:
    """A double-quoted Python string literal for ``text`` (JSON's escapes are Python's)."""
    return json.dumps(text, ensure_ascii=False)


def stub_code(source: str, exercise: Exercise, where: str) -> tuple[str, int]:
    """Replace each BEGIN/END SOLUTION region by a ``raise`` and each ``assert check_...(...)``
    line by the plain call; return the new source and the number of regions replaced."""
    message = _string_literal(f"Exercise {exercise.number}: {plain_text(exercise.title)}")
    out: list[str] = []
    lines = source.split("\n")
    regions = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped == BEGIN:
            indent = line[: len(line) - len(line.lstrip())]
            j = i + 1
            while j < len(lines) and lines[j].strip() not in (BEGIN, END):
                j += 1
            if j == len(lines) or lines[j].strip() == BEGIN:
                raise ExerciseError(f"{where}: {BEGIN} (line {i + 1}) without {END}")
            out.append(f"{indent}raise NotImplementedError({message})")
            regions += 1
            i = j + 1
            continue
        if stripped == END:
            raise ExerciseError(f"{where}: {END} (line {i + 1}) without {BEGIN}")
        check = CHECK_RE.match(line)
        if check:
            line = f"{check['indent']}{check['call']};  # prints [PASS], or [NOT YET] and a hint"
        out.append(line)
        i += 1
    return "\n".join(out), regions


def _markdown(text: str, index: int, exercise_at: dict, blocks: list[SolutionBlock]) -> str:
    """Rewrite the exercise and solution directives of one markdown cell as plain Markdown."""
    block_at = {}
    for block in blocks:
        block_at[block.start] = block
        if block.end is not None:
            block_at[block.end] = block

    def replace(m: re.Match, k: int) -> str:
        kind = m["name"] + (m["gate"] or "")
        body = m["body"].strip()
        if kind in ("exercise", "exercise-start"):
            ex = exercise_at[index, k]
            heading = f"### Exercise {ex.number}, {ex.kind}: {ex.title}"
            return heading + (f"\n\n{body}" if body else "")
        if kind == "exercise-end":
            return ""
        block = block_at[index, k]
        if kind == "solution":  # ungated: the body is the whole solution
            return SOLUTION_HINT + f"\n\n{body}" if block.coding else _details(body)
        one_cell = block.start[0] == block.end[0]
        if kind == "solution-start":
            if block.coding:
                return SOLUTION_HINT
            # blank lines around the HTML tags, or Markdown inside them is not rendered
            return f"\n\n{DETAILS_OPEN}\n\n" if one_cell else "**Solution** (try it first).\n\n"
        return "\n\n</details>\n\n" if one_cell and not block.coding else ""  # solution-end

    counter = iter(range(len(text) + 1))
    text = DIRECTIVE_RE.sub(lambda m: replace(m, next(counter)), text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _details(body: str) -> str:
    return f"{DETAILS_OPEN}\n\n{body}\n\n</details>"


def _fingerprint(cells: list[dict]) -> str:
    """A hash of the cells' types and sources (not outputs): tells a learner's edits apart."""
    digest = hashlib.sha256()
    for cell in cells:
        digest.update(cell["cell_type"].encode() + b"\0" + _source(cell).encode() + b"\0")
    return digest.hexdigest()[:16]


def learner_notebook(path: Path) -> dict:
    """The learner version of the chapter at ``path`` (a notebook dict, outputs stripped)."""
    name = path.name
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    exercises, exercise_at, blocks = _scan(cells, name)
    block_of_cell = {i: b for b in blocks for i in b.code_cells}
    new_cells = []
    for index, cell in enumerate(cells):
        cell = dict(cell)
        where = f"{name}, cell {index}"
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            block = block_of_cell.get(index)
            if block is not None and block.coding:
                exercise = exercises[block.label]
                source, regions = stub_code(_source(cell), exercise, where)
                _set_source(cell, source)
                roles = (["stub"] if regions else []) + (
                    ["checker"] if re.search(r"^\s*check_\w+\(.*\);", source, re.M) else []
                )
                if roles:
                    meta = dict(cell.get("metadata", {}))
                    meta[LEARNER_KEY] = {"exercise": exercise.number, "roles": roles}
                    cell["metadata"] = meta
        elif cell["cell_type"] == "markdown" and DIRECTIVE_RE.search(_source(cell)):
            text = _markdown(_source(cell), index, exercise_at, blocks)
            if not text:
                continue
            _set_source(cell, text)
        new_cells.append(cell)
    nb = dict(nb, cells=new_cells)
    nb["metadata"] = dict(nb.get("metadata", {}))
    nb["metadata"][LEARNER_KEY] = {"chapter": f"book/{name}", "cells": _fingerprint(new_cells)}
    return nb


def _edited_by_learner(path: Path) -> bool:
    """True when ``path`` is a learner notebook whose cells changed since this tool wrote it."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        recorded = nb["metadata"][LEARNER_KEY]["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return path.exists()  # not ours: don't touch it
    return recorded != _fingerprint(nb["cells"])


def write_learner_notebooks(
    notebooks: list[Path], out: Path, force: bool = False
) -> list[tuple[Path, list[str] | None]]:
    """Write the learner version of each notebook into ``out``; return (path, exercises stubbed),
    with None for a notebook skipped because the learner edited it. All chapters are
    transformed before anything is written, so an error leaves ``out`` as it was."""
    built = [(out / nb_path.name, learner_notebook(nb_path)) for nb_path in notebooks]
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for target, nb in built:
        stubbed = [
            c["metadata"][LEARNER_KEY]["exercise"]
            for c in nb["cells"]
            if "stub" in c.get("metadata", {}).get(LEARNER_KEY, {}).get("roles", [])
        ]
        if target.exists() and not force and _edited_by_learner(target):
            report.append((target, None))
            continue
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        report.append((target, list(dict.fromkeys(stubbed))))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: the chapters in _toc.yml")
    parser.add_argument("--out", type=Path, default=ROOT / "exercises", help="default: exercises/")
    parser.add_argument("--force", action="store_true", help="overwrite edited learner notebooks")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or chapter_notebooks()
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        report = write_learner_notebooks(notebooks, args.out, args.force)
    except ExerciseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for target, stubbed in report:
        if stubbed is None:
            print(f"kept {target}: you edited it (make exercises FORCE=1, or --force, rewrites it)")
        else:
            what = ", ".join(stubbed) if stubbed else "no coding exercises"
            print(f"wrote {target} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
