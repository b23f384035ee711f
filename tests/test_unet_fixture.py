"""Our UNet against its float64 output fixture (tests/fixtures/unet_fixture.py).

The float32 model, and the float32 model under bfloat16 autocast, must stay within the rounding
of their precision of the float64 output. The tolerance on the relative error
||y - y64|| / ||y64|| comes from a first-order rounding model: each of the network's L
conv/linear layers multiplies operands rounded to the unit roundoff u_op of its input precision
(relative error about u_op per output) and accumulates n <= n_max products in float32 (about
sqrt(n) u32 for errors of random sign). GroupNorm re-scales every block, so the layers' errors add
rather than multiply, and independent errors add in quadrature: sqrt(L) (u_op + sqrt(n_max) u32),
times a safety factor of 2. L counts every conv/linear module, an upper bound on the depth. Any
change of the function computed (a padding, an init, a scale) moves the output by far more.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import unet_fixture  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
U32, BF16 = 2.0**-24, 2.0**-8  # unit roundoffs: float32, bfloat16 (8-bit significand)


# Without native bfloat16 (AVX512-BF16 or AMX) oneDNN emulates it: the paper's model then takes
# minutes per bf16 forward instead of seconds, so that one check runs only where it is native.
NATIVE_BF16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@pytest.fixture(scope="module")
def fixture():
    return torch.load(unet_fixture.PATH, weights_only=True)


@pytest.fixture(scope="module")
def models():
    return {p: unet_fixture.fixture_model(p, torch.float32) for p in unet_fixture.PRESETS}


def tolerance(model: torch.nn.Module, u_operand: float) -> float:
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    n_max = max(m.weight[0].numel() for m in layers)
    return 2 * math.sqrt(len(layers)) * (u_operand + math.sqrt(n_max) * U32)


def relative_error(model, data, autocast: bool) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(data["x"], data["t"]).double()
    return ((y - data["y"]).norm() / data["y"].norm()).item()


def check(error: float, tol: float, what: str) -> None:
    assert error <= tol, (
        f"{what}: relative error {error:.3g} against the float64 fixture exceeds the rounding "
        f"tolerance {tol:.3g}: the UNet no longer computes the pinned function. If its "
        "architecture changed on purpose, regenerate the fixture with "
        "`python tests/fixtures/unet_fixture.py` (and say so in the commit); otherwise this is "
        "a bug."
    )


@pytest.mark.parametrize("preset", list(unet_fixture.PRESETS))
def test_float32_within_float32_rounding_of_float64(fixture, models, preset):
    data = fixture[preset]
    x, t = unet_fixture.fixture_inputs(preset)
    assert torch.equal(x, data["x"]) and torch.equal(t, data["t"]), "fixture inputs drifted"
    model = models[preset]
    check(relative_error(model, data, False), tolerance(model, U32), f"{preset} float32")


@pytest.mark.parametrize("preset", list(unet_fixture.PRESETS))
def test_bf16_autocast_within_bf16_rounding_of_float64(fixture, models, preset):
    if preset == "cifar10" and not NATIVE_BF16:
        pytest.skip("this CPU emulates bfloat16 (no AVX512-BF16 or AMX): minutes per forward")
    model = models[preset]
    error = relative_error(model, fixture[preset], True)
    check(error, tolerance(model, BF16), f"{preset} bf16 autocast")
    # and autocast really ran in bfloat16: its error is far above float32's
    assert error > 100 * tolerance(model, U32) / 2


def test_fixture_catches_a_small_change_of_the_function(fixture):
    """A change of one bias by 1e-3 (far smaller than any architectural slip) fails the check."""
    model = unet_fixture.fixture_model("digits", torch.float32)
    with torch.no_grad():
        model.conv_in.bias[0] += 1e-3
    assert relative_error(model, fixture["digits"], False) > tolerance(model, U32)
