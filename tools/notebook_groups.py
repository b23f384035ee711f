"""Which notebooks may run side by side (`make nbval`, `make learner`: pytest-xdist, two workers).

A notebook's cells share one kernel, so each notebook is one work unit: its cells run in order
on one worker. The chapters that load the quick-mode model through ``trained_model(...)``
without a ``config=`` of their own form one unit, in book order: chapter 7 trains that model
and the later ones load it, so none of them may start before chapter 7 has finished (on a
fresh machine the model is not cached yet). Every other notebook runs on whichever worker is
free, the units with the most tests first.

The units reach pytest-xdist through its ``pytest_xdist_make_scheduler`` hook (book/conftest.py,
tests/conftest.py), not through ``xdist_group`` marks: pytest-xdist 3.8 renames a marked
test's node id by assigning ``item._nodeid``, which pytest 9 no longer reads.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

SHARED_MODEL_GROUP = "the-quick-mode-model"


@cache
def uses_shared_model(notebook: Path) -> bool:
    """Whether a code cell calls ``trained_model(...)`` without ``config=`` (the mode's model)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:  # IPython syntax (magics): not a call we look for
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "trained_model"
                and not any(k.arg == "config" for k in node.keywords)
            ):
                return True
    return False


def work_unit(notebook: Path) -> str:
    """The work unit of a notebook's tests: the shared model's, or its own (its stem)."""
    return SHARED_MODEL_GROUP if uses_shared_model(notebook) else notebook.stem


# tests/test_learner_notebooks.py runs one learner notebook per test, named by its chapter
LEARNER_TEST = re.compile(r"::test_learner_notebook_runs\w*\[(\w+)\]$")


def unit_of_test(nodeid: str, root: Path) -> str:
    """The work unit of a test, from its node id (relative to the rootdir ``root``): an nbval
    cell (``book/NN_name.ipynb::Cell 3``) and a learner-notebook run (``...[NN_name]``) that
    of their notebook; any other test is a unit of its own."""
    path = nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        return work_unit(root / path)
    learner = LEARNER_TEST.search(nodeid)
    return work_unit(root / "book" / f"{learner[1]}.ipynb") if learner else nodeid


def scheduler(config, log):
    """pytest-xdist's scheduler by scope (``--dist loadscope``), with ``unit_of_test`` as the
    scope: the tests of one unit run on one worker, in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class NotebookScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_test(nodeid, config.rootpath)

    return NotebookScheduling(config, log)
