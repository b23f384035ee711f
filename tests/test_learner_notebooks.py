"""Learner notebooks (tools/make_exercises.py, `make exercises`): every coding solution becomes a
stub, and the checker rejects the stub with "not solved yet".

The fast tests transform small synthetic notebooks and the real chapters. Executing every learner
notebook in a kernel costs one more pass over the book, so that test runs only when
DDPM_LEARNER_TESTS=1 (`make learner`, a phase of `make test`).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import re
from pathlib import Path

import pytest
from make_exercises import (
    BEGIN,
    END,
    LEARNER_KEY,
    ExerciseError,
    chapter_notebooks,
    learner_notebook,
    main,
    plain_text,
    write_learner_notebooks,
)

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = chapter_notebooks(ROOT)
RUN_LEARNER = os.environ.get("DDPM_LEARNER_TESTS") == "1"

# --------------------------------------------------------------------------- synthetic notebooks


def md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def code(text: str) -> dict:
    return {
        "cell_type": "code",
        "execution_count": 3,
        "metadata": {},
        "outputs": [{"output_type": "stream", "name": "stdout", "text": "old output\n"}],
        "source": text,
    }


def exercise(label: str, title: str, body: str = "Do it.") -> str:
    return (
        f"```{{exercise-start}} {title}\n:label: {label}\n:nonumber:\n```\n{body}\n"
        "```{exercise-end}\n```\n\n"
        f"```{{solution-start}} {label}\n:class: dropdown\n```"
    )


SOLUTION_END = "```{solution-end}\n```"

CODING = """def f(x):
    y = 2 * x
    # BEGIN SOLUTION
    z = y + 1
    return z
    # END SOLUTION


assert check_f(f)
print("after the checker")"""


def write_nb(tmp_path: Path, cells: list[dict], name: str = "09_test.ipynb") -> Path:
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / name
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def sources(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"]]


def test_a_solution_region_becomes_a_raise_indented_like_it(tmp_path):
    path = write_nb(tmp_path, [md(exercise("ex-f", "9.1, coding: the f function")), code(CODING),
                               md(SOLUTION_END)])  # fmt: skip
    nb = learner_notebook(path)
    src = sources(nb)[1]
    assert src.splitlines() == [
        "def f(x):",
        "    y = 2 * x",
        '    raise NotImplementedError("Exercise 9.1: the f function")',
        "",
        "",
        "check_f(f);  # prints [PASS], or [NOT YET] and a hint",
        'print("after the checker")',
    ]
    cell = nb["cells"][1]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert cell["metadata"][LEARNER_KEY] == {"exercise": "9.1", "roles": ["stub", "checker"]}


def test_nested_and_repeated_regions(tmp_path):
    src = (
        "def g(x):\n    if x:\n        # BEGIN SOLUTION\n        return 1\n        # END SOLUTION\n"
        "    # BEGIN SOLUTION\n    return 0\n    # END SOLUTION\n"
    )
    path = write_nb(tmp_path, [md(exercise("ex-g", "9.2, coding: g")), code(src), md(SOLUTION_END)])
    lines = sources(learner_notebook(path))[1].splitlines()
    stub = 'raise NotImplementedError("Exercise 9.2: g")'
    assert lines == ["def g(x):", "    if x:", f"        {stub}", f"    {stub}"]


def test_markdown_directives_become_plain_markdown(tmp_path):
    path = write_nb(
        tmp_path,
        [
            md("## Exercises\n\n" + exercise("ex-f", "9.1, coding: the $\\tilde\\beta_t$ fn")),
            code(CODING),
            md(SOLUTION_END + "\n\n" + exercise("ex-d", "9.2, derivation: why") + "\nBecause.\n"
               + SOLUTION_END),
            md(SOLUTION_END.replace("solution-end", "exercise-end")),  # only a directive: dropped
        ],
    )  # fmt: skip
    nb = learner_notebook(path)
    src = sources(nb)
    assert len(src) == 3
    assert src[0].startswith("## Exercises\n\n### Exercise 9.1, coding: the $\\tilde\\beta_t$ fn")
    assert "**Your solution.**" in src[0] and "{solution-start}" not in src[0]
    assert '"Exercise 9.1: the beta-tilde_t fn"' in src[1]
    assert src[2].startswith("### Exercise 9.2, derivation: why\nDo it.\n\n<details>\n<summary>")
    assert src[2].endswith("Because.\n\n</details>") and "```" not in src[2]


def test_an_ungated_derivation_solution_is_folded(tmp_path):
    text = (
        "```{exercise} 9.3, derivation: a proof\n:label: ex-p\nProve it.\n```\n\n"
        "```{solution} ex-p\n:class: dropdown\nThe proof.\n```"
    )
    path = write_nb(tmp_path, [md(text)])
    (src,) = sources(learner_notebook(path))
    assert src.startswith("### Exercise 9.3, derivation: a proof\n\nProve it.\n\n<details>")
    assert src.endswith("The proof.\n\n</details>")


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ([md(exercise("ex-f", "9.1, coding: f")), code("# BEGIN SOLUTION\nx = 1"),
          md(SOLUTION_END)], "09_test.ipynb, cell 1: # BEGIN SOLUTION (line 1) without # END"),
        ([md(exercise("ex-f", "9.1, coding: f")), code("x = 1\n# END SOLUTION"),
          md(SOLUTION_END)], "09_test.ipynb, cell 1: # END SOLUTION (line 2) without # BEGIN"),
        ([md(exercise("ex-f", "9.1, coding: f")), code("# BEGIN SOLUTION\n# BEGIN SOLUTION\n"
          "# END SOLUTION"), md(SOLUTION_END)], "cell 1: # BEGIN SOLUTION (line 1) without"),
        ([md("# Title"), code(CODING)], "09_test.ipynb, cell 1: a # BEGIN SOLUTION / # END "
         "SOLUTION region outside an exercise's solution block"),
        ([md(exercise("ex-f", "9.1, coding: f")), md(SOLUTION_END), code(CODING)],
         "cell 2: a # BEGIN SOLUTION / # END SOLUTION region outside"),
        ([md(exercise("ex-f", "9.1, coding: f")), code(CODING)],
         "solution-start for 'ex-f' is never closed"),
        ([md(exercise("ex-f", "coding: f")), code(CODING), md(SOLUTION_END)],
         "cell 0: exercise title 'coding: f' must read 'N.M, kind: title'"),
        ([md("```{solution-start} ex-nope\n```"), code(CODING), md(SOLUTION_END)],
         "cell 0: solution for unknown exercise 'ex-nope'"),
        ([md(SOLUTION_END)], "cell 0: solution-end without solution-start"),
    ],
)  # fmt: skip
def test_malformed_markers_are_one_line_errors_naming_file_and_cell(tmp_path, cells, message):
    path = write_nb(tmp_path, cells)
    with pytest.raises(ExerciseError) as info:
        learner_notebook(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_main_writes_learner_notebooks_and_keeps_edited_ones(tmp_path, capsys):
    path = write_nb(tmp_path, [md(exercise("ex-f", "9.1, coding: f")), code(CODING),
                               md(SOLUTION_END)])  # fmt: skip
    out = tmp_path / "exercises"
    assert main([str(path), "--out", str(out)]) == 0
    assert f"wrote {out / path.name} (9.1)" in capsys.readouterr().out
    target = out / path.name
    # running cells (outputs, counts) is not an edit: the notebook is rewritten
    nb = json.loads(target.read_text(encoding="utf-8"))
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]
    target.write_text(json.dumps(nb), encoding="utf-8")
    assert main([str(path), "--out", str(out)]) == 0
    assert json.loads(target.read_text(encoding="utf-8"))["cells"][1]["outputs"] == []
    capsys.readouterr()
    # the learner's code is an edit: kept, unless --force
    nb["cells"][1]["source"] = "def f(x):\n    return 2 * x + 1\n"
    target.write_text(json.dumps(nb), encoding="utf-8")
    assert main([str(path), "--out", str(out)]) == 0
    assert "kept" in capsys.readouterr().out
    assert "return 2 * x + 1" in target.read_text(encoding="utf-8")
    assert main([str(path), "--out", str(out), "--force"]) == 0
    assert "return 2 * x + 1" not in target.read_text(encoding="utf-8")


def test_main_reports_errors_in_one_line_and_writes_nothing(tmp_path, capsys):
    good = write_nb(tmp_path, [md(exercise("ex-f", "9.1, coding: f")), code(CODING),
                               md(SOLUTION_END)], "09_good.ipynb")  # fmt: skip
    bad = write_nb(tmp_path, [md("# Title"), code(CODING)], "10_bad.ipynb")
    out = tmp_path / "exercises"
    assert main([str(good), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 10_bad.ipynb, cell 1:") and err.count("\n") == 1
    assert not out.exists()
    assert main([str(tmp_path / "missing.ipynb"), "--out", str(out)]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_plain_text_of_titles():
    assert plain_text("$L_\\text{simple}$ from scratch") == "L_simple from scratch"
    assert plain_text("$x_0$ from $x_t$ and $\\epsilon$") == "x_0 from x_t and epsilon"
    assert plain_text("$\\bar\\alpha_t$ and $\\tilde{\\beta}_t$") == "alpha-bar_t and beta-tilde_t"


# --------------------------------------------------------------------------- the real chapters


def _regions(path: Path) -> int:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return sum(
        line.strip() == BEGIN
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for line in "".join(c["source"]).splitlines()
    )


def _roles(nb: dict) -> list[tuple[int, str, list[str]]]:
    return [
        (i, c["metadata"][LEARNER_KEY]["exercise"], c["metadata"][LEARNER_KEY]["roles"])
        for i, c in enumerate(nb["cells"])
        if LEARNER_KEY in c.get("metadata", {})
    ]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_has_a_learner_version(chapter):
    nb = learner_notebook(chapter)
    text = "\n".join(sources(nb))
    assert BEGIN not in text and END not in text
    roles = _roles(nb)
    stubbed = [ex for _, ex, r in roles if "stub" in r]
    checked = {ex for _, ex, r in roles if "checker" in r}
    assert text.count('raise NotImplementedError("Exercise ') == _regions(chapter)
    missing = sorted(set(stubbed) - checked)
    assert not missing, f"{chapter.name}: exercises {missing} have no `assert check_...(...)` line"
    assert "{exercise-start}" not in text and "{solution-start}" not in text
    assert all(c.get("outputs", []) == [] for c in nb["cells"])
    assert nb["cells"][0] == json.loads(chapter.read_text(encoding="utf-8"))["cells"][0] | {
        "outputs": [],
        "execution_count": None,
    }, "the Colab cell stays first, unchanged"


def not_solved_yet(exercise: str) -> re.Pattern:
    """The checker's verdict on a stub: "[NOT YET] Exercise 6.1 (title): not solved yet: ..."."""
    return re.compile(rf"\[NOT YET\] Exercise {re.escape(exercise)}\b[^:\n]*: not solved yet")


def _checker_calls(nb: dict):
    """(exercise, the checker call, the function definitions it grades, the notebook's imports
    of checkers) for every checker cell."""
    imports = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            tree = ast.parse("".join(cell["source"]))
            imports += [n for n in tree.body if isinstance(n, ast.ImportFrom)
                        and (n.module or "").startswith("ddpm.exercises")]  # fmt: skip
    for _, ex, roles in _roles(nb):
        if "checker" not in roles:
            continue
        cell = next(c for c in nb["cells"] if c["metadata"].get(LEARNER_KEY, {}).get("exercise")
                    == ex and "checker" in c["metadata"][LEARNER_KEY]["roles"])  # fmt: skip
        tree = ast.parse("".join(cell["source"]))
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        calls = [n.value for n in tree.body if isinstance(n, ast.Expr)
                 and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
                 and n.value.func.id.startswith("check_")]  # fmt: skip
        yield ex, calls, defs, imports


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_the_checkers_reject_the_stubs_as_not_solved_yet(chapter):
    """Without a kernel: define each stub and call its checker, as the learner's cell does."""
    nb = learner_notebook(chapter)
    graded = 0
    for ex, calls, defs, imports in _checker_calls(nb):
        namespace = {
            "torch": importlib.import_module("torch"),
            "math": importlib.import_module("math"),
        }
        exec(
            compile(ast.Module(body=imports + defs, type_ignores=[]), chapter.name, "exec"),
            namespace,
        )
        for call in calls:
            args = [a.id for a in call.args if isinstance(a, ast.Name)]
            if (
                len(args) != len(call.args)
                or call.keywords
                or any(a not in namespace for a in args)
            ):
                continue  # the call needs the notebook's state: the kernel test covers it
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                result = namespace[call.func.id](*(namespace[a] for a in args))
            assert not result, f"{chapter.name}: the checker accepted the stub of {ex}"
            assert not_solved_yet(ex).search(out.getvalue()), out.getvalue()
            graded += 1
    if _regions(chapter) and not graded:
        pytest.skip("its checker calls need the notebook's state: `make learner` runs them")


def test_write_learner_notebooks_for_the_book(tmp_path):
    report = write_learner_notebooks(CHAPTERS, tmp_path)
    assert [p.name for p, _ in report] == [c.name for c in CHAPTERS]
    assert all(stubbed is not None for _, stubbed in report)
    assert report[0][1] == ["1.1", "1.2"]


# --------------------------------------------------------------------------- in a kernel (slow)


def execution_problems(nb: dict, name: str) -> list[str]:
    """What is wrong with an executed learner notebook: an error that is not a stub's own
    NotImplementedError("Exercise N.M: ..."), or one before the first stub; a checker cell that
    does not print "[NOT YET] Exercise N.M ...: not solved yet"."""
    roles = {i: (ex, r) for i, ex, r in _roles(nb)}
    first_stub = min((i for i, (_, r) in roles.items() if "stub" in r), default=len(nb["cells"]))
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for err in (o for o in cell["outputs"] if o["output_type"] == "error"):
            from_stub = err["ename"] == "NotImplementedError" and err["evalue"].startswith(
                "Exercise "
            )
            if not (from_stub and i >= first_stub):
                tail = "\n".join(err.get("traceback", [])[-3:])
                problems.append(f"{name}, cell {i}: {err['ename']}: {err['evalue']}\n{tail}")
        if i in roles and "checker" in roles[i][1]:
            text = "".join(
                o.get("text", "") for o in cell["outputs"] if o["output_type"] == "stream"
            )
            if not not_solved_yet(roles[i][0]).search(text):
                problems.append(f"{name}, cell {i}: the checker of {roles[i][0]} printed {text!r}")
    return problems


def _executed(stub_error: str | None, checker_text: str, early_error: bool = False) -> dict:
    """A learner notebook as a kernel leaves it: set-up cell, stub + checker cell, later cell."""

    def out(**kw):
        return [dict(kw)]

    setup = code("x = 1")
    setup["outputs"] = out(output_type="error", ename="NameError", evalue="y", traceback=[]) if (
        early_error) else []  # fmt: skip
    stub = code("def f(x):\n    raise NotImplementedError()\n\n\ncheck_f(f);")
    stub["metadata"] = {LEARNER_KEY: {"exercise": "9.1", "roles": ["stub", "checker"]}}
    stub["outputs"] = out(output_type="stream", name="stdout", text=checker_text)
    later = code("f(2)")
    later["outputs"] = out(output_type="error", ename="NotImplementedError", evalue=stub_error,
                           traceback=[]) if stub_error else []  # fmt: skip
    return {"cells": [setup, stub, later]}


NOT_YET = "[NOT YET] Exercise 9.1 (f): not solved yet: replace the `raise ...` line\n"


def test_execution_problems_accepts_a_good_run_and_reports_each_fault():
    assert execution_problems(_executed("Exercise 9.1: f", NOT_YET), "nb") == []
    assert execution_problems(_executed(None, NOT_YET), "nb") == []
    (problem,) = execution_problems(_executed("Exercise 9.1: f", NOT_YET, early_error=True), "nb")
    assert problem.startswith("nb, cell 0: NameError")
    (problem,) = execution_problems(_executed("something else", NOT_YET), "nb")
    assert problem.startswith("nb, cell 2: NotImplementedError: something else")
    (problem,) = execution_problems(_executed(None, "[PASS] Exercise 9.1: correct\n"), "nb")
    assert problem.startswith("nb, cell 1: the checker of 9.1 printed '[PASS]")
    (problem,) = execution_problems(_executed(None, NOT_YET.replace("9.1", "9.2")), "nb")
    assert "the checker of 9.1" in problem


@pytest.mark.skipif(not RUN_LEARNER, reason="slow: `make learner` (DDPM_LEARNER_TESTS=1)")
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_learner_notebook_runs_and_every_checker_says_not_solved_yet(
    chapter, tmp_path, monkeypatch
):
    """Execute the learner notebook from a folder outside the checkout (as in Binder or Colab
    from exercises/), then look for problems (execution_problems)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    ((path, _),) = write_learner_notebooks([chapter], tmp_path)
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("DDPM_MODE", "quick")  # the kernel inherits it
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()  # fmt: skip
    problems = execution_problems(nb, path.name)
    assert not problems, "\n".join(problems)
