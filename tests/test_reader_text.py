"""Readers see only the repository: the chapters, the package and the tests state each reason
themselves, and never refer to numbered pitfalls or a guide kept outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("book", "ddpm", "tests", "tools")
TEXT_SUFFIXES = {".py", ".ipynb", ".md", ".bib", ".yml", ".yaml", ".toml", ".txt", ".cfg"}
# built from pieces, so that this file does not match its own patterns
FORBIDDEN = re.compile(
    "|".join([r"\bpit" + r"falls?\s*(?:no\.?\s*)?#?\d+", r"\bdesign" + r"[\s-]+guide"]),
    re.IGNORECASE,
)


def reader_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            rel = path.relative_to(ROOT).parts
            if any(p.startswith(".") or p in ("__pycache__", "_build") for p in rel):
                continue
            if path.suffix in TEXT_SUFFIXES and path.is_file():
                files.append(path)
    return files


def offending_lines(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if FORBIDDEN.search(line)]  # fmt: skip


@pytest.mark.parametrize(
    "line",
    ["clipped to the next value (pit" "fall 4)", "see PIT" "FALL 11 of the guide",
     "pit" "falls 2", "the project's design" " guide (section 2)", "Design" "-Guide",
     "pit" "fall #12", "pit" "fall no. 6"],
)  # fmt: skip
def test_the_pattern_catches_each_form(line):
    assert offending_lines(line)


@pytest.mark.parametrize("line", ["the usual pitfall: t = 500 is 499", "a design choice"])
def test_the_pattern_leaves_plain_words(line):
    assert not offending_lines(line)


def test_no_reader_facing_file_cites_numbered_pitfalls_or_the_guide():
    files = reader_files()
    assert ROOT / "book" / "01_forward_process.ipynb" in files
    assert Path(__file__).resolve() in files  # this file is checked too
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}:{n}: {line}" for n, line in offending_lines(text)]
    assert not found, (
        "readers cannot see the guide these cite; state the reason itself (or link the book's "
        "section that explains it):\n" + "\n".join(found)
    )
