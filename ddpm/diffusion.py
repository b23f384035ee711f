"""Gaussian diffusion (Ho, Jain & Abbeel 2020): forward process, posterior, reverse process,
losses, the variational bound in bits/dim, ancestral and DDIM samplers, and interpolation.

Conventions (see the book's notation table):

- Code index ``t`` in ``{0, ..., T-1}`` is the paper's step ``t + 1``. ``q_sample(x0, t)`` draws
  the paper's x_{t+1}; ``p_sample(model, x, t)`` takes it to x_t. A reverse chain started "at t"
  runs the steps t, t-1, ..., 0.
- ``t`` is an integer tensor of shape [B] (a Python int is broadcast to the batch).
- A ``model`` is any callable ``model(x_t, t) -> tensor shaped like x_t``; what it predicts is set
  by ``model_mean_type``: ``"eps"`` (the noise, the paper's choice), ``"x0"``, or ``"mean"``
  (mu-tilde itself, the paper's Table 2 ablation).
- Data x0 are scaled to [-1, 1]; tensors may have any shape [B, ...] (images or 2-D points).
- Schedules are kept in float64 and cast to the data's dtype (at least float32) per call.
- Arguments are validated once, by the public methods; the per-step code they run (the private
  ``_`` methods) checks nothing and never reads a tensor back to Python, because on a GPU each
  such read waits for all queued work and the steps would no longer overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .schedules import schedule_quantities

__all__ = ["GaussianDiffusion", "normal_kl", "discretized_gaussian_log_likelihood"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MEAN_TYPES = ("eps", "x0", "mean")
VAR_TYPES = ("fixed_large", "fixed_small")
LOSS_TYPES = ("simple", "vlb")
DECODERS = ("discretized", "gaussian")
_LOG2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """log p(x) elementwise for data on ``num_bins`` levels in [-1, 1]: the L_0 decoder (eq. 13).

    Each level owns a bin of width 2 / (num_bins - 1); the two outermost bins reach to -inf and
    +inf, so the probabilities of all levels sum to one.
    """
    half_bin = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-0.5 * log_variance)
    upper = inv_std * (x - mean + half_bin)
    lower = inv_std * (x - mean - half_bin)
    # Phi(upper) - Phi(lower), computed on the side of the tail that does not cancel.
    mass = torch.where(
        lower > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_mass = torch.log(mass.clamp(min=1e-12))
    log_cdf_upper = torch.special.log_ndtr(upper)  # bin (-inf, -1 + half_bin]
    log_sf_lower = torch.special.log_ndtr(-lower)  # bin [1 - half_bin, +inf)
    edge = 1.0 - half_bin / 2
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_mass))


class _Trajectory:
    """The steps, inputs x_t and predicted x0 recorded along a reverse chain (kept on the CPU)."""

    def __init__(self):
        self.t: list[int] = []
        self.xt: list[torch.Tensor] = []
        self.pred_x0: list[torch.Tensor] = []

    def add(self, t: int, xt: torch.Tensor, pred_x0: torch.Tensor) -> None:
        self.t.append(t)
        self.xt.append(xt.cpu())
        self.pred_x0.append(pred_x0.cpu())

    def as_dict(self) -> dict:
        return {"t": self.t, "xt": torch.stack(self.xt), "pred_x0": torch.stack(self.pred_x0)}


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _check_on_device(ok: torch.Tensor, error: Callable[[], Exception]) -> None:
    """Raise ``error()`` unless the boolean tensor ``ok`` is true, without reading ``ok`` back to
    Python: the assertion is queued on ``ok``'s device. On a CPU it runs at once, so the error
    is raised here; on a CUDA GPU a false ``ok`` fails the next synchronisation instead; a
    device without such assertions reads ``ok``."""
    try:
        torch._assert_async(ok, "ddpm: invalid argument (an out-of-range step t or data value)")
    except NotImplementedError:  # a device without asynchronous assertions (e.g. MPS): read
        if not ok:
            raise error() from None
    except RuntimeError:
        raise error() from None


class GaussianDiffusion:
    """The DDPM forward and reverse processes for a given beta schedule (float64 tables).

    Args:
        betas: beta_1..beta_T (code index 0..T-1), values in (0, 1).
        model_mean_type: what the model predicts: ``"eps"``, ``"x0"`` or ``"mean"``.
        model_var_type: the reverse variance sigma_t^2: ``"fixed_large"`` (beta_t, the paper's
            CIFAR-10 setting; at t = 0 beta-tilde of the next step, as in the original code) or
            ``"fixed_small"`` (beta-tilde_t; at t = 0, where beta-tilde is 0, the clipped value of
            the next step, so that L_0 is finite; no noise is added at t = 0 either way).
    """

    def __init__(self, betas, model_mean_type: str = "eps", model_var_type: str = "fixed_large"):
        if model_mean_type not in MEAN_TYPES:
            raise ValueError(
                f"unknown model_mean_type {model_mean_type!r}; "
                f"choose one of {', '.join(MEAN_TYPES)}"
            )
        if model_var_type not in VAR_TYPES:
            raise ValueError(
                f"unknown model_var_type {model_var_type!r}; choose one of {', '.join(VAR_TYPES)}"
            )
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        tables = schedule_quantities(betas).as_dict()
        if model_var_type == "fixed_large":  # t = 0: beta-tilde_2, not beta_1, as the original code
            var = torch.cat([tables["posterior_variance"][1:2], tables["betas"][1:]])
            if len(var) < len(tables["betas"]):  # T = 1: no next step to borrow from
                var = tables["betas"].clone()
        else:
            var = tables["posterior_variance"].clone()
            var[0] = tables["posterior_log_variance_clipped"][0].exp()  # beta-tilde_1 clipped
        tables["model_variance"] = var
        tables["model_log_variance"] = torch.log(var)
        for name, value in tables.items():
            setattr(self, name, value)
        self._table_names = tuple(tables)
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self.num_timesteps = len(self.betas)

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, model_mean_type={self.model_mean_type!r}, "
            f"model_var_type={self.model_var_type!r})"
        )

    # ------------------------------------------------------------------ helpers
    def _tables(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        key = (device, dtype)
        if key not in self._cache:  # cast on the CPU, then move: MPS cannot hold float64
            self._cache[key] = {n: getattr(self, n).to(dtype).to(device) for n in self._table_names}
        return self._cache[key]

    def _extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at steps ``t`` ([B]), shaped [B, 1, ..., 1] to broadcast against x."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        values = self._tables(x.device, dtype)[name][t]
        return values.reshape(-1, *([1] * (x.ndim - 1)))

    def _check_t(self, t, x: torch.Tensor, *, sync: bool = True) -> torch.Tensor:
        """Validate ``t`` (zero-based steps) and return it as a long tensor [B] on x's device.

        The range of a tensor ``t`` is read back once (``sync=True``), or, with ``sync=False``
        (for methods called once per training step), checked on the device without a read: on
        a CPU that still raises this ValueError at once; on a GPU a bad step stops the run at its
        next synchronisation with a device-side assertion.
        """
        if x.ndim < 1:
            raise ValueError("x must have a batch dimension: shape [B, ...]")
        batch = x.shape[0]
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((batch,), t, dtype=torch.long, device=x.device)
        elif not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(
                f"t must be an integer tensor of shape [B] (zero-based steps), got {t!r:.60}"
            )
        elif t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [{batch}] to match x, got {tuple(t.shape)}")
        t = t.to(device=x.device, dtype=torch.long)

        def out_of_range() -> ValueError:
            lo, hi = torch.stack([t.min(), t.max()]).tolist()
            return ValueError(
                f"t must lie in 0..{self.num_timesteps - 1} (code index t = paper's t+1), "
                f"got values in {lo}..{hi}"
            )

        in_range = ((t >= 0) & (t < self.num_timesteps)).all()
        if not sync:
            _check_on_device(in_range, out_of_range)
        elif not in_range:
            raise out_of_range()
        return t

    @staticmethod
    def _full(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return value.expand(x.shape)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, ...]:
        """Mean, variance, log-variance of q(x_t | x_0) = N(sqrt(a-bar) x0, 1 - a-bar) (eq. 4)."""
        return self._q_mean_variance(x0, self._check_t(t, x0))

    def _q_mean_variance(self, x0, t):
        mean = self._extract("sqrt_alphas_cumprod", t, x0) * x0
        var = self._full(self._extract("one_minus_alphas_cumprod", t, x0), x0)
        log_var = self._full(self._extract("log_one_minus_alphas_cumprod", t, x0), x0)
        return mean, var, log_var

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0): sqrt(a-bar_t) x0 + sqrt(1 - a-bar_t) eps (eq. 4)."""
        t = self._check_t(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        self._check_noise(noise, x0)
        return self._q_sample(x0, t, noise)

    @staticmethod
    def _check_noise(noise: torch.Tensor, x: torch.Tensor, name: str = "x0") -> None:
        if noise.shape != x.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} must equal {name} shape {tuple(x.shape)}"
            )

    def _q_sample(self, x0, t, noise):
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior_mean_variance(self, x0: torch.Tensor, xt: torch.Tensor, t):
        """Mean mu-tilde, variance beta-tilde and clipped log-variance of q(x_{t-1} | x_t, x_0).

        Eqs. 6-7; the variance is 0 at t = 0, its log is clipped to the next step's (not -inf).
        """
        if x0.shape != xt.shape:
            raise ValueError(f"x0 shape {tuple(x0.shape)} must equal xt shape {tuple(xt.shape)}")
        return self._q_posterior(x0, xt, self._check_t(t, xt))

    def _q_posterior(self, x0, xt, t):
        mean = (
            self._extract("posterior_mean_coef1", t, xt) * x0
            + self._extract("posterior_mean_coef2", t, xt) * xt
        )
        var = self._full(self._extract("posterior_variance", t, xt), xt)
        log_var = self._full(self._extract("posterior_log_variance_clipped", t, xt), xt)
        return mean, var, log_var

    def predict_x0_from_eps(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4: x0 = (x_t - sqrt(1 - a-bar_t) eps) / sqrt(a-bar_t)."""
        return self._x0_from_eps(xt, self._check_t(t, xt), eps)

    def _x0_from_eps(self, xt, t, eps):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, xt) * xt
            - self._extract("sqrt_recipm1_alphas_cumprod", t, xt) * eps
        )

    def predict_eps_from_x0(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for the noise: eps = (x_t - sqrt(a-bar_t) x0) / sqrt(1 - a-bar_t)."""
        return self._eps_from_x0(xt, self._check_t(t, xt), x0)

    def _eps_from_x0(self, xt, t, x0):
        return (self._extract("sqrt_recip_alphas_cumprod", t, xt) * xt - x0) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, xt
        )

    def predict_x0_from_mean(self, xt: torch.Tensor, t, mean: torch.Tensor) -> torch.Tensor:
        """Invert mu-tilde (eq. 7) for x0, given x_t and the posterior mean."""
        return self._x0_from_mean(xt, self._check_t(t, xt), mean)

    def _x0_from_mean(self, xt, t, mean):
        return (mean - self._extract("posterior_mean_coef2", t, xt) * xt) / self._extract(
            "posterior_mean_coef1", t, xt
        )

    # ------------------------------------------------------------------ reverse process
    def _model_output(self, model: Model, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(xt, t)
        if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"model(x_t, t) must return a tensor shaped like x_t {tuple(xt.shape)}, got {shape}"
            )
        return out

    def _predict_x0(self, out, xt, t, clip_denoised: bool) -> torch.Tensor:
        """The model's estimate of x0 from its output, optionally clipped to the data's [-1, 1]."""
        if self.model_mean_type == "eps":
            x0 = self._x0_from_eps(xt, t, out)
        elif self.model_mean_type == "x0":
            x0 = out
        else:
            x0 = self._x0_from_mean(xt, t, out)
        return x0.clamp(-1.0, 1.0) if clip_denoised else x0

    def p_mean_variance(self, model: Model, xt: torch.Tensor, t, clip_denoised: bool = True):
        """Mean and variance of p_theta(x_{t-1} | x_t) (eq. 1), and the model's predicted x0.

        Returns a dict with ``mean``, ``variance``, ``log_variance``, ``pred_x0`` (all shaped like
        x_t) and ``model_output``. With mean type ``"mean"`` the model's output is the mean itself
        and clipping only affects ``pred_x0``.
        """
        return self._p_mean_variance(model, xt, self._check_t(t, xt), clip_denoised)

    def _p_mean_variance(self, model, xt, t, clip_denoised):
        out = self._model_output(model, xt, t)
        pred_x0 = self._predict_x0(out, xt, t, clip_denoised)
        if self.model_mean_type == "mean":
            mean = out
        else:
            mean, _, _ = self._q_posterior(pred_x0, xt, t)
        return {
            "mean": mean,
            "variance": self._full(self._extract("model_variance", t, xt), xt),
            "log_variance": self._full(self._extract("model_log_variance", t, xt), xt),
            "pred_x0": pred_x0,
            "model_output": out,
        }

    def _p_sample(self, model, xt, t, noise, clip_denoised):
        out = self._p_mean_variance(model, xt, t, clip_denoised)
        if noise is None:
            noise = torch.randn_like(xt)
        nonzero = (t != 0).to(out["mean"].dtype).reshape(-1, *([1] * (xt.ndim - 1)))
        x_prev = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return x_prev, out["pred_x0"]

    def p_sample(
        self,
        model: Model,
        xt: torch.Tensor,
        t,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """One reverse step x_t -> x_{t-1} (Algorithm 2, line 4); no noise where t == 0."""
        t = self._check_t(t, xt)
        if noise is not None:
            self._check_noise(noise, xt, "xt")
        return self._p_sample(model, xt, t, noise, clip_denoised)[0]

    @staticmethod
    def _device(model, device, *tensors) -> torch.device:
        if device is not None:
            return torch.device(device)
        for x in tensors:
            if isinstance(x, torch.Tensor):
                return x.device
        if isinstance(model, torch.nn.Module):
            for p in model.parameters():
                return p.device
        return torch.device("cpu")

    @staticmethod
    def _randn(shape, generator, device) -> torch.Tensor:
        """Standard normal draws; a generator on another device (e.g. a CPU generator for a CUDA
        model) draws on its own device, so a seed gives the same noise everywhere."""
        if generator is not None and generator.device != torch.device(device):
            return torch.randn(shape, generator=generator, device=generator.device).to(device)
        return torch.randn(shape, generator=generator, device=device)

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
        progress: bool = True,
        x_start: torch.Tensor | None = None,
        t_start=None,
        return_trajectory: bool = False,
        trajectory_every: int | None = None,
        device=None,
    ):
        """Ancestral sampling, Algorithm 2 (with ``clip_denoised=False`` exactly the paper's).

        Starts from ``x_start`` at step ``t_start`` (default: pure noise at t = T-1), and runs the
        reverse steps t_start, ..., 0. ``t_start`` may be an int or a [B] tensor (each example
        starts at its own step). With ``return_trajectory``, also returns a dict with ``t`` (the
        steps recorded, every ``trajectory_every`` steps, default T/10), ``xt`` (the input x_t of
        each recorded step) and ``pred_x0`` (the predicted x0 there), stacked as [K, B, ...].
        Put the model in eval mode first; the noise comes from ``generator``.
        """
        device = self._device(model, device, x_start)
        shape = tuple(shape) if x_start is None else tuple(x_start.shape)
        starts = self._start_steps(t_start, shape[0], device)
        x = self._randn(shape, generator, device) if x_start is None else x_start.to(device)
        every = trajectory_every or max(1, self.num_timesteps // 10)
        record = _Trajectory()
        # the loop's bound is the one read of the call; examples that start later wait
        together = not isinstance(t_start, torch.Tensor) or t_start.ndim == 0
        first = int(starts.max())
        for i in tqdm(range(first, -1, -1), desc="sampling", disable=not progress, leave=False):
            t = torch.full((shape[0],), i, dtype=torch.long, device=device)
            noise = self._randn(shape, generator, device)
            x_prev, pred_x0 = self._p_sample(model, x, t, noise, clip_denoised)
            if return_trajectory and (i % every == 0 or i == first):
                record.add(i, x, pred_x0)
            if together:
                x = x_prev
            else:
                active = (starts >= i).reshape(-1, *([1] * (x.ndim - 1)))
                x = torch.where(active, x_prev, x)
        return (x, record.as_dict()) if return_trajectory else x

    def _start_steps(self, t_start, batch: int, device) -> torch.Tensor:
        if t_start is None:
            t_start = self.num_timesteps - 1
        dummy = torch.empty(batch, device=device)
        return self._check_t(t_start, dummy)

    # ------------------------------------------------------------------ DDIM
    def _ddim_steps(self, steps: int) -> list[int]:
        """``steps`` distinct code indices from T-1 down to 0, evenly spaced."""
        if (
            isinstance(steps, bool)
            or not isinstance(steps, int)
            or not 1 <= steps <= self.num_timesteps
        ):
            raise ValueError(f"steps must be an integer in 1..{self.num_timesteps}, got {steps!r}")
        seq = torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64).round()
        return [int(v) for v in seq.tolist()]

    def _alpha_bars(self, seq: list[int]) -> torch.Tensor:
        """alpha-bar at the code indices ``seq`` (float64, on the CPU); at i = -1 (clean data) 1."""
        one = torch.ones(1, dtype=torch.float64)
        return torch.cat([one, self.alphas_cumprod])[torch.tensor(seq) + 1]

    def _ddim_coefs(self, seq: list[int], prev: list[int], eta: float, dtype) -> list[list[float]]:
        """Per update ``seq[k] -> prev[k]``: sqrt(a-bar_prev), the coefficient of eps and sigma
        (Song et al. 2021, eq. 12), in float64 and rounded to ``dtype``; read back to Python
        once, here, so that the steps themselves read nothing."""
        a, a_prev = self._alpha_bars(seq), self._alpha_bars(prev)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        dir_coef = (1 - a_prev - sigma**2).clamp(min=0).sqrt()
        return torch.stack([a_prev.sqrt(), dir_coef, sigma], dim=1).to(dtype).tolist()

    def _ddim_step(self, model, x, i, coefs, clip_denoised, noise):
        """One DDIM update x_i -> x_{i_prev} (Song et al. 2021, eq. 12); ``coefs`` from
        :meth:`_ddim_coefs`."""
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = self._model_output(model, x, t)
        pred_x0 = self._predict_x0(out, x, t, clip_denoised)
        eps = self._eps_from_x0(x, t, pred_x0)  # re-derived: consistent with the clipped x0
        c0, c1, c2 = coefs
        x_prev = c0 * pred_x0 + c1 * eps
        if noise is not None:
            x_prev = x_prev + c2 * noise
        return x_prev, pred_x0

    @torch.no_grad()
    def ddim_sample(
        self,
        model: Model,
        shape: Sequence[int],
        *,
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
        progress: bool = True,
        x_start: torch.Tensor | None = None,
        return_trajectory: bool = False,
        device=None,
    ):
        """DDIM sampling (Song, Meng & Ermon 2021) with exactly ``steps`` model calls.

        ``eta = 0`` is deterministic given x_T; ``eta = 1`` with all T steps is ancestral sampling
        with beta-tilde. ``x_start`` is x at step T-1 (e.g. from :meth:`ddim_encode`). With
        ``return_trajectory``, also returns ``t``, ``xt`` and ``pred_x0`` at every step.
        """
        if not (math.isfinite(float(eta)) and eta >= 0):  # nan or inf would fill x with nan
            raise ValueError(f"eta must be a finite number >= 0, got {eta}")
        seq = self._ddim_steps(steps)
        device = self._device(model, device, x_start)
        shape = tuple(shape) if x_start is None else tuple(x_start.shape)
        x = self._randn(shape, generator, device) if x_start is None else x_start.to(device)
        dtype = torch.promote_types(x.dtype, torch.float32)
        coefs = self._ddim_coefs(seq, [*seq[1:], -1], eta, dtype)
        record = _Trajectory()
        for k, i in enumerate(tqdm(seq, desc="DDIM", disable=not progress, leave=False)):
            noise = self._randn(shape, generator, device) if eta > 0 else None
            x_prev, pred_x0 = self._ddim_step(model, x, i, coefs[k], clip_denoised, noise)
            if return_trajectory:
                record.add(i, x, pred_x0)
            x = x_prev
        return (x, record.as_dict()) if return_trajectory else x

    @torch.no_grad()
    def ddim_encode(
        self, model: Model, x0: torch.Tensor, *, steps: int = 50, progress: bool = False
    ) -> torch.Tensor:
        """Deterministic DDIM inversion x0 -> x at step T-1, with exactly ``steps`` model calls.

        Runs the eta = 0 update backwards over the same steps :meth:`ddim_sample` uses, evaluating
        the model at the step being moved to (no clipping: it would not be invertible).
        """
        seq = self._ddim_steps(steps)[::-1]
        a_from, a_to = self._alpha_bars([-1, *seq[:-1]]), self._alpha_bars(seq)
        dtype = torch.promote_types(x0.dtype, torch.float32)
        coefs = torch.stack([(1 - a_from).sqrt(), a_from.sqrt(), a_to.sqrt(), (1 - a_to).sqrt()],
                            dim=1).to(dtype).tolist()  # fmt: skip
        x = x0
        for k, i in enumerate(tqdm(seq, desc="DDIM encode", disable=not progress, leave=False)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            eps = self._model_output(model, x, t)
            if self.model_mean_type != "eps":
                pred = self._predict_x0(eps, x, t, clip_denoised=False)
                eps = self._eps_from_x0(x, t, pred)
            s_from, r_from, r_to, s_to = coefs[k]
            pred_x0 = (x - s_from * eps) / r_from
            x = r_to * pred_x0 + s_to * eps
        return x

    # ------------------------------------------------------------------ losses and the bound
    def _vb_term_bpd(self, model, x0, xt, t, clip_denoised, decoder):
        """The bound's term for step t in bits/dim: KL L_t for t >= 1, the decoder L_0 at t = 0."""
        true_mean, _, true_log_var = self._q_posterior(x0, xt, t)
        out = self._p_mean_variance(model, xt, t, clip_denoised)
        kl = (
            _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / _LOG2
        )
        if decoder == "discretized":
            log_px = discretized_gaussian_log_likelihood(x0, out["mean"], out["log_variance"])
        else:
            log_px = -0.5 * (
                math.log(2 * math.pi)
                + out["log_variance"]
                + (x0 - out["mean"]) ** 2 * torch.exp(-out["log_variance"])
            )
        nll = -_mean_flat(log_px) / _LOG2
        return torch.where(t == 0, nll, kl), out

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t=None,
        noise: torch.Tensor | None = None,
        loss_type: str = "simple",
        *,
        decoder: str = "discretized",
    ) -> torch.Tensor:
        """Per-example training loss, shape [B].

        ``"simple"``: L_simple (eq. 14, Algorithm 1): the mean squared error between the model's
        output and its target (eps, x0 or mu-tilde, by mean type), averaged over dimensions.
        ``"vlb"``: the bound's term for step t in bits/dim (L_t for t >= 1, L_0 at t = 0), with
        the model's raw prediction (no clipping: a training loss must stay differentiable) and
        the L_0 ``decoder`` of :meth:`vlb_terms`. ``t`` defaults to uniform steps, ``noise`` to
        standard normal draws.
        """
        if loss_type not in LOSS_TYPES:
            raise ValueError(
                f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}"
            )
        # called once per training step: the checks read nothing back (see _check_t)
        if loss_type == "vlb":
            self._check_decoder(decoder, x0, sync=False)
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        t = self._check_t(t, x0, sync=False)
        if noise is None:
            noise = torch.randn_like(x0)
        self._check_noise(noise, x0)
        xt = self._q_sample(x0, t, noise)
        if loss_type == "vlb":
            return self._vb_term_bpd(model, x0, xt, t, clip_denoised=False, decoder=decoder)[0]
        out = self._model_output(model, xt, t)
        if self.model_mean_type == "eps":
            target = noise
        elif self.model_mean_type == "x0":
            target = x0
        else:
            target = self._q_posterior(x0, xt, t)[0]
        return _mean_flat((out - target) ** 2)

    @staticmethod
    def _check_decoder(decoder: str, x0: torch.Tensor, *, sync: bool = True) -> None:
        """Check the decoder's name and, for the discretized one, that x0 lies in [-1, 1] (with
        ``sync=False`` on the device, without a read; see :meth:`_check_t`)."""
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        if decoder != "discretized":
            return

        def out_of_range() -> ValueError:
            lo, hi = torch.stack([x0.min(), x0.max()]).tolist()
            return ValueError(
                "the discretized decoder expects data scaled to [-1, 1] (got values in "
                f"{lo:.3g}..{hi:.3g}); rescale x -> 2x - 1 or use decoder='gaussian'"
            )

        in_range = (x0.abs() <= 1 + 1e-6).all()
        if not sync:
            _check_on_device(in_range, out_of_range)
        elif not in_range:
            raise out_of_range()

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, per example (no parameters to learn).

        With a = alpha-bar_T, q(x_T | x_0) = N(sqrt(a) x0, 1 - a) (eq. 4), and per dimension
        KL = (a x0^2 + c) / 2 with c = -a - log(1 - a) = a^2/2 + a^3/3 + ... (~1e-9 for the
        paper's a ~ 4e-5). c is a difference of terms that cancel, so it comes from the float64
        schedule on the CPU; a * mean(x0^2) has no cancellation and is computed on x0's device in
        x0's dtype (at least float32, rounding ~1e-7 relative): no float64 reaches the device.
        """
        if x0.ndim < 1 or x0.shape[0] == 0:
            raise ValueError(f"x0 must have shape [B, ...] with B >= 1, got {tuple(x0.shape)}")
        a = self.alphas_cumprod[-1]
        c = float(-a - torch.log1p(-a))
        squares = _mean_flat(x0.to(torch.promote_types(x0.dtype, torch.float32)) ** 2)
        return (float(a) * squares + c) / (2 * _LOG2)

    @torch.no_grad()
    def vlb_terms(
        self,
        model: Model,
        x0: torch.Tensor,
        *,
        clip_denoised: bool | None = None,
        decoder: str = "discretized",
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The full variational bound (eq. 5) in bits/dim, term by term (the paper's Table 1 NLL).

        Returns ``prior_bpd`` [B] (L_T), ``terms_bpd`` [B, T] (column t: L_0 at t = 0, else the KL
        term of step t), ``x0_mse`` [B, T] (the squared error of the predicted x0 at each step: the
        distortion of the paper's Fig. 5) and ``total_bpd`` [B]. ``decoder="discretized"`` is the
        paper's 8-bit decoder; ``"gaussian"`` a continuous density, for non-image data.
        ``clip_denoised`` clips the predicted x0 to [-1, 1] before forming the reverse mean, i.e.
        it bounds the model the sampler actually uses; by default it is on for the discretized
        decoder (as in the original evaluation code) and off for ``"gaussian"`` (data that are
        not images need not lie in [-1, 1]). Costs T model calls.
        """
        self._check_decoder(decoder, x0)
        if clip_denoised is None:
            clip_denoised = decoder == "discretized"
        B, T = x0.shape[0], self.num_timesteps
        dtype = torch.promote_types(x0.dtype, torch.float32)
        terms = torch.zeros(B, T, device=x0.device, dtype=dtype)
        mse = torch.zeros(B, T, device=x0.device, dtype=dtype)
        for i in tqdm(range(T - 1, -1, -1), desc="bound", disable=not progress, leave=False):
            t = torch.full((B,), i, dtype=torch.long, device=x0.device)
            noise = self._randn(x0.shape, generator, x0.device)
            xt = self._q_sample(x0, t, noise)
            term, out = self._vb_term_bpd(model, x0, xt, t, clip_denoised, decoder)
            terms[:, i] = term
            mse[:, i] = _mean_flat((out["pred_x0"] - x0) ** 2)
        prior = self.prior_bpd(x0)
        return {
            "prior_bpd": prior,
            "terms_bpd": terms,
            "x0_mse": mse,
            "total_bpd": prior + terms.sum(dim=1),
        }

    # ------------------------------------------------------------------ interpolation
    @torch.no_grad()
    def interpolate(
        self,
        model: Model,
        x1: torch.Tensor,
        x2: torch.Tensor,
        lam,
        t,
        noise=None,
        generator: torch.Generator | None = None,
        *,
        clip_denoised: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """Interpolate in latent space (section 4.4): encode both to step t, mix, decode from t.

        x_t = (1 - lam) q_sample(x1, t) + lam q_sample(x2, t), then the reverse chain starting *at*
        t, not t - 1 (the paper's "500 steps" is t = 499). ``x1`` and ``x2`` are [B, ...] (B may be
        1 and broadcast against a [L] ``lam``, so one pair spans a row of lambdas). ``noise=None``
        draws two independent encoding noises shaped like x1 (fixed across lam, as in the paper);
        a tensor is used for both images; a pair gives each image its own. ``t`` is an int or a [B]
        tensor.
        """
        if x1.shape != x2.shape:
            raise ValueError(
                f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        device = x1.device
        if noise is None:
            n1 = self._randn(x1.shape, generator, device)
            n2 = self._randn(x1.shape, generator, device)
        elif isinstance(noise, torch.Tensor):
            n1 = n2 = noise
        elif isinstance(noise, (tuple, list)) and len(noise) == 2:
            n1, n2 = noise
        else:
            raise ValueError(
                "noise must be None, a tensor shaped like x1, or a pair of such tensors"
            )
        for n in (n1, n2):
            if n.shape != x1.shape:
                raise ValueError(
                    f"noise shape {tuple(n.shape)} must equal x1 shape {tuple(x1.shape)}"
                )
        # cast on the CPU, then move: a float64 lam cannot go to MPS as it is
        lam = torch.as_tensor(lam, dtype=torch.promote_types(x1.dtype, torch.float32)).to(device)
        if lam.ndim > 1 or (lam.ndim == 1 and x1.shape[0] not in (1, lam.shape[0])):
            raise ValueError(
                f"lam must be a float or a [B] tensor with B = {x1.shape[0]} (or x1 of batch 1), "
                f"got shape {tuple(lam.shape)}"
            )
        if not bool(torch.isfinite(lam).all()):  # nan or inf would fill the result with nan
            raise ValueError(f"lam must be finite (0 <= lam <= 1 interpolates), got {lam.tolist()}")
        batch = max(x1.shape[0], lam.numel() if lam.ndim == 1 else 1)
        expand = (batch, *x1.shape[1:])
        x1, x2, n1, n2 = (v.expand(expand) for v in (x1, x2, n1, n2))
        lam = lam.reshape(-1, *([1] * (x1.ndim - 1)))
        t = self._check_t(t, x1)
        xt = (1 - lam) * self._q_sample(x1, t, n1) + lam * self._q_sample(x2, t, n2)
        return self.sample(
            model,
            expand,
            generator=generator,
            clip_denoised=clip_denoised,
            progress=progress,
            x_start=xt,
            t_start=t,
        )
