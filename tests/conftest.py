"""Fixtures and set-up shared by several test files."""

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

# tools/ (make_exercises.py, set_repository.py, ...) are scripts, not a package: make them
# importable by the tests that exercise them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from notebook_groups import scheduler  # noqa: E402


def pytest_configure(config):
    """``make portability``: the second numerical pass must really run on another of PyTorch's
    CPU kernel sets than the first pass (and on one thread); stop at once if it does not."""
    first = os.environ.get("DDPM_FIRST_PASS_CPU_CAPABILITY")
    if not first:
        return
    wanted = os.environ.get("ATEN_CPU_CAPABILITY", "")
    now = torch.backends.cpu.get_cpu_capability()
    if now.lower() != wanted.lower() or now.lower() == first.lower():
        raise pytest.UsageError(
            f"the second numerical pass runs on PyTorch's {now} kernels, the first ran on "
            f"{first}: set ATEN_CPU_CAPABILITY to a kernel set other than {first} this CPU has "
            f"(it is {wanted!r}); `make portability` does this itself"
        )
    if torch.get_num_threads() != 1:
        raise pytest.UsageError(
            f"the second numerical pass runs on {torch.get_num_threads()} threads, not 1: "
            f"set OMP_NUM_THREADS=1 (`make portability` does)"
        )


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`make learner` runs on two workers: each learner notebook is one test, and the chapters
    that load chapter 7's model run after it on one worker (tools/notebook_groups.py); every
    other test is a unit of its own."""
    return scheduler(config, log)


@pytest.fixture
def no_network(monkeypatch):
    """Make every urllib request fail (as offline); the list records the URLs tried."""
    tried = []

    def offline(request, *args, **kwargs):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return tried


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: one intra-op thread is several times faster than two fighting ones.
    Use it per module: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
