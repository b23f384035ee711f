"""The hot loops never read a tensor back to Python.

On a GPU every such read (``.item()``, ``int(t)``, ``if tensor:``, ``.cpu()``, ...) waits until
the device has finished all queued work, so a sampler that reads once per step runs its network
calls one at a time instead of queueing them. These tests count every read, on the CPU, over a
run of N steps and one of 2N steps: the difference is N times the reads per step, free of the
reads that each call makes once (argument checks, the loop bound). Each step must make none.
"""

import functools
from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import linear_beta_schedule
from ddpm.train import ema_update
from ddpm.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")

# Every way a tensor's value reaches Python.
READS = ("item", "__int__", "__bool__", "__float__", "__index__", "tolist", "cpu", "numpy",
         "nonzero")  # fmt: skip
N = 4  # steps in the short run; the long run has 2N


@contextmanager
def count_host_reads(exempt=lambda: ()):
    """Count calls of each READS method of torch.Tensor (and torch.nonzero) inside the block,
    except on the tensors that ``exempt()`` returns."""
    counts = Counter()

    def counted(name, fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            if not any(self is e for e in exempt()):
                counts[name] += 1
            return fn(self, *args, **kwargs)

        return wrapper

    originals = {name: getattr(torch.Tensor, name) for name in READS}
    original_nonzero = torch.nonzero
    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, counted(name, fn))
        torch.nonzero = counted("torch.nonzero", original_nonzero)
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = original_nonzero


def reads_per_step(run, exempt=lambda: ()) -> dict[str, float]:
    """Reads per step of ``run(n)`` (which runs n steps): (reads(2N) - reads(N)) / N."""
    run(N)  # warm-up: caches and lazily built state are made once, outside the count
    with count_host_reads(exempt) as short:
        run(N)
    with count_host_reads(exempt) as long:
        run(2 * N)
    per_step = {k: (long[k] - short[k]) / N for k in set(long) | set(short)}
    return {k: v for k, v in per_step.items() if v != 0}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = UNet.from_preset("digits")
    # non-zero output layers, so that the samplers do real arithmetic (a fresh UNet outputs 0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    return net.eval()


def test_counter_sees_each_kind_of_read():
    """The counter itself: each READS method is seen, and a read outside the block is not."""
    x = torch.ones(2)
    with count_host_reads() as c:
        x[0].item(), int(x[0]), bool(x[0]), float(x[0]), [0, 1][x[0].long()], x.tolist()
        x.cpu(), x.numpy(), x.nonzero(), torch.nonzero(x)
    x.item() if x.numel() == 1 else x.sum().item()
    assert set(c) == {*READS, "torch.nonzero"} and all(v == 1 for v in c.values()), c


def test_ancestral_sampler_reads_nothing_per_step(model):
    def run(n):
        diffusion = GaussianDiffusion(linear_beta_schedule(n, 1e-3, 0.2, rescale=False))
        gen = torch.Generator().manual_seed(0)
        diffusion.sample(model, (2, 1, 8, 8), generator=gen, progress=False)

    assert reads_per_step(run) == {}


def test_ancestral_sampler_with_per_example_starts_reads_nothing_per_step(model):
    def run(n):
        diffusion = GaussianDiffusion(linear_beta_schedule(n, 1e-3, 0.2, rescale=False))
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        diffusion.sample(model, x.shape, x_start=x, t_start=torch.tensor([n - 1, n // 2]),
                         progress=False)  # fmt: skip

    assert reads_per_step(run) == {}


def test_ddim_reads_nothing_per_step(model):
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))

    def run(n, eta=0.0):
        gen = torch.Generator().manual_seed(0)
        diffusion.ddim_sample(model, (2, 1, 8, 8), steps=n, eta=eta, generator=gen, progress=False)

    assert reads_per_step(run) == {}
    assert reads_per_step(functools.partial(run, eta=1.0)) == {}


def test_training_step_reads_nothing_per_step():
    """The body of ddpm.train's loop: the loss with t and noise drawn outside (as train does),
    backward, gradient clipping, Adam, EMA."""
    torch.manual_seed(0)
    net = UNet.from_preset("digits").train()
    ema = UNet.from_preset("digits").eval().requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1

    def run(n):
        for _ in range(n):
            t = torch.randint(0, diffusion.num_timesteps, (x0.shape[0],))
            noise = torch.randn_like(x0)
            loss = diffusion.training_losses(net, x0, t=t, noise=noise).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            ema_update(ema, net, 0.99)

    # Adam keeps each parameter's step count in a CPU tensor on every device (unless
    # capturable) and reads it with .item(): a read of host memory that never waits on a GPU.
    def adam_steps():
        return [s["step"] for s in opt.state.values()]

    assert reads_per_step(run, exempt=adam_steps) == {}


def test_unet_forward_reads_nothing(model):
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    model(x, t)
    with count_host_reads() as c:
        model(x, t)
    assert dict(c) == {}


def test_training_loss_still_rejects_bad_steps_and_data():
    """training_losses checks without a read (on the device), but on a CPU it still raises the
    same one-line errors as the methods that read."""
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"0\.\.999 .*got values in -1\.\.3"):
        diffusion.training_losses(lambda xt, t: xt, x, t=torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match=r"0\.\.999 .*got values in 5\.\.1000"):
        diffusion.training_losses(lambda xt, t: xt, x, t=torch.tensor([1000, 5]))
    with pytest.raises(ValueError, match=r"\[-1, 1\] \(got values in 0\.5\.\.1\.01\)"):
        diffusion.training_losses(lambda xt, t: xt, x + torch.tensor([0.5, 1.01, 0.7]),
                                  loss_type="vlb")  # fmt: skip
    with pytest.raises(ValueError, match="noise shape"):
        diffusion.training_losses(lambda xt, t: xt, x, noise=torch.zeros(3, 3))


def test_devices_without_async_asserts_read_the_check_instead(monkeypatch):
    """Where torch has no asynchronous assertion for a device (NotImplementedError, a subclass
    of RuntimeError), a valid t must pass and a bad one still give the ValueError."""

    def not_implemented(*args):
        raise NotImplementedError("no _assert_async on this backend")

    monkeypatch.setattr(torch, "_assert_async", not_implemented)
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    x = torch.zeros(2, 3)
    assert diffusion.training_losses(lambda xt, t: xt, x, t=torch.tensor([0, 999])).shape == (2,)
    with pytest.raises(ValueError, match=r"0\.\.999"):
        diffusion.training_losses(lambda xt, t: xt, x, t=torch.tensor([0, 1000]))
