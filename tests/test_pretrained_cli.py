"""`ddpm download` and `--pretrained NAME` on sample, interpolate and evaluate, offline: against a
stand-in cache (random weights in the hub layout, tests/pretrained_standin.py), and without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pretrained_standin import skip_cifar_md5, write_cifar10, write_standin

from ddpm import metrics
from ddpm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """The cifar10 stand-in with the paper's architecture (35,746,307 parameters)."""
    cache = tmp_path_factory.mktemp("real-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_DATA_DIR", str(cache))
        write_standin("cifar10")
        write_cifar10(cache)
    return cache


@pytest.fixture
def use_cache(monkeypatch, tmp_path):
    """Point DDPM_DATA_DIR at a cache; run in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    skip_cifar_md5(monkeypatch)

    def use(cache: Path) -> Path:
        monkeypatch.setenv("DDPM_DATA_DIR", str(cache))
        return cache

    return use


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("ddpm: note:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ddpm {command}: error: "), err
    return lines[0]


def test_sample_pretrained_against_the_stand_in(real_cache, use_cache, tmp_path, capsys):
    use_cache(real_cache)
    out, raw = tmp_path / "grid.png", tmp_path / "x.npz"
    argv = ["sample", "--pretrained", "cifar10", "--num", "2", "--sampler", "ddim", "--device",
            "cpu", "--ddim-steps", "2", "--out", str(out), "--raw", str(raw)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "STAND-IN with random weights" in captured.err  # a test cache never passes silently
    samples = np.load(raw)["samples"]
    assert samples.shape == (2, 3, 32, 32) and np.abs(samples).max() <= 1
    assert samples.std() > 0  # the stand-in's random weights give varied images
    assert Image.open(out).size[0] > 64


def test_interpolate_pretrained(real_cache, use_cache, tmp_path):
    use_cache(real_cache)
    out = tmp_path / "interp.png"
    argv = ["interpolate", "--pretrained", "cifar10", "--t", "2", "--lambdas", "2",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # the two images come from the (tiny) CIFAR-10 test split
    assert Image.open(out).size[0] > 100


def test_evaluate_pretrained_bits_per_dim_and_fid_reference(use_cache, tmp_path, monkeypatch,
                                                            capsys):  # fmt: skip
    """--bpd-estimate (the importance-sampled bound) and --fid-reference, on a small stand-in:
    Inception FID gets the training images by default (the paper's), the test ones if asked."""
    cache = use_cache(tmp_path / "small-cache")
    write_standin("cifar10", small=True)
    write_cifar10(cache, n_train=2, n_test=4)  # 10 train, 4 test images
    seen = []

    def fake_fid(real, fake):
        seen.append((len(real), len(fake)))
        return 1.0

    monkeypatch.setattr(metrics, "inception_fid", fake_fid)
    base = ["evaluate", "--pretrained", "cifar10", "--device", "cpu", "--bpd-images", "2",
            "--bpd-estimate", "2", "--ddim-steps", "2"]  # fmt: skip
    assert main([*base, "--num", "6"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim (bound estimated from 2 sampled steps per image, first 2 test images)" in out
    assert "against 6 train images" in out and "nearest-neighbour" in out
    assert main([*base, "--num", "3", "--fid-reference", "test"]) == 0
    assert "against 3 test images" in capsys.readouterr().out
    assert seen == [(6, 6), (3, 3)]
    assert main([*base, "--fid", "none"]) == 0  # bits/dim only: no sampling
    out = capsys.readouterr().out
    assert "bits/dim" in out and "FID" not in out and len(seen) == 2
    bpd = float(out.split("images): ")[1].split()[0])
    assert 0 < bpd < 100  # a finite bound (random weights: far above the data's 8 bits/dim)


def test_evaluate_digits_rejects_a_train_reference(use_cache, tmp_path, capsys):
    use_cache(tmp_path / "cache")
    write_standin("cifar10", small=True)
    argv = ["evaluate", "--pretrained", "cifar10", "--dataset", "digits", "--fid", "digits",
            "--fid-reference", "train", "--bpd-images", "1", "--bpd-estimate", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "drop --fid-reference train" in one_line_error(capsys, "evaluate")
    assert main(argv[:-6]) == 2  # digits at 32x32 have one channel, the model takes three
    assert "the model takes (3, 32, 32)" in one_line_error(capsys, "evaluate")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "ckpt.pt", "--pretrained", "cifar10"], "not both"),
        (["sample"], "give a checkpoint file or run folder, or --pretrained NAME"),
        (["interpolate"], "or --pretrained NAME"),
        (["evaluate", "x.pt", "--pretrained", "cifar10"], "not both"),
        (["sample", "--pretrained", "cifar"], "unknown pretrained model 'cifar'; known: cifar10"),
        (["download", "cifar"], "unknown pretrained model 'cifar'; known: cifar10, celebahq"),
        (["sample", "--pretrained", "cifar10"], "cifar10 is not downloaded; run `ddpm download"),
        (["sample", "--pretrained", "cifar10", "--no-ema"], "--no-ema"),
        (["interpolate", "--pretrained", "celebahq"], "celebahq is not downloaded"),
    ],
)
def test_one_line_errors(argv, message, use_cache, tmp_path, capsys):
    use_cache(tmp_path / "empty-cache")
    if "--no-ema" in argv:
        write_standin("cifar10", small=True)
    assert main(argv) == 2
    assert message in one_line_error(capsys, argv[0])


def test_interpolate_256_model_needs_a_dataset(use_cache, tmp_path, capsys):
    use_cache(tmp_path / "cache")
    write_standin("celebahq", small=True)
    assert main(["interpolate", "--pretrained", "celebahq"]) == 2
    assert "no loader for CelebA-HQ" in one_line_error(capsys, "interpolate")


def test_download_when_cached_does_not_touch_the_network(use_cache, tmp_path, capsys,
                                                         monkeypatch):  # fmt: skip
    """A real download is kept; a stand-in is replaced (here: the hub is offline)."""
    import json

    from ddpm import pretrained

    use_cache(tmp_path / "cache")
    write_standin("cifar10", small=True)
    calls = []

    def offline():
        calls.append(1)
        raise pretrained.NotDownloadedError("cannot download cifar10: offline")

    monkeypatch.setattr(pretrained, "_hub", offline)
    assert main(["download", "cifar10"]) == 2 and calls == [1]
    assert "deleting the stand-in" in capsys.readouterr().err
    assert not pretrained.is_downloaded("cifar10")
    folder = write_standin("cifar10", small=True)
    manifest = json.loads((folder / pretrained.MANIFEST).read_text())
    del manifest[pretrained.STANDIN_KEY]  # now it looks like a real download
    (folder / pretrained.MANIFEST).write_text(json.dumps(manifest))
    assert main(["download", "cifar10"]) == 0 and calls == [1]
    assert "already downloaded" in capsys.readouterr().out


def run_cli(args, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DDPM_DATA_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ddpm", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=cache)  # fmt: skip


def test_offline_without_a_cache_is_one_line_in_a_real_process(tmp_path):
    """The console route: huggingface_hub in its offline mode, an empty cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for args, message in [
        (["download", "cifar10"], "cannot download cifar10 (google/ddpm-cifar10-32@main)"),
        (["sample", "--pretrained", "cifar10"], "run `ddpm download cifar10`"),
    ]:
        done = run_cli(args, cache)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert not (cache / "pretrained" / "cifar10" / "ddpm_download.json").exists()
