"""tools/vendor_assets.py: integrity check, selective atomic unpacking, idempotence (no network:
the tarballs are made here and handed to the script instead of a download)."""

import base64
import hashlib
import importlib.util
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("vendor_assets", ROOT / "tools" / "vendor_assets.py")
vendor = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = vendor  # dataclasses look their module up there
_spec.loader.exec_module(vendor)


def make_tarball(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    """An npm-style .tgz: every entry under package/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


TARBALL = make_tarball(
    {
        "package/package.json": b'{"name": "demo"}',
        "package/dist/main.js": b"console.log('v1')",
        "package/dist/font.woff2": b"font",
        "package/dist/sub/deep.woff2": b"not wanted: one level deeper than the pattern",
        "package/src/main.ts": b"not wanted",
        "package/es5/ext/a.js": b"a",
        "package/es5/ext/more/b.js": b"b",
    }
)


def demo_package(data=TARBALL, files=("package.json", "dist/main.js", "dist/*.woff2", "es5/ext/")):
    return vendor.Package(
        name="@demo/pkg", version="1.2.3", integrity=integrity_of(data), files=files
    )


class Downloads:
    """Stands in for the registry: counts the downloads, serves fixed bytes."""

    def __init__(self, data: bytes):
        self.data, self.urls = data, []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.data


def test_unpacks_only_the_wanted_files_and_skips_when_current(tmp_path):
    package, download = demo_package(), Downloads(TARBALL)
    assert vendor.vendor_package(package, tmp_path, "https://registry.example/", download)
    assert download.urls == ["https://registry.example/@demo/pkg/-/pkg-1.2.3.tgz"]
    folder = tmp_path / "@demo" / "pkg"
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert found == [
        ".vendored.json",
        "dist/font.woff2",
        "dist/main.js",
        "es5/ext/a.js",
        "es5/ext/more/b.js",
        "package.json",
    ]
    stamp = json.loads((folder / ".vendored.json").read_text())
    assert stamp["version"] == "1.2.3" and stamp["integrity"] == package.integrity
    # second run: nothing downloaded, nothing changed; no staging folder left behind
    assert not vendor.vendor_package(package, tmp_path, "https://registry.example", download)
    assert len(download.urls) == 1
    assert sorted(p.name for p in (tmp_path / "@demo").iterdir()) == ["pkg"]


def test_replaces_a_stale_or_damaged_copy(tmp_path):
    vendor.vendor_package(demo_package(), tmp_path, download=Downloads(TARBALL))
    folder = tmp_path / "@demo" / "pkg"
    (folder / "dist" / "main.js").unlink()  # damaged: a file of the stamp is missing
    newer = make_tarball(
        {
            "package/package.json": b"{}",
            "package/dist/main.js": b"v2",
            "package/dist/x.woff2": b"",
            "package/es5/ext/a.js": b"",
        }
    )
    download = Downloads(newer)
    assert vendor.vendor_package(demo_package(newer), tmp_path, download=download)
    assert (folder / "dist" / "main.js").read_bytes() == b"v2"
    assert not (folder / "dist" / "font.woff2").exists()  # the old copy is gone, not merged
    assert sorted(p.name for p in (tmp_path / "@demo").iterdir()) == ["pkg"]


def test_rejects_a_tarball_that_fails_its_integrity(tmp_path):
    package = demo_package()
    tampered = TARBALL[:-1] + bytes([TARBALL[-1] ^ 1])
    with pytest.raises(vendor.VendorError, match="integrity mismatch"):
        vendor.vendor_package(package, tmp_path, download=Downloads(tampered))
    assert not (tmp_path / "@demo" / "pkg").exists()
    with pytest.raises(vendor.VendorError, match="sha512-<base64>"):
        vendor.check_integrity(TARBALL, "sha1-abc", "demo")


def test_rejects_links_and_patterns_that_match_nothing(tmp_path):
    linked = make_tarball({"package/package.json": b"{}"}, links=("package/dist/main.js",))
    with pytest.raises(vendor.VendorError, match="refusing tarball entry"):
        vendor.vendor_package(demo_package(linked), tmp_path, download=Downloads(linked))
    typo = demo_package(files=("package.json", "dist/mian.js"))
    with pytest.raises(vendor.VendorError, match=re.escape("matches ['dist/mian.js']")):
        vendor.vendor_package(typo, tmp_path, download=Downloads(TARBALL))
    assert not (tmp_path / "@demo" / "pkg").exists()  # nothing half-unpacked left


def test_pinned_packages_match_the_book_configuration():
    """_config.yml loads exactly the files the script vendors (same paths, under _static/)."""
    config = (ROOT / "_config.yml").read_text()
    static_path = re.search(r"^\s*html_static_path:\s*\[([^\]]*)\]", config, re.M).group(1)
    assert "_vendor" in [p.strip() for p in static_path.split(",")]
    mathjax = re.search(r"^\s*mathjax_path:\s*(\S+)", config, re.M).group(1)
    widgets = re.findall(r"^\s*(npm/\S+\.js):\s*\{\}", config, re.M)
    assert vendor.DEFAULT_DEST == ROOT / "_vendor" / "npm"
    vendored = {}
    for package in vendor.PACKAGES:
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", package.integrity), package.name
        for pattern in package.files:
            vendored[f"npm/{package.name}/{pattern}"] = package
    for path in [mathjax, *widgets]:
        assert path in vendored, f"{path} (in _config.yml) is not vendored by the script"
    assert len(widgets) == 2  # require.js, then the embed manager
