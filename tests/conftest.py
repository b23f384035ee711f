"""Fixtures and set-up shared by several test files."""

import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

# tools/ (make_exercises.py, set_repository.py, ...) are scripts, not a package: make them
# importable by the tests that exercise them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))


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
