"""tools/notebook_groups.py: which notebooks `make nbval` and `make learner` run side by side."""

import json
from pathlib import Path

import pytest
from notebook_groups import SHARED_MODEL_GROUP, unit_of_test, work_unit

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def notebook(tmp_path: Path, *sources: str, name: str = "13_new.ipynb") -> Path:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# trained_model(mode)"}]
    cells += [
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
        for s in sources
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))  # fmt: skip
    return path


def test_the_chapters_that_load_chapter_7s_model_share_its_group():
    groups = {p.stem: work_unit(p) for p in sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))}
    shared = sorted(k for k, g in groups.items() if g == SHARED_MODEL_GROUP)
    assert shared[0] == "07_training"  # the chapter that trains it comes first
    assert {"08_sampling", "09_interpolation", "10_evaluation"} <= set(shared)
    # the theory chapters and the guidance chapter (its own model) run on their own
    assert groups["01_forward_process"] == "01_forward_process"
    assert groups["12_guidance"] == "12_guidance"


@pytest.mark.parametrize(
    ("sources", "shared"),
    [
        (["model, d, c = trained_model(mode)"], True),
        (["import ddpm.mode", "m = ddpm.mode.trained_model(device='cpu')"], True),
        (["m = trained_model(mode, config=preset_config('digits-cond'))"], False),
        (["%matplotlib inline", "x = 1"], False),  # IPython syntax is skipped, not an error
        (["trained_model"], False),  # a name, not a call
    ],
)
def test_a_call_without_config_joins_the_shared_group(tmp_path, sources, shared):
    path = notebook(tmp_path, *sources)
    assert work_unit(path) == (SHARED_MODEL_GROUP if shared else "13_new")


LEARNER = "tests/test_learner_notebooks.py::test_learner_notebook_runs_and_every_checker_says_"
OTHER = "tests/test_repository_url.py::test_x[07_training]"  # another test: a unit of its own


@pytest.mark.parametrize(
    ("nodeid", "unit"),
    [
        ("book/07_training.ipynb::Cell 0", SHARED_MODEL_GROUP),  # nbval's cells
        ("book/09_interpolation.ipynb::Cell 12", SHARED_MODEL_GROUP),
        ("book/02_posterior.ipynb::Cell 3", "02_posterior"),
        (LEARNER + "not_solved_yet[10_evaluation]", SHARED_MODEL_GROUP),
        (LEARNER + "not_solved_yet[12_guidance]", "12_guidance"),
        (OTHER, OTHER),
    ],
)
def test_a_test_goes_to_its_notebooks_unit(nodeid, unit):
    assert unit_of_test(nodeid, ROOT) == unit
