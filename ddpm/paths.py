"""Where datasets and checkpoints are cached.

One folder holds everything the package downloads or trains (datasets, checkpoints), so a
chapter that needs a trained model finds the one an earlier chapter saved. It is chosen as:

1. the environment variable ``DDPM_DATA_DIR``, when set and not empty;
2. else, when the package is imported from a source checkout of this repository, the
   checkout's ``data/`` folder, whatever the working directory (notebooks run in ``book/``);
3. else (the package was pip-installed), a per-user cache folder:
   ``$XDG_CACHE_HOME/ddpm`` or ``~/.cache/ddpm``; on Windows ``%LOCALAPPDATA%\\ddpm``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DDPM_DATA_DIR"

# The folder this package lives in; tests point it elsewhere to exercise each branch.
_PACKAGE_DIR = Path(__file__).resolve().parent


def _on_windows() -> bool:
    return os.name == "nt"


def repo_root() -> Path | None:
    """The root of the source checkout the package is imported from, or None.

    A checkout is recognised by ``pyproject.toml`` and ``_toc.yml`` (the book's table of
    contents) next to the package folder; a pip-installed copy in site-packages has neither.
    """
    root = _PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "_toc.yml").is_file():
        return root
    return None


def user_cache_dir() -> Path:
    """The per-user cache folder used when the package is not in a source checkout."""
    if _on_windows():
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "ddpm"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says to ignore a relative XDG_CACHE_HOME
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "ddpm"


def data_dir(*parts: str) -> Path:
    """The data and checkpoint cache folder (created if missing), as an absolute path.

    ``DDPM_DATA_DIR`` overrides; else the checkout's ``data/``; else the user cache folder
    (see the module docstring). Extra ``parts`` name a subfolder, also created:
    ``data_dir("checkpoints")``.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
    else:
        root = repo_root()
        path = root / "data" if root is not None else user_cache_dir()
    path = path.joinpath(*parts).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. DDPM_DATA_DIR names a file, or a read-only folder
        where = f"{ENV_VAR}={env}" if env else "the data folder"
        raise ValueError(f"cannot create {path} ({where}): {err.strerror}; point {ENV_VAR} at "
                         f"a folder you can write to") from None  # fmt: skip
    return path
