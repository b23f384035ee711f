"""ddpm.train: exact resume (also after SIGINT), checkpoint hygiene and errors, presets, EMA and
warmup math, the run folder, a loss that goes down, and torchrun with 2 ranks == 1 process."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm import train as T
from ddpm.checkpoint import load_weights
from ddpm.unet import UNet

TINY = dict(model_overrides={"ch": 16}, timesteps=50, batch_size=16, lr=1e-3, warmup_steps=4,
            ema_decay=0.9, log_every=2, sample_every=0, ckpt_every=1000)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(run_dir, **overrides) -> T.TrainConfig:
    return T.preset_config("digits", **{**TINY, "run_dir": str(run_dir), **overrides})


def state(path, key="model") -> dict:
    return torch.load(path, weights_only=True)[key]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 uninterrupted steps, a checkpoint every step, keeping the last 2."""
    run = tmp_path_factory.mktemp("straight")
    result = T.train(tiny(run, steps=6, ckpt_every=1, keep_last=2), progress=False)
    return run, result


def test_keep_last_and_no_temp_files(straight):
    run, result = straight
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["ckpt_0000005.pt", "ckpt_0000006.pt"]  # no hidden .tmp left behind
    assert result.checkpoint == run / "checkpoints" / "ckpt_0000006.pt"
    assert T.latest_checkpoint(run) == result.checkpoint
    assert result.step == 6 and not result.interrupted


def test_checkpoint_loads_with_weights_only(straight):
    ckpt = torch.load(straight[1].checkpoint, weights_only=True)
    assert ckpt["step"] == 6
    assert T.TrainConfig.from_dict(ckpt["config"]) == tiny(straight[0], steps=6, ckpt_every=1,
                                                             keep_last=2)  # fmt: skip
    assert {"cpu", "data", "noise"} <= set(ckpt["rng"])
    assert all(isinstance(v, torch.Tensor) for v in ckpt["rng"].values())
    assert len(ckpt["optimizer"]["state"]) == len(ckpt["model"])  # Adam moments for every param


def test_resume_is_exact(straight, tmp_path):
    run, _ = straight
    first = T.train(tiny(tmp_path, steps=3), progress=False)
    assert first.step == 3
    second = T.train(tiny(tmp_path, steps=6), resume=True, progress=False)
    assert second.step == 6
    for key in ("model", "ema"):
        assert_same_state(state(second.checkpoint, key), state(run / "checkpoints/ckpt_0000006.pt",
                                                               key))  # fmt: skip
    rows = list(csv.reader((tmp_path / "metrics.csv").open()))
    assert [r[0] for r in rows[1:]] == ["2", "3", "4", "6"]  # resumed rows follow on


def test_sigint_saves_and_resumes_exactly(straight, tmp_path):
    before = signal.getsignal(signal.SIGINT)

    def interrupt(step, info):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled after this step finishes

    result = T.train(tiny(tmp_path, steps=6), progress=False, on_step=interrupt)
    assert result.interrupted and result.step == 2
    assert result.checkpoint == tmp_path / "checkpoints" / "ckpt_0000002.pt"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    done = T.train(tiny(tmp_path, steps=6), resume=True, progress=False)
    assert_same_state(state(done.checkpoint), state(straight[0] / "checkpoints/ckpt_0000006.pt"))


def test_architecture_mismatch_is_one_line(straight, tmp_path):
    shutil.copytree(straight[0], tmp_path, dirs_exist_ok=True)
    with pytest.raises(T.CheckpointError, match=r"model_overrides: \{'ch': 16\} -> \{'ch': 32\}"):
        T.train(tiny(tmp_path, steps=8, model_overrides={"ch": 32}), resume=True, progress=False)
    wide = UNet.from_preset("digits", ch=32)
    with pytest.raises(T.CheckpointError) as err:
        load_weights(wide, state(straight[1].checkpoint), "ckpt")
    msg = str(err.value)
    assert (
        "\n" not in msg
        and "shape mismatches" in msg
        and "checkpoint (64, 16) vs model (128, 32)" in msg
    )
    deeper = UNet.from_preset("digits", ch=16, num_res_blocks=2)
    with pytest.raises(T.CheckpointError, match="missing keys"):
        load_weights(deeper, state(straight[1].checkpoint), "ckpt")


def test_corrupt_checkpoint_is_one_clear_error(straight, tmp_path):
    data = straight[1].checkpoint.read_bytes()
    for name, content in (("ckpt_0000001.pt", data[: len(data) // 2]), ("junk.pt", b"oops")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(T.CheckpointError, match="corrupt or truncated"):
            T.load_model(tmp_path / name)
    with pytest.raises(T.CheckpointError, match="does not exist"):
        T.load_model(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(T.CheckpointError, match="not a ddpm.train checkpoint"):
        T.load_model(tmp_path / "other.pt")


def test_load_model_gives_ema_or_raw_weights(straight):
    run, result = straight
    model, diffusion, config = T.load_model(run)  # a run folder: its latest checkpoint
    assert not model.training and diffusion.num_timesteps == 50 and config.steps == 6
    assert_same_state(model.state_dict(), state(result.checkpoint, "ema"))
    raw, _, _ = T.load_model(result.checkpoint, ema=False)
    assert_same_state(raw.state_dict(), state(result.checkpoint, "model"))


def test_presets():
    c = T.preset_config("cifar10")  # the paper's section 4 / Appendix B
    assert (c.dataset, c.model, c.timesteps, c.schedule) == ("cifar10", "cifar10", 1000, "linear")
    assert (c.lr, c.batch_size, c.warmup_steps, c.grad_clip) == (2e-4, 128, 5000, 1.0)
    assert (c.ema_decay, c.flip, c.steps, c.model_mean_type) == (0.9999, True, 800_000, "eps")
    model = T.build_model(c)
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
    assert model.config.dropout == 0.1
    d = T.preset_config("digits", steps=10)
    assert d.steps == 10 and d.ema_decay < 0.9999 and d.warmup_steps > 0
    assert T.preset_config("mnist").model == "mnist"
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()
    with pytest.raises(ValueError, match=r"\['cifar10', 'digits', 'digits-cond', 'mnist'\]"):
        T.preset_config("imagenet")


def test_ema_math():
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for m, v in ((model, 1.0), (ema, 3.0)):
        torch.nn.init.constant_(m.weight, v)
        torch.nn.init.constant_(m.bias, v)
        m.register_buffer("stat", torch.tensor([v]))
        m.register_buffer("count", torch.tensor([int(v)]))
    T.ema_update(ema, model, 0.75)  # 0.75 * 3 + 0.25 * 1 = 2.5
    assert torch.equal(ema.weight, torch.full((1, 2), 2.5)) and ema.bias.item() == 2.5
    assert ema.stat.item() == 2.5 and ema.count.item() == 1  # float buffers averaged, ints copied
    T.ema_update(ema, model, 0.75)
    assert ema.bias.item() == 0.75 * 2.5 + 0.25


def test_warmup_schedule():
    assert [T.lr_at(s, 2e-4, 5000) for s in (1, 2500, 5000, 5001, 800_000)] == pytest.approx(
        [4e-8, 1e-4, 2e-4, 2e-4, 2e-4]
    )
    assert T.lr_at(1, 1e-3, 0) == 1e-3


def test_run_folder_and_amp(tmp_path):
    config = tiny(tmp_path, steps=4, sample_every=2, sample_count=4, sample_steps=3)
    result = T.train(config, progress=False)
    assert T.TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == config
    rows = list(csv.reader((tmp_path / "metrics.csv").open()))
    assert rows[0] == ["step", "loss", "lr", "grad_norm", "steps_per_s", "wall_time"]
    assert [int(r[0]) for r in rows[1:]] == [2, 4] and float(rows[2][2]) == 1e-3
    assert result.samples == [tmp_path / "samples" / f"step_000000{s}.png" for s in (2, 4)]
    with Image.open(result.samples[-1]) as im:
        assert im.size == (76, 76)  # 2x2 grid of 8x8 images, padding 1, upscaled x4
    assert T.train(tiny(tmp_path / "bf16", steps=1, amp="bf16"), progress=False).loss > 0
    with pytest.raises(ValueError, match="fp16"):
        T.train(tiny(tmp_path / "fp16", steps=1, amp="fp16", device="cpu"), progress=False)


def test_loss_decreases_on_digits(tmp_path):
    config = tiny(tmp_path, steps=120, batch_size=32, timesteps=1000, log_every=20,
                  warmup_steps=20)  # fmt: skip
    T.train(config, progress=False)
    losses = [float(r[1]) for r in list(csv.reader((tmp_path / "metrics.csv").open()))[1:]]
    assert losses[0] > 0.8  # the zero-initialised model predicts eps = 0: loss ~ 1
    assert losses[-1] < 0.6 * losses[0], losses


def _free_port_available() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
        return True
    except OSError:
        return False


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() or not _free_port_available():
        pytest.skip("torchrun cannot start here (no executable next to python, or no free port)")
    config = tiny(tmp_path / "ddp", steps=3, batch_size=8, keep_last=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("_torchrun_train.py")), json.dumps(config.to_dict()),
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"indices_rank{r}.json").read_text()) for r in (0, 1)]

    used = []
    single = T.train(tiny(tmp_path / "one", steps=3, batch_size=8), progress=False,
                     on_step=lambda s, info: used.append(info["indices"].tolist()))  # fmt: skip
    for step in range(3):
        r0, r1 = ranks[0][step], ranks[1][step]
        assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)  # disjoint halves
        assert r0 + r1 == used[step]  # together: the one-process global batch
    ddp = state(tmp_path / "ddp" / "checkpoints" / "ckpt_0000003.pt")
    one = state(single.checkpoint)
    assert ddp.keys() == one.keys()
    # The two ranks' gradients are summed in another order than one process's: equal up to
    # float32 rounding. Adam divides each gradient by its own size, so a weight whose gradient is
    # about 0 (all rounding) can move differently by up to 2 lr a step; the other weights agree
    # to a small fraction of one step (lr / warmup_steps at step 1). Wrong data on a rank, or a
    # 1% different lr, moves most weights apart by more than 1% of that step.
    diff = torch.cat([(ddp[k].double() - one[k].double()).abs().flatten() for k in ddp])
    apart = (diff > 0.01 * config.lr / config.warmup_steps).double().mean().item()
    assert apart < 1e-3, f"{apart:.1%} of the weights differ by more than 1% of a step"
