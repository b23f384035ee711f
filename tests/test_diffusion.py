"""GaussianDiffusion against independent computations: iterating the chain, Bayes' rule on a
grid, closed forms, Monte Carlo, and Algorithm 2 written out literally."""

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, normal_kl
from ddpm.schedules import linear_beta_schedule

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(linear_beta_schedule(1000))


def quantized(x):
    """Snap values in [-1, 1] to the 256 levels of 8-bit data."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def perfect_model(diffusion, x0, mean_type="eps"):
    """The ideal model for data that is always ``x0``: it knows the answer exactly."""
    abar = diffusion.alphas_cumprod

    def model(xt, t):
        a = abar[t].to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))
        if mean_type == "eps":
            return (xt - a.sqrt() * x0) / (1 - a).sqrt()
        if mean_type == "x0":
            return x0.expand_as(xt)
        return diffusion.q_posterior_mean_variance(x0.expand_as(xt), xt, t)[0]

    return model


def gaussian_data_model(diffusion, mu, s):
    """Optimal eps-predictor E[eps | x_t] when the data are N(mu, s^2 I): linear in x_t."""
    abar = diffusion.alphas_cumprod

    def model(xt, t):
        a = abar[t].to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))
        return (1 - a).sqrt() * (xt - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return model


class CountingModel:
    """Wraps a model and records each call's step."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, xt, t):
        self.calls.append((xt.clone(), t.clone()))
        return self.fn(xt, t)


def test_attributes(diffusion):
    assert diffusion.num_timesteps == 1000
    for name in (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "posterior_variance",
        "posterior_log_variance_clipped",
    ):
        value = getattr(diffusion, name)
        assert value.dtype == torch.float64 and value.shape == (1000,), name


# ---------------------------------------------------------------- forward process
def test_closed_form_matches_iterating_the_chain(diffusion):
    torch.manual_seed(0)
    n = 20_000
    x0 = torch.tensor([-1.0, 0.3, 1.0], dtype=torch.float64).repeat(n, 1)
    x = x0.clone()
    for t in range(1000):  # q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t), eq. 2
        beta = diffusion.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn_like(x)
        if t not in (0, 9, 99, 499, 999):
            continue
        mean, var, log_var = diffusion.q_mean_variance(x0[:3], t)  # eq. 4
        assert torch.allclose(log_var, var.log())
        se_mean, se_var = (var[0] / n).sqrt(), var[0] * math.sqrt(2 / n)
        assert torch.allclose(x.mean(0), mean[0], atol=5 * se_mean.max().item()), t
        assert torch.allclose(x.var(0), var[0], atol=5 * se_var.max().item()), t
        xs = diffusion.q_sample(x0, t)  # one jump draws from the same distribution
        assert torch.allclose(xs.mean(0), mean[0], atol=5 * se_mean.max().item()), t
        assert torch.allclose(xs.var(0), var[0], atol=5 * se_var.max().item()), t


def test_forward_process_preserves_unit_variance(diffusion):
    torch.manual_seed(1)
    x0 = torch.randn(200_000, dtype=torch.float64)
    for t in (0, 300, 999):
        assert diffusion.q_sample(x0.unsqueeze(1), t).var().item() == pytest.approx(1.0, abs=0.02)


def test_q_sample_with_given_noise_is_the_formula(diffusion):
    x0, eps = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 500, 999])
    a = diffusion.alphas_cumprod[t].reshape(4, 1, 1, 1)  # float64: 1 - a loses digits in float32
    expected = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
    assert torch.allclose(diffusion.q_sample(x0, t, eps), expected, atol=1e-6)


# ---------------------------------------------------------------- posterior
@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_matches_bayes_rule_on_a_grid(diffusion, t):
    x0 = torch.tensor([0.4], dtype=torch.float64)
    gen = torch.Generator().manual_seed(t)
    xt = diffusion.q_sample(
        x0.reshape(1, 1), t, torch.randn(1, 1, generator=gen, dtype=torch.float64)
    )
    alpha = 1 - diffusion.betas[t]
    abar_prev = diffusion.alphas_cumprod[t - 1]
    # posterior over x_{t-1} is prior q(x_{t-1} | x0) times likelihood q(x_t | x_{t-1}), normalised
    centre, width = xt.item() / alpha.sqrt().item(), (diffusion.betas[t] / alpha).sqrt().item()
    grid = torch.linspace(centre - 20 * width, centre + 20 * width, 400_001, dtype=torch.float64)
    log_prior = -0.5 * (grid - abar_prev.sqrt() * x0) ** 2 / (1 - abar_prev)
    log_lik = -0.5 * (xt.item() - alpha.sqrt() * grid) ** 2 / diffusion.betas[t]
    w = torch.softmax(log_prior + log_lik, 0)
    mean_num = (w * grid).sum()
    var_num = (w * (grid - mean_num) ** 2).sum()
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0.reshape(1, 1), xt, t)
    assert mean.item() == pytest.approx(mean_num.item(), abs=1e-6 * max(1, abs(mean_num.item())))
    assert var.item() == pytest.approx(var_num.item(), rel=1e-5)
    assert log_var.item() == pytest.approx(math.log(var_num.item()), abs=1e-5)


def test_posterior_at_first_step_is_exact(diffusion):
    x0, xt = torch.randn(3, 2), torch.randn(3, 2)
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, 0)
    assert torch.allclose(mean, x0, atol=1e-6)  # x_0 is known given x_0
    assert (var == 0).all() and torch.isfinite(log_var).all()


def test_predictions_invert_each_other(diffusion):
    torch.manual_seed(2)
    x0, eps = (
        torch.randn(6, 2, 4, 4, dtype=torch.float64),
        torch.randn(6, 2, 4, 4, dtype=torch.float64),
    )
    t = torch.tensor([0, 1, 100, 500, 998, 999])
    xt = diffusion.q_sample(x0, t, eps)
    assert torch.allclose(diffusion.predict_x0_from_eps(xt, t, eps), x0, atol=1e-9)
    assert torch.allclose(diffusion.predict_eps_from_x0(xt, t, x0), eps, atol=1e-9)
    mu = diffusion.q_posterior_mean_variance(x0, xt, t)[0]
    assert torch.allclose(diffusion.predict_x0_from_mean(xt, t, mu), x0, atol=1e-7)
    # float32: x0 is the difference of x_t / sqrt(alpha-bar) and eps sqrt(1 - alpha-bar) /
    # sqrt(alpha-bar) (up to ~157 |x_t| at t = 999); each of its ~6 roundings (inputs, tables,
    # products, difference) is within 2^-24 of those terms, not of x0
    x32 = diffusion.predict_x0_from_eps(xt.float(), t, eps.float())
    terms = (xt.abs() + eps.abs()) / diffusion.alphas_cumprod[t].sqrt().reshape(-1, 1, 1, 1)
    assert x32.dtype == torch.float32 and ((x32 - x0).abs() <= 8 * 2**-24 * terms).all()


@pytest.mark.parametrize("var_type", ["fixed_large", "fixed_small"])
def test_parameterizations_agree_for_a_perfect_model(var_type):
    torch.manual_seed(3)
    x0 = quantized(torch.rand(1, 1, 4, 4) * 2 - 1).expand(5, 1, 4, 4)
    t = torch.tensor([0, 1, 50, 500, 999])
    outs = {}
    for mt in ("eps", "x0", "mean"):
        d = GaussianDiffusion(
            linear_beta_schedule(1000), model_mean_type=mt, model_var_type=var_type
        )
        xt = d.q_sample(x0, t, torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
        outs[mt] = d.p_mean_variance(perfect_model(d, x0, mt), xt, t)
    for mt in ("x0", "mean"):
        for key in ("mean", "variance", "log_variance", "pred_x0"):
            assert outs[mt][key].shape == x0.shape
            # x0 from mu-tilde divides by coef1 ~ 1e-4 at t = 999, so float32 error grows there
            tol = 2e-3 if (mt, key) == ("mean", "pred_x0") else 2e-4
            assert torch.allclose(outs[mt][key], outs["eps"][key], atol=tol), (mt, key)


def test_reverse_variances(diffusion):
    large = diffusion.p_mean_variance(
        lambda x, t: x * 0, torch.zeros(3, 1), torch.tensor([0, 1, 999])
    )
    small = GaussianDiffusion(
        linear_beta_schedule(1000), model_var_type="fixed_small"
    ).p_mean_variance(lambda x, t: x * 0, torch.zeros(3, 1), torch.tensor([0, 1, 999]))
    pv, b = diffusion.posterior_variance, diffusion.betas
    # fixed_large: beta_t, but at t = 0 beta-tilde of the next step, not beta_1 (original code)
    assert torch.allclose(large["variance"][:, 0].double(), torch.stack([pv[1], b[1], b[999]]))
    assert not math.isclose(large["variance"][0, 0].item(), b[0].item(), rel_tol=0.1)
    assert torch.allclose(small["variance"][:, 0].double(), torch.stack([pv[1], pv[1], pv[999]]))
    assert torch.allclose(small["log_variance"].exp(), small["variance"])


# ---------------------------------------------------------------- KL, decoder, bound
def test_normal_kl_matches_monte_carlo():
    torch.manual_seed(4)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(2.0)
    x = m1 + math.exp(0.5 * lv1) * torch.randn(2_000_000, dtype=torch.float64)

    def log_n(x, m, lv):
        return -0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 / math.exp(lv))

    mc = (log_n(x, m1, lv1) - log_n(x, m2, lv2)).mean().item()
    kl = normal_kl(torch.tensor(m1), torch.tensor(lv1), torch.tensor(m2), torch.tensor(lv2)).item()
    assert kl == pytest.approx(mc, abs=3e-3)
    assert (
        normal_kl(torch.tensor(m1), torch.tensor(lv1), torch.tensor(m1), torch.tensor(lv1)).item()
        == 0
    )


@pytest.mark.parametrize("mean,std", [(0.0, 0.5), (0.9, 0.01), (-0.99, 0.003), (0.2, 3.0)])
def test_discretized_decoder_is_a_distribution(mean, std):
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(
        levels, torch.full_like(levels, mean), torch.full_like(levels, 2 * math.log(std))
    )
    assert torch.isfinite(logp).all()
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_decoder_interior_bin_closed_form():
    x, mean, std = torch.tensor([0.2]), torch.tensor([0.21]), 0.02
    half = 1 / 255

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    expected = math.log(phi((0.2 - 0.21 + half) / std) - phi((0.2 - 0.21 - half) / std))
    got = discretized_gaussian_log_likelihood(x, mean, torch.tensor([2 * math.log(std)])).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_prior_term_is_about_1e5_bits_per_dim(diffusion):
    torch.manual_seed(5)
    x0 = torch.rand(4096, 3, 4, 4, dtype=torch.float64) * 2 - 1
    prior = diffusion.prior_bpd(x0)
    abar = diffusion.alphas_cumprod[-1].item()
    closed = (
        0.5 * (abar * x0**2 - math.log(1 - abar) - abar) / LN2
    )  # KL(N(sqrt(a)x, 1-a) || N(0,1))
    assert torch.allclose(prior, closed.reshape(4096, -1).mean(1), rtol=1e-9)
    expected = 0.5 * (abar / 3 - math.log(1 - abar) - abar) / LN2  # E[x^2] = 1/3 for uniform data
    assert prior.mean().item() == pytest.approx(expected, rel=0.02)
    assert 0.5e-5 < prior.mean().item() < 2e-5  # the paper's "about 1e-5 bits/dim"


def test_bound_of_a_perfect_model_is_prior_plus_decoder():
    d = GaussianDiffusion(linear_beta_schedule(1000), model_var_type="fixed_small")
    x0 = torch.tensor([-1.0, -0.5, 0.0, 127 / 127.5 - 1, 1.0]).reshape(1, 5)
    out = d.vlb_terms(perfect_model(d, x0), x0, generator=torch.Generator().manual_seed(0))
    assert out["terms_bpd"].shape == (1, 1000) and out["x0_mse"].shape == (1, 1000)
    assert out["terms_bpd"][:, 1:].abs().max().item() < 1e-6  # every KL term vanishes
    # L_0 in closed form: a Gaussian with variance beta-tilde_2 centred on the right level
    sigma, half = math.sqrt(d.posterior_variance[1].item()), 1 / 255

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    inner, edge = phi(half / sigma) - phi(-half / sigma), phi(half / sigma)
    l0 = -(2 * math.log(edge) + 3 * math.log(inner)) / 5 / LN2
    assert out["terms_bpd"][0, 0].item() == pytest.approx(l0, rel=1e-4)
    abar = d.alphas_cumprod[-1].item()
    prior = 0.5 * (abar * (x0**2).mean().item() - math.log(1 - abar) - abar) / LN2
    assert out["prior_bpd"].item() == pytest.approx(prior, rel=1e-4)
    assert out["total_bpd"].item() == pytest.approx(prior + l0, rel=1e-4)
    assert out["x0_mse"].max().item() < 1e-8  # float32 round-off only


@pytest.mark.parametrize("var_type", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "mean"])
def test_bound_terms_are_finite_and_kl_nonnegative(var_type, mean_type):
    d = GaussianDiffusion(
        linear_beta_schedule(100), model_mean_type=mean_type, model_var_type=var_type
    )
    torch.manual_seed(6)
    x0 = quantized(torch.rand(3, 1, 4, 4) * 2 - 1)
    w = torch.randn(16, 16) * 0.3

    def model(xt, t):  # an imperfect, t-dependent model
        flat = xt.reshape(xt.shape[0], -1)
        return (torch.tanh(flat @ w) * (1 + t[:, None] / 100)).reshape(xt.shape)

    out = d.vlb_terms(model, x0)
    for key in ("prior_bpd", "terms_bpd", "total_bpd", "x0_mse"):
        assert torch.isfinite(out[key]).all() and out[key].dtype == torch.float32, key
    assert (out["terms_bpd"][:, 1:] >= 0).all()  # KL terms
    assert (out["terms_bpd"][:, 0] > 0).all()  # -log of a probability <= 1
    assert torch.allclose(out["total_bpd"], out["prior_bpd"] + out["terms_bpd"].sum(1))
    # the vlb training loss is finite, and so is its gradient, at both ends of the chain
    scale = torch.tensor(1.0, requires_grad=True)
    for t in (0, 99):
        loss = d.training_losses(
            lambda x, tt: scale * model(x, tt), x0, torch.full((3,), t), loss_type="vlb"
        )
        assert loss.shape == (3,) and torch.isfinite(loss).all()
        (grad,) = torch.autograd.grad(loss.sum(), scale)
        assert torch.isfinite(grad)


def test_vlb_loss_matches_its_definition(diffusion):
    torch.manual_seed(7)
    x0, noise = quantized(torch.rand(4, 8) * 2 - 1), torch.randn(4, 8)
    w = torch.randn(8, 8) * 0.1

    def model(xt, t):
        return xt @ w

    t = torch.tensor([0, 1, 400, 999])
    loss = diffusion.training_losses(model, x0, t, noise, loss_type="vlb")
    xt = diffusion.q_sample(x0, t, noise)
    p = diffusion.p_mean_variance(model, xt, t, clip_denoised=False)
    q_mean, _, q_logvar = diffusion.q_posterior_mean_variance(x0, xt, t)
    kl = normal_kl(q_mean, q_logvar, p["mean"], p["log_variance"]).mean(1) / LN2
    nll = -discretized_gaussian_log_likelihood(x0, p["mean"], p["log_variance"]).mean(1) / LN2
    assert torch.allclose(loss[1:], kl[1:]) and torch.allclose(loss[:1], nll[:1])
    # continuous data: the Gaussian decoder's density at t = 0, the same KL terms elsewhere
    dens = diffusion.training_losses(model, x0, t, noise, loss_type="vlb", decoder="gaussian")
    var = p["log_variance"].exp()
    gauss = 0.5 * (torch.log(2 * math.pi * var) + (x0 - p["mean"]) ** 2 / var).mean(1) / LN2
    assert torch.allclose(dens[1:], kl[1:]) and torch.allclose(dens[:1], gauss[:1])


def test_simple_loss_targets():
    torch.manual_seed(8)
    x0, noise, t = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3), torch.tensor([0, 5, 50, 99])
    w = torch.randn(18, 18) * 0.2

    def model(xt, tt):
        return (xt.reshape(4, -1) @ w).reshape(xt.shape)

    for mt in ("eps", "x0", "mean"):
        d = GaussianDiffusion(linear_beta_schedule(100), model_mean_type=mt)
        loss = d.training_losses(model, x0, t, noise)
        xt = d.q_sample(x0, t, noise)
        target = {"eps": noise, "x0": x0, "mean": d.q_posterior_mean_variance(x0, xt, t)[0]}[mt]
        assert loss.shape == (4,)
        assert torch.allclose(loss, ((model(xt, t) - target) ** 2).mean(dim=(1, 2, 3)))
    # a perfect eps model has zero L_simple; random t and noise are drawn when not given
    d = GaussianDiffusion(linear_beta_schedule(100))
    assert d.training_losses(lambda xt, tt: noise, x0, t, noise).abs().max() == 0
    assert d.training_losses(model, x0).shape == (4,)


# ---------------------------------------------------------------- sampling
def test_p_sample_adds_no_noise_at_the_last_step(diffusion):
    model = gaussian_data_model(diffusion, 0.2, 0.5)
    xt = torch.randn(2, 3)
    a = diffusion.p_sample(model, xt, 0, noise=torch.randn(2, 3))
    b = diffusion.p_sample(model, xt, 0, noise=torch.randn(2, 3))
    assert torch.equal(a, b)
    z = torch.randn(2, 3)
    mean = diffusion.p_mean_variance(model, xt, 5)["mean"]
    assert torch.allclose(
        diffusion.p_sample(model, xt, 5, noise=z), mean + diffusion.betas[5].sqrt().float() * z
    )


def test_sample_is_algorithm_2_exactly():
    d = GaussianDiffusion(linear_beta_schedule(50))
    model = gaussian_data_model(d, 0.3, 0.6)
    got = d.sample(
        model,
        (4, 3),
        generator=torch.Generator().manual_seed(9),
        clip_denoised=False,
        progress=False,
    )
    # Algorithm 2, line by line, with the same noise draws (sigma_t^2 = beta_t; last step 1-based
    # t = 1 is code t = 0, and fixed_large there uses beta-tilde_2, but z = 0 at that step anyway)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 3, generator=gen)
    for t in range(49, -1, -1):
        z = torch.randn(4, 3, generator=gen) if t > 0 else torch.randn(4, 3, generator=gen) * 0
        beta, alpha = d.betas[t].item(), 1 - d.betas[t].item()
        abar = d.alphas_cumprod[t].item()
        eps = model(x, torch.full((4,), t))
        x = (x - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha) + math.sqrt(beta) * z
    assert torch.allclose(got, x, atol=1e-5)


def test_sampling_is_deterministic_with_a_generator(diffusion):
    model = gaussian_data_model(diffusion, 0.0, 0.5)
    small = GaussianDiffusion(linear_beta_schedule(100))

    def run(fn, seed):
        return fn(model, (3, 2, 2), generator=torch.Generator().manual_seed(seed), progress=False)

    for fn in (small.sample, lambda *a, **k: small.ddim_sample(*a, steps=10, eta=0.5, **k)):
        assert torch.equal(run(fn, 0), run(fn, 0))
        assert not torch.equal(run(fn, 0), run(fn, 1))


def test_sample_counts_steps_and_records_a_trajectory():
    d = GaussianDiffusion(linear_beta_schedule(100))
    model = CountingModel(gaussian_data_model(d, 0.0, 0.5))
    x, traj = d.sample(model, (2, 3), progress=False, return_trajectory=True, trajectory_every=25)
    assert len(model.calls) == 100 and model.calls[0][1].tolist() == [99, 99]
    assert traj["t"] == [99, 75, 50, 25, 0]
    assert traj["xt"].shape == traj["pred_x0"].shape == (5, 2, 3)
    assert torch.equal(traj["xt"][0], model.calls[0][0])


def test_sample_starts_at_t_start():
    d = GaussianDiffusion(linear_beta_schedule(100))
    model = CountingModel(gaussian_data_model(d, 0.0, 0.5))
    x_start = torch.randn(2, 3)
    d.sample(model, (2, 3), x_start=x_start, t_start=29, progress=False)
    assert len(model.calls) == 30 and model.calls[0][1].tolist() == [29, 29]
    assert torch.equal(model.calls[0][0], x_start)  # denoising starts *at* t, not t - 1
    # per-example starts: an example starting at 0 only takes the last step
    model.calls.clear()
    out = d.sample(
        model,
        (2, 3),
        x_start=x_start,
        t_start=torch.tensor([0, 9]),
        progress=False,
        clip_denoised=False,
    )
    assert len(model.calls) == 10
    last = d.p_mean_variance(model.fn, x_start[:1], 0, clip_denoised=False)["mean"]
    assert torch.allclose(out[:1], last)


def test_ddim_model_calls_and_determinism():
    d = GaussianDiffusion(linear_beta_schedule(1000))
    for steps in (1, 7, 50, 1000):
        model = CountingModel(gaussian_data_model(d, 0.1, 0.4))
        d.ddim_sample(model, (2, 2), steps=steps, progress=False)
        ts = [c[1][0].item() for c in model.calls]
        assert len(ts) == steps and ts[0] == 999 and len(set(ts)) == steps, steps
        assert ts == sorted(ts, reverse=True)
    x_T = torch.randn(3, 2)
    model = gaussian_data_model(d, 0.1, 0.4)
    a = d.ddim_sample(
        model, (3, 2), steps=20, x_start=x_T, generator=torch.Generator().manual_seed(0)
    )
    b = d.ddim_sample(
        model, (3, 2), steps=20, x_start=x_T, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a, b)  # eta = 0: no noise at all


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_with_eta_1_and_all_steps_is_ancestral_with_beta_tilde(clip):
    d = GaussianDiffusion(linear_beta_schedule(100), model_var_type="fixed_small")
    model = gaussian_data_model(d, 0.5, 0.7)
    anc = d.sample(
        model,
        (5, 4),
        generator=torch.Generator().manual_seed(3),
        clip_denoised=clip,
        progress=False,
    )
    ddim = d.ddim_sample(
        model,
        (5, 4),
        steps=100,
        eta=1.0,
        generator=torch.Generator().manual_seed(3),
        clip_denoised=clip,
        progress=False,
    )
    assert torch.allclose(anc, ddim, atol=1e-4)


def test_ddim_clipping_rederives_eps():
    d = GaussianDiffusion(linear_beta_schedule(100))

    def wild(xt, t):  # predicts x0 far outside [-1, 1]
        return -torch.ones_like(xt) * 5

    x_T = torch.randn(2, 3)
    traj = d.ddim_sample(
        wild, (2, 3), steps=10, x_start=x_T, return_trajectory=True, progress=False
    )[1]
    assert traj["pred_x0"].abs().max() <= 1.0
    out = d.ddim_sample(wild, (2, 3), steps=10, x_start=x_T, progress=False)
    assert out.abs().max() <= 1.0 + 1e-6  # the final x0 is the clipped prediction


def test_ddim_encode_then_decode_reconstructs():
    d = GaussianDiffusion(linear_beta_schedule(1000))
    model = CountingModel(gaussian_data_model(d, 0.2, 0.5))
    x0 = 0.2 + 0.5 * torch.randn(
        4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    errors = {}
    for steps in (100, 1000):
        model.calls.clear()
        z = d.ddim_encode(model, x0, steps=steps)
        assert len(model.calls) == steps and model.calls[0][1][0] == 0
        assert z.std().item() == pytest.approx(1.0, abs=0.5)  # a latent, not the data
        back = d.ddim_sample(
            model, x0.shape, steps=steps, x_start=z, clip_denoised=False, progress=False
        )
        errors[steps] = (back - x0).abs().max().item()
    # both directions are first-order in the step size: 10x the steps, ~10x less error
    assert errors[1000] < 5e-3 and errors[1000] < errors[100] / 7


# ---------------------------------------------------------------- interpolation
def test_interpolate_encodes_mixes_and_decodes_from_t():
    d = GaussianDiffusion(linear_beta_schedule(100))
    model = CountingModel(gaussian_data_model(d, 0.0, 0.5))
    x1, x2 = torch.full((1, 3), -0.5), torch.full((1, 3), 0.5)
    lam = torch.linspace(0, 1, 5)
    out = d.interpolate(model, x1, x2, lam, 49, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 3)
    assert len(model.calls) == 50 and model.calls[0][1].tolist() == [49] * 5  # starts *at* t
    gen = torch.Generator().manual_seed(0)
    n1, n2 = torch.randn(1, 3, generator=gen), torch.randn(1, 3, generator=gen)
    e1, e2 = d.q_sample(x1, 49, n1), d.q_sample(x2, 49, n2)
    expected = (1 - lam[:, None]) * e1 + lam[:, None] * e2  # two noises, fixed across lambda
    assert torch.allclose(model.calls[0][0], expected, atol=1e-6)
    # lam = 0 decodes x1's encoding alone, exactly as sample() from it would
    same = d.interpolate(
        model.fn, x1, x2, 0.0, 49, noise=(n1, n2), generator=torch.Generator().manual_seed(5)
    )
    gen = torch.Generator().manual_seed(5)
    ref = d.sample(model.fn, (1, 3), x_start=e1, t_start=49, generator=gen, progress=False)
    assert torch.allclose(same, ref)


def test_interpolate_with_one_shared_noise():
    d = GaussianDiffusion(linear_beta_schedule(100))
    model = CountingModel(gaussian_data_model(d, 0.0, 0.5))
    x = torch.randn(2, 3)
    noise = torch.randn(2, 3)
    d.interpolate(model, x, x, torch.tensor([0.2, 0.9]), torch.tensor([10, 10]), noise=noise)
    assert torch.allclose(model.calls[0][0], d.q_sample(x, 10, noise), atol=1e-6)


# ---------------------------------------------------------------- shapes and errors
@pytest.mark.parametrize("shape", [(5, 2), (3, 1, 8, 8), (2, 3, 4, 4, 2)])
def test_any_shape(shape):
    d = GaussianDiffusion(linear_beta_schedule(50))
    model = gaussian_data_model(d, 0.0, 0.5)
    x0 = quantized(torch.rand(shape) * 2 - 1)
    assert d.q_sample(x0, 3).shape == shape
    assert d.p_sample(model, x0, 3).shape == shape
    assert d.training_losses(model, x0).shape == (shape[0],)
    assert d.sample(model, shape, progress=False).shape == shape
    assert d.ddim_sample(model, shape, steps=5, progress=False).shape == shape
    assert d.vlb_terms(model, x0)["terms_bpd"].shape == (shape[0], 50)
    assert d.vlb_terms(model, 3 * x0, decoder="gaussian")["total_bpd"].shape == (shape[0],)


def test_bound_clips_only_image_data_by_default(diffusion):
    d = GaussianDiffusion(linear_beta_schedule(100))
    model = gaussian_data_model(d, 0.0, 3.0)  # data far outside [-1, 1]
    x0 = 3.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0))

    def bound(**kw):
        out = d.vlb_terms(model, x0, decoder="gaussian", generator=torch.Generator(), **kw)
        return out["total_bpd"].mean().item()

    assert bound() == bound(clip_denoised=False)
    assert bound(clip_denoised=True) > bound() + 1.0  # clipping would ruin it


def test_float32_tables_are_rounded_from_float64(diffusion):
    # 1 - alpha-bar_0 = 1e-4 exactly; computed in float32 it would be off by ~2e-4 relative
    _, var, log_var = diffusion.q_mean_variance(torch.zeros(1, 3), 0)
    assert var.dtype == torch.float32
    assert var[0, 0].item() == pytest.approx(1e-4, rel=1e-6)
    assert log_var[0, 0].item() == pytest.approx(math.log(1e-4), rel=1e-6)


def test_float64_data_stays_float64(diffusion):
    x0 = torch.randn(2, 3, dtype=torch.float64)
    assert diffusion.q_sample(x0, 5).dtype == torch.float64
    assert diffusion.q_mean_variance(x0, 5)[1].dtype == torch.float64


def test_bad_inputs_give_clear_errors(diffusion):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="model_mean_type"):
        GaussianDiffusion(linear_beta_schedule(10, rescale=False), model_mean_type="v")
    with pytest.raises(ValueError, match="model_var_type"):
        GaussianDiffusion(linear_beta_schedule(10, rescale=False), model_var_type="learned")
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion([0.1, 1.5])
    with pytest.raises(ValueError, match=r"0\.\.999"):
        diffusion.q_sample(x, 1000)
    with pytest.raises(ValueError, match=r"0\.\.999"):
        diffusion.q_sample(x, torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="integer tensor"):
        diffusion.q_sample(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        diffusion.q_sample(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise shape"):
        diffusion.q_sample(x, 3, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="shaped like x_t"):
        diffusion.p_sample(lambda xt, t: xt[:, :1], x, 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        diffusion.vlb_terms(lambda xt, t: xt, x + 2)
    with pytest.raises(ValueError, match="steps"):
        diffusion.ddim_sample(lambda xt, t: xt, (2, 3), steps=0)
    with pytest.raises(ValueError, match="steps"):
        diffusion.ddim_sample(lambda xt, t: xt, (2, 3), steps=1001)
    with pytest.raises(ValueError, match="eta"):
        diffusion.ddim_sample(lambda xt, t: xt, (2, 3), eta=-1.0)
    with pytest.raises(ValueError, match="decoder"):
        diffusion.training_losses(lambda xt, t: xt, x, loss_type="vlb", decoder="laplace")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        diffusion.training_losses(lambda xt, t: xt, x + 2, loss_type="vlb")
    with pytest.raises(ValueError, match="loss_type"):
        diffusion.training_losses(lambda xt, t: xt, x, loss_type="hybrid")
    with pytest.raises(ValueError, match="same shape"):
        diffusion.interpolate(lambda xt, t: xt, x, torch.zeros(1, 3), 0.5, 10)
    with pytest.raises(ValueError, match="lam"):
        diffusion.interpolate(lambda xt, t: xt, x, x, torch.ones(3), 10)
