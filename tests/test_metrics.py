"""ddpm.metrics against closed forms, brute force and the variational bound itself; the digits
classifier is trained once into a temporary DDPM_DATA_DIR (never the repository's data/), and
no test touches the network."""

import math
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from scipy import linalg

import ddpm.metrics as metrics
from ddpm.data import load_dataset
from ddpm.diffusion import GaussianDiffusion
from ddpm.metrics import (
    MetricUnavailableError,
    bits_per_dim,
    digits_fid,
    digits_fid_floor,
    frechet_distance,
    frechet_distance_gaussians,
    inception_fid,
    load_digits_classifier,
    nearest_neighbour_distance,
    rate_distortion,
)
from ddpm.schedules import linear_beta_schedule


# ---------------------------------------------------------------------- Frechet distance
def test_frechet_identical_sets_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 3.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance_gaussians(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    d12 = frechet_distance_gaussians(mu1, s1, mu2, s2)
    assert d12 == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_gaussians(mu2, s2, mu1, s1) == pytest.approx(d12, rel=1e-12)


def test_frechet_samples_symmetric_and_grows_with_mean_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 8, generator=g), torch.randn(300, 8, generator=g)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    shifts = [frechet_distance(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts) and shifts[-1] > 8 * 4 * 0.9  # ~ ||shift||^2 = 8 * 4
    # a singular covariance (rank-deficient features) still gives a finite, real number
    low_rank = torch.cat([a[:, :2], torch.zeros(400, 6)], dim=1)
    assert math.isfinite(frechet_distance(low_rank, b))
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, b[:, :4])


# ---------------------------------------------------------------------- digits classifier
@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A fresh DDPM_DATA_DIR for the module; the classifier is trained there once."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("ddpm_data")
        mp.setenv("DDPM_DATA_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def classifier(digits_dir):
    clf = load_digits_classifier()
    assert clf.trained_now
    return clf


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train").data, load_dataset("digits", "test").data


def test_classifier_accuracy_and_cache_location(classifier, digits_dir):
    test = load_dataset("digits", "test")
    with torch.no_grad():
        acc = (classifier(test.data).argmax(1) == test.targets).float().mean().item()
    assert acc > 0.95
    assert classifier.test_accuracy == pytest.approx(acc)
    assert metrics.digits_classifier_path() == digits_dir / "classifiers" / "digits_classifier.pt"
    assert metrics.digits_classifier_path().is_file()
    assert not list((digits_dir / "classifiers").glob("*.tmp"))  # atomic write left no temp


def test_classifier_cache_loads_without_training(classifier, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded, not retrained")

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(metrics, "_train_digits_classifier", no_training)
    monkeypatch.setattr(torch, "load", recording_load)
    again = load_digits_classifier()
    assert not again.trained_now and loads == [True]
    assert again.test_accuracy == classifier.test_accuracy
    for (k, v), (k2, v2) in zip(
        classifier.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


def test_corrupt_cache_is_retrained(classifier, digits):
    path = metrics.digits_classifier_path()
    good = path.read_bytes()
    try:
        path.write_bytes(b"not a checkpoint" * 10)
        clf = load_digits_classifier()
        assert clf.trained_now and clf.test_accuracy > 0.95
        assert not load_digits_classifier().trained_now  # the rewritten file loads
    finally:
        path.write_bytes(good)
    feats = metrics.digits_features(digits[1][:10], classifier=classifier)
    assert feats.shape == (10, metrics.FEATURE_DIM) and not feats.requires_grad


def test_digits_fid_floor_small_and_corrupted_images_far(classifier, digits):
    train, test = digits
    n = len(test)  # 297: compare at equal N
    floor = digits_fid_floor(n, generator=torch.Generator().manual_seed(0), classifier=classifier)
    assert 0 < floor < 25
    g = torch.Generator().manual_seed(0)
    real = train[torch.randperm(len(train), generator=g)[:n]]
    noised = (real + torch.randn(real.shape, generator=g)).clamp(-1, 1)
    perm = torch.stack([torch.randperm(64, generator=g) for _ in range(n)])
    shuffled = real.flatten(1).gather(1, perm).view_as(real)
    assert digits_fid(noised, test, classifier=classifier) > 5 * floor
    assert digits_fid(shuffled, test, classifier=classifier) > 5 * floor
    assert digits_fid(test, test, classifier=classifier) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------- bits/dim
class ClosedFormEps(torch.nn.Module):
    """eps-prediction that is optimal for N(0, I) data; records the mode it was called in."""

    def __init__(self, diffusion):
        super().__init__()
        self.register_buffer("abar", diffusion.alphas_cumprod.float())
        self.modes = []

    def forward(self, xt, t):
        self.modes.append(self.training)
        return xt * (1 - self.abar[t]).sqrt().view(-1, 1, 1, 1)


@pytest.fixture
def small():
    diffusion = GaussianDiffusion(linear_beta_schedule(20, 1e-3, 0.3, rescale=False))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 1, 4, 4), generator=g) / 127.5 - 1  # 8-bit grid
    return diffusion, ClosedFormEps(diffusion), x


def test_bits_per_dim_matches_vlb_terms(small):
    diffusion, model, x = small
    model.train()
    res = bits_per_dim(
        diffusion, model, x, batch_size=64, generator=torch.Generator().manual_seed(3),
        progress=False,
    )  # fmt: skip
    assert model.training and model.modes and not any(model.modes)  # eval inside, restored
    ref = diffusion.vlb_terms(model, x, generator=torch.Generator().manual_seed(3))
    assert res["num_images"] == 10
    assert res["terms_bpd"].shape == (20,) and res["x0_mse"].shape == (20,)
    assert res["bpd"] == pytest.approx(ref["total_bpd"].mean().item(), rel=1e-6)
    assert res["prior_bpd"] == pytest.approx(ref["prior_bpd"].mean().item(), rel=1e-6)
    torch.testing.assert_close(res["terms_bpd"], ref["terms_bpd"].mean(0))
    torch.testing.assert_close(res["x0_mse"], ref["x0_mse"].mean(0))
    torch.testing.assert_close(res["per_image_bpd"], ref["total_bpd"])
    stderr = ref["total_bpd"].double().std().item() / math.sqrt(10)
    assert res["bpd_stderr"] == pytest.approx(stderr, rel=1e-5)
    rd = rate_distortion(res)
    # the receiver of x_t has all bits but those coding x_{t-1}, ..., x_0 (Fig. 5's rate)
    L0 = res["terms_bpd"][0].item()
    assert rd["rate_bpd"][0].item() == pytest.approx(res["bpd"] - L0, rel=1e-5)
    assert rd["rate_bpd"][-1].item() == pytest.approx(res["prior_bpd"], rel=1e-5)
    assert rd["rate_bpd"][5].item() == pytest.approx(
        res["prior_bpd"] + res["terms_bpd"][6:].sum().item(), rel=1e-5
    )
    assert (rd["rate_bpd"].diff() <= 1e-6).all()  # every term is >= 0: rate falls with t
    torch.testing.assert_close(rd["distortion_rmse"], res["x0_mse"].sqrt() * 127.5)


def test_bits_per_dim_batches_subset_and_dataset(small):
    diffusion, model, x = small
    model.eval()
    res = bits_per_dim(
        diffusion, model, x, batch_size=3, max_images=7,
        generator=torch.Generator().manual_seed(5), progress=False,
    )  # fmt: skip
    assert not model.training and res["num_images"] == 7
    g = torch.Generator().manual_seed(5)
    totals = torch.cat(
        [diffusion.vlb_terms(model, x[s : min(s + 3, 7)], generator=g)["total_bpd"]
         for s in range(0, 7, 3)]
    )  # fmt: skip
    torch.testing.assert_close(res["per_image_bpd"], totals)

    class Data:  # anything with .data, like ImageTensorDataset
        data = x

    res2 = bits_per_dim(
        diffusion, model, Data(), batch_size=3, max_images=7,
        generator=torch.Generator().manual_seed(5), progress=False,
    )  # fmt: skip
    assert res2["bpd"] == res["bpd"]


# ---------------------------------------------------------------------- nearest neighbours
def test_nearest_neighbour_exact_zero_for_training_images():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(200, 1, 8, 8, generator=g) * 2 - 1
    idx = torch.tensor([5, 0, 199, 42, 42])
    d, i = nearest_neighbour_distance(train[idx], train, return_indices=True)
    assert torch.equal(d, torch.zeros(5)) and torch.equal(i, idx)


def test_nearest_neighbour_known_values():
    train = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)])
    samples = torch.stack([torch.full((1, 2, 2), c) for c in (-1.0, -0.5, 0.5, 0.75)])
    d, i = nearest_neighbour_distance(samples, train, return_indices=True)
    # 4 pixels, each off by |c - nearest|: the distance is 2 |c - nearest|
    torch.testing.assert_close(d, torch.tensor([0.0, 1.0, 1.0, 0.5]))
    assert i.tolist() == [0, 0, 1, 1]
    dup = torch.cat([train, train])  # ties resolve to the first index
    assert nearest_neighbour_distance(samples, dup, return_indices=True)[1].tolist() == [0, 0, 1, 1]


def test_nearest_neighbour_chunking_is_exact_and_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    train = torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    samples = torch.rand(50, 1, 8, 8, generator=g) * 2 - 1
    d1, i1 = nearest_neighbour_distance(samples, train, return_indices=True)
    d2, i2 = nearest_neighbour_distance(
        samples, train, batch_size=7, train_batch_size=13, return_indices=True
    )
    assert torch.equal(d1, d2) and torch.equal(i1, i2)
    brute = (samples.flatten(1)[:, None].double() - train.flatten(1)[None].double()).pow(2)
    bd, bi = brute.sum(-1).sqrt().min(dim=1)
    torch.testing.assert_close(d1.double(), bd, rtol=1e-6, atol=1e-6)
    assert torch.equal(i1, bi)


# ---------------------------------------------------------------------- Inception FID offline
@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Block every way out and point torch.hub's cache at an empty folder."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise urllib.error.URLError("network blocked in tests")

    def refuse_socket(self, *args, **kwargs):
        attempts.append(args[:1])
        raise OSError("network blocked in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse_socket)
    return attempts


def test_inception_fid_offline_raises_one_clear_error(no_network, tmp_path):
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with pytest.raises(MetricUnavailableError, match="digits_fid") as info:
        inception_fid(x, x)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.__cause__ is None and err.__suppress_context__  # no urllib traceback chained
    assert str(tmp_path / "hub" / "checkpoints") in str(err)
    assert metrics.inception_weights_path().parent == tmp_path / "hub" / "checkpoints"
    assert no_network  # the download was attempted, and refused here


def test_inception_fid_corrupt_local_weights(no_network, tmp_path):
    bad = tmp_path / "inception.pth"
    bad.write_bytes(b"garbage")
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with pytest.raises(MetricUnavailableError, match="not readable"):
        inception_fid(x, x, weights_path=bad)


# ---------------------------------------------------------------------- bits/dim, sampled steps
@pytest.fixture(scope="module")
def hundred_steps():
    """T = 100 and a model whose bound terms vary by orders of magnitude with t."""
    diffusion = GaussianDiffusion(linear_beta_schedule(100, 1e-3, 0.1, rescale=False))
    return diffusion, ClosedFormEps(diffusion)


def random_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 4, 4), generator=g) / 127.5 - 1


def test_importance_proposal_is_a_distribution_over_the_kl_steps(hundred_steps):
    diffusion, model = hundred_steps
    p = metrics.importance_proposal(diffusion, model, random_images(16, 0), mix=0.2,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert p.shape == (100,) and p[0] == 0 and p.sum().item() == pytest.approx(1, abs=1e-12)
    assert p[1:].min().item() >= 0.2 / 99 * (1 - 1e-9)  # the uniform share bounds the weights
    full = diffusion.vlb_terms(model, random_images(16, 0))["terms_bpd"].double()
    rms = full[:, 1:].pow(2).mean(0).sqrt()
    assert torch.corrcoef(torch.stack([p[1:].log(), rms.log()]))[0, 1] > 0.9  # p ~ sqrt(E L_t^2)


def test_sampled_bound_is_unbiased_and_its_error_bar_is_honest(hundred_steps):
    """Each estimate lies within 3 standard errors of the full sum on the same images, the
    spread of estimates over fresh images and draws matches the reported standard error, and
    the error shrinks like 1/sqrt(N)."""
    diffusion, model = hundred_steps
    x = random_images(200, 1)
    full = bits_per_dim(diffusion, model, x, generator=torch.Generator().manual_seed(0),
                        progress=False)["bpd"]  # fmt: skip
    ests = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        r = metrics.bits_per_dim_estimate(diffusion, model, x, progress=False, generator=g)
        assert abs(r["bpd"] - full) < 3 * r["bpd_stderr"]
        assert r["num_images"] == 200 and r["model_calls"] < 200 * 100 / 10
        ests.append(r)
    # the pieces: L_T exactly as the full sum's
    assert ests[0]["prior_bpd"] == pytest.approx(diffusion.prior_bpd(x).double().mean().item())
    # 1/sqrt(N): a quarter of the images, twice the error (the error's own error is ~10%)
    quarter = metrics.bits_per_dim_estimate(diffusion, model, x[:50], progress=False,
                                            generator=torch.Generator().manual_seed(9))  # fmt: skip
    assert 1.5 < quarter["bpd_stderr"] / ests[0]["bpd_stderr"] < 2.7
    # honest: over fresh images and draws, the estimates scatter by about their standard error
    spread = [
        metrics.bits_per_dim_estimate(diffusion, model, random_images(40, 100 + s),
                                      progress=False, generator=torch.Generator().manual_seed(s))
        for s in range(16)
    ]  # fmt: skip
    sd = np.std([r["bpd"] for r in spread], ddof=1)
    se = np.mean([r["bpd_stderr"] for r in spread])
    assert 0.6 < sd / se < 1.6


def test_sampled_bound_without_importance_weights_would_be_caught(hundred_steps):
    """A uniform proposal is unbiased too, but noisier; dropping the 1/p(t) weight is not."""
    diffusion, model = hundred_steps
    x = random_images(200, 1)
    full = bits_per_dim(diffusion, model, x, generator=torch.Generator().manual_seed(0),
                        progress=False)["bpd"]  # fmt: skip
    uniform = torch.ones(100)
    g = torch.Generator().manual_seed(0)
    r_u = metrics.bits_per_dim_estimate(diffusion, model, x, proposal=uniform, generator=g,
                                        progress=False)  # fmt: skip
    r_is = metrics.bits_per_dim_estimate(diffusion, model, x, progress=False,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert abs(r_u["bpd"] - full) < 3 * r_u["bpd_stderr"]
    assert r_is["bpd_stderr"] < 0.7 * r_u["bpd_stderr"]  # importance sampling pays off
    assert r_u["proposal"][0] == 0 and r_u["proposal"][1:].allclose(torch.full((99,), 1 / 99))
    # what the estimate would be if the terms were averaged instead of weighted by 1/p(t):
    terms = diffusion.vlb_terms(model, x, generator=torch.Generator().manual_seed(0))
    unweighted = (terms["prior_bpd"] + terms["terms_bpd"][:, 0]
                  + terms["terms_bpd"][:, 1:].mean(1)).mean().item()  # fmt: skip
    assert abs(unweighted - full) > 10 * r_is["bpd_stderr"]


def test_sampled_bound_rejects_bad_arguments(hundred_steps):
    diffusion, model = hundred_steps
    x = random_images(4, 0)
    with pytest.raises(ValueError, match="proposal must hold 100"):
        metrics.bits_per_dim_estimate(diffusion, model, x, proposal=torch.ones(10), progress=False)
    with pytest.raises(ValueError, match="proposal must hold"):
        metrics.bits_per_dim_estimate(diffusion, model, x, proposal=torch.zeros(100),
                                      progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="steps_per_image"):
        metrics.bits_per_dim_estimate(diffusion, model, x, steps_per_image=0, progress=False)
    with pytest.raises(ValueError, match="discretized decoder"):
        metrics.bits_per_dim_estimate(diffusion, model, x * 3, progress=False)
