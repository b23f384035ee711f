"""A run folder is never lost, mixed up or silently wrong, and every command fails in one line.

The cases, each named below: a NaN injected mid-run; non-finite sampler / interpolation
arguments; two concurrent trainings; a stale lock; training into an existing run with and without
--resume and --overwrite; a process killed mid-write by a hook (a .tmp existed, the resume is
bit-exact, no .tmp remains); a full disk (ENOSPC) during a save; a read-only disk (EROFS);
DDPM_DATA_DIR naming a file or a read-only folder; --device cuda without CUDA and --device
nonsense; --out naming a folder; --num 100000000; --image-size 100000; a checkpoint whose config
asks for 4096 channels; --name ../../x and --name ''; a --seed too large; hints naming real
options; --ckpt-every and --keep-last from the command line; checkpoint format versions; a
malicious pickle. Read-only and full disks are simulated by fault injection on the write calls,
since CI may run as root, where chmod cannot make a write fail.
"""

import errno
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm import checkpoint as C
from ddpm import memory
from ddpm import train as T
from ddpm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = dict(model_overrides={"ch": 16}, timesteps=25, batch_size=16, lr=1e-3, warmup_steps=2,
            ema_decay=0.9, log_every=2, sample_every=0, ckpt_every=2, keep_last=2)  # fmt: skip
TINY_ARGS = ["--model-overrides", '{"ch": 16}', "-T", "25", "--batch-size", "16",
             "--sample-every", "0", "--log-every", "2", "--device", "cpu"]  # fmt: skip


def tiny(run_dir, **overrides) -> T.TrainConfig:
    return T.preset_config("digits", **{**TINY, "run_dir": str(run_dir), **overrides})


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "cache"))  # never the repo's data/
    monkeypatch.chdir(tmp_path)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def fails(argv, message, capsys, root: Path) -> str:
    """Run the CLI; assert a non-zero exit, one line on stderr naming ``message``, no
    traceback, and no file under ``root`` that existed before changed or vanished."""
    before = snapshot(root)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code not in (0, None), argv
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ddpm") and message in lines[0], lines[0]
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before, "a file that existed before changed"
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return T.train(tiny(run, steps=2), progress=False).checkpoint


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- 1. non-finite values
def test_nan_injected_mid_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    """From step 5 on the loss is NaN: the step is skipped on the device, the check at the next
    log (step 6) stops the run naming step 5, nothing is written after step 4, and the last
    good checkpoint survives rotation (keep_last=1)."""
    real = T.GaussianDiffusion.training_losses
    calls = []

    def poisoned(self, *args, **kwargs):
        calls.append(1)
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(T.GaussianDiffusion, "training_losses", poisoned)
    run = tmp_path / "run"
    with pytest.raises(T.DivergedError) as err:
        T.train(tiny(run, steps=10, keep_last=1), progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "at step 5" in msg and "learning rate" in msg
    assert "ckpt_0000004.pt is kept" in msg
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt_0000004.pt"]
    ckpt = torch.load(run / "checkpoints" / "ckpt_0000004.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for k in ("model", "ema") for v in ckpt[k].values())
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]  # no row for the bad window
    assert not (run / C.LOCK_NAME).exists()  # the lock is released on the error


def test_a_skipped_step_changes_neither_weights_nor_ema(tmp_path, monkeypatch):
    """The skip happens on the device: an inf step leaves the weights and the EMA exactly as
    they were (seen by a spy on ema_update, which runs after the optimizer step)."""
    real = T.GaussianDiffusion.training_losses
    seen, calls = [], []

    def poisoned(self, *args, **kwargs):
        calls.append(1)
        loss = real(self, *args, **kwargs)
        return loss * float("inf") if len(calls) == 2 else loss

    monkeypatch.setattr(T.GaussianDiffusion, "training_losses", poisoned)
    real_update = T.ema_update

    def spy(ema, model, decay, apply=None):
        real_update(ema, model, decay, apply)
        seen.append(({k: v.clone() for k, v in model.state_dict().items()},
                     {k: v.clone() for k, v in ema.state_dict().items()}))  # fmt: skip

    monkeypatch.setattr(T, "ema_update", spy)
    with pytest.raises(T.DivergedError, match="at step 2"):
        T.train(tiny(tmp_path, steps=2, log_every=2, ckpt_every=0), progress=False)
    assert same_state(seen[0][0], seen[1][0]) and same_state(seen[0][1], seen[1][1])


def test_cli_lr_too_high_exits_non_zero_in_one_line_without_a_checkpoint(tmp_path, capsys):
    """`ddpm train --lr 1e9` used to exit 0 with all-NaN checkpoints."""
    run = tmp_path / "lr"
    argv = ["train", "--run-dir", run, "--lr", "1e9", "--warmup-steps", "0", "--steps", "8",
            "--ckpt-every", "2", *TINY_ARGS]  # fmt: skip
    line = fails(argv, "training diverged at step", capsys, tmp_path)
    assert "learning rate is likely too high (lr = 1e+09" in line
    assert not list(run.glob("checkpoints/ckpt_*.pt"))
    fails(["train", "--lr", "inf"], "argument --lr: expected a finite number >= 0", capsys,
          tmp_path)  # fmt: skip
    fails(["train", "--lr", "nan"], "argument --lr: expected a finite number >= 0", capsys,
          tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="TrainConfig.lr: expected a finite number"):
        T.train(tiny(run, lr=float("inf")), progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_samplers_and_interpolation_reject_non_finite_arguments(checkpoint, bad):
    model, diffusion, _ = T.load_model(checkpoint)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        diffusion.ddim_sample(model, (1, 1, 8, 8), steps=2, eta=bad, progress=False)
    x = torch.zeros(1, 1, 8, 8)
    if bad != bad or abs(bad) == float("inf"):
        with pytest.raises(ValueError, match="lam must be finite"):
            diffusion.interpolate(model, x, x, bad, 3)
        with pytest.raises(ValueError, match="lam must be finite"):
            diffusion.interpolate(model, x, x, torch.tensor([0.0, bad]), 3)


def test_cli_sample_rejects_non_finite_eta(checkpoint, tmp_path, capsys):
    for eta in ("nan", "inf"):
        fails(["sample", checkpoint, "--sampler", "ddim", "--eta", eta],
              "argument --eta: expected a finite number >= 0", capsys, tmp_path)  # fmt: skip


# ---------------------------------------------------------------------- 2. existing runs
def test_existing_run_without_resume_is_refused_and_with_resume_continues(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--steps", "2", *TINY_ARGS]) == 0
    capsys.readouterr()
    line = fails(["train", "--run-dir", run, "--steps", "4", *TINY_ARGS],
                 "already holds a run (checkpoint at step 2)", capsys, tmp_path)  # fmt: skip
    assert "--resume" in line and "--overwrite" in line
    assert main(["train", "--run-dir", str(run), "--steps", "4", "--resume", *TINY_ARGS]) == 0
    assert C.latest_checkpoint(run).name == "ckpt_0000004.pt"
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    fails(["train", "--resume", "--overwrite"], "not allowed with argument", capsys, tmp_path)


def test_overwrite_replaces_the_old_run_whole(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--run-dir", str(run), *TINY_ARGS, "--ckpt-every", "1", "--keep-last", "5"]
    assert main([*argv, "--steps", "3", "--sample-every", "3", "--sample-count", "4"]) == 0
    assert main([*argv, "--steps", "2", "--seed", "7", "--overwrite"]) == 0
    assert "deleted the old run" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt_0000001.pt",
                                                                       "ckpt_0000002.pt"]
    assert not list((run / "samples").iterdir())  # the old run's grids went with it
    assert json.loads((run / "config.json").read_text())["seed"] == 7
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2"]
    config = T.TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    config.run_dir = str(tmp_path / "fresh")
    fresh = T.train(config, progress=False)  # the same config into a fresh folder
    ours = torch.load(run / "checkpoints" / "ckpt_0000002.pt", weights_only=True)
    assert same_state(ours["model"], torch.load(fresh.checkpoint, weights_only=True)["model"])


def test_ckpt_every_and_keep_last_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--run-dir", str(run), "--steps", "5", "--ckpt-every", "2", "--keep-last"]
    assert main([*argv, "2", *TINY_ARGS]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt_0000004.pt",
                                                                       "ckpt_0000005.pt"]
    config = json.loads((run / "config.json").read_text())
    assert (config["ckpt_every"], config["keep_last"]) == (2, 2)


# ---------------------------------------------------------------------- 3. the lock
_HOLDER = """
import sys, time, torch
from ddpm.train import TrainConfig, train
torch.set_num_threads(1)
config = TrainConfig.from_dict(__import__("json").loads(sys.argv[1]))
result = train(config, progress=False, on_step=lambda s, i: time.sleep(0.05))
sys.exit(130 if result.interrupted else 0)
"""


def test_two_concurrent_trainings_the_second_exits_at_once_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    config = tiny(run, steps=100_000, ckpt_every=0, log_every=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(T.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, json.dumps(config.to_dict())],
                              env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / C.LOCK_NAME).exists() or not (run / "config.json").exists():
            assert holder.poll() is None, holder.stderr.read()
            assert time.monotonic() < deadline, "the first training never took the lock"
            time.sleep(0.2)
        start = time.monotonic()
        line = fails(["train", "--run-dir", run, "--steps", "3", "--resume", *TINY_ARGS],
                     f"in use by another training (pid {holder.pid} on host "
                     f"{socket.gethostname()})", capsys, tmp_path)  # fmt: skip
        assert time.monotonic() - start < 30 and "--run-dir" in line
        with pytest.raises(C.RunFolderError, match=f"pid {holder.pid}"):
            T.train(tiny(run, steps=3), resume=True, progress=False)
    finally:
        holder.send_signal(signal.SIGTERM)  # a clean stop: a checkpoint, exit 130
        code = holder.wait(timeout=120)
    assert code == 130, holder.stderr.read()
    assert not (run / C.LOCK_NAME).exists() and C.latest_checkpoint(run) is not None


def test_a_stale_lock_is_taken_over_with_a_notice(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / C.LOCK_NAME).write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))
    T.train(tiny(run, steps=1), progress=False)
    err = capsys.readouterr().err
    assert "took over the lock" in err and "pid 999999999 on host gone" in err
    assert not (run / C.LOCK_NAME).exists()


def test_run_lock_unit():
    """Two holders in one process also exclude each other (flock is per open file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with C.RunLock(d) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
            with pytest.raises(C.RunFolderError, match=f"pid {os.getpid()}"):
                C.RunLock(d).acquire()
        assert not lock.path.exists()
        with C.RunLock(d) as again:
            assert again.notice is None


# ---------------------------------------------------------------------- 5. killed mid-write
_DIES_MID_WRITE = """
import io, json, os, signal, sys, torch
from ddpm.train import TrainConfig, train
torch.set_num_threads(1)
real = torch.save

def dying_save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == 4:  # the second checkpoint: die mid-write
        buf = io.BytesIO()
        real(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)

torch.save = dying_save
train(TrainConfig.from_dict(json.loads(sys.argv[1])), progress=False)
"""


def test_killed_mid_write_by_a_hook_resumes_bit_exact_and_leaves_no_tmp(tmp_path, capsys):
    run = tmp_path / "run"
    config = tiny(run, steps=6, model_overrides={"ch": 16, "dropout": 0.1})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(T.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", _DIES_MID_WRITE, json.dumps(config.to_dict())],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    tmps = list((run / "checkpoints").glob(".ckpt_*.tmp"))
    assert [p.name.startswith(".ckpt_0000004.pt.") for p in tmps] == [True]  # a .tmp existed
    assert C.latest_checkpoint(run).name == "ckpt_0000002.pt"
    assert (run / C.LOCK_NAME).exists()  # left by the killed holder

    resumed = T.train(config, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "took over the lock" in err and "removed 1 unfinished checkpoint file" in err
    assert not list(run.rglob("*.tmp")) and not (run / C.LOCK_NAME).exists()
    config.run_dir = str(tmp_path / "straight")
    straight = T.train(config, progress=False)
    a = torch.load(resumed.checkpoint, weights_only=True)
    b = torch.load(straight.checkpoint, weights_only=True)
    for key in ("model", "ema"):
        assert same_state(a[key], b[key]), key
    assert all(torch.equal(a["rng"][k], b["rng"][k]) for k in b["rng"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(same_state(sa[i], sb[i]) for i in sb)  # Adam's moments and step counts


# ---------------------------------------------------------------------- 4. OS and device errors
def _fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, capsys
):
    """ENOSPC, injected into the checkpoint write of step 4 after half the bytes."""
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 4:
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    line = fails(["train", "--run-dir", run, "--steps", "6", "--ckpt-every", "2", *TINY_ARGS],
                 "No space left on device", capsys, tmp_path)  # fmt: skip
    assert "the previous checkpoint ckpt_0000002.pt is kept" in line
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt_0000002.pt"]  # no .tmp
    monkeypatch.setattr(torch, "save", real)
    T.load_model(run)  # the kept one is whole


def test_read_only_disk_is_one_line_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    """EROFS, injected into every new file: sample, interpolate and train stop before working."""
    monkeypatch.setattr(C, "_mkstemp", _fail_with(errno.EROFS))
    out = tmp_path / "out"
    out.mkdir()
    fails(["sample", checkpoint, "--out", out / "x.png"], "Read-only file system", capsys,
          tmp_path)  # fmt: skip
    fails(["interpolate", checkpoint, "--out", out / "x.png"], "Read-only file system", capsys,
          tmp_path)  # fmt: skip
    # DDPM_DATA_DIR naming a read-only folder: the run folder cannot take a file
    fails(["train", "--steps", "1", *TINY_ARGS], "Read-only file system", capsys, tmp_path)
    assert not list(out.iterdir())


def test_full_disk_while_sampling_is_one_line_and_leaves_nothing(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """ENOSPC, injected into the flush of every atomic write: no output, no .tmp file."""
    monkeypatch.setattr(C.os, "fsync", _fail_with(errno.ENOSPC))
    out, raw = tmp_path / "g.png", tmp_path / "s.npz"
    fails(["sample", checkpoint, "--num", "2", "--out", out, "--raw", raw],
          "No space left on device", capsys, tmp_path)  # fmt: skip
    assert not out.exists() and not raw.exists() and not list(tmp_path.glob(".*.tmp"))


def test_allocation_failures_are_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(T.GaussianDiffusion, "sample", out_of_memory)
    fails(["sample", checkpoint, "--num", "2"], "out of memory", capsys, tmp_path)


def test_data_dir_naming_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "afile"))
    fails(["train", "--steps", "1", *TINY_ARGS], "DDPM_DATA_DIR=", capsys, tmp_path)


def test_out_naming_a_folder_or_under_a_file_is_refused_before_sampling(
    checkpoint, tmp_path, capsys
):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    fails(["sample", checkpoint, "--out", tmp_path / "folder"], "is a folder", capsys, tmp_path)
    fails(["sample", checkpoint, "--out", tmp_path / "afile" / "x.png"], "is a file", capsys,
          tmp_path)  # fmt: skip
    # the PNG used to be written and then the raw samples lost to a late failure
    fails(["sample", checkpoint, "--out", tmp_path / "g.png", "--raw", tmp_path / "folder"],
          "must end in .npz or .pt", capsys, tmp_path)  # fmt: skip
    (tmp_path / "d.npz").mkdir()
    fails(["sample", checkpoint, "--out", tmp_path / "g.png", "--raw", tmp_path / "d.npz"],
          "--raw", capsys, tmp_path)  # fmt: skip
    assert not (tmp_path / "g.png").exists()


def test_bad_devices_are_one_line(checkpoint, tmp_path, capsys):
    fails(["train", "--device", "nonsense"], "--device: unknown device 'nonsense'", capsys,
          tmp_path)  # fmt: skip
    fails(["sample", checkpoint, "--device", "nonsense"], "--device: unknown device", capsys,
          tmp_path)  # fmt: skip
    if not torch.cuda.is_available():
        fails(["train", "--device", "cuda"], "CUDA is not available", capsys, tmp_path)
        fails(["sample", checkpoint, "--device", "cuda"], "CUDA is not available", capsys,
              tmp_path)  # fmt: skip


def test_requests_beyond_memory_are_refused_before_allocating(
    checkpoint, tmp_path, capsys, monkeypatch
):
    fails(["sample", checkpoint, "--num", "100000000"], "--num 100000000 needs at least", capsys,
          tmp_path)  # fmt: skip
    fails(["train", "--image-size", "100000", "--steps", "1"], "use a smaller batch_size",
          capsys, tmp_path)  # fmt: skip
    ckpt = torch.load(checkpoint, weights_only=True)
    have = memory.available_bytes("cpu")
    for ch in (4096, 65536):  # 4096 channels, or more on a machine where that still fits
        config = {**ckpt["config"], "model_overrides": {"ch": ch}}
        unet = T._meta_model(T.TrainConfig.from_dict(config)).config
        if memory.FLOAT * memory.parameter_count(unet) > have:
            break
    wide = tmp_path / "wide.pt"
    torch.save({**ckpt, "config": config}, wide)
    fails(["sample", wide], "cannot be loaded on this machine", capsys, tmp_path)
    fails(["evaluate", checkpoint, "--num", "100000000"], "--num 100000000 needs", capsys,
          tmp_path)  # fmt: skip


def test_memory_estimates():
    digits = T._meta_model(T.preset_config("digits")).config
    assert memory.parameter_count(digits) == sum(
        p.numel() for p in T.build_model(T.preset_config("digits")).parameters()
    )
    assert memory.training_bytes(digits, 256) > memory.training_bytes(digits, 128)
    assert memory.activation_elements(digits, True) > memory.activation_elements(digits, False)
    # sampling keeps at least the first skip connection: ch * image_size**2 elements per image
    assert memory.activation_elements(digits, False) >= digits.ch * digits.image_size**2
    with pytest.raises(ValueError, match="needs at least 1 PB"):
        memory.check_fits(10**15, "cpu", "this", "ask for less")


# ---------------------------------------------------------------------- 6. smaller defects
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--name", "../../x"], "argument --name: a run name must be a plain folder"),
        (["train", "--name", ""], "argument --name: a run name must be a plain folder"),
        (["train", "--name", ".."], "argument --name: a run name must be a plain folder"),
        (["train", "--seed", "1180591620717411303424"], "argument --seed: expected a seed in"),
        (["train", "--seed", "-1"], "argument --seed: expected a seed in"),
        (["sample", "x.pt", "--seed", "1180591620717411303424"], "argument --seed"),
        (["train", "--ckpt-every", "-1"], "argument --ckpt-every: expected an integer >= 0"),
        (["train", "--keep-last", "0"], "argument --keep-last: expected a positive integer"),
        (["train", "--model-overrides", "{ch: 16"], "argument --model-overrides: expected a "
                                                    "JSON object"),
        (["train", "-T", "10"], "use a larger --timesteps (-T)"),
    ],
)  # fmt: skip
def test_smaller_defects_fail_in_one_line_naming_the_option(argv, message, tmp_path, capsys):
    fails(argv, message, capsys, tmp_path)
    assert not (tmp_path / "x").exists() and not (tmp_path / "cache" / "runs").exists()


def test_error_hints_name_options_the_command_line_has(checkpoint, tmp_path, capsys):
    """The Python API's hints (split="train", rescale=False) are not flags of the CLI."""
    from PIL import Image

    folder = tmp_path / "few"
    folder.mkdir()
    for i in range(5):  # too few for a test split
        Image.new("RGB", (8, 8), (i, i, i)).save(folder / f"{i}.png")
    line = fails(["interpolate", checkpoint, "--dataset", f"folder:{folder}"], "test split",
                 capsys, tmp_path)  # fmt: skip
    line2 = fails(["train", "-T", "10"], "--timesteps", capsys, tmp_path)
    for text in (line, line2):
        assert "split=" not in text and "rescale=" not in text


def test_train_flags_are_generated_from_the_config_fields():
    from dataclasses import fields

    from ddpm.cli import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train._actions}
    for f in fields(T.TrainConfig):
        assert f.name in flags, f.name
        assert flags[f.name].help == f.metadata["help"]
        assert flags[f.name].default is None  # None: the preset's value


# ---------------------------------------------------------------------- checkpoint files
def test_checkpoint_format_versions(checkpoint, tmp_path, capsys):
    """Version 2 loads; a file without a version (1, before the UNet's downsampling padding
    changed) and one from a newer format are refused in one line, also by resume and the CLI."""
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["format_version"] == C.FORMAT_VERSION == 2
    T.load_model(checkpoint)
    old = {k: v for k, v in ckpt.items() if k != "format_version"}
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(old, run / "checkpoints" / "ckpt_0000002.pt")
    for call in (lambda: T.load_model(run),
                 lambda: T.train(tiny(run, steps=4), resume=True, progress=False)):  # fmt: skip
        with pytest.raises(C.CheckpointError) as err:
            call()
        assert "predates the current UNet" in str(err.value) and "\n" not in str(err.value)
    fails(["sample", run], "predates the current UNet", capsys, tmp_path)
    torch.save({**ckpt, "format_version": 3}, tmp_path / "new.pt")
    with pytest.raises(C.CheckpointError, match="newer than this ddpm reads"):
        T.load_model(tmp_path / "new.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


def test_a_malicious_pickle_never_executes(tmp_path, capsys):
    """weights_only=True refuses the pickle; the command it carries never runs."""
    path = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"model": _Evil()}, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(C.CheckpointError, match="corrupt or truncated"):
        T.load_model(path)
    fails(["sample", path], "corrupt or truncated", capsys, tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    C.atomic_write(target, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        C.atomic_write(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    for step in (1, 2, 9):
        (tmp_path / f"ckpt_{step:07d}.pt").write_bytes(b"")
    keep = tmp_path / "ckpt_0000002.pt"
    C.rotate(tmp_path, 1, keep=keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0000002.pt"]
