"""Noise schedules beta_1..beta_T and every quantity derived from them, in float64.

Code index ``t`` in ``{0, ..., T-1}`` is the paper's step ``t + 1``: ``betas[0]`` is the paper's
beta_1 and ``alphas_cumprod[t]`` is alpha-bar_{t+1}. Everything here is float64 on the CPU;
:class:`ddpm.diffusion.GaussianDiffusion` casts to the data's dtype and device only at the end
(in float32, 1 - alpha-bar_t near t = 0 keeps only ~4 significant digits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

__all__ = [
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "get_beta_schedule",
    "check_betas",
    "ScheduleQuantities",
    "schedule_quantities",
]

SCHEDULES = ("linear", "cosine")


def _check_num_timesteps(num_timesteps: int) -> int:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    return num_timesteps


def linear_beta_schedule(
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    rescale: bool = True,
) -> torch.Tensor:
    """The paper's schedule (section 4): betas rising linearly from beta_1 = 1e-4 to beta_T = 0.02.

    Those endpoints assume T = 1000. With ``rescale=True`` (default) they are multiplied by
    1000 / T, as improved DDPM does, so alpha-bar_T stays close to 0 for any T (for T = 1000 this
    is the paper's schedule exactly). ``rescale=False`` uses the endpoints as given.
    """
    T = _check_num_timesteps(num_timesteps)
    scale = 1000.0 / T if rescale else 1.0
    start, end = beta_start * scale, beta_end * scale
    if not (0.0 < start <= end < 1.0):
        raise ValueError(
            f"linear schedule needs 0 < beta_start <= beta_end < 1, got {start:g}..{end:g} "
            f"after scaling by 1000/T = {scale:g}; use a larger T or rescale=False"
        )
    if T == 1:
        return torch.tensor([end], dtype=torch.float64)
    return torch.linspace(start, end, T, dtype=torch.float64)


def cosine_beta_schedule(
    num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    alpha-bar(t) = f(t) / f(0) with f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), and
    beta_t = 1 - alpha-bar(t) / alpha-bar(t - 1), clipped at ``max_beta`` so the last steps do
    not become singular.
    """
    T = _check_num_timesteps(num_timesteps)
    if not (s >= 0.0 and 0.0 < max_beta < 1.0):
        raise ValueError(f"cosine schedule needs s >= 0 and 0 < max_beta < 1, got {s}, {max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    alphas_cumprod = f / f[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


def get_beta_schedule(name: str, num_timesteps: int = 1000) -> torch.Tensor:
    """A schedule by name: ``"linear"`` (the paper's) or ``"cosine"`` (improved DDPM's)."""
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"unknown beta schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def check_betas(betas) -> torch.Tensor:
    """Validate a schedule and return it as a 1-D float64 CPU tensor (values in (0, 1))."""
    try:
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"betas must be a 1-D sequence of numbers: {err}") from None
    if b.ndim != 1 or b.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(b.shape)}")
    if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
        raise ValueError(
            f"betas must lie in (0, 1), got min {b.min().item():g}, max {b.max().item():g}; "
            "build them with linear_beta_schedule or cosine_beta_schedule"
        )
    return b.clone()


@dataclass(frozen=True)
class ScheduleQuantities:
    """Every table the forward process, posterior and samplers need, indexed by code t (float64).

    Equation numbers refer to Ho et al. (2020).
    """

    betas: torch.Tensor  # beta_t
    alphas: torch.Tensor  # alpha_t = 1 - beta_t
    alphas_cumprod: torch.Tensor  # alpha-bar_t = prod_{s<=t} alpha_s (eq. 4)
    alphas_cumprod_prev: torch.Tensor  # alpha-bar_{t-1}, with alpha-bar_0 = 1
    one_minus_alphas_cumprod: torch.Tensor  # 1 - alpha-bar_t, the variance of q(x_t | x_0)
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor  # 1 / sqrt(alpha-bar_t)
    sqrt_recipm1_alphas_cumprod: torch.Tensor  # sqrt(1 / alpha-bar_t - 1)
    posterior_variance: torch.Tensor  # beta-tilde_t (eq. 7); 0 at code t = 0
    posterior_log_variance_clipped: torch.Tensor  # log beta-tilde, entry 0 copied from entry 1
    posterior_mean_coef1: torch.Tensor  # coefficient of x_0 in mu-tilde (eq. 7)
    posterior_mean_coef2: torch.Tensor  # coefficient of x_t in mu-tilde (eq. 7)
    snr: torch.Tensor  # signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def schedule_quantities(betas) -> ScheduleQuantities:
    """Derive every schedule table from ``betas`` in float64 (float32 loses digits near t = 0)."""
    betas = check_betas(betas)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    one_minus = 1.0 - alphas_cumprod
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / one_minus
    # beta-tilde is exactly 0 at the first step: log(0) = -inf would break L_0, so (like the
    # original code) the log is clipped to the next step's value.
    clip_value = posterior_variance[1] if len(betas) > 1 else betas[0]
    posterior_log_variance_clipped = torch.log(
        torch.cat([clip_value.reshape(1), posterior_variance[1:]])
    )
    return ScheduleQuantities(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        one_minus_alphas_cumprod=one_minus,
        sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
        sqrt_one_minus_alphas_cumprod=one_minus.sqrt(),
        log_one_minus_alphas_cumprod=torch.log(one_minus),
        sqrt_recip_alphas_cumprod=(1.0 / alphas_cumprod).sqrt(),
        sqrt_recipm1_alphas_cumprod=(1.0 / alphas_cumprod - 1.0).sqrt(),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / one_minus,
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * alphas.sqrt() / one_minus,
        snr=alphas_cumprod / one_minus,
    )
