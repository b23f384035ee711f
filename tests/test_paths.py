"""ddpm.paths.data_dir: environment override, source checkout, pip-installed copy."""

from pathlib import Path

import pytest

from ddpm import paths


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No override, and a fake home so nothing touches the real user cache."""
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    return monkeypatch


def make_checkout(root: Path) -> Path:
    """A minimal fake checkout: pyproject.toml and _toc.yml next to a ddpm/ folder."""
    (root / "ddpm").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'ddpm'\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    return root / "ddpm"


def make_site_packages(root: Path) -> Path:
    pkg = root / "lib" / "python3.11" / "site-packages" / "ddpm"
    pkg.mkdir(parents=True)
    return pkg


def test_env_var_overrides_everything(clean_env, tmp_path):
    clean_env.setattr(paths, "_PACKAGE_DIR", make_checkout(tmp_path / "repo"))
    target = tmp_path / "elsewhere" / "cache"
    clean_env.setenv(paths.ENV_VAR, str(target))
    got = paths.data_dir()
    assert got == target.resolve()
    assert got.is_dir()


def test_env_var_expands_user(clean_env, tmp_path):
    clean_env.setenv(paths.ENV_VAR, "~/ddpm-data")
    got = paths.data_dir()
    assert got == (tmp_path / "home" / "ddpm-data").resolve()
    assert got.is_dir()


def test_empty_env_var_is_ignored(clean_env, tmp_path):
    clean_env.setattr(paths, "_PACKAGE_DIR", make_checkout(tmp_path / "repo"))
    clean_env.setenv(paths.ENV_VAR, "")
    assert paths.data_dir() == (tmp_path / "repo" / "data").resolve()


def test_checkout_uses_repo_data_whatever_the_cwd(clean_env, tmp_path):
    clean_env.setattr(paths, "_PACKAGE_DIR", make_checkout(tmp_path / "repo"))
    elsewhere = tmp_path / "somewhere" / "book"
    elsewhere.mkdir(parents=True)
    clean_env.chdir(elsewhere)
    got = paths.data_dir()
    assert got == (tmp_path / "repo" / "data").resolve()
    assert got.is_dir()
    assert not (elsewhere / "data").exists()


def test_real_checkout_resolves_to_this_repo_data(clean_env, tmp_path):
    """Run from this repository, the real package finds the repo's data/ from any cwd."""
    root = paths.repo_root()
    if root is None:
        pytest.skip("ddpm is not imported from a source checkout here")
    clean_env.chdir(tmp_path)
    assert paths.data_dir() == (root / "data").resolve()


def test_installed_package_uses_xdg_cache(clean_env, tmp_path):
    clean_env.setattr(paths, "_PACKAGE_DIR", make_site_packages(tmp_path / "venv"))
    clean_env.setattr(paths, "_on_windows", lambda: False)
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.repo_root() is None
    got = paths.data_dir()
    assert got == (tmp_path / "xdg" / "ddpm").resolve()
    assert got.is_dir()


def test_installed_package_falls_back_to_home_cache(clean_env, tmp_path):
    clean_env.setattr(paths, "_PACKAGE_DIR", make_site_packages(tmp_path / "venv"))
    clean_env.setattr(paths, "_on_windows", lambda: False)
    clean_env.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert paths.data_dir() == (tmp_path / "home" / ".cache" / "ddpm").resolve()


def test_installed_package_on_windows_uses_localappdata(clean_env, tmp_path):
    clean_env.setattr(paths, "_PACKAGE_DIR", make_site_packages(tmp_path / "venv"))
    clean_env.setattr(paths, "_on_windows", lambda: True)
    clean_env.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    assert paths.data_dir() == (tmp_path / "AppData" / "Local" / "ddpm").resolve()


def test_checkout_needs_both_markers(clean_env, tmp_path):
    pkg = make_checkout(tmp_path / "repo")
    (tmp_path / "repo" / "_toc.yml").unlink()
    clean_env.setattr(paths, "_PACKAGE_DIR", pkg)
    clean_env.setattr(paths, "_on_windows", lambda: False)
    assert paths.repo_root() is None
    assert paths.data_dir() == (tmp_path / "home" / ".cache" / "ddpm").resolve()


def test_subfolder_parts_are_created(clean_env, tmp_path):
    clean_env.setenv(paths.ENV_VAR, str(tmp_path / "cache"))
    got = paths.data_dir("checkpoints", "digits")
    assert got == (tmp_path / "cache" / "checkpoints" / "digits").resolve()
    assert got.is_dir()
