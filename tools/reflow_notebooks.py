"""Reflow the code cells of the book's notebooks to a line length a reader sees whole.

The rendered page shows about 78 characters of code at 1280 px (book/ruff.toml sets
``line-length = 78`` for book/, and the browser test fails on a code cell that overflows its
box). This tool runs ``ruff format`` on every code cell at that length:

- a cell's IPython lines (``%magic``, ``!shell``) are set aside and put back untouched; a cell
  magic (``%%time`` on the first line) leaves the whole cell alone;
- what ruff cannot shorten is shortened here, then formatted again: a comment too long for its
  line is wrapped (a trailing one first moves onto its own line above the code), a string
  literal too long for its line is split at a space into an implicit concatenation
  (``"a b"`` -> ``"a " "b"``, the same value), and a ``# fmt: skip`` is dropped (the compact
  layouts it protected were made for 100 columns);
- a cell that does not parse as Python, or whose new code would not have the same syntax tree
  (the safety net of every step above), is left as it is and reported;
- outputs, metadata and the notebook's JSON layout are kept (``indent=1``, as stored);
- running it twice changes nothing the second time (ruff format is idempotent).

What is still too long after that (a URL, a word longer than the line, a string without a
space to split at) is listed afterwards, per notebook and cell, for a hand fix.

Usage::

    python tools/reflow_notebooks.py                  # every book/*.ipynb, in place
    python tools/reflow_notebooks.py book/06_unet.ipynb --line-length 78
    python tools/reflow_notebooks.py --check          # exit 1 if a notebook would change
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import subprocess
import sys
import tempfile
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE_LENGTH = 78
TARGET = "py310"
# an IPython line: a magic (%, %%) or a shell escape (!), possibly indented
IPYTHON_LINE = re.compile(r"^(?P<indent>[ \t]*)[%!]")
PLACEHOLDER = "pass  # reflow-notebooks placeholder {index}"
PLACEHOLDER_RE = re.compile(r"^(?P<indent>[ \t]*)pass  # reflow-notebooks placeholder (\d+)$")
PRAGMA = re.compile(r"#\s*(noqa|type:|fmt:|pragma|pylint|reflow-notebooks)")
FMT_SKIP = re.compile(r"[ \t]*#\s*fmt:\s*skip\s*$")
STRING = re.compile(r"^(?P<prefix>[rRfFuU]{0,2})(?P<quote>[\"'])(?P<body>.*)(?P=quote)$", re.S)
ROUNDS = 6  # format, shorten, format, ...: each round splits a too-long string once more


class ReflowError(Exception):
    """A problem the user must fix; one line, naming the file."""


@dataclass
class Report:
    changed: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file, cell N: why"
    long_lines: list[str] = field(default_factory=list)  # "file, cell N, line M (L chars): ..."


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _hide_ipython(code: str) -> tuple[str, list[str]] | None:
    """Replace IPython lines by placeholder statements; None for a cell magic (left alone)."""
    if code.lstrip().startswith("%%"):
        return None
    hidden: list[str] = []
    lines = []
    for line in code.split("\n"):
        match = IPYTHON_LINE.match(line)
        if match:
            lines.append(match["indent"] + PLACEHOLDER.format(index=len(hidden)))
            hidden.append(line)
        else:
            lines.append(line)
    return "\n".join(lines), hidden


def _restore_ipython(code: str, hidden: list[str]) -> str:
    def put_back(line: str) -> str:
        match = PLACEHOLDER_RE.match(line)
        return hidden[int(match[2])] if match else line

    return "\n".join(put_back(line) for line in code.split("\n"))


def _docstrings(tree: ast.AST):
    """The docstring expressions (module, class, function) of ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = node.body[0] if node.body else None
            if (
                isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)
            ):
                yield doc


def _tree(code: str) -> str:
    """The syntax tree, with each docstring's whitespace collapsed (rewrapping a docstring is
    the one change of a value this tool makes)."""
    tree = ast.parse(code)
    for doc in _docstrings(tree):
        doc.value.value = " ".join(doc.value.value.split())
    return ast.dump(tree)


def _same_tree(a: str, b: str, reference_is_dump: bool = False) -> bool:
    """Whether ``a`` has the syntax tree of ``b`` (``b`` a :func:`_tree` dump, if so said)."""
    try:
        return _tree(a) == (b if reference_is_dump else _tree(b))
    except SyntaxError:
        return False


def _drop_fmt_skip(code: str) -> str:
    return "\n".join(FMT_SKIP.sub("", line) for line in code.split("\n"))


def _comments(code: str) -> dict[int, int]:
    """{line number (1-based): column of the comment on that line}, from the tokenizer."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.start[1]
    return found


def _wrap_comment(indent: str, text: str, limit: int) -> list[str] | None:
    """A comment's text as comment lines of at most ``limit`` characters (None: impossible)."""
    width = limit - len(indent) - 2
    lines = textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False)
    if not lines or any(len(line) > width for line in lines):
        return None
    return [f"{indent}# {line}" for line in lines]


def _shorten_comment(
    lines: list[str], number: int, comments: dict[int, int], limit: int
) -> bool:
    """Wrap the comment on line ``number``, moving a trailing one above its code line. A
    full-line comment is rewrapped together with the full-line comments that follow it at
    the same indentation (its paragraph), so that no short line is left in between."""
    line, column = lines[number - 1], comments[number]
    comment = line[column:]
    if PRAGMA.match(comment):
        return False
    indent = line[: len(line) - len(line.lstrip())]
    code = line[:column].rstrip()
    texts, last = [comment.lstrip("#").strip()], number
    while not code and last < len(lines) and comments.get(last + 1) == len(indent):
        following = lines[last]
        if not following.startswith(indent + "#") or PRAGMA.match(following.strip()):
            break
        texts.append(following.strip().lstrip("#").strip())
        last += 1
    wrapped = _wrap_comment(indent, " ".join(t for t in texts if t), limit)
    if wrapped is None:
        return False
    lines[number - 1 : last] = wrapped + ([code] if code else [])
    return True


def _literals(line: str):
    """(start, end, prefix, quote, body) of each one-line, single-quoted string literal on
    ``line``, scanning from its start (a line inside a triple-quoted string may mislead the
    scan: every split made from it is checked against the syntax tree)."""
    i, n = 0, len(line)
    while i < n:
        if line[i] == "#":
            return
        match = re.match(r"([rRfFbBuU]{0,2})(\"\"\"|'''|\"|')", line[i:])
        if match and (i == 0 or not (line[i - 1].isalnum() or line[i - 1] == "_")):
            prefix, quote = match.group(1), match.group(2)
            j = i + len(match.group(0))
            while j < n and not line.startswith(quote, j):
                j += 2 if line[j] == "\\" else 1
            if j >= n:
                return  # a string that goes on past this line
            if len(quote) == 1:
                yield i, j + 1, prefix, quote, line[i + len(match.group(0)) : j]
            i = j + len(quote)
            continue
        i += 1


def _split_point(body: str, start: int, limit: int, fstring: bool) -> int | None:
    """The largest k such that body[:k] ends with a space or (f-string) a replacement field,
    outside f-string braces, and ends (with the closing quote) by column ``limit``; ``start``
    is body[0]'s column."""
    best, depth, i = None, 0, 0
    while i < len(body):
        ch = body[i]
        if fstring and body[i : i + 2] in ("{{", "}}"):
            i += 2
            continue
        if ch == "\\":
            i += 2
            continue
        if fstring and ch == "{":
            depth += 1
        elif fstring and ch == "}":
            depth -= 1
        if depth == 0 and (ch == " " or (fstring and ch == "}")):
            k = i + 1
            if 0 < k < len(body) and start + k + 1 <= limit:
                best = k
        i += 1
    return best


def _shorten_string(lines: list[str], number: int, tree: str, limit: int) -> bool:
    """Split a string literal on line ``number`` so that its first part fits; the first split
    that keeps the syntax tree ``tree`` is kept."""
    line = lines[number - 1]
    for begin, end, prefix, quote, body in _literals(line):
        if "b" in prefix.lower():
            continue
        k = _split_point(body, begin + len(prefix) + 1, limit, "f" in prefix.lower())
        if k is None:
            continue
        parts = f"{prefix}{quote}{body[:k]}{quote} {prefix}{quote}{body[k:]}{quote}"
        lines[number - 1] = line[:begin] + parts + line[end:]
        if _same_tree("\n".join(lines), tree, reference_is_dump=True):
            return True
        lines[number - 1] = line
    return False


def _shorten_docstring(lines: list[str], number: int, limit: int) -> bool:
    """Rewrap the docstring text on line ``number`` with the lines after it in its paragraph
    (up to a blank line, a list item, the closing quotes, or a change of indentation)."""
    line = lines[number - 1]
    indent = line[: len(line) - len(line.lstrip())]
    stripped = line.strip()
    opening = ""
    for quotes in ('"""', "'''"):
        if stripped.startswith(quotes):
            opening, stripped = quotes, stripped[3:]
    closing = ""
    if stripped.endswith('"""') or stripped.endswith("'''"):
        closing, stripped = stripped[-3:], stripped[:-3]
    texts, last = [stripped], number
    item = re.compile(r"^(?:[-*+] |\d+[.)] |>>>|\w+:$)")
    while not closing and last < len(lines):
        following = lines[last]
        text = following.strip()
        if (not text or item.match(text) or text.startswith(("'''", '"""'))
                or not following.startswith(indent) or following[len(indent)] == " "):  # fmt: skip
            break
        if text.endswith('"""') or text.endswith("'''"):
            closing, text = text[-3:], text[:-3].rstrip()
        texts.append(text)
        last += 1
    # the closing quotes stay on the last line (ruff would move them back there), so they
    # are wrapped as part of the last word
    words = " ".join(" ".join(texts).split()) + closing
    wrapped = textwrap.wrap(words, width=limit - len(indent), initial_indent=" " * len(opening),
                            break_long_words=False, break_on_hyphens=False)  # fmt: skip
    if not wrapped:
        return False
    wrapped[0] = opening + wrapped[0][len(opening) :]
    new = [indent + w for w in wrapped]
    if any(len(n) > limit for n in new):
        return False
    lines[number - 1 : last] = new
    return True


def _docstring_lines(tree: ast.AST) -> set[int]:
    """The line numbers that hold docstring text."""
    found = set()
    for doc in _docstrings(tree):
        found.update(range(doc.lineno, doc.end_lineno + 1))
    return found


def shorten(code: str, limit: int, strings: bool = True) -> str:
    """One pass over ``code``'s lines longer than ``limit``: wrap a comment or a docstring's
    paragraph, or (``strings``) split a string; at most one change per line, bottom-up so
    that line numbers stay valid. Every change keeps the syntax tree (docstrings aside)."""
    try:
        tree = ast.parse(code)
        comments = _comments(code)
    except (SyntaxError, tokenize.TokenError):
        return code
    reference = _tree(code)
    docstrings = _docstring_lines(tree)
    lines = code.split("\n")
    for number in range(len(lines), 0, -1):
        if len(lines[number - 1]) <= limit:
            continue
        if number in comments and _shorten_comment(lines, number, comments, limit):
            continue
        if number in docstrings:
            before = list(lines)
            if _shorten_docstring(lines, number, limit) and not _same_tree(
                "\n".join(lines), reference, reference_is_dump=True
            ):
                lines[:] = before
            continue
        if strings:
            _shorten_string(lines, number, reference, limit)
    return "\n".join(lines)


def ruff_format(sources: list[str], line_length: int = LINE_LENGTH) -> list[str]:
    """Format each Python source with ``ruff format`` (one ruff run for all of them)."""
    if not sources:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"cell_{i:05d}.py" for i in range(len(sources))]
        for path, code in zip(paths, sources, strict=True):
            path.write_text(code + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "ruff", "format", "--isolated", "--quiet",
                   f"--line-length={line_length}", f"--target-version={TARGET}", tmp]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise ReflowError(f"ruff format failed: {message[-1] if message else '?'}")
        return [path.read_text(encoding="utf-8") for path in paths]


def reflow_sources(sources: list[str], line_length: int = LINE_LENGTH) -> list[str | None]:
    """Format, shorten what is still too long, format again, until nothing changes; None
    where a step would change the syntax tree (the cell is then left alone)."""
    # trailing comments first, before ruff splits their statements around them
    current: list[str | None] = [
        shorten(_drop_fmt_skip(code), line_length, strings=False) for code in sources
    ]
    for _ in range(ROUNDS):
        live = [i for i, code in enumerate(current) if code is not None]
        formatted = ruff_format([current[i] for i in live], line_length)
        for i, new in zip(live, formatted, strict=True):
            new = new.rstrip("\n")
            current[i] = new if _same_tree(sources[i], new) else None
        shortened = {i: shorten(current[i], line_length) for i in live if current[i] is not None}
        todo = {i: new for i, new in shortened.items() if new != current[i]}
        if not todo:
            break
        for i, new in todo.items():
            current[i] = new if _same_tree(sources[i], new) else None
    else:  # out of rounds: format what the last round shortened
        live = [i for i, code in enumerate(current) if code is not None]
        formatted = ruff_format([current[i] for i in live], line_length)
        for i, new in zip(live, formatted, strict=True):
            current[i] = new.rstrip("\n")
    return current


def reflow_notebook(
    path: Path, line_length: int = LINE_LENGTH, report: Report | None = None
) -> tuple[dict, bool]:
    """The notebook at ``path`` with its code cells reflowed, and whether anything changed."""
    report = report if report is not None else Report()
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReflowError(f"{path}: not a readable notebook ({err})") from None
    todo: list[tuple[int, str, list[str]]] = []  # (cell index, hidden code, IPython lines)
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code" or not _source(cell).strip():
            continue
        hidden = _hide_ipython(_source(cell))
        if hidden is None:
            continue
        code, ipython = hidden
        try:
            ast.parse(code)
        except SyntaxError as err:
            report.skipped.append(f"{path.name}, cell {index}: not Python ({err.msg}), left as is")
            continue
        todo.append((index, code, ipython))
    formatted = reflow_sources([code for _, code, _ in todo], line_length)
    changed = False
    for (index, code, ipython), new in zip(todo, formatted, strict=True):
        if new is None or not _same_tree(code, new):
            report.skipped.append(f"{path.name}, cell {index}: formatting changed the code")
            continue
        new = _restore_ipython(new, ipython)
        cell = nb["cells"][index]
        if new != _source(cell):
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        for number, line in enumerate(_source(cell).split("\n"), start=1):
            if len(line) > line_length:
                report.long_lines.append(
                    f"{path.name}, cell {index}, line {number} ({len(line)} chars): "
                    f"{line.strip()[:60]}"
                )
    return nb, changed


def dump(nb: dict) -> str:
    """The notebook's JSON as the book stores it."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: book/*.ipynb")
    parser.add_argument("--line-length", type=int, default=LINE_LENGTH)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook would change")  # fmt: skip
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    report = Report()
    try:
        for path in notebooks:
            nb, changed = reflow_notebook(path, args.line_length, report)
            if changed:
                report.changed.append(path)
                if not args.check:
                    path.write_text(dump(nb), encoding="utf-8")
    except ReflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "would reflow" if args.check else "reflowed"
    for path in report.changed:
        print(f"{verb} {path}")
    for line in report.skipped:
        print(f"skipped: {line}")
    if report.long_lines:
        print(f"{len(report.long_lines)} code lines still longer than {args.line_length} "
              "characters (strings, comments, # fmt: skip): shorten them by hand")  # fmt: skip
        for line in report.long_lines:
            print(f"  {line}")
    return 1 if args.check and report.changed else 0


if __name__ == "__main__":
    sys.exit(main())
