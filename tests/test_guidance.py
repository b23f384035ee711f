"""Class-conditional UNet, classifier-free guidance (ddpm.guidance) and conditional training.

The guided model is checked against the formula eps_w = (1 + w) eps(x, t, y) - w eps(x, t, null)
on a UNet with random (not zero-initialised) weights, where the conditional and unconditional
predictions differ, at a w where the formula's usual misreadings give other numbers.
"""

import json
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from test_host_sync import reads_per_step

from ddpm import train as T
from ddpm.diffusion import GaussianDiffusion
from ddpm.guidance import GuidedModel, guided
from ddpm.schedules import linear_beta_schedule
from ddpm.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

K = 10


def random_unet(num_classes=K, seed=0) -> UNet:
    """A digits-sized conditional UNet with every weight random (a fresh UNet outputs 0)."""
    torch.manual_seed(seed)
    net = UNet.from_preset("digits", ch=16, num_classes=num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3 if p.ndim > 1 else 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return random_unet()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 999, 500, 10, 250, 999])
    y = torch.tensor([0, 9, 3, 3, 7, 1])
    return x, t, y


# ------------------------------------------------------------------ the conditional UNet
def test_config_default_is_unconditional_and_validated():
    assert UNetConfig().num_classes is None
    assert "label_emb" not in dict(UNet.from_preset("digits").named_modules())
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="num_classes must be a positive integer or None"):
            UNetConfig(num_classes=bad)


def test_unconditional_parameters_unchanged_by_the_option():
    """A conditional model draws the same initial values for every shared parameter (the label
    embedding is built last), and has num_classes + 1 label vectors more."""
    torch.manual_seed(3)
    plain = UNet.from_preset("digits")
    torch.manual_seed(3)
    cond = UNet.from_preset("digits", num_classes=K)
    a, b = plain.state_dict(), cond.state_dict()
    assert set(b) - set(a) == {"label_emb.weight"} and b["label_emb.weight"].shape == (K + 1, 128)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_shapes_and_none_is_the_null_class(net, batch):
    x, t, y = batch
    with torch.no_grad():
        out = net(x, t, y)
        assert out.shape == x.shape
        torch.testing.assert_close(net(x, t), net(x, t, torch.full((6,), K)), rtol=0, atol=0)
        torch.testing.assert_close(net(x, t, 3), net(x, t, torch.full((6,), 3)), rtol=0, atol=0)
        assert (net(x, t, y) - net(x, t)).abs().max() > 1e-2  # the label matters


def test_bad_labels_are_one_line_errors(net, batch):
    x, t, y = batch
    cases = [
        (torch.tensor([0, 1]), r"shape \[6\] \(one label per image\), got shape \(2,\)"),
        (y.float(), "must be integers"),
        (torch.tensor([0, 1, 2, 3, 4, K + 1]), rf"0\.\.{K} \({K} is the null class\), got "
                                               rf"values in 0\.\.{K + 1}"),
        (torch.tensor([-1, 1, 2, 3, 4, 5]), r"got values in -1\.\.5"),
    ]  # fmt: skip
    for bad, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            net(x, t, bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unconditional .*without labels"):
        UNet.from_preset("digits")(x, t, y)


# ------------------------------------------------------------------ guidance
def test_scale_zero_is_the_conditional_model(net, batch):
    x, t, y = batch
    with torch.no_grad():
        torch.testing.assert_close(guided(net, y, 0.0)(x, t), net(x, t, y), rtol=0, atol=0)


def test_guidance_formula_at_a_telling_scale(net, batch):
    """w = 0.7: (1 + w) c - w u, not the misreadings w c + (1 - w) u, (1 - w) c + w u,
    (1 + w) u - w c, or c + w u. The batched call equals the two separate calls up to float32
    rounding (the batch size may change the order of the sums): errors ~1e-6 of |eps| ~ 1."""
    x, t, y = batch
    w = 0.7
    with torch.no_grad():
        c, u = net(x, t, y), net(x, t)
        got = guided(net, y, w)(x, t)
    want = (1 + w) * c - w * u
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    gap = (c - u).abs().max().item()
    assert gap > 0.05  # conditional and unconditional differ: the candidates below are far
    for wrong in (w * c + (1 - w) * u, (1 - w) * c + w * u, (1 + w) * u - w * c, c + w * u):
        assert (got - wrong).abs().max() > 0.1 * gap
    # scale -1 is the unconditional model
    torch.testing.assert_close(guided(net, y, -1.0)(x, t), u, rtol=1e-4, atol=1e-4)


def test_one_batched_forward_per_call(net, batch):
    x, t, y = batch
    calls = Counter()
    handle = net.register_forward_hook(lambda m, args, out: calls.update([args[0].shape[0]]))
    try:
        with torch.no_grad():
            guided(net, y, 2.0)(x, t)
            assert calls == {12: 1}  # one call on [x; x]
            calls.clear()
            guided(net, y, 0.0)(x, t)
            assert calls == {6: 1}  # w = 0: the conditional half only
            calls.clear()
            d = GaussianDiffusion(linear_beta_schedule(1000))
            d.ddim_sample(guided(net, y, 1.5), (6, 1, 8, 8), steps=5, progress=False)
            assert calls == {12: 5}  # one network call per sampler step
    finally:
        handle.remove()


def test_guided_is_a_model_for_the_samplers(net, batch):
    _, _, y = batch
    model = guided(net, y, 3.0)
    assert isinstance(model, GuidedModel) and torch.equal(model.y, y)
    d = GaussianDiffusion(linear_beta_schedule(20, 1e-3, 0.2, rescale=False))
    gen = torch.Generator().manual_seed(0)
    x = d.sample(model, (6, 1, 8, 8), generator=gen, progress=False)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()


def test_bad_guidance_arguments_are_one_line_errors(net, batch):
    x, t, y = batch
    cases = [
        (lambda: guided(UNet.from_preset("digits"), y, 1.0), "needs a class-conditional UNet"),
        (lambda: guided(net, torch.tensor([0, K]), 1.0),
         rf"0\.\.{K - 1} .*{K} is the null class.*got values in 0\.\.{K}"),
        (lambda: guided(net, torch.tensor([-2, 3]), 1.0), r"got values in -2\.\.3"),
        (lambda: guided(net, torch.tensor([[1, 2]]), 1.0), r"1-D tensor .*shape \(1, 2\)"),
        (lambda: guided(net, torch.tensor([0.0, 1.0]), 1.0), "integer class indices"),
        (lambda: guided(net, y, math.nan), "finite number"),
        (lambda: guided(net, y, "2"), "finite number"),
        (lambda: guided(net, y, 1.0)(x[:4], t[:4]), r"batch \(4,\), but the labels .* are 6"),
    ]  # fmt: skip
    for make, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            make()
        assert "\n" not in str(err.value)


def test_guided_sampling_reads_nothing_per_step(net):
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    model = guided(net, torch.tensor([1, 4]), 2.0)

    def run(n):
        gen = torch.Generator().manual_seed(0)
        diffusion.ddim_sample(model, (2, 1, 8, 8), steps=n, generator=gen, progress=False)

    def ancestral(n):
        d = GaussianDiffusion(linear_beta_schedule(n, 1e-3, 0.2, rescale=False))
        d.sample(model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0), progress=False)

    assert reads_per_step(run) == {}
    assert reads_per_step(ancestral) == {}


# ------------------------------------------------------------------ conditional training
TINY = dict(model_overrides={"ch": 16}, timesteps=50, batch_size=32, lr=1e-3, warmup_steps=2,
            ema_decay=0.9, log_every=2, sample_every=0, ckpt_every=2, keep_last=2)  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "cache"))  # never the repo's data/


def test_preset_and_config_fields():
    c = T.preset_config("digits-cond")
    assert c.conditional and c.label_dropout == 0.1 and c.dataset == "digits"
    assert not T.preset_config("digits").conditional
    assert T.build_model(c).config.num_classes == 10
    assert T.build_model(T.preset_config("digits")).config.num_classes is None
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="label_dropout: expected a probability"):
            T.preset_config("digits-cond", label_dropout=bad).validate()
    with pytest.raises(ValueError, match="needs class labels, and folder:.* has none"):
        T.build_model(T.TrainConfig(dataset="folder:/nowhere", conditional=True))


def test_label_dropout_rate():
    """Each label becomes the null class with probability p, independently: over n = 128 * 50
    labels the count of nulls is Binomial(n, p); we accept 4.5 standard deviations (a false
    alarm once in 10^5 runs; p = 0.05 off would be 13 away). Kept labels are the batch's own,
    and a rank's slice of the global batch gets the global draws of its part."""
    targets = torch.arange(1500) % 10
    ds = SimpleNamespace(targets=targets)
    seen = []

    def net(xt, t, y):
        seen.append(y)
        return xt

    for p in (0.1, 0.3):
        seen.clear()
        config = SimpleNamespace(batch_size=128, label_dropout=p)
        run = SimpleNamespace(config=config, data_gen=torch.Generator().manual_seed(0),
                              model=SimpleNamespace(config=SimpleNamespace(num_classes=10)),
                              device=torch.device("cpu"))  # fmt: skip
        kept = []
        for _ in range(50):
            idx = torch.randperm(1500, generator=run.data_gen)[:128]
            T._with_labels(run, net, ds, idx, slice(0, 128))(None, None)
            kept.append(targets[idx])
        y, want = torch.cat(seen), torch.cat(kept)
        null = y == 10
        n = len(y)
        assert torch.equal(y[~null], want[~null])
        sd = math.sqrt(n * p * (1 - p))
        assert abs(null.sum().item() - n * p) < 4.5 * sd, (null.sum().item(), n * p, sd)
    # two ranks, each with half the batch, see the halves of one process's labels
    gens = [torch.Generator().manual_seed(5) for _ in range(3)]
    idx = torch.arange(8)
    outs = []
    for gen, part in zip(gens, (slice(0, 8), slice(0, 4), slice(4, 8)), strict=True):
        seen.clear()
        run = SimpleNamespace(config=SimpleNamespace(batch_size=8, label_dropout=0.5),
                              data_gen=gen, device=torch.device("cpu"),
                              model=SimpleNamespace(config=SimpleNamespace(num_classes=10)))
        T._with_labels(run, net, ds, idx[part], part)(None, None)
        outs.append(seen[0])
    assert torch.equal(outs[0], torch.cat(outs[1:]))


def test_conditional_training_runs_and_round_trips(tmp_path):
    config = T.preset_config("digits-cond", **{**TINY, "run_dir": str(tmp_path / "r"),
                                               "steps": 4})  # fmt: skip
    result = T.train(config, progress=False)
    assert result.step == 4 and math.isfinite(result.loss)
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["config"]["conditional"] is True and "label_emb.weight" in ckpt["model"]
    model, _, saved = T.load_model(result.checkpoint)
    assert saved.conditional and model.config.num_classes == 10
    emb = ckpt["ema"]["label_emb.weight"]
    torch.testing.assert_close(model.label_emb.weight, emb, rtol=0, atol=0)
    torch.manual_seed(config.seed)  # the initial weights, as _build draws them
    init = T.build_model(config).label_emb.weight.detach()
    assert (ckpt["model"]["label_emb.weight"] - init).abs().max() > 0  # trained: it has moved
    # an unconditional resume into a conditional run is refused, naming the field
    with pytest.raises(T.CheckpointError, match="conditional: True -> False"):
        T.train(T.preset_config("digits", **{**TINY, "run_dir": str(tmp_path / "r"),
                                             "steps": 6}), resume=True, progress=False)  # fmt: skip


def test_conditional_resume_is_exact(tmp_path):
    def cfg(run, steps):
        return T.preset_config("digits-cond", **{**TINY, "run_dir": str(tmp_path / run),
                                                 "steps": steps})  # fmt: skip

    straight = T.train(cfg("a", 4), progress=False)
    T.train(cfg("b", 2), progress=False)
    resumed = T.train(cfg("b", 4), resume=True, progress=False)
    for key in ("model", "ema"):
        a = torch.load(straight.checkpoint, weights_only=True)[key]
        b = torch.load(resumed.checkpoint, weights_only=True)[key]
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_old_checkpoint_config_without_the_new_fields_resumes(tmp_path):
    """A checkpoint written before ``conditional`` existed compares as unconditional."""
    config = T.preset_config("digits", **{**TINY, "run_dir": str(tmp_path), "steps": 2})
    T.train(config, progress=False)
    path = T.latest_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    for name in ("conditional", "label_dropout"):
        del ckpt["config"][name]
    torch.save(ckpt, path)
    T._check_arch(ckpt["config"], config, path)  # no error
    assert json.loads(json.dumps(ckpt["config"]))["dataset"] == "digits"


def test_cli_train_flags(capsys):
    from ddpm.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--preset", "digits-cond", "--label-dropout", "0.2",
                              "--no-conditional"])  # fmt: skip
    assert args.preset == "digits-cond" and args.label_dropout == 0.2 and not args.conditional
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--label-dropout", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "expected a probability in [0, 1]" in err[-1]
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "digits-cond" in text and "--conditional" in text and "--label-dropout" in text
