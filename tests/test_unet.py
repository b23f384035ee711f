"""Tests for ddpm.unet: shapes, the paper's parameter count, gradients, the timestep embedding,
memory formats and autocast, determinism, and clear errors."""

import math

import pytest
import torch

from ddpm.unet import PRESETS, AttnBlock, Downsample, UNet, UNetConfig, timestep_embedding

# Small enough to run in milliseconds, big enough to hold every kind of block: attention at both
# resolutions, a 1x1 shortcut (16 -> 32 channels), a downsample and an upsample.
TINY = dict(in_channels=2, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
            attn_resolutions=(8, 4), dropout=0.1, num_groups=4)  # fmt: skip


def tiny(**overrides) -> UNet:
    return UNet(UNetConfig(**{**TINY, **overrides}))


def perturbed(model: UNet, std: float = 0.05, seed: int = 0) -> UNet:
    """Add noise to every parameter, so the zero-initialised convs no longer hide the inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def inputs(batch: int = 4, channels: int = 2, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- shapes and parameter counts


@pytest.mark.parametrize(
    "name, overrides, batch",
    [("cifar10", {}, 1), ("mnist", {}, 2), ("digits", {}, 3), ("digits", {"image_size": 16}, 3),
     ("ddpm256", {"image_size": 64}, 1)],  # the 256x256 architecture on 64x64 inputs (CPU time)
)
def test_output_shape_equals_input_shape_for_every_preset(name, overrides, batch):
    torch.manual_seed(0)
    model = UNet.from_preset(name, **overrides).eval()
    c = model.config
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size)
    with torch.no_grad():
        out = model(x, torch.arange(batch) * 300)
    assert out.shape == x.shape
    assert out.dtype == x.dtype


def test_every_preset_is_tested():
    assert set(PRESETS) == {"cifar10", "ddpm256", "mnist", "digits"}


def test_cifar10_preset_has_the_original_releases_parameter_count():
    model = UNet.from_preset("cifar10")
    assert n_params(model) == 35_746_307
    c = model.config
    assert (c.image_size, c.in_channels, c.ch, c.ch_mult) == (32, 3, 128, (1, 2, 2, 2))
    assert (c.num_res_blocks, c.attn_resolutions, c.dropout) == (2, (16,), 0.1)
    # attention after each of the 2 down and 3 up blocks at 16x16, plus the middle one
    assert sum(isinstance(m, AttnBlock) for m in model.modules()) == 6


def test_256_preset_has_the_released_models_parameter_count():
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = UNet.from_preset("ddpm256")
    assert n_params(model) == 113_673_219  # google/ddpm-{celebahq,church,bedroom,cat}-256
    c = model.config
    assert (c.image_size, c.ch, c.ch_mult) == (256, 128, (1, 1, 2, 2, 4, 4))
    assert (c.num_res_blocks, c.attn_resolutions, c.dropout) == (2, (16,), 0.0)
    assert sum(isinstance(m, AttnBlock) for m in model.modules()) == 6


def test_downsampling_pads_like_tensorflow_same():
    """Stride 2 on an even side: 'SAME' pads nothing before and one row/column after, so output
    (i, j) is centred on input (2i + 1, 2j + 1); symmetric padding would centre it on (2i, 2j)."""
    down = Downsample(1)
    with torch.no_grad():
        down.weight.zero_()
        down.bias.zero_()
        down.weight[0, 0, 1, 1] = 1.0  # the kernel's centre: picks the input under it
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    torch.testing.assert_close(down(x), x[:, :, 1::2, 1::2], rtol=0, atol=0)
    with torch.no_grad():
        down.weight[0, 0, 1, 1] = 0.0
        down.weight[0, 0, 2, 2] = 1.0  # bottom-right tap: past the edge, it reads the zero pad
    out = down(x)
    assert out[0, 0, -1].eq(0).all() and out[0, 0, :, -1].eq(0).all()
    assert out.shape == (1, 1, 4, 4) and out[0, 0, 0, 0] == x[0, 0, 2, 2]


def test_default_config_is_the_cifar10_preset():
    assert UNetConfig() == PRESETS["cifar10"]


def test_digits_preset_is_small():
    assert n_params(UNet.from_preset("digits")) < 1_000_000
    assert n_params(UNet.from_preset("digits", image_size=16)) < 1_000_000


def test_out_channels_override():
    model = tiny(out_channels=4)
    x, t = inputs()
    assert model(x, t).shape == (4, 4, 8, 8)


def test_from_preset_overrides_and_attention_rescaling():
    model = UNet.from_preset("digits", image_size=16)
    assert model.config.image_size == 16
    assert model.config.attn_resolutions == (8,)  # still the lowest resolution
    model = UNet.from_preset("digits", image_size=16, attn_resolutions=(16,))
    assert model.config.attn_resolutions == (16,)
    assert UNet.from_preset("mnist", dropout=0.0).config.dropout == 0.0
    assert PRESETS["mnist"].dropout == 0.1  # the preset itself is untouched


def test_unet_accepts_config_kwargs_and_overrides():
    a = UNet(**TINY).config
    b = UNet(UNetConfig(**TINY)).config
    c = UNet(UNetConfig(**{**TINY, "ch": 32}), ch=16).config
    assert a == b == c


# ---------------------------------------------------------------- gradients and zero init


def test_zero_init_output_is_zero_and_gradients_reach_every_parameter():
    """As in the original, the last conv of every block and of the network start at zero, so
    the model outputs 0 and only conv_out gets a gradient at first. After two optimizer steps
    the zeros are gone and every parameter must receive a non-zero gradient."""
    torch.manual_seed(0)
    model = tiny(dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t = inputs(batch=8)
    eps = torch.randn_like(x)

    def backward() -> dict[str, torch.Tensor | None]:
        opt.zero_grad(set_to_none=True)
        ((model(x, t) - eps) ** 2).mean().backward()
        return {name: p.grad for name, p in model.named_parameters()}

    assert torch.count_nonzero(model(x, t)) == 0
    grads = backward()
    assert all(g is not None for g in grads.values())
    nonzero = {n for n, g in grads.items() if g.abs().sum() > 0}
    assert nonzero == {"conv_out.weight", "conv_out.bias"}

    for _ in range(2):
        opt.step()
        grads = backward()
    assert len(grads) == len(list(model.parameters())) > 30
    zero = [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    assert zero == []


# ---------------------------------------------------------------- timestep embedding


def test_timestep_embedding_at_t0_is_sin0_cos1():
    emb = timestep_embedding(torch.zeros(3, dtype=torch.long), 16)
    assert emb.shape == (3, 16)
    assert torch.equal(emb[:, :8], torch.zeros(3, 8))
    assert torch.equal(emb[:, 8:], torch.ones(3, 8))


def test_timestep_embedding_known_values():
    # dim 6: half = 3 frequencies 10000 ** (-i / 2) = 1, 1/100, 1/10000
    emb = timestep_embedding(torch.tensor([7, 500]), 6)
    for row, t in zip(emb, (7, 500), strict=True):
        freqs = (1.0, 0.01, 0.0001)
        expected = [math.sin(t * f) for f in freqs] + [math.cos(t * f) for f in freqs]
        torch.testing.assert_close(row, torch.tensor(expected), atol=1e-5, rtol=0)


def test_timestep_embedding_dtype_is_float32_even_under_autocast():
    t = torch.tensor([0, 1, 999])
    assert timestep_embedding(t, 32).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = timestep_embedding(t, 32)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, timestep_embedding(t, 32))


def test_timestep_embedding_distinguishes_every_step():
    emb = timestep_embedding(torch.arange(1000), 128)
    dist = torch.cdist(emb, emb) + torch.eye(1000) * 1e9
    assert dist.min() > 1e-2
    assert torch.allclose(emb.norm(dim=1), torch.full((1000,), 8.0))  # sin^2 + cos^2 = 1, x64


def test_timestep_embedding_odd_dim_is_zero_padded():
    t = torch.tensor([3, 42])
    odd = timestep_embedding(t, 7)
    assert odd.shape == (2, 7)
    assert torch.equal(odd[:, -1], torch.zeros(2))
    assert torch.equal(odd[:, :6], timestep_embedding(t, 6))


def test_timestep_embedding_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"1-D tensor of steps"):
        timestep_embedding(torch.zeros(2, 1), 8)
    with pytest.raises(ValueError, match=r"at least 2"):
        timestep_embedding(torch.zeros(2), 1)


# ---------------------------------------------------------------- the blocks


def test_attention_block_matches_explicit_softmax_attention():
    torch.manual_seed(0)
    block = AttnBlock(8, groups=2)
    torch.nn.init.normal_(block.proj_out.weight, std=0.3)
    x = torch.randn(2, 8, 3, 5)
    h = block.norm(x)
    q, k, v = (w.flatten(2) for w in block.qkv(h).chunk(3, dim=1))  # each [B, C, HW]
    attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(8), dim=-1)
    out = torch.einsum("bij,bcj->bci", attn, v).reshape(2, 8, 3, 5)
    expected = x + block.proj_out(out)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_model_uses_t():
    model = perturbed(tiny()).eval()
    x, _ = inputs()
    out0 = model(x, torch.zeros(4, dtype=torch.long))
    out1 = model(x, torch.full((4,), 500))
    assert (out0 - out1).abs().max() > 1e-3


def test_scalar_t_is_broadcast():
    model = perturbed(tiny()).eval()
    x, _ = inputs()
    expected = model(x, torch.full((4,), 17))
    torch.testing.assert_close(model(x, 17), expected)
    torch.testing.assert_close(model(x, torch.tensor(17)), expected)


def test_samples_in_a_batch_do_not_interact():
    model = perturbed(tiny()).eval()
    x, t = inputs()
    batched = model(x, t)
    for i in range(4):
        torch.testing.assert_close(model(x[i : i + 1], t[i : i + 1]), batched[i : i + 1])


# ---------------------------------------------------------------- memory format and autocast


def test_channels_last_matches_contiguous():
    model = perturbed(tiny()).eval()
    x, t = inputs()
    expected = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.to(memory_format=torch.channels_last), t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bfloat16_autocast_forward_and_backward(channels_last):
    model = perturbed(tiny()).eval()
    x, t = inputs()
    expected = model(x, t).detach()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    rel = (out.float() - expected).abs().max() / expected.abs().max()
    assert rel < 0.05
    out.float().pow(2).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- determinism


def test_same_seed_same_weights_and_outputs():
    torch.manual_seed(123)
    a = perturbed(tiny()).eval()
    torch.manual_seed(123)
    b = perturbed(tiny()).eval()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    x, t = inputs()
    assert torch.equal(a(x, t), b(x, t))
    torch.manual_seed(124)
    c = tiny()
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


def test_dropout_is_active_in_train_mode_only():
    model = perturbed(tiny(dropout=0.1))
    x, t = inputs()
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


# ---------------------------------------------------------------- errors


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown UNet preset 'cifar'.*cifar10.*digits.*mnist"):
        UNet.from_preset("cifar")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 30}, r"image_size=30 must be divisible by 2\*\*\(len\(ch_mult\)-1\)=8"),
        ({"ch": 48}, r"ch\*ch_mult=\[48, 96, 96, 96\] must all be divisible by num_groups=32"),
        ({"num_groups": 0}, r"num_groups must be a positive integer"),
        ({"attn_resolutions": (3,)}, r"attn_resolutions \[3\] are not feature-map sizes"),
        ({"ch_mult": ()}, r"ch_mult must be a non-empty tuple"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"num_res_blocks": 0}, r"num_res_blocks must be a positive integer"),
        ({"out_channels": 0}, r"out_channels must be positive or None"),
    ],
)
def test_bad_config_raises_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**overrides)
    with pytest.raises(ValueError, match=message):
        UNet.from_preset("cifar10", **overrides)


def test_config_mutated_after_creation_is_checked_by_the_model():
    config = UNetConfig(**TINY)
    config.image_size = 9
    with pytest.raises(ValueError, match=r"image_size=9 must be divisible"):
        UNet(config)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((4, 3, 8, 8), r"x must have shape \[B, 2, 8, 8\].*got \(4, 3, 8, 8\)"),
        ((4, 2, 16, 16), r"x must have shape \[B, 2, 8, 8\].*got \(4, 2, 16, 16\)"),
        ((2, 8, 8), r"x must have shape \[B, 2, 8, 8\].*got \(2, 8, 8\)"),
    ],
)
def test_wrong_input_shape_raises(shape, message):
    with pytest.raises(ValueError, match=message):
        tiny()(torch.randn(shape), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("t", [torch.zeros(3, dtype=torch.long), torch.zeros(4, 1), [1, 2]])
def test_wrong_t_shape_raises(t):
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \[4\]"):
        tiny()(torch.randn(4, 2, 8, 8), t)
