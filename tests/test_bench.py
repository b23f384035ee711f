"""bench/: the GPU profile runs end to end at CPU size, its peak-rate table, and the CPU grid's
row selection and ratio tables (the timings themselves are for bench/README.md, not tests)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu():
    return load("gpu")


@pytest.fixture(scope="module")
def unet_step():
    return load("unet_step")


@pytest.mark.usefixtures("one_thread")
def test_gpu_profile_runs_end_to_end_at_cpu_size(gpu, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "cache"))  # no MNIST: the synthetic file
    out = tmp_path / "gpu.json"
    assert gpu.main(["--small", "--device", "cpu", "--no-compile", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert list(d) == ["device", "flops", "train", "sample", "projection", "mnist200"]
    # backward costs about twice the forward (less the first conv's unneeded input gradient)
    ratio = d["flops"]["train_flops_per_image"] / d["flops"]["fwd_flops_per_image"]
    assert 2.5 < ratio <= 3.0 + 1e-9
    assert [(r["precision"], r["compiled"]) for r in d["train"]] == [
        ("bf16", False), ("fp16 + GradScaler", False)]  # fmt: skip
    assert all(r["steps_per_s"] > 0 and r["loss_finite"] and r["mfu"] is None for r in d["train"])
    assert d["sample"]["ancestral_50_finite"] and d["sample"]["ddim_5_finite"]
    best = max(r["steps_per_s"] for r in d["train"])
    assert d["projection"]["hours_800k"] == pytest.approx(800_000 / best / 3600)
    m = d["mnist200"]
    assert m["data"].startswith("synthetic") and m["steps"] == 30 and m["loss_falls"]
    assert not no_network


def test_peak_rate_table_matches_device_names(gpu):
    names = {
        "NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H100 NVL": 835,
        "NVIDIA H200": 989, "NVIDIA GH200 480GB": 989, "NVIDIA A100-SXM4-80GB": 312,
        "NVIDIA A100 80GB PCIe": 312, "NVIDIA A10": 125, "NVIDIA L40S": 362, "NVIDIA L4": 121,
        "Tesla T4": 65, "Tesla V100-SXM2-16GB": 125, "NVIDIA GeForce RTX 3090": None,
    }  # fmt: skip
    assert {n: gpu.peak_tflops(n) for n in names} == names


def test_synthetic_mnist_is_read_as_mnist(gpu, tmp_path, no_network):
    from ddpm.data import load_dataset

    gpu.synthetic_mnist(tmp_path)
    ds = load_dataset("mnist", root=tmp_path, download=False)
    assert tuple(ds.data.shape) == (1797, 1, 32, 32)
    assert ds.data.min() == -1 and 0.5 < ds.data.max() <= 1


def test_quick_grid_is_the_full_grid_less_compiled_and_bf16_channels_last_rows(unet_step):
    base = ["--models", "cifar10,digits", "--batch-sizes", "8"]
    full = unet_step.grid(unet_step.parse_args(base))
    assert len(full) == 2 * 2 * 2 * 2 * 2  # model x precision x compile x CL x step
    quick_args = unet_step.parse_args([*base, "--quick"])
    assert (quick_args.repeats, quick_args.warmup, quick_args.quiet_wait) == (3, 1, 0)
    quick = unet_step.grid(quick_args)
    bf16_cl = lambda r: r["cfg"]["precision"] == "bf16" and r["cfg"]["channels_last"]  # noqa: E731
    assert quick == [r for r in full if not r["cfg"]["compile"] and not bf16_cl(r)]
    assert len(quick) == 12  # model x (fp32, fp32 CL, bf16) x step
    asked = unet_step.grid(unet_step.parse_args([*base, "--quick", "--compile", "on"]))
    assert len(asked) == 12 and all(r["cfg"]["compile"] for r in asked)


def test_ratio_tables_compare_like_with_like_and_best_with_best(unet_step):
    def row(lib, median, precision="fp32", compiled=False):
        return {"lib": lib, "model": "cifar10", "batch": 8, "step": "train", "median_s": median,
                "precision": precision, "compile": compiled, "channels_last": False}  # fmt: skip

    results = [row("ours", 1.0), row("diffusers", 1.5), row("ours", 0.5, "bf16"),
               row("diffusers", 0.8, "bf16", True), {"lib": "ours", "error": "x"}]  # fmt: skip
    text = "\n".join(unet_step.ratio_tables(results))
    assert "| cifar10 | 8 | train | fp32 | 8.0 | 5.3 | 1.50x |" in text
    assert "bf16 compiled" not in text.split("best setting")[0]  # no partner: no same-setting row
    assert "| cifar10 | 8 | train | bf16 | 16.0 | bf16 compiled | 10.0 | 1.60x |" in text


@pytest.mark.parametrize("quiet_wait, samples", [(0, 0), (5, 1)])
def test_quiet_wait_zero_takes_no_load_sample_before_a_row(unet_step, monkeypatch, quiet_wait,
                                                           samples):  # fmt: skip
    import argparse
    import time

    calls = []
    monkeypatch.setattr(unet_step, "wait_quiet", lambda *a: calls.append(a) or (2.0, 0.0))
    fake = {"median_s": 0.01, "iqr_s": 0.001, "peak_bytes": 2**20, "others_cpu_frac": 0.0,
            "cpu_util": 1.0, "worker_wall_s": 1.0}  # fmt: skip
    monkeypatch.setattr(unet_step, "run_worker", lambda *a: dict(fake))
    args = argparse.Namespace(device="cpu", t_start=time.perf_counter(), time_budget=900,
                              retries=0, max_other_load=0.1, quiet_wait=quiet_wait)  # fmt: skip
    row = unet_step.measure(args, "ours", "train", 8, {"model": "digits"})
    assert len(calls) == samples
    assert row["quiet_waited_s"] == (2.0 if samples else 0.0)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("what, precision, channels_last",
                         [("train", "fp32", False), ("sample", "bf16", True)])  # fmt: skip
def test_op_share_splits_a_steps_time_into_convolution_and_the_rest(what, precision,
                                                                    channels_last):  # fmt: skip
    op_share = load("op_share")
    row = op_share.profile_step("ours", "digits", what, 2, 1, precision, channels_last)
    assert (row["precision"], row["channels_last"], row["steps_profiled"]) == (
        precision, channels_last, 1)  # fmt: skip
    assert 0.05 < row["conv_share"] < 1 and row["self_cpu_ms_per_step"] > 0
    assert row["amdahl_bound"] == pytest.approx(1 / row["conv_share"], rel=0.01)
    assert any("convolution" in op for op in row["top_ops"])
