"""Progress bars (tqdm.auto) that stay cheap in a notebook, however long the loop runs.

In a Jupyter kernel tqdm.auto draws an ipywidgets bar, and each refresh of it sends about three
messages on the kernel's output channel (ZeroMQ). A client that reads that channel only after
the cell has finished, as the notebook test runner nbval does, lets them queue up; past about
a thousand queued messages ZeroMQ drops new ones, the cell's final "idle" message among them, and
the client then fails the cell with "Timeout of 5 seconds exceeded waiting for output". tqdm's
default, up to ten refreshes a second, gets there within two minutes of training. So in a
notebook a bar with a known length refreshes about ``NOTEBOOK_REFRESHES`` times in all and at
most once a second; in a terminal nothing changes.
"""

from __future__ import annotations

from tqdm.auto import tqdm

try:
    from tqdm.notebook import tqdm_notebook
except ImportError:  # pragma: no cover - tqdm.notebook ships with tqdm; be safe anyway
    tqdm_notebook = None

NOTEBOOK_REFRESHES = 100

__all__ = ["NOTEBOOK_REFRESHES", "progress_bar"]


def in_notebook() -> bool:
    """True where tqdm.auto draws a notebook widget (a Jupyter kernel with ipywidgets)."""
    return tqdm_notebook is not None and issubclass(tqdm, tqdm_notebook)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm.auto.tqdm(iterable, **kwargs)``; in a notebook, throttled as the module says.

    The bar's length is ``total``, else ``len(iterable)``. Explicit ``miniters`` /
    ``mininterval`` / ``maxinterval`` arguments win.
    """
    if in_notebook() and not kwargs.get("disable", False):
        total = kwargs.get("total")
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        if total:
            kwargs.setdefault("miniters", max(1, int(total) // NOTEBOOK_REFRESHES))
            # tqdm's monitor thread would reset miniters to 1 after maxinterval seconds
            # without a refresh; the refresh count is bounded only without it
            kwargs.setdefault("maxinterval", float("inf"))
        kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kwargs)
