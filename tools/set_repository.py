"""Set the book's repository URL everywhere it appears, from one command.

The URL is one setting: ``repository.url`` in ``_config.yml`` (source button, Binder and Colab
launch buttons). Copies of it live in the Colab install cell that opens every chapter, and may
live in ``CITATION.cff``, ``pyproject.toml``'s project URLs, the README's badges and links, and
the authoring notes. This tool reads the current URL from ``_config.yml`` and rewrites every
copy, in every form (``https://github.com/OWNER/NAME``, the ``OWNER/NAME`` slug in Binder and
Colab links, ``OWNER.github.io/NAME`` for the published book)::

    python tools/set_repository.py https://github.com/<you>/ddpm-book
    python tools/set_repository.py --check     # report copies that disagree with _config.yml

It then checks that no old form is left behind. Run it from anywhere; ``--root`` picks another
checkout (the tests use a temporary copy).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# folders never rewritten: generated, environments, caches, data
SKIP_DIRS = {
    ".git", ".venv", "venv", "_build", "data", "exercises", "node_modules", "__pycache__",
    ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", "_vendor",
}  # fmt: skip
TEXT_SUFFIXES = {".md", ".ipynb", ".yml", ".yaml", ".toml", ".cff", ".py", ".txt", ".cfg", ".rst"}
TEXT_NAMES = {"postBuild", "Makefile", "LICENSE", "run"}

URL_RE = re.compile(r"^https://github\.com/(?P<owner>[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)"
                    r"/(?P<name>[A-Za-z0-9._-]+?)(?:\.git)?/?$")  # fmt: skip
CONFIG_URL_RE = re.compile(r"^(repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)(\S+)", re.M)


class RepositoryError(Exception):
    """A problem the user must fix; its message is one line."""


def parse_url(url: str) -> tuple[str, str]:
    """(owner, name) of a GitHub repository URL; a clear error for anything else."""
    match = URL_RE.match(url.strip())
    if not match:
        raise RepositoryError(
            f"expected a GitHub repository URL like https://github.com/<you>/ddpm-book, got {url!r}"
        )
    return match["owner"], match["name"]


def repository_url(root: Path = ROOT) -> str:
    """The repository URL set in ``_config.yml`` (``repository.url``)."""
    config = root / "_config.yml"
    match = CONFIG_URL_RE.search(config.read_text(encoding="utf-8"))
    if not match:
        raise RepositoryError(f"{config}: no `repository:` section with a `url:` line")
    return match[2].strip("\"'")


def colab_cell_source(url: str) -> str:
    """The code of the Colab install cell that opens every chapter (tagged ``remove-cell``)."""
    # laid out as ruff formats it at the book's 78 columns (book/ruff.toml)
    return (
        "# Colab only: install the ddpm package from the book's repository\n"
        "# (does nothing elsewhere).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        '    # the repository (see README, "Publishing")\n'
        f'    url = "{url}"\n'
        '    package = f"ddpm[metrics] @ git+{url}"\n'
        "    subprocess.run(\n"
        '        [sys.executable, "-m", "pip", "install", "-q", package], check=True\n'
        "    )"
    )


def text_files(root: Path):
    """Every text file of the checkout that may hold the URL (skipping SKIP_DIRS)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder, name)
            if path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
                yield path


def _patterns(owner: str, name: str) -> list[re.Pattern]:
    """The forms a repository's address takes: the github.com URL (and any link that contains
    the owner/name slug: Binder's gh/, Colab's github/, raw files), and the GitHub Pages site."""
    slug = re.escape(f"{owner}/{name}")
    return [
        re.compile(rf"(?<![\w.-]){slug}(?![\w-])"),
        re.compile(rf"(?<![\w.-]){re.escape(owner)}\.github\.io/{re.escape(name)}(?![\w-])", re.I),
    ]


def find_copies(root: Path, owner: str, name: str) -> dict[Path, int]:
    """Files that mention ``owner/name`` in any form, with the number of mentions."""
    found = {}
    for path in text_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        count = sum(len(p.findall(text)) for p in _patterns(owner, name))
        if count:
            found[path] = count
    return found


def set_repository(new_url: str, root: Path = ROOT) -> list[Path]:
    """Rewrite every copy of the current repository URL to ``new_url``; return changed files."""
    new_owner, new_name = parse_url(new_url)
    new_url = f"https://github.com/{new_owner}/{new_name}"
    old_owner, old_name = parse_url(repository_url(root))
    if (old_owner, old_name) == (new_owner, new_name):
        return []
    old_slug, old_pages = _patterns(old_owner, old_name)
    changed = []
    for path in find_copies(root, old_owner, old_name):
        text = path.read_text(encoding="utf-8")
        new_text = old_slug.sub(f"{new_owner}/{new_name}", text)
        new_text = old_pages.sub(f"{new_owner.lower()}.github.io/{new_name}", new_text)
        if new_text != text:
            path.write_text(new_text, encoding="utf-8")
            changed.append(path)
    left = find_copies(root, old_owner, old_name)
    if left:
        where = ", ".join(str(p.relative_to(root)) for p in left)
        raise RepositoryError(f"the old address {old_owner}/{old_name} is still in: {where}")
    if repository_url(root) != new_url:
        raise RepositoryError(f"_config.yml's repository.url is not {new_url} after the rewrite")
    return changed


def check(root: Path = ROOT) -> list[str]:
    """Problems with the URL being one setting: links to another owner's copy of this repository
    (same name), or a GitHub URL in _config.yml that is malformed."""
    owner, name = parse_url(repository_url(root))
    other = re.compile(rf"github\.com/([\w.-]+)/{re.escape(name)}(?![\w-])")
    problems = []
    for path in text_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in other.finditer(text):
            if match[1] != owner:
                rel = path.relative_to(root)
                problems.append(f"{rel}: github.com/{match[1]}/{name}, expected owner {owner}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="the new URL, https://github.com/OWNER/NAME")
    parser.add_argument("--check", action="store_true", help="only report disagreeing copies")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.check or args.url is None:
            if args.url is not None:
                parser.error("give either a URL or --check, not both")
            problems = check(root)
            for problem in problems:
                print(problem)
            print(
                f"repository URL: {repository_url(root)}"
                + (f"; {len(problems)} copies disagree" if problems else "; all copies agree")
            )
            return 1 if problems else 0
        changed = set_repository(args.url, root)
    except RepositoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in changed:
        print(f"updated {path.relative_to(root)}")
    print(f"repository URL: {repository_url(root)} ({len(changed)} files changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
