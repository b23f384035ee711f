"""Vendor the book's JavaScript from the npm registry, so the built site needs no CDN.

The static book loads MathJax (equations), require.js and the ipywidgets HTML manager (widget
views embedded in the pages). Sphinx and myst-nb point at CDNs by default; `_config.yml` points
them at the copies this script puts under ``_vendor/npm/<package>/`` (served as
``_static/npm/<package>/``, through ``html_static_path``). So the book reads offline, from disk,
and the browser test runs without a network.

Each package is pinned: a version and the registry's ``dist.integrity`` (sha512 of the tarball),
checked before anything is unpacked. Only the files the pages load are unpacked. A package is
replaced atomically (unpacked next to its folder, then renamed into place) and skipped when its
stamp says the pinned version is already there, so ``make book`` runs this every time for free.

    python tools/vendor_assets.py            # vendor what is missing or stale into _vendor/
    python tools/vendor_assets.py --check    # exit 1 (and say what) if anything would change

Uses only the standard library (urllib, tarfile, hashlib). A mirror of the registry is honoured
through ``NPM_CONFIG_REGISTRY``, as npm does; the integrity check is the same.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / "_vendor" / "npm"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
STAMP = ".vendored.json"


@dataclass(frozen=True)
class Package:
    """One pinned npm package and the files of it the site needs.

    ``files`` are paths inside the package (the tarball's ``package/`` folder); one ending in
    ``/`` takes that whole folder. Every entry must match at least one file of the tarball.
    """

    name: str
    version: str
    integrity: str  # the registry's dist.integrity: "sha512-<base64>"
    files: tuple[str, ...]

    @property
    def tarball_name(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    def tarball_url(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.name}/-/{self.tarball_name}"


# Keep these in step with _config.yml (mathjax_path, nb_ipywidgets_js).
PACKAGES = (
    # MathJax 3 (what Sphinx 7's mathjax extension loads by default): the combined TeX + MathML
    # -> CommonHTML component, plus what it loads lazily: TeX extensions (autoload, \require),
    # the CHTML fonts, MathML 3, and the accessibility tools of the right-click menu.
    Package(
        name="mathjax",
        version="3.2.2",
        integrity="sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        files=(
            "LICENSE",
            "package.json",
            "es5/tex-mml-chtml.js",
            "es5/input/tex/extensions/",
            "es5/input/mml/",
            "es5/output/chtml/fonts/woff-v2/",
            "es5/a11y/",
            "es5/sre/",
            "es5/ui/",
        ),
    ),
    # require.js: the AMD loader the ipywidgets embed manager runs on (myst-nb's default pins
    # 2.3.4 from cdnjs; 2.3.7 fixes a prototype-pollution bug).
    Package(
        name="requirejs",
        version="2.3.7",
        integrity="sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
        files=("package.json", "require.js"),
    ),
    # The ipywidgets 8 embed manager (1.0.15 bundles @jupyter-widgets/controls 5.0.13, the
    # version jupyterlab_widgets 3.0.17 / ipywidgets 8.1 uses), and the icon fonts its CSS
    # loads relative to the script.
    Package(
        name="@jupyter-widgets/html-manager",
        version="1.0.15",
        integrity="sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        files=(
            "package.json",
            "dist/embed-amd.js",
            "dist/*.woff2",
            "dist/*.woff",
            "dist/*.ttf",
            "dist/*.eot",
            "dist/*.svg",
        ),
    ),
)


class VendorError(RuntimeError):
    """A package could not be vendored; the message says what to do."""


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    """Raise unless ``data`` matches an npm ``sha512-<base64>`` integrity string."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512" or not expected:
        raise VendorError(f"{what}: integrity must look like 'sha512-<base64>', got {integrity!r}")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise VendorError(
            f"{what}: sha512 integrity mismatch (expected {expected[:16]}...,"
            f" got {actual[:16]}...); the download is corrupt or the registry mirror serves"
            " a different file: do not use it (retry, or check NPM_CONFIG_REGISTRY)"
        )


def _wanted(path: str, patterns: tuple[str, ...]) -> str | None:
    """The pattern of ``patterns`` that selects ``path`` (a file inside the package), if any."""
    for pattern in patterns:
        if pattern.endswith("/"):
            if path.startswith(pattern):
                return pattern
        elif PurePosixPath(path).match(pattern) and path.count("/") == pattern.count("/"):
            return pattern
    return None


def extract(package: Package, data: bytes, dest: Path) -> list[str]:
    """Unpack the wanted files of the tarball ``data`` into the empty folder ``dest``.

    Returns the unpacked paths (relative, POSIX). Refuses links, absolute paths and ``..``.
    """
    unpacked, used = [], set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if not parts or parts[0] != "package" or len(parts) < 2:
                continue
            relative = "/".join(parts[1:])
            pattern = _wanted(relative, package.files)
            if pattern is None:
                continue
            if not member.isfile() or member.name.startswith("/") or ".." in parts:
                raise VendorError(f"{package.name}: refusing tarball entry {member.name!r}")
            target = dest.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            unpacked.append(relative)
            used.add(pattern)
    missing = [p for p in package.files if p not in used]
    if missing:
        raise VendorError(
            f"{package.name}@{package.version}: no file in the tarball matches {missing}; "
            "fix the file list in tools/vendor_assets.py"
        )
    return sorted(unpacked)


def fetch(url: str, attempts: int = 3, timeout: float = 60.0) -> bytes:
    """Download ``url`` (a few attempts: registries hiccup)."""
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            if attempt == attempts:
                raise VendorError(
                    f"cannot download {url}: {error}. The book's JavaScript is vendored once from "
                    "the npm registry: build once with network access (or set "
                    "NPM_CONFIG_REGISTRY to a mirror), or copy _vendor/ from another checkout"
                ) from error
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def is_current(package: Package, folder: Path) -> bool:
    """Whether ``folder`` holds ``package`` at its pinned version, every file present."""
    stamp = read_stamp(folder)
    if not stamp or stamp.get("version") != package.version:
        return False
    if stamp.get("integrity") != package.integrity or stamp.get("patterns") != list(package.files):
        return False
    files = stamp.get("files")
    return bool(files) and all((folder / f).is_file() for f in files)


def vendor_package(
    package: Package,
    dest_root: Path,
    registry: str = DEFAULT_REGISTRY,
    download: Callable[[str], bytes] = fetch,
) -> bool:
    """Vendor ``package`` into ``dest_root/<name>``; False when it was already current."""
    folder = dest_root / package.name
    if is_current(package, folder):
        return False
    url = package.tarball_url(registry)
    data = download(url)
    check_integrity(data, package.integrity, f"{package.name}@{package.version} ({url})")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-new-", dir=folder.parent))
    try:
        files = extract(package, data, staging)
        stamp = {
            "name": package.name,
            "version": package.version,
            "integrity": package.integrity,
            "tarball": url,
            "patterns": list(package.files),
            "files": files,
        }
        (staging / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        staging.chmod(0o755)
        # swap: the old folder (if any) moves aside, the new one takes its place
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
            os.replace(folder, old / "x")
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help="folder of the vendored packages"
    )
    parser.add_argument(
        "--check", action="store_true", help="only report; exit 1 if anything is missing or stale"
    )
    args = parser.parse_args(argv)
    registry = os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY
    stale = [p for p in PACKAGES if not is_current(p, args.dest / p.name)]
    if args.check:
        for p in stale:
            print(f"vendor: {p.name}@{p.version} is missing or stale in {args.dest}")
        return 1 if stale else 0
    try:
        for package in stale:
            start = time.monotonic()
            vendor_package(package, args.dest, registry)
            print(
                f"vendor: {package.name}@{package.version} -> {args.dest / package.name}"
                f" ({time.monotonic() - start:.1f}s)"
            )
    except VendorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not stale:
        print(f"vendor: {len(PACKAGES)} packages up to date in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
