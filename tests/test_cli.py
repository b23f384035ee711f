"""The `ddpm` command line: every bad argument ends with a one-line message and a non-zero exit,
and train -> sample -> interpolate -> evaluate works end to end on a tiny run."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.train import preset_config, train


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "cache"))  # never the repo's data/
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny digits run, trained through the Python API (the CLI reads what it writes)."""
    run = tmp_path_factory.mktemp("run")
    config = preset_config(
        "digits", steps=4, timesteps=25, batch_size=16, model_overrides={"ch": 16},
        sample_every=0, ckpt_every=0, log_every=2, run_dir=str(run),
    )  # fmt: skip
    return train(config, progress=False).checkpoint


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory):
    """A tiny class-conditional digits run (label dropout), for --class and --guidance."""
    run = tmp_path_factory.mktemp("cond-run")
    config = preset_config(
        "digits-cond", steps=4, timesteps=25, batch_size=16, model_overrides={"ch": 16},
        log_every=2, run_dir=str(run),
    )  # fmt: skip
    return train(config, progress=False).checkpoint


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--steps", "-5"], "--steps: expected a positive integer, got -5"),
        (["train", "--timesteps", "0"], "--timesteps/-T: expected a positive integer, got 0"),
        (["train", "-T", "ten"], "expected a positive integer, got 'ten'"),
        (["train", "--beta-end", "1.5"], "betas must lie in (0, 1), got 1.5"),
        (["train", "--beta-start", "0"], "betas must lie in (0, 1), got 0.0"),
        (["train", "--lr", "-1"], "expected a finite number >= 0"),
        (["train", "--schedule", "quadratic"], "invalid choice: 'quadratic'"),
        (["sample", "ckpt.pt", "--num", "0"], "--num: expected a positive integer, got 0"),
        (["sample", "ckpt.pt", "--ddim-steps", "-1"], "expected a positive integer, got -1"),
        (["interpolate", "ckpt.pt", "--t", "1,x"], "expected comma-separated integers"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_are_rejected_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err  # no usage block
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--preset", "imagenet"], "unknown training preset 'imagenet'"),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--image-size", "9", "--steps", "1"], "image_size=9 must be divisible"),
        (["train", "--timesteps", "10"], "use a larger --timesteps (-T)"),
        (["train", "--batch-size", "5000"], "training set (1500 images)"),
        (["sample", "missing.pt"], "no checkpoint or run folder at missing.pt"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"ddpm {argv[0]}: error: ") and message in err


@pytest.mark.parametrize(
    ("argv", "folder"),
    [
        (["--name", "my-run"], "my-run"),  # an explicit name
        (["--preset", "digits"], "digits"),  # the preset's
        (["--dataset", "digits"], "digits"),  # the dataset's
        (["--dataset", "folder:{images}", "--image-size", "8"], "folder-images"),  # its name
    ],
)
def test_train_run_folder_name(argv, folder, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(20):
        Image.fromarray(np.full((8, 8, 3), 12 * i, np.uint8)).save(images / f"{i}.png")
    argv = [a.format(images=images) for a in argv]
    tiny = ["--steps", "1", "--batch-size", "4", "-T", "25", "--device", "cpu"]
    assert main(["train", *argv, *tiny]) == 0
    runs = tmp_path / "cache" / "runs"
    assert [p.name for p in runs.iterdir()] == [folder]
    assert (runs / folder / "checkpoints" / "ckpt_0000001.pt").is_file()


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["sample", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.pt" in err


def test_bad_values_against_a_checkpoint(checkpoint, capsys):
    cases = [
        (["sample", str(checkpoint), "--raw", "x.txt"], "--raw must end in .npz or .pt"),
        (["sample", str(checkpoint), "--sampler", "ddim", "--ddim-steps", "50"], "at most T = 25"),
        (["interpolate", str(checkpoint), "--t", "0,5"], "paper's steps 1..25, got [0]"),
        (["interpolate", str(checkpoint), "--pair", "0,5000"], "--pair indices must lie in"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)


def test_sample_writes_a_grid_and_raw_samples(checkpoint, tmp_path):
    out, raw = tmp_path / "grid.png", tmp_path / "samples.npz"
    argv = ["sample", str(checkpoint), "--num", "4", "--out", str(out), "--raw", str(raw)]
    assert main(argv) == 0
    assert Image.open(out).size[0] > 8
    samples = np.load(raw)["samples"]
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1
    pt = tmp_path / "samples.pt"
    argv = ["sample", str(checkpoint), "--num", "2", "--sampler", "ddim", "--ddim-steps", "5"]
    assert main([*argv, "--out", str(out), "--raw", str(pt)]) == 0
    assert torch.load(pt, weights_only=True).shape == (2, 1, 8, 8)


def test_interpolate_writes_a_figure_and_a_gif(checkpoint, tmp_path):
    out, gif = tmp_path / "interp.png", tmp_path / "interp.gif"
    argv = ["interpolate", str(checkpoint), "--t", "5,10", "--lambdas", "4", "--out", str(out)]
    assert main([*argv, "--gif", str(gif)]) == 0
    assert Image.open(out).size[0] > 100
    assert Image.open(gif).n_frames >= 2


def test_evaluate_prints_bpd_fid_and_floor(checkpoint, capsys):
    argv = ["evaluate", str(checkpoint), "--num", "32", "--ddim-steps", "5", "--bpd-images", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "digits FID" in out and "real train vs test" in out
    assert "nearest-neighbour distance" in out


def test_sample_by_class_one_row_per_label_with_guidance(conditional_checkpoint, tmp_path,
                                                         monkeypatch):  # fmt: skip
    import ddpm.guidance
    import ddpm.train

    calls = []
    real = ddpm.guidance.guided

    def spy(unet, y, scale):
        calls.append((y.tolist(), scale))
        return real(unet, y, scale)

    monkeypatch.setattr(ddpm.guidance, "guided", spy)
    real_load = ddpm.train.load_model

    def load_random(*args, **kwargs):  # random weights: zero-initialised layers hide wiring
        model, diffusion, config = real_load(*args, **kwargs)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        return model, diffusion, config

    monkeypatch.setattr(ddpm.train, "load_model", load_random)
    ckpt, out = str(conditional_checkpoint), tmp_path / "grid.png"

    def draw(*extra):
        raw = tmp_path / "x.pt"
        assert main(["sample", ckpt, "--sampler", "ddim", "--ddim-steps", "5", "--out", str(out),
                     "--raw", str(raw), *extra]) == 0  # fmt: skip
        return torch.load(raw, weights_only=True)

    x = draw("--class", "3,7,1", "--num", "6", "--guidance", "2")
    assert calls[-1] == ([3, 3, 7, 7, 1, 1], 2.0) and x.shape == (6, 1, 8, 8)
    width, height = Image.open(out).size
    assert height > width  # 3 rows of 2: one row per label
    assert draw("--class", "4").shape == (8, 1, 8, 8)  # default --num: 8 per label
    assert calls[-1] == ([4] * 8, 0.0)
    # the labels and the scale reach the network (same seed, same noise)
    base = draw("--class", "3", "--num", "2", "--guidance", "1")
    assert not torch.equal(base, draw("--class", "7", "--num", "2", "--guidance", "1"))
    assert not torch.equal(base, draw("--class", "3", "--num", "2", "--guidance", "4"))
    assert torch.equal(base, draw("--class", "3", "--num", "2", "--guidance", "1"))


def test_sample_by_class_errors(checkpoint, conditional_checkpoint, capsys):
    cond = str(conditional_checkpoint)
    cases = [
        (["sample", str(checkpoint), "--class", "3"], "--class needs a class-conditional model"),
        (["sample", cond, "--class", "3,10"], "--class takes this model's labels 0..9, got [10]"),
        (["sample", cond, "--guidance", "2"], "--guidance needs --class"),
        (["sample", cond, "--class", "0,1", "--num", "5"], "--num 5 is not a multiple of the 2"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
