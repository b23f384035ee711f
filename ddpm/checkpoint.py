"""Checkpoint files and run folders: atomic writes, the run-folder lock, rotation, clean-up.

* :func:`atomic_write` is the package's one way to write a file: into a hidden temporary file
  next to the target (``.NAME.XXXX.tmp``), flushed to disk, then ``os.replace``-d over the
  target. A crash leaves the old file or the new one, never half of one. Training, the metrics
  cache and the figures all write through it.
* A checkpoint is a dict of tensors and plain values saved with ``torch.save`` and read with
  ``torch.load(weights_only=True)``, which refuses to run code from a malicious pickle. It
  carries ``format_version`` (``FORMAT_VERSION``); files without one are version 1, from a
  UNet whose downsampling padded differently (same parameter shapes, other function), and are
  refused with a one-line :class:`CheckpointError` rather than loaded into wrong samples.
* :class:`RunLock` holds ``RUN/train.lock`` (an exclusive ``flock`` on Linux and macOS) for the
  life of a training, so two trainings never write one run folder. The file records the
  holder's pid and host; one left behind by a killed process is taken over with a notice.
* :func:`rotate` keeps the newest ``keep_last`` checkpoints and never the one just written;
  :func:`remove_orphans` deletes the ``.ckpt_*.tmp`` files a ``kill -9`` during a save leaves.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

import torch

try:  # POSIX; elsewhere the lock falls back to an exclusively created file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "RunFolderError",
    "RunLock",
    "atomic_write",
    "atomic_save",
    "check_output_path",
    "checkpoint_path",
    "checkpoint_step",
    "latest_checkpoint",
    "read_checkpoint",
    "load_weights",
    "remove_orphans",
    "rotate",
    "os_error_message",
]

# 2: the UNet's downsampling pads as the original code does; version 1 files (no key) predate it.
FORMAT_VERSION = 2
REQUIRED_KEYS = frozenset({"model", "ema", "optimizer", "step", "config", "rng"})
LOCK_NAME = "train.lock"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model / config it is loaded into."""


class RunFolderError(ValueError):
    """A run folder that cannot be used now: locked by another training, or an existing run."""


def os_error_message(err: OSError, what: str) -> str:
    """One line for an OSError: ``cannot write X: No space left on device``."""
    reason = err.strerror or type(err).__name__
    hint = {errno.ENOSPC: "; free some disk space", errno.EROFS: "; choose a writable folder",
            errno.EACCES: "; choose a folder you may write to"}.get(err.errno, "")  # fmt: skip
    return f"cannot {what}: {reason}{hint}"


# ---------------------------------------------------------------------- atomic writing
def _mkstemp(folder: Path, name: str) -> tuple[int, str]:
    """The temporary file of an atomic write (one place, so tests can inject faults)."""
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")


def atomic_write(path, write: Callable[[BinaryIO], None], *, mode: int = 0o644) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then move it into
    place with ``os.replace``. On any error the temporary file is removed and ``path`` is left
    as it was. The parent folder is created. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj, path) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def check_output_path(path, what: str) -> Path:
    """Check before any work that ``path`` can be written: not a folder, its parent a folder
    (created when missing) that accepts a new file. Raises a one-line ValueError naming
    ``what`` (e.g. ``--out``); changes no existing file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"{what} {path}: {folder} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _mkstemp(parent, path.name)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"{what} {path}: " + os_error_message(err, f"write in {parent}")) from None
    return path


# ---------------------------------------------------------------------- checkpoint files
def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (``ckpt_0001400.pt`` -> 1400); -1 for other names."""
    m = re.fullmatch(r"ckpt_(\d+)\.pt", Path(path).name)
    return int(m.group(1)) if m else -1


def checkpoint_path(run_dir, step: int) -> Path:
    return Path(run_dir, "checkpoints", f"ckpt_{step:07d}.pt")


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint with the highest step in ``run_dir/checkpoints``, or None."""
    paths = [p for p in Path(run_dir, "checkpoints").glob("ckpt_*.pt") if checkpoint_step(p) >= 0]
    return max(paths, key=checkpoint_step, default=None)


def read_checkpoint(path) -> dict:
    """torch.load(weights_only=True) of a file (or a run folder's latest checkpoint), with one
    clear CheckpointError for a missing, damaged, foreign or outdated file."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path / 'checkpoints'}")
        path = found
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # truncated zip, bad or malicious pickle, ...: all mean "damaged"
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or truncated "
            f"({type(err).__name__}); delete it to resume from an earlier one"
        ) from None
    if not isinstance(ckpt, dict) or (missing := REQUIRED_KEYS - set(ckpt)):
        what = f"missing {sorted(missing)}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a ddpm.train checkpoint: {what}")
    version = ckpt.get("format_version", 1)
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} predates the current UNet (format {version}, now "
            f"{FORMAT_VERSION}: the downsampling padding changed, so its weights would give "
            f"wrong samples); retrain it (ddpm train --overwrite, or delete its run folder)"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {version}, newer than this ddpm "
                              f"reads ({FORMAT_VERSION}); upgrade ddpm")  # fmt: skip
    return ckpt


def load_weights(module: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict, raising a one-line CheckpointError that summarises any mismatch."""
    own = module.state_dict()
    problems = []
    if missing := sorted(set(own) - set(state)):
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected := sorted(set(state) - set(own)):
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint "
                        f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})")  # fmt: skip
    if problems:
        raise CheckpointError(f"{what} does not fit this architecture: " + "; ".join(problems))
    module.load_state_dict(state)


def rotate(ckpt_dir, keep_last: int, keep: Path) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints, never ``keep`` (the one just
    written). Returns the deleted paths; a file already gone is not an error."""
    paths = sorted((p for p in Path(ckpt_dir).glob("ckpt_*.pt") if checkpoint_step(p) >= 0),
                   key=checkpoint_step)  # fmt: skip
    old = [p for p in paths if p != keep][: max(0, len(paths) - max(keep_last, 1))]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def remove_orphans(ckpt_dir) -> list[tuple[Path, int]]:
    """Delete the ``.ckpt_*.tmp`` files an interrupted save left in ``ckpt_dir``; returns
    (path, size in bytes) of each. Call it only while holding the run's lock."""
    removed = []
    for p in sorted(Path(ckpt_dir).glob(".ckpt_*.tmp")):
        with suppress(FileNotFoundError):
            size = p.stat().st_size
            p.unlink()
            removed.append((p, size))
    return removed


# ---------------------------------------------------------------------- the run-folder lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder for the life of a training: ``with RunLock(run):``.

    ``RunFolderError`` when another live process holds it (naming its pid and host). A lock
    file whose holder is dead is taken over; ``notice`` then says so. On Linux the lock is
    an ``flock``, which the kernel drops when its holder dies, even by ``kill -9``."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.notice: str | None = None
        self._fd: int | None = None

    def _refuse(self, holder: dict) -> RunFolderError:
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return RunFolderError(
            f"run folder {self.run_dir} is in use by another training ({who}); wait for it to "
            f"finish or stop it, or train into another run (--name or --run-dir)"
        )

    def _read(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            return json.loads(os.read(fd, 4096).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {"pid": "?", "host": "?"}

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        while True:
            if fcntl is not None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = self._read(fd)
                    os.close(fd)
                    raise self._refuse(holder) from None
                try:  # the holder before us may have unlinked the file we opened: retry
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            else:  # pragma: no cover - no flock: an exclusively created file and a pid check
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    holder = json.loads(self.path.read_text() or "{}")
                    if holder.get("host") != me["host"] or _pid_alive(int(holder.get("pid", 0))):
                        raise self._refuse(holder) from None
                    fd = os.open(self.path, os.O_RDWR)
            old = self._read(fd)
            if old:
                self.notice = (f"took over the lock of {self.run_dir}: its holder (pid "
                               f"{old.get('pid', '?')} on host {old.get('host', '?')}) is no "
                               f"longer running")  # fmt: skip
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(me).encode())
            os.fsync(fd)
            self._fd = fd
            return self

    def release(self) -> None:
        if self._fd is None:
            return
        with suppress(FileNotFoundError):
            self.path.unlink()  # while still holding it: a waiting opener then retries
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
