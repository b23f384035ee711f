"""ddpm.device (device choice, mixed precision, torch.compile with a fallback) and the package on
a stand-in for Apple's MPS: a device that cannot hold float64 tensors.

There is no Mac here, so ``standin`` below is a device built from the CPU: tensors on it are CPU
tensors wrapped in a subclass that reports torch's ``meta`` device (the only device besides the CPU
that a CPU-only torch can stand in with). Every operation that touches such a tensor runs on the
CPU, so results equal the CPU's bit for bit, but it fails, as MPS does, when a float64 tensor
enters or leaves the device (``x.double()`` on the device, a float64 tensor moved there), and, as
every GPU does, when a device tensor meets a CPU tensor that is not a scalar.
"""

import math
import os

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import ddpm.device as D
from ddpm.diffusion import GaussianDiffusion
from ddpm.metrics import bits_per_dim
from ddpm.schedules import linear_beta_schedule
from ddpm.train import ema_update
from ddpm.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

aten = torch.ops.aten


# ====================================================================== the MPS stand-in
STANDIN = torch.device("meta")


class Float64OnDevice(RuntimeError):
    """What MPS raises: "Cannot convert a MPS Tensor to float64 dtype ..."."""


class OnDevice(torch.Tensor):
    """A tensor on the stand-in device: a CPU tensor ``elem`` that reports ``STANDIN``."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=STANDIN,
        )  # fmt: skip
        r.elem = elem
        return r

    def __repr__(self):
        return f"OnDevice({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _on_device(func, args, kwargs or {})


# host <-> device copies and indexing may mix the two devices; no other operation may
_TRANSFERS = {aten._to_copy.default, aten.copy_.default, aten.index.Tensor, aten.index_put_.default}


def _is_standin(device) -> bool:
    return device is not None and torch.device(device) == STANDIN


def _on_device(func, args, kwargs):
    leaves = pytree.tree_leaves((args, kwargs))
    tensors = [a for a in leaves if isinstance(a, torch.Tensor)]
    if kwargs.get("dtype") == torch.float64 or any(a.dtype == torch.float64 for a in tensors):
        raise Float64OnDevice(f"{func}: float64 on the device (MPS holds no float64)")
    if func not in _TRANSFERS:
        for a in tensors:
            if not isinstance(a, OnDevice) and a.ndim > 0:
                raise RuntimeError(f"{func}: a CPU tensor {tuple(a.shape)} meets device tensors")
    to_host = (
        func is aten._to_copy.default and "device" in kwargs and not _is_standin(kwargs["device"])
    )

    def unwrap(a):
        return a.elem if isinstance(a, OnDevice) else a

    args, kwargs = pytree.tree_map(unwrap, (args, kwargs))
    if _is_standin(kwargs.get("device")):
        kwargs["device"] = torch.device("cpu")
    out = func(*args, **kwargs)
    inputs = {id(a.elem): a for a in tensors if isinstance(a, OnDevice)}
    inputs.update({id(a): a for a in tensors if not isinstance(a, OnDevice)})

    def wrap(o):
        if not isinstance(o, torch.Tensor):
            return o
        if id(o) in inputs:  # an in-place op returns its (wrapped or CPU) input
            return inputs[id(o)]
        if to_host:
            return o
        if o.dtype == torch.float64:
            raise Float64OnDevice(f"{func}: produced float64 on the device")
        return OnDevice(o)

    return pytree.tree_map(wrap, out)


class StandinMode(TorchDispatchMode):
    """Routes factory calls with ``device=STANDIN`` (torch.randn(..., device=...)) to the device;
    everything else that touches an ``OnDevice`` tensor goes there too."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = pytree.tree_leaves((args, kwargs))
        if _is_standin(kwargs.get("device")) or any(isinstance(a, OnDevice) for a in leaves):
            return _on_device(func, args, kwargs)
        return func(*args, **kwargs)


@pytest.fixture
def standin(monkeypatch):
    """The stand-in device, active for the test. torch has no autocast for ``meta``; the UNet
    only uses autocast to switch it off around the timestep embedding, so map it to the CPU's."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return real("cpu" if device_type == STANDIN.type else device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    with StandinMode():
        yield STANDIN


def test_the_standin_rejects_what_mps_rejects(standin):
    x = torch.ones(3, device=standin)
    assert isinstance(x, OnDevice) and x.device == standin
    assert torch.equal((x * 0.5 + 1).cpu(), torch.full((3,), 1.5))  # Python scalars are fine
    assert (x + torch.tensor(2.0)).cpu().tolist() == [3.0] * 3  # so are CPU 0-dim float32
    t64 = torch.ones(3, dtype=torch.float64)
    for bad in (lambda: x.double(), lambda: t64.to(standin),
                lambda: t64.to(device=standin, dtype=torch.float32),  # the cast happens there
                lambda: torch.zeros(2, device=standin, dtype=torch.float64),
                lambda: x * torch.tensor(2.0, dtype=torch.float64),
                lambda: x.cpu().double() + x):  # fmt: skip
        with pytest.raises(Float64OnDevice):
            bad()
    with pytest.raises(RuntimeError, match="meets device tensors"):
        x + torch.ones(3)
    # the CPU side keeps its float64
    assert t64.to(torch.float32).to(standin).cpu().dtype == torch.float32
    assert (x.cpu().double() * 2).dtype == torch.float64


# ---------------------------------------------------------------------- the package on it
def _setup(seed=0, T=10):
    torch.manual_seed(seed)
    model = UNet.from_preset("digits")
    ema = UNet.from_preset("digits")
    ema.load_state_dict(model.state_dict())
    x0 = (torch.rand(4, 1, 8, 8) * 255).round() / 127.5 - 1  # on the 8-bit grid
    return model, ema, GaussianDiffusion(linear_beta_schedule(T, rescale=False)), x0


def _train_steps(model, ema, diffusion, x0, device, steps=2):
    """The training loop's step: L_simple, backward, clipping, Adam, EMA (ddpm.train.train)."""
    model.to(device).train()
    ema.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        t = torch.randint(0, diffusion.num_timesteps, (len(x0),), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        loss = diffusion.training_losses(model, x0.to(device), t=t, noise=noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, 0.9)
    return loss.detach().cpu(), {k: v.cpu() for k, v in ema.state_dict().items()}


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit for bit: the stand-in runs the CPU's kernels on the same values in the same order."""
    assert type(got) is torch.Tensor and torch.equal(got, want)


def test_training_steps_on_the_standin(standin):
    on_cpu = _train_steps(*_setup(), device="cpu")
    on_dev = _train_steps(*_setup(), device=standin)
    _same(on_dev[0], on_cpu[0])
    assert on_dev[1].keys() == on_cpu[1].keys()
    for k in on_cpu[1]:
        _same(on_dev[1][k], on_cpu[1][k])


def test_both_samplers_on_the_standin(standin):
    model, _, diffusion, _ = _setup()
    model.eval()
    shape = (2, 1, 8, 8)

    def run(device):
        diffusion._cache.clear()  # the tables move to each device afresh
        model.to(device)
        gen = torch.Generator().manual_seed(3)  # draws on the CPU, so both see the same noise
        a = diffusion.sample(model, shape, generator=gen, progress=False)
        b = diffusion.ddim_sample(model, shape, steps=5, eta=0.5, generator=gen, progress=False)
        x1 = torch.zeros(1, 1, 8, 8, device=device)
        lam = torch.linspace(0, 1, 3, dtype=torch.float64)  # a float64 lambda from the CPU
        c = diffusion.interpolate(model, x1, x1 + 0.5, lam, 4, generator=gen)
        assert a.device == b.device == c.device == torch.device(device)
        return [v.cpu() for v in (a, b, c)]

    for got, want in zip(run(standin), run("cpu"), strict=True):
        _same(got, want)


def test_prior_and_bound_on_the_standin(standin):
    model, _, diffusion, x0 = _setup()
    model.eval()
    prior_cpu = diffusion.prior_bpd(x0)
    prior_dev = diffusion.prior_bpd(x0.to(standin))
    assert prior_dev.dtype == torch.float32 and prior_dev.device == standin
    _same(prior_dev.cpu(), prior_cpu)
    got = bits_per_dim(diffusion, model.to(standin), x0, batch_size=3, progress=False,
                       generator=torch.Generator().manual_seed(4))  # fmt: skip
    want = bits_per_dim(diffusion, model.to("cpu"), x0, batch_size=3, progress=False,
                        generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert got["bpd"] == want["bpd"] and math.isfinite(got["bpd"])
    for key in ("terms_bpd", "x0_mse", "per_image_bpd"):
        _same(got[key], want[key])


def test_prior_bpd_is_exact_to_float32_rounding():
    """The KL of L_T is ~1e-5 bits/dim made of terms that cancel: in float32 throughout it loses
    about 3 of its 7 digits. prior_bpd keeps the cancelling part in float64 on the CPU, so float32
    data give the float64 answer to float32 rounding (~1e-7 relative; 1e-6 allows for the sum)."""
    d = GaussianDiffusion(linear_beta_schedule(1000))
    torch.manual_seed(0)
    x0 = torch.rand(64, 3, 8, 8) * 2 - 1
    exact = d.prior_bpd(x0.double())
    got = d.prior_bpd(x0)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), exact, rtol=1e-6, atol=0)
    # what the test guards against: the same KL formula evaluated in float32
    a = d.alphas_cumprod[-1].float()
    naive = 0.5 * (a * x0**2 - torch.log(1 - a) - a).flatten(1).mean(1) / math.log(2)
    assert not torch.allclose(naive.double(), exact, rtol=1e-6, atol=0)


# ====================================================================== resolve_device
@pytest.fixture
def machine(monkeypatch):
    """Set what this machine has: ``machine(cuda=2, mps=True)``."""

    def set_(cuda: int = 0, mps: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_


@pytest.mark.parametrize(
    "cuda,mps,want", [(1, True, "cuda"), (1, False, "cuda"), (0, True, "mps"), (0, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, want):
    machine(cuda=cuda, mps=mps)
    assert D.resolve_device("auto") == torch.device(want)
    assert D.resolve_device() == torch.device(want)  # auto is the default


def test_explicit_devices(machine):
    machine(cuda=2, mps=True)
    assert D.resolve_device(" CPU ") == torch.device("cpu")
    assert D.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert D.resolve_device(torch.device("mps")) == torch.device("mps")


@pytest.mark.parametrize(
    "cuda,mps,name,message",
    [
        (0, True, "cuda", "'cuda': CUDA is not available on this machine; use 'auto' or 'cpu'"),
        (2, False, "cuda:2", "has 2 CUDA device(s), cuda:0..cuda:1"),
        (1, False, "mps", "MPS (the Apple silicon GPU) is not available"),
        (1, True, "nonsense", "unknown device 'nonsense'; use 'auto', 'cpu', 'cuda', 'cuda:N'"),
        (1, True, "meta", "device 'meta' is not supported; use 'auto'"),
    ],
)
def test_unavailable_or_unknown_devices_are_one_line_errors(machine, cuda, mps, name, message):
    machine(cuda=cuda, mps=mps)
    with pytest.raises(ValueError) as err:
        D.resolve_device(name)
    assert message in str(err.value) and "\n" not in str(err.value)


# ====================================================================== mixed precision
@pytest.fixture
def gpus(monkeypatch):
    """``gpus(cuda_bf16=...)``: a CUDA GPU whose bf16 is native (True), emulated ("emulated": the
    answer of torch.cuda.is_bf16_supported() depends on including_emulation) or absent (False);
    ``macos14``: whether MPS runs on macOS 14."""

    def set_(cuda_bf16=True, macos14=True):
        def is_bf16_supported(including_emulation=True):
            return cuda_bf16 is True or (cuda_bf16 == "emulated" and including_emulation)

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda *v: macos14)

    return set_


@pytest.mark.parametrize(
    "device,amp,cuda_bf16,macos14,want",
    [
        ("cuda", "auto", True, True, "bf16"),
        ("cuda", "auto", "emulated", True, "fp16"),  # never an emulated bf16 (pre-Ampere GPUs)
        ("cuda", "auto", False, True, "fp16"),
        ("cuda", "bf16", "emulated", True, "bf16"),  # asked for: allowed
        ("cuda", "fp16", True, True, "fp16"),
        ("mps", "auto", True, True, "off"),
        ("mps", "fp16", True, False, "fp16"),
        ("mps", "bf16", True, True, "bf16"),
        ("cpu", "auto", True, True, "off"),
        ("cpu", "off", True, True, "off"),
        ("mps", "off", True, False, "off"),
    ],
)
def test_resolve_amp(gpus, monkeypatch, device, amp, cuda_bf16, macos14, want):
    gpus(cuda_bf16=cuda_bf16, macos14=macos14)
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)  # auto stays off even then
    assert D.resolve_amp(amp, torch.device(device)) == want


@pytest.mark.parametrize(
    "device,amp,cuda_bf16,macos14,message",
    [
        ("cpu", "fp16", True, True, "amp='fp16' needs a GPU (CUDA or MPS); on the CPU use 'bf16'"),
        ("cuda", "bf16", False, True, "this CUDA GPU has no bfloat16; use 'fp16' or 'off'"),
        ("mps", "bf16", True, False, "amp='bf16' on MPS needs macOS 14 or newer"),
        ("cpu", "fp32", True, True, "amp must be one of 'auto', 'bf16', 'fp16', 'off', got 'fp32'"),
    ],
)
def test_invalid_amp_settings(gpus, device, amp, cuda_bf16, macos14, message):
    gpus(cuda_bf16=cuda_bf16, macos14=macos14)
    with pytest.raises(ValueError) as err:
        D.resolve_amp(amp, torch.device(device))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bf16_on_a_cpu_without_it_runs_with_a_warning(monkeypatch, recwarn):
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)
    assert D.resolve_amp("bf16", torch.device("cpu")) == "bf16"
    assert not recwarn.list
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        assert D.resolve_amp("bf16", torch.device("cpu")) == "bf16"


def test_grad_scaler_and_autocast_follow_the_device():
    # fp16 on MPS needs a scaler for MPS: a "cuda" scaler switches itself off without CUDA
    assert D.grad_scaler("fp16", torch.device("mps")).is_enabled()
    assert not D.grad_scaler("bf16", torch.device("mps")).is_enabled()
    assert not D.grad_scaler("off", torch.device("cpu")).is_enabled()
    with D.amp_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with D.amp_context("fp16", torch.device("mps")):
        assert torch.is_autocast_enabled("mps") and not torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("mps") == torch.float16
    with D.amp_context("off", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


# ====================================================================== native bf16 on the CPU
@pytest.mark.parametrize(
    "caps,isa,want",
    [
        ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True}, "", True),
        ({"architecture": "x86_64", "avx512_f": True, "amx_bf16": True}, "", True),
        ({"architecture": "x86_64", "avx512_f": True}, "", False),  # oneDNN would emulate
        ({"architecture": "x86_64", "avx2": True}, "", False),
        ({"architecture": "x86_64", "avx512_bf16": True}, "AVX2", False),  # capped below bf16
        ({"architecture": "x86_64", "avx512_bf16": True}, "avx512_core", False),
        ({"architecture": "x86_64", "amx_bf16": True}, "AVX512_CORE_AMX", True),
        ({"architecture": "arm64", "bf16": True}, "", True),  # Apple M2 and later
        ({"architecture": "arm64", "neon": True}, "", False),  # Apple M1
        ({"architecture": "riscv64"}, "", False),
    ],
)
def test_cpu_has_native_bf16(monkeypatch, caps, isa, want):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert D.cpu_has_native_bf16() is want


def test_native_bf16_on_torch_without_get_capabilities(monkeypatch):
    """torch < 2.8 has no torch.cpu.get_capabilities, only a few probes."""
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(D.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not D.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert D.cpu_has_native_bf16()


def test_native_bf16_agrees_with_the_kernel(monkeypatch):
    """On Linux x86 the kernel's own CPU flags are a second opinion on cpuinfo's."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), None)  # fmt: skip
    if flags is None:
        pytest.skip("no x86 flags in /proc/cpuinfo")
    assert D.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))


# ====================================================================== torch.compile fallback
class _Calls:
    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, *args, **kwargs):
        self.n += 1
        return self.fn(*args, **kwargs)


def test_a_failing_compile_falls_back_at_the_first_call(monkeypatch, capsys):
    from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

    def broken(*args):
        raise TorchDynamoException("backend='inductor' raised:\nInvalidCxxCompiler: no compiler")

    compiled = _Calls(broken)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled)
    module = _Calls(lambda x: x + 1)
    net = D.maybe_compile(module)
    assert net.compiled and capsys.readouterr().err == ""  # lazy: nothing has failed yet
    assert net(torch.tensor(1.0)) == 2 and net(torch.tensor(2.0)) == 3
    assert (compiled.n, module.n) == (1, 2) and not net.compiled  # compile tried once only
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ddpm: torch.compile failed")
    assert "no compiler" not in err  # the first line of the error only
    assert issubclass(BackendCompilerFailed, TorchDynamoException)  # what inductor failures raise


def test_errors_of_the_model_itself_are_not_swallowed(monkeypatch, capsys):
    def model_error(x):
        raise ValueError("shapes do not match")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: model_error)
    net = D.maybe_compile(lambda x: x)
    with pytest.raises(ValueError, match="shapes do not match"):
        net(torch.tensor(1.0))
    assert net.compiled and capsys.readouterr().err == ""


def test_compile_that_cannot_start_runs_eagerly(monkeypatch, capsys):
    def unsupported(module, **kw):
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", unsupported)
    net = D.maybe_compile(lambda x: 2 * x)
    assert not net.compiled and net(torch.tensor(3.0)) == 6
    assert capsys.readouterr().err.startswith("ddpm: torch.compile is unavailable (RuntimeError")


def test_inductor_without_a_cxx_compiler_falls_back(monkeypatch, capsys):
    """The real failure: inductor's C++ compiler is missing."""
    import torch._dynamo
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    torch._dynamo.reset()

    def fn(x):  # elementwise ops: inductor fuses them into a C++ kernel
        return torch.sin(x) * 2 + 1

    net = D.maybe_compile(fn)
    x = torch.randn(8)
    try:
        out = net(x)
    finally:
        torch._dynamo.reset()
    assert torch.equal(out, fn(x)) and not net.compiled
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch.compile failed (" in err and "C++ compiler" in err


@pytest.mark.skipif(
    os.environ.get("DDPM_COMPILE_TESTS") != "1",
    reason="slow: compiles the digits UNet with inductor (DDPM_COMPILE_TESTS=1 runs it)",
)
def test_the_digits_unet_compiles_for_real(capsys):
    """Where a C++ compiler exists, compilation works and computes the eager function. Inductor
    fuses and reorders float32 operations: each of the ~20 layers sums at most a few hundred
    terms (rounding ~sqrt(n) * 6e-8), so outputs of order 1 agree to well within 1e-4."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = UNet.from_preset("digits").eval()
    net = D.maybe_compile(model)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    try:
        with torch.no_grad():
            got, want = net(x, t), model(x, t)
    finally:
        torch._dynamo.reset()
    assert net.compiled and "ddpm: torch.compile" not in capsys.readouterr().err
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


# ====================================================================== wiring
def test_train_under_torchrun_on_mps_is_a_one_line_error(machine, monkeypatch, tmp_path):
    from ddpm.train import preset_config, train

    machine(cuda=0, mps=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="DDP has no MPS backend") as err:
        train(preset_config("digits", device="auto", run_dir=str(tmp_path)), progress=False)
    assert "\n" not in str(err.value)


def test_train_compiles_with_the_fallback(monkeypatch, tmp_path, capsys):
    from torch._dynamo.exc import TorchDynamoException

    from ddpm.train import preset_config, train

    def broken(*args):
        raise TorchDynamoException("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda module, **kw: broken)
    config = preset_config("digits", device="cpu", compile=True, steps=2, batch_size=4,
                           timesteps=25, log_every=1, sample_every=0, ckpt_every=0,
                           run_dir=str(tmp_path))  # fmt: skip
    result = train(config, progress=False)
    assert result.step == 2 and math.isfinite(result.loss)
    assert capsys.readouterr().err.count("torch.compile failed") == 1


def test_mode_and_cli_default_to_auto(machine):
    from ddpm.cli import build_parser
    from ddpm.mode import current_mode

    machine(cuda=0, mps=True)
    assert current_mode().device == torch.device("mps")
    parser = build_parser()
    for command in ("sample", "interpolate", "evaluate"):
        assert parser.parse_args([command, "run"]).device == "auto"


def test_cli_device_errors_are_one_line(machine, tmp_path, capsys):
    from ddpm.cli import main

    machine(cuda=0, mps=False)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    assert main(["sample", str(ckpt), "--device", "mps"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MPS (the Apple silicon GPU) is not available" in err
