"""The repository URL is one setting: _config.yml holds it, every chapter's Colab install cell
carries the same URL, and tools/set_repository.py rewrites every copy at once."""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from make_exercises import chapter_notebooks
from set_repository import (
    colab_cell_source,
    main,
    parse_url,
    repository_url,
    set_repository,
)

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = chapter_notebooks(ROOT)


def _comments(source: str) -> str:
    """The text of the comments, however they are wrapped into lines."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    words = [tok.string.lstrip("#").strip() for tok in tokens if tok.type == tokenize.COMMENT]
    return " ".join(" ".join(words).split())


def _same_code(a: str, b: str) -> bool:
    """Same statements and comments, whatever the layout (ruff format may rewrap the cell,
    tools/reflow_notebooks.py its comments)."""
    return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b)) and _comments(a) == _comments(b)


def _first_cell(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))["cells"][0]


def test_config_holds_a_github_repository_url():
    owner, name = parse_url(repository_url(ROOT))
    assert owner and name


def test_the_toc_lists_chapters():
    assert len(CHAPTERS) >= 6 and all(p.suffix == ".ipynb" for p in CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_starts_with_the_colab_cell(chapter):
    cell = _first_cell(chapter)
    source = "".join(cell["source"])
    assert cell["cell_type"] == "code", f"{chapter.name}: the first cell must be the Colab cell"
    assert "remove-cell" in cell.get("metadata", {}).get("tags", []), (
        f"{chapter.name}: tag the Colab cell remove-cell (it is hidden in the static book)"
    )
    assert _same_code(source, colab_cell_source(repository_url(ROOT))), (
        f"{chapter.name}: the first cell differs from the Colab cell (book/AUTHORING.md), or its"
        f" URL is not _config.yml's {repository_url(ROOT)}"
    )


def test_same_code_sees_a_changed_url_or_comment_but_not_the_layout():
    cell = colab_cell_source("https://github.com/a/b")
    rewrapped = cell.replace('"-q", package]', '"-q",\n        package]')
    assert rewrapped != cell and _same_code(cell, rewrapped)
    comments_rewrapped = cell.replace("repository\n# (does", "repository (does\n#")
    assert comments_rewrapped != cell and _same_code(cell, comments_rewrapped)
    assert not _same_code(cell, colab_cell_source("https://github.com/a/c"))
    assert not _same_code(cell, cell.replace("# Colab only", "# Colab"))


def test_the_colab_cell_does_nothing_outside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(colab_cell_source(repository_url(ROOT)), {})
    assert calls == []


def test_the_colab_cell_installs_the_package_from_the_repository_in_colab(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    url = repository_url(ROOT)
    exec(colab_cell_source(url), {})
    assert len(calls) == 1
    cmd, kw = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and kw == {"check": True}
    assert cmd[-1] == f"ddpm[metrics] @ git+{url}"


# --------------------------------------------------------------------------- set_repository


def _copy_checkout(dest: Path) -> Path:
    """The files that hold the URL, copied (notebooks, config, docs, tools)."""
    for name in ("_config.yml", "_toc.yml", "CITATION.cff", "pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    for folder in ("book", "tools"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_set_repository_rewrites_every_copy_and_leaves_no_old_url(tmp_path, capsys):
    root = _copy_checkout(tmp_path)
    old_url = repository_url(root)
    owner, name = parse_url(old_url)
    # links in every form the tool must follow, and two it must leave alone
    (root / "README.md").write_text(
        f"[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/{owner}/"
        f"{name}/main)\n[Colab](https://colab.research.google.com/github/{owner}/{name}/blob/main/"
        f"book/01_forward_process.ipynb)\nThe book: https://{owner.lower()}.github.io/{name}/\n"
        f"Clone: git clone {old_url}.git\nOther: https://github.com/{owner}/{name}-extras and "
        "https://github.com/pytorch/pytorch\n",
        encoding="utf-8",
    )
    (root / "CITATION.cff").write_text(f"repository-code: {old_url}\n", encoding="utf-8")
    new_url = "https://github.com/Some-One/diffusion-course"

    assert main([new_url, "--root", str(root)]) == 0
    assert "files changed" in capsys.readouterr().out

    assert repository_url(root) == new_url
    old = re.compile(rf"(?<![\w-]){re.escape(owner)}/{re.escape(name)}(?![\w-])")
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in {".md", ".ipynb", ".yml", ".cff", ".toml"}:
            text = path.read_text(encoding="utf-8")
            assert not old.search(text), f"{path.relative_to(root)} still holds {owner}/{name}"
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "mybinder.org/v2/gh/Some-One/diffusion-course/main" in readme
    assert "colab.research.google.com/github/Some-One/diffusion-course/blob/main/book/" in readme
    assert "https://some-one.github.io/diffusion-course/" in readme
    assert f"git clone {new_url}.git" in readme
    assert f"https://github.com/{owner}/{name}-extras" in readme  # another repository: untouched
    assert "https://github.com/pytorch/pytorch" in readme
    assert (root / "CITATION.cff").read_text(encoding="utf-8") == f"repository-code: {new_url}\n"
    for chapter in chapter_notebooks(root):
        assert _same_code("".join(_first_cell(chapter)["source"]), colab_cell_source(new_url))
    assert main(["--check", "--root", str(root)]) == 0
    assert set_repository(new_url, root) == []  # a second run changes nothing


def test_set_repository_check_finds_a_stale_copy(tmp_path, capsys):
    root = _copy_checkout(tmp_path)
    owner, name = parse_url(repository_url(root))
    (root / "README.md").write_text(f"https://github.com/someone-else/{name}\n", encoding="utf-8")
    assert main(["--check", "--root", str(root)]) == 1
    assert f"README.md: github.com/someone-else/{name}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad", ["github.com/a/b", "https://gitlab.com/a/b", "https://github.com/a", "not a url"]
)
def test_set_repository_rejects_a_bad_url_in_one_line(tmp_path, capsys, bad):
    root = _copy_checkout(tmp_path)
    before = (root / "_config.yml").read_text(encoding="utf-8")
    assert main([bad, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: expected a GitHub repository URL") and err.count("\n") == 1
    assert (root / "_config.yml").read_text(encoding="utf-8") == before


def test_parse_url_accepts_the_usual_spellings():
    for url in (
        "https://github.com/a-b/c.d",
        "https://github.com/a-b/c.d/",
        "https://github.com/a-b/c.d.git",
    ):
        assert parse_url(url) == ("a-b", "c.d")  # fmt: skip


# --------------------------------------------------------------------------- launch buttons


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_launch_buttons_of_the_built_book_open_the_notebooks(chapter):
    """Colab and Binder open book/NN_name.ipynb (path_to_book "", notebooks under book/). Needs
    the built book (make book, or the book-strict phase of make test, which runs before)."""
    page = ROOT / "_build" / "html" / "book" / f"{chapter.stem}.html"
    if not page.is_file():
        pytest.skip(f"{page.relative_to(ROOT)} not built yet (make book)")
    html = page.read_text(encoding="utf-8")
    owner, name = parse_url(repository_url(ROOT))
    rel = chapter.relative_to(ROOT).as_posix()
    colab = f"https://colab.research.google.com/github/{owner}/{name}/blob/main/{rel}"
    binder = f"https://mybinder.org/v2/gh/{owner}/{name}/main?urlpath=lab/tree/{rel}"
    assert colab in html, f"no Colab button for {rel} in {page.name}"
    assert binder in html, f"no Binder button for {rel} in {page.name}"
