"""tools/reflow_notebooks.py: code cells reflowed to the book's 78 columns, the code unchanged
(same syntax tree), IPython lines and everything but the code kept, and a second run a no-op."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from reflow_notebooks import LINE_LENGTH, _hide_ipython, main, reflow_sources

LONG_CALL = (
    "result = some_function(first_argument, second_argument, third_argument, "
    "fourth_argument, fifth=5)"
)
TRAILING = "alpha = beta + gamma  # a trailing comment that pushes this line past the limit"
PARAGRAPH = (
    "# a full-line comment that is much too long for the book's column and must be wrapped\n"
    "# onto the next line, together with this one\n"
    "value = 1"
)
FSTRING = (
    'print(f"the loss is {loss:.4f} at step {step} of {steps}, with a learning rate of '
    '{lr:.2e} and a batch of {batch}")'
)
FMT_SKIP = "table = {1: 'one', 2: 'two', 3: 'three', 4: 'four', 5: 'five', 6: 'six'}  # fmt: skip"
MAGICS = "%matplotlib inline\n!echo hello\nx = [1,2,3]"
CELL_MAGIC = "%%time\nx = [1,2,3]"
NOT_PYTHON = "x = = 1"
DOCSTRING = (
    "def f():\n"
    '    """A docstring that is rather long, far longer than the column of the book allows.\n'
    "\n"
    "    - a list item that stays on its own line\n"
    '    """\n'
    "    return 1"
)
UNSPLITTABLE = (
    "print(f\"{'a' if some_rather_long_condition_name else 'another rather long text'}\")"
)


def code(source: str, **extra) -> dict:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": []}
    cell.update(extra, source=source.splitlines(keepends=True))
    return cell


def sample_notebook(tmp_path: Path) -> Path:
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# A title " + "x" * 100]},
        code(LONG_CALL, execution_count=3,
             outputs=[{"output_type": "stream", "name": "stdout", "text": ["kept\n"]}],
             metadata={"tags": ["hide-input"]}),  # fmt: skip
        code(TRAILING),
        code(PARAGRAPH),
        code(FSTRING),
        code(FMT_SKIP),
        code(MAGICS),
        code(CELL_MAGIC),
        code(NOT_PYTHON),
        code(DOCSTRING),
        code(""),
        code(UNSPLITTABLE),
    ]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4,
          "nbformat_minor": 5}  # fmt: skip
    path = tmp_path / "sample.ipynb"
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def sources(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]


def python_of(source: str) -> str:
    """The cell without its IPython lines."""
    lines = source.split("\n")
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def test_reflow_fits_the_column_keeps_the_code_and_is_idempotent(tmp_path, capsys):
    path = sample_notebook(tmp_path)
    before = json.loads(path.read_text())
    assert main([str(path)]) == 0
    first = path.read_text()
    out = capsys.readouterr().out
    assert f"reflowed {path}" in out
    after = json.loads(first)
    for old, new in zip(before["cells"], after["cells"], strict=True):
        old_src, new_src = "".join(old["source"]), "".join(new["source"])
        # everything but the source is kept
        assert {k: v for k, v in old.items() if k != "source"} == {
            k: v for k, v in new.items() if k != "source"
        }
        if new["cell_type"] != "code" or old_src in (CELL_MAGIC, NOT_PYTHON, ""):
            assert new_src == old_src
            continue
        old_src, new_src = python_of(old_src), python_of(new_src)
        if old_src == DOCSTRING:  # the one value that may change: only its wrapping
            old_doc, new_doc = (ast.get_docstring(ast.parse(x).body[0]) for x in (old_src, new_src))
            assert old_doc.split() == new_doc.split() and old_doc != new_doc
        else:
            assert ast.dump(ast.parse(old_src)) == ast.dump(ast.parse(new_src))
        if old_src != UNSPLITTABLE:  # one replacement field, no space outside it: a hand fix
            assert max(len(line) for line in new_src.split("\n")) <= LINE_LENGTH, new_src
    assert after["metadata"] == before["metadata"]
    # a second run changes nothing, and --check agrees
    assert main([str(path)]) == 0
    assert path.read_text() == first
    assert main([str(path), "--check"]) == 0


def test_what_each_step_does(tmp_path):
    path = sample_notebook(tmp_path)
    main([str(path)])
    src = sources(path)
    assert src[6].split("\n")[:2] == ["%matplotlib inline", "!echo hello"]  # magics untouched
    assert src[6].split("\n")[2] == "x = [1, 2, 3]"  # the Python around them formatted
    assert src[2] == (
        "# a trailing comment that pushes this line past the limit\nalpha = beta + gamma"
    )
    assert src[3] == (
        "# a full-line comment that is much too long for the book's column and must be\n"
        "# wrapped onto the next line, together with this one\nvalue = 1"
    )
    assert src[4].startswith('print(\n    f"the loss is {loss:.4f}') and src[4].count('f"') == 2
    assert "fmt: skip" not in src[5] and src[5].startswith("table = {")
    assert src[9].split("\n")[1:5] == [
        '    """A docstring that is rather long, far longer than the column of the book',
        "    allows.",
        "",
        "    - a list item that stays on its own line",
    ]


def test_check_mode_reports_without_writing(tmp_path, capsys):
    path = sample_notebook(tmp_path)
    text = path.read_text()
    assert main([str(path), "--check"]) == 1
    assert path.read_text() == text
    out = capsys.readouterr().out
    assert f"would reflow {path}" in out
    assert "skipped: sample.ipynb, cell 8: not Python" in out
    assert "1 code lines still longer than 78" in out
    assert "sample.ipynb, cell 11, line 2" in out  # the unsplittable string: a hand fix


def test_reflow_sources_leaves_code_whose_tree_would_change(monkeypatch):
    import reflow_notebooks

    def broken_formatter(sources, line_length):
        return ["y = 2"] * len(sources)

    monkeypatch.setattr(reflow_notebooks, "ruff_format", broken_formatter)
    assert reflow_sources(["x = 1"]) == [None]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["missing.ipynb"], "no such notebook"), (["bad.ipynb"], "not a readable notebook")],
)
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.ipynb").write_text("{not json", encoding="utf-8")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_book_notebooks_parse():
    """Every code cell of the book is something the tool can reflow (none left alone): Python
    once its IPython lines are set aside."""
    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "book").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "code":
                hidden = _hide_ipython("".join(cell["source"]))
                if hidden is not None:
                    ast.parse(hidden[0], filename=f"{path.name}, cell {index}")
