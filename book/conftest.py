"""pytest set-up for `make nbval`: every chapter runs as a test, on two
workers (pytest-xdist). Each notebook's cells stay on one worker, and the
chapters that load chapter 7's model run after it, on the same worker
(tools/notebook_groups.py).
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from notebook_groups import scheduler  # noqa: E402


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    return scheduler(config, log)
