"""ddpm.progress: a notebook's progress bar must not flood the kernel's output channel."""

import io
import queue

import pytest
from tqdm.std import tqdm as terminal_tqdm

import ddpm.progress as P


class CountingBar(terminal_tqdm):
    refreshes = 0

    def refresh(self, *args, **kwargs):
        type(self).refreshes += 1
        return super().refresh(*args, **kwargs)


@pytest.fixture
def notebook(monkeypatch):
    """As in a Jupyter kernel, with a bar that counts its refreshes (drawn into a string)."""
    CountingBar.refreshes = 0
    monkeypatch.setattr(P, "in_notebook", lambda: True)
    monkeypatch.setattr(P, "tqdm", lambda *a, **k: CountingBar(*a, file=io.StringIO(), **k))


def test_notebook_bar_refreshes_about_100_times_however_fast_the_loop(notebook):
    n = 50_000
    bar = P.progress_bar(total=n, mininterval=0)  # no time limit: only the count bounds it
    assert bar.miniters == n // P.NOTEBOOK_REFRESHES and bar.maxinterval == float("inf")
    for _ in range(n):
        bar.update(1)
    bar.close()
    assert CountingBar.refreshes <= P.NOTEBOOK_REFRESHES + 3  # + the first and the last draw


def test_notebook_bar_length_from_the_iterable_and_explicit_arguments_win(notebook):
    assert P.progress_bar(range(1000)).miniters == 10
    assert P.progress_bar(range(1000)).mininterval == 1.0
    assert P.progress_bar(range(1000), miniters=3, mininterval=0.5).miniters == 3
    assert P.progress_bar(range(1000), miniters=3, mininterval=0.5).mininterval == 0.5
    assert P.progress_bar(range(50)).miniters == 1  # short loops: every step


def test_terminal_bar_is_plain_tqdm(monkeypatch):
    monkeypatch.setattr(P, "in_notebook", lambda: False)
    bar = P.progress_bar(total=10_000, file=io.StringIO())
    assert bar.miniters == 0 and bar.mininterval == 0.1  # tqdm's own defaults


def test_in_notebook_is_false_outside_a_kernel():
    assert not P.in_notebook()


# What nbval does: run the cell, wait for its reply on the shell channel, only then read the
# output (iopub) channel, waiting at most 5 s for each message up to the cell's "idle" one.
FLOOD = "for _ in tqdm(range(4000), mininterval=0): pass"
THROTTLED = "for _ in progress_bar(range(200_000), mininterval=0): pass"


def _idle_arrives(kc, code: str) -> bool:
    msg_id = kc.execute(code)
    reply = kc.get_shell_msg(timeout=300)
    while reply["parent_header"].get("msg_id") != msg_id:  # e.g. start-up's kernel_info replies
        reply = kc.get_shell_msg(timeout=300)
    assert reply["content"]["status"] == "ok", reply["content"]
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=5)
        except queue.Empty:
            return False
        state = msg["content"].get("execution_state")
        if msg["parent_header"].get("msg_id") == msg_id and state == "idle":
            return True


def test_a_long_notebook_loop_keeps_its_final_message():
    """A widget bar refreshed at every step loses the cell's last messages (nbval then reports
    "Timeout of 5 seconds exceeded waiting for output"); progress_bar's does not."""
    pytest.importorskip("ipywidgets")
    manager = pytest.importorskip("jupyter_client.manager")
    km, kc = manager.start_new_kernel(kernel_name="python3")
    try:
        setup = "from tqdm.auto import tqdm\nfrom ddpm.progress import in_notebook, progress_bar"
        assert _idle_arrives(kc, setup + "\nassert in_notebook()")
        assert _idle_arrives(kc, THROTTLED)
        if _idle_arrives(kc, FLOOD):
            pytest.skip("this kernel kept even an unthrottled bar's messages: nothing to show")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
