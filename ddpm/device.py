"""Where code runs and in which precision: the device, mixed precision, torch.compile.

``resolve_device("auto")`` picks CUDA, then Apple's MPS, then the CPU; an explicit name is checked
against what this machine has. ``resolve_amp`` turns the ``amp`` setting ("auto", "bf16", "fp16",
"off") into the precision the training loop uses on that device. ``cpu_has_native_bf16`` says
whether this CPU computes bfloat16 in hardware. ``maybe_compile`` wraps ``torch.compile`` so that a
failed compilation falls back to eager execution with a one-line notice.

Two facts shape the code elsewhere in the package: MPS holds no float64 tensors (so the float64
schedule tables are cast on the CPU before they move), and DDP has no MPS backend.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from contextlib import nullcontext

import torch

__all__ = [
    "AMP_CHOICES",
    "CompiledOrEager",
    "amp_context",
    "cpu_has_native_bf16",
    "grad_scaler",
    "maybe_compile",
    "resolve_amp",
    "resolve_device",
]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
_DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


# ---------------------------------------------------------------------- the device
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for ``name``: "auto" is CUDA if available, else MPS (Apple silicon), else
    the CPU. Explicit names ("cpu", "cuda", "cuda:1", "mps") must exist on this machine; anything
    else is a one-line ValueError saying what to use instead."""
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(name)!r}; use {_DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r}: CUDA is not available on this machine; "
                             "use 'auto' or 'cpu'")  # fmt: skip
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {text!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1}")  # fmt: skip
    elif device.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {text!r}: MPS (the Apple silicon GPU) is not available "
                             "on this machine; use 'auto' or 'cpu'")  # fmt: skip
    elif device.type != "cpu":
        raise ValueError(f"device {text!r} is not supported; use {_DEVICES}")
    return device


# ---------------------------------------------------------------------- bfloat16 on the CPU
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: under them oneDNN, which runs the
# convolutions and matrix products, emulates bfloat16 even on a CPU that has it.
_ONEDNN_ISAS_WITHOUT_BF16 = {"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core",
                             "avx512_core_vnni"}  # fmt: skip


def _cpu_capabilities() -> dict:
    """The CPU's instruction-set flags as cpuinfo reports them to torch."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    caps = {"architecture": platform.machine()}  # older torch: the flags it exposes
    # every CPU with AMX tiles (Sapphire Rapids and later) has AMX-BF16
    for key, probe in (("avx512_bf16", "_is_avx512_bf16_supported"),
                       ("amx_bf16", "_is_amx_tile_supported")):  # fmt: skip
        fn = getattr(torch.cpu, probe, None)
        caps[key] = bool(fn()) if fn is not None else False
    return caps


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 in hardware, so that bf16 autocast can be faster than
    float32: AVX512_BF16 or AMX-BF16 on x86 (Intel Cooper Lake / Sapphire Rapids and later, AMD
    Zen 4 and later), the BF16 extension on ARM (ARMv8.6: Apple M2 and later, Graviton 3).

    torch's own ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not this test: oneDNN accepts
    bfloat16 on any AVX-512 CPU and emulates it there, usually slower than float32. A cap on
    oneDNN's instruction set below bf16 (``ONEDNN_MAX_CPU_ISA``, e.g. ``AVX2``) means emulation
    too.
    """
    caps = _cpu_capabilities()
    arch = str(caps.get("architecture") or platform.machine()).lower()
    if arch in ("x86_64", "amd64", "x86", "i386", "i686"):
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))
        if isa.strip().lower() in _ONEDNN_ISAS_WITHOUT_BF16:
            return False
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    if arch in ("arm64", "aarch64", "armv8", "armv9"):
        return bool(caps.get("bf16") or caps.get("sve_bf16"))
    return False


# ---------------------------------------------------------------------- mixed precision
def _cuda_bf16(including_emulation: bool) -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=including_emulation)
    except TypeError:  # torch < 2.4 has no such argument and reports native support only
        return torch.cuda.is_bf16_supported()


def resolve_amp(amp: str, device: torch.device) -> str:
    """The mixed precision a run uses on ``device``: "bf16", "fp16" (with a GradScaler) or "off".

    ``"auto"``: on CUDA, bf16 where the GPU has it natively (Ampere and later), else fp16. On MPS
    and on the CPU, off: nothing here has measured MPS in half precision; on a Xeon with
    AVX512-BF16 but no AMX, bf16 autocast ran at 0.78-0.79x the speed of float32
    (bench/README.md), so native bfloat16 alone does not make it faster; and quick mode's numbers
    (the book's) must not depend on the CPU that builds it. A benchmark may choose bf16 with
    :func:`cpu_has_native_bf16`. Explicit settings are checked: fp16 needs a GPU, bf16 on MPS
    needs macOS 14, and bf16 on a CPU without native bfloat16 runs (emulated, usually slower than
    fp32) with a warning.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(map(repr, AMP_CHOICES))}, got {amp!r}")
    kind = torch.device(device).type
    if amp == "auto":
        if kind == "cuda":
            return "bf16" if _cuda_bf16(including_emulation=False) else "fp16"
        return "off"
    if amp == "off":
        return amp
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"amp={amp!r} is not supported on device {kind!r}; use 'off'")
    if kind == "cpu" and amp == "fp16":
        raise ValueError("amp='fp16' needs a GPU (CUDA or MPS); on the CPU use 'bf16' or 'off'")
    if kind == "cuda" and amp == "bf16" and not _cuda_bf16(including_emulation=True):
        raise ValueError("amp='bf16': this CUDA GPU has no bfloat16; use 'fp16' or 'off'")
    if kind == "mps":
        autocast_ok = getattr(torch.amp, "is_autocast_available", lambda _: True)("mps")
        if not autocast_ok:
            raise ValueError(f"amp={amp!r}: this torch has no autocast on MPS (torch >= 2.5 has); "
                             "use 'off'")  # fmt: skip
        if amp == "bf16" and not torch.backends.mps.is_macos_or_newer(14, 0):
            raise ValueError("amp='bf16' on MPS needs macOS 14 or newer; use 'fp16' or 'off'")
    if kind == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "amp='bf16': this CPU has no native bfloat16, so autocast emulates it (usually slower "
            "than float32); amp='off' is faster here",
            stacklevel=2,
        )
    return amp


def amp_context(amp: str, device: torch.device):
    """The autocast context of a resolved ``amp`` ("bf16", "fp16" or "off") on ``device``."""
    if amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler for ``device``, enabled only for fp16 (bf16 has float32's exponent range)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")


# ---------------------------------------------------------------------- torch.compile
def _notice(message: str) -> None:
    print(f"ddpm: {message}", file=sys.stderr)


def _first_line(err: BaseException, limit: int = 160) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _is_compile_error(err: BaseException) -> bool:
    """An error of torch.compile itself (tracing, the backend, the C++ compiler)."""
    exc = sys.modules.get("torch._dynamo.exc")  # imported by any compiled call that got this far
    return exc is not None and isinstance(err, exc.TorchDynamoException)


class CompiledOrEager:
    """Calls ``torch.compile(module)``; if compiling fails (at the first call, or at a later
    recompilation for new shapes), prints a one-line notice and calls ``module`` eagerly from then
    on. The failed call is run again eagerly, so ``module``'s forward must be free of side effects
    (true of a network's forward). ``compiled`` tells which one runs now."""

    def __init__(self, module, compiled):
        self.module = module
        self._compiled = compiled

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args, **kwargs):
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:
                if not _is_compile_error(err):
                    raise
                self._compiled = None
                _notice(f"torch.compile failed ({_first_line(err)}); running without compiling")
        return self.module(*args, **kwargs)


def maybe_compile(module, **options) -> CompiledOrEager:
    """``module`` under ``torch.compile(**options)``, falling back to eager execution (with a
    one-line notice on stderr) when compilation fails: no C++ compiler, an unsupported Python or
    operation. torch compiles lazily, at the first call, so the fallback also covers that call."""
    try:
        compiled = torch.compile(module, **options)
    except Exception as err:  # e.g. a Python version torch.compile does not support yet
        _notice(f"torch.compile is unavailable ({_first_line(err)}); running without compiling")
        compiled = None
    return CompiledOrEager(module, compiled)
