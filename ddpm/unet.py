"""The noise-prediction network eps_theta(x_t, t) of Ho, Jain & Abbeel (2020), Appendix B.

A U-Net (Ronneberger et al. 2015) built from the wide-ResNet blocks of PixelCNN++
(Salimans et al. 2017; Zagoruyko & Komodakis 2016) with GroupNorm instead of weight norm,
self-attention at chosen resolutions, dropout, and the Transformer's sinusoidal position
embedding (Vaswani et al. 2017) for the diffusion step t, added into every residual block.

The network knows nothing about diffusion: ``model(x, t)`` maps images ``x`` [B, C, H, W] and
zero-based integer steps ``t`` [B] to a tensor shaped like ``x`` (the predicted noise eps).
Beyond the paper, ``num_classes`` makes it class-conditional, ``model(x, t, y)``: a learned
embedding of the label ``y`` is added to the step embedding, with one extra row, the *null*
class, for "no label" (classifier-free guidance, Ho & Salimans 2022; see ``ddpm.guidance``).
Read it top to bottom: embedding, blocks, config and presets, the U-Net itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of the steps ``t`` [B], as in the original DDPM code.

    The first half is sin(t * f_i), the second half cos(t * f_i), with geometrically spaced
    frequencies f_i = 10000 ** (-i / (half - 1)), i = 0..half-1, so f_0 = 1 and the slowest
    frequency is 1/10000. An odd ``dim`` gets one zero column at the end. ``t`` is the zero-based
    integer step (a float tensor also works). Always computed in float32, even under autocast,
    because bfloat16 cannot resolve sin(t) for t in the hundreds.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of steps [B], got shape {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"embedding dim must be at least 2, got {dim}")
    half = dim // 2
    with torch.autocast(device_type=t.device.type, enabled=False):
        scale = math.log(10000) / max(half - 1, 1)
        freqs = torch.exp(-scale * torch.arange(half, device=t.device, dtype=torch.float32))
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        return F.pad(emb, (0, dim % 2))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # eps 1e-6 as in the original TensorFlow code (tf.contrib.layers.group_norm).
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer (the original's init_scale=0), so its block starts as identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Wide-ResNet block (PixelCNN++ style) with the step embedding added after the first conv.

    norm -> SiLU -> conv3x3 -> + Linear(SiLU(temb)) -> norm -> SiLU -> dropout -> conv3x3, plus a
    shortcut (a 1x1 "network-in-network" conv when the channel count changes). The second conv is
    zero-initialised, as in the original, so every block starts as the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # one bias per channel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection.

    norm -> 1x1 projections to q, k, v -> softmax(q k^T / sqrt(C)) v -> 1x1 projection (zero-
    initialised, so the block starts as the identity) -> + x.
    """

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2)  # [B, 3, HW, C]
        q, k, v = qkv.unbind(dim=1)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])  # [B, 1, HW, C]
        h = h[:, 0].transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then conv3x3."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Conv2d):
    """Halve the resolution: a stride-2 conv3x3, padded as TensorFlow's 'SAME' does.

    For stride 2 on an even side, 'SAME' pads 0 rows/columns before and 1 after (the total
    padding, kernel - stride = 1, goes to the end). Symmetric padding (1, 1) would shift every
    output by one input pixel: same parameters, a different function, so the original weights
    would not compute the paper's model. Parameters are those of ``nn.Conv2d(ch, ch, 3, 2)``.
    """

    def __init__(self, ch: int):
        super().__init__(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))  # (left, right, top, bottom)


@dataclass
class UNetConfig:
    """Hyperparameters of the U-Net. The defaults are the paper's CIFAR-10 model (35.7M)."""

    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels (eps has the shape of x)
    image_size: int = 32  # square inputs of this size only
    ch: int = 128  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)  # one entry per resolution level
    num_res_blocks: int = 2  # per level on the way down (num_res_blocks + 1 on the way up)
    attn_resolutions: tuple[int, ...] = (16,)  # add self-attention at these feature-map sizes
    dropout: float = 0.1
    num_groups: int = 32  # GroupNorm groups
    # Class-conditional (not in the paper): labels 0..num_classes-1, plus the null class
    # num_classes ("no label"), embedded and added to the step embedding. None: unconditional.
    num_classes: int | None = None

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        self.validate()

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level, e.g. (32, 16, 8, 4)."""
        return tuple(self.image_size // 2**i for i in range(len(self.ch_mult)))

    def validate(self) -> None:
        """Raise a one-line ValueError saying what to change if the config cannot be built."""
        for name in ("in_channels", "image_size", "ch", "num_res_blocks", "num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer or None (unconditional), "
                             f"got {self.num_classes!r}")  # fmt: skip
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"out_channels must be positive or None, got {self.out_channels}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints: {self.ch_mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**(len(ch_mult)-1)={factor}; "
                "pad or resize the images, or use fewer levels in ch_mult"
            )
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % self.num_groups for w in widths):
            raise ValueError(
                f"channel widths ch*ch_mult={widths} must all be divisible by "
                f"num_groups={self.num_groups}; change ch or num_groups"
            )
        unused = sorted(set(self.attn_resolutions) - set(self.resolutions))
        if unused:
            raise ValueError(
                f"attn_resolutions {unused} are not feature-map sizes of this model "
                f"{self.resolutions}; pick attn_resolutions from those"
            )


PRESETS: dict[str, UNetConfig] = {
    # The paper's CIFAR-10 model: 35,746,307 parameters, as in the original release.
    "cifar10": UNetConfig(),
    # MNIST / Fashion-MNIST padded to 32x32: the CIFAR-10 architecture at half the width.
    "mnist": UNetConfig(in_channels=1, ch=64),
    # The paper's CelebA-HQ and LSUN (church, bedroom, cat) models, 256x256: six levels, attention
    # at 16x16 only, no dropout; 113,673,219 parameters, the count of the released models.
    "ddpm256": UNetConfig(
        image_size=256, ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,), dropout=0.0
    ),
    # scikit-learn's 8x8 digits (or resized, image_size=16): 0.7M parameters, minutes on a CPU.
    # Attention at the lowest resolution; no dropout, since short CPU runs underfit.
    "digits": UNetConfig(
        in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
        attn_resolutions=(4,), dropout=0.0, num_groups=8,
    ),
}  # fmt: skip


def _check_labels_on_device(y: torch.Tensor, num_classes: int) -> None:
    """A one-line ValueError for labels outside 0..num_classes, without reading ``y`` back to
    Python (the check is queued on the device; on a CPU it runs at once; where a device has no
    asynchronous assertion, the flag is read)."""
    ok = ((y >= 0) & (y <= num_classes)).all()

    def error() -> ValueError:
        return ValueError(f"labels y must lie in 0..{num_classes} ({num_classes} is the null "
                          f"class), got values in {int(y.min())}..{int(y.max())}")  # fmt: skip

    try:
        torch._assert_async(ok, "ddpm: a label y is out of range")
    except NotImplementedError:  # e.g. MPS: no asynchronous assertions
        if not ok:
            raise error() from None
    except RuntimeError:
        raise error() from None


class UNet(nn.Module):
    """eps_theta(x, t): the DDPM U-Net (Ho et al. 2020, Appendix B).

    Build with ``UNet(config)``, ``UNet(**fields)``, ``UNet(config, **overrides)`` or
    ``UNet.from_preset(name, **overrides)``.

    Parameters are initialised with PyTorch's defaults except the last conv of every residual
    block, of every attention block, and of the network, which start at zero (as in the
    original), so at initialisation the model outputs exactly zero.

    With ``num_classes`` set, ``label_emb`` holds num_classes + 1 learned vectors, one per class
    and the last for the null class, added to the step embedding; ``model(x, t)`` (``y=None``)
    is the null class, the unconditional model.
    """

    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        c = replace(config, **overrides) if config is not None else UNetConfig(**overrides)
        c.validate()
        self.config = c
        out_channels = c.out_channels if c.out_channels is not None else c.in_channels
        temb_ch = 4 * c.ch
        self.time_mlp = nn.Sequential(
            nn.Linear(c.ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch)
        )
        # One vector per class, the last for the null class. Built after everything else, so
        # the other parameters draw the same initial values as an unconditional model's.
        self.label_emb: nn.Embedding | None = None

        def block(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, temb_ch, c.dropout, c.num_groups)

        def attn(ch: int, res: int) -> nn.Module:
            return AttnBlock(ch, c.num_groups) if res in c.attn_resolutions else nn.Identity()

        # Down path. skip_chs records the channels of every activation stored for the up path.
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        skip_chs, ch = [c.ch], c.ch
        levels = list(enumerate(zip(c.ch_mult, c.resolutions, strict=True)))
        self.down = nn.ModuleList()
        for level, (mult, res) in levels:
            stage = nn.Module()
            stage.blocks, stage.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks):
                stage.blocks.append(block(ch, c.ch * mult))
                ch = c.ch * mult
                stage.attns.append(attn(ch, res))
                skip_chs.append(ch)
            # Halve H and W with a stride-2 conv3x3, padded 'SAME' as in the original: (0, 1).
            stage.downsample = Downsample(ch) if level < len(c.ch_mult) - 1 else None
            if stage.downsample is not None:
                skip_chs.append(ch)
            self.down.append(stage)

        # Middle, at the lowest resolution: ResBlock, attention, ResBlock.
        self.mid1, self.mid_attn = block(ch, ch), AttnBlock(ch, c.num_groups)
        self.mid2 = block(ch, ch)

        # Up path: one more block per level, each eating one stored skip activation.
        self.up = nn.ModuleList()
        for level, (mult, res) in reversed(levels):
            stage = nn.Module()
            stage.blocks, stage.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                stage.blocks.append(block(ch + skip_chs.pop(), c.ch * mult))
                ch = c.ch * mult
                stage.attns.append(attn(ch, res))
            stage.upsample = Upsample(ch) if level > 0 else None
            self.up.append(stage)

        self.norm_out = _norm(ch, c.num_groups)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes + 1, temb_ch)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> UNet:
        """A model from ``PRESETS`` ('cifar10', 'ddpm256', 'mnist', 'digits'), fields overridden.

        Overriding ``image_size`` alone rescales the preset's ``attn_resolutions`` with it, so
        attention stays at the same depth (``from_preset('digits', image_size=16)`` attends at 8).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; known presets: {sorted(PRESETS)}")
        preset = PRESETS[name]
        if "image_size" in overrides and "attn_resolutions" not in overrides:
            scale = overrides["image_size"] / preset.image_size
            overrides["attn_resolutions"] = tuple(int(r * scale) for r in preset.attn_resolutions)
        return cls(UNetConfig(**{**asdict(preset), **overrides}))

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        c = self.config
        want = (c.in_channels, c.image_size, c.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, want))}] for this "
                             f"model's config, got {tuple(x.shape)}")  # fmt: skip
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:  # one step for the whole batch
            t = t.expand(x.shape[0])
        if tuple(t.shape) != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}] (one step per "
                             f"image), got shape {tuple(t.shape)}")  # fmt: skip
        return t

    def _labels(self, y, x: torch.Tensor) -> torch.Tensor:
        """``y`` as a [B] long tensor; None is the null class. Checked without a host read."""
        k = self.config.num_classes
        if k is None:
            if y is not None:
                raise ValueError("this UNet is unconditional (num_classes=None): call it "
                                 "without labels y, or build it with num_classes")  # fmt: skip
            return None
        if y is None:
            return torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        y = torch.as_tensor(y, device=x.device)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"labels y must be integers (class indices), got dtype {y.dtype}")
        if y.ndim == 0:  # one label for the whole batch
            y = y.expand(x.shape[0])
        if tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"y must be a scalar or have shape [{x.shape[0]}] (one label per "
                             f"image), got shape {tuple(y.shape)}")  # fmt: skip
        _check_labels_on_device(y, k)
        return y.long()

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, y=None) -> torch.Tensor:
        """Predict eps from ``x`` [B, C, H, W] and zero-based steps ``t`` [B] (a python int or a
        0-d tensor is broadcast to the whole batch). Returns a tensor shaped like ``x`` (in the
        autocast dtype under autocast). A class-conditional model (``num_classes`` set) takes
        labels ``y`` [B] (or one int) in 0..num_classes, num_classes being the null class;
        ``y=None`` means the null class."""
        t = self._check_inputs(x, t)
        y = self._labels(y, x)
        emb = timestep_embedding(t, self.config.ch).to(self.time_mlp[0].weight.dtype)
        temb = self.time_mlp(emb)
        if y is not None:
            temb = temb + self.label_emb(y)

        hs = [self.conv_in(x)]
        for stage in self.down:
            for block, attn in zip(stage.blocks, stage.attns, strict=True):
                hs.append(attn(block(hs[-1], temb)))
            if stage.downsample is not None:
                hs.append(stage.downsample(hs[-1]))

        h = self.mid2(self.mid_attn(self.mid1(hs[-1], temb)), temb)

        for stage in self.up:
            for block, attn in zip(stage.blocks, stage.attns, strict=True):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), temb))
            if stage.upsample is not None:
                h = stage.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
