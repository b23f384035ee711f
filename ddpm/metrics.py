"""Sample-quality and likelihood metrics for DDPM (Ho, Jain & Abbeel 2020).

- ``bits_per_dim``: the test-set negative log-likelihood bound of the paper's Table 1 (the full
  variational bound, eq. 5, in bits/dim), with its per-step terms for the rate/distortion view of
  Fig. 5 (``rate_distortion``); ``bits_per_dim_estimate``, the same bound estimated without
  bias from a few sampled steps per image (importance sampling), with its standard error.
- ``inception_fid``: the Frechet Inception Distance (Heusel et al. 2017), the paper's sample-quality
  number (FID 3.17 on CIFAR-10), computed by ``torchmetrics`` with torch-fidelity's InceptionV3.
  It needs the InceptionV3 weights (downloaded once, ~100 MB); offline without them it raises
  ``MetricUnavailableError``.
- ``digits_fid``: an offline FID for the 8x8 ``digits`` dataset: the same Frechet distance, on the
  penultimate-layer features of a small CNN classifier trained on the digits train split in a few
  seconds and cached in ``data_dir("classifiers")``. Its numbers are not comparable with Inception
  FIDs, only with each other, and only at the same sample size N (FID is biased upwards at small
  N): compare a model's ``digits_fid(samples, test_images)`` with ``digits_fid_floor(N)``, the
  value for real training images at the same N.
- ``nearest_neighbour_distance``: the pixel-space L2 distance from each sample to its nearest
  training image, a memorisation check.

All images are tensors [N, C, H, W] in [-1, 1] (or datasets with such a ``.data``).
"""

from __future__ import annotations

import math
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import atomic_save
from .paths import data_dir

__all__ = [
    "MetricUnavailableError",
    "bits_per_dim",
    "rate_distortion",
    "bits_per_dim_estimate",
    "importance_proposal",
    "inception_fid",
    "inception_weights_path",
    "DigitsClassifier",
    "load_digits_classifier",
    "digits_classifier_path",
    "digits_features",
    "frechet_distance",
    "frechet_distance_gaussians",
    "digits_fid",
    "digits_fid_floor",
    "nearest_neighbour_distance",
]


class MetricUnavailableError(RuntimeError):
    """A metric cannot be computed here (e.g. FID offline, without cached InceptionV3 weights)."""


def _as_images(data, name: str = "data") -> torch.Tensor:
    """A tensor [N, C, H, W] from a tensor or a dataset with ``.data``."""
    x = data.data if hasattr(data, "data") and not isinstance(data, torch.Tensor) else data
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() != 4:
        raise ValueError(f"{name} must be images [N, C, H, W], got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name} holds no images")
    return x


def _model_device(model) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


# ====================================================================== bits/dim (Table 1)
@torch.no_grad()
def bits_per_dim(
    diffusion,
    model,
    data,
    *,
    batch_size: int = 64,
    max_images: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    clip_denoised: bool | None = None,
    decoder: str = "discretized",
    device: torch.device | str | None = None,
) -> dict:
    """The variational bound on the test-set NLL in bits/dim: the paper's Table 1 "NLL Test".

    Runs ``diffusion.vlb_terms`` (eq. 5: L_T + sum of the KL terms L_{t-1} + the discretized
    decoder L_0) on the first ``max_images`` images of ``data`` (all when None; a fixed subset,
    so quick-mode numbers are reproducible) in batches of ``batch_size``. Each batch costs T model
    calls. The model runs in eval mode under ``no_grad``; its mode is restored afterwards.

    Args:
        diffusion: a ``GaussianDiffusion``.
        model: ``model(x_t, t)``, usually the EMA network.
        data: images [N, C, H, W] in [-1, 1] on the 8-bit grid, or a dataset with ``.data``.
        generator: draws the noise of each x_t (a fixed seed gives a reproducible estimate).
        clip_denoised, decoder: passed to ``vlb_terms``.
        device: where to evaluate; default the model's device.

    Returns a dict:
        ``bpd``: the mean total bound (bits/dim), ``bpd_stderr``: its standard error over images,
        ``prior_bpd``: the mean L_T, ``terms_bpd``: [T] the mean term per code step t (t = 0 is
        L_0; the rate/distortion view, Fig. 5), ``x0_mse``: [T] the mean squared error of the
        predicted x0 at each t (in [-1, 1] units), ``per_image_bpd``: [N] and ``num_images``.
    """
    x = _as_images(data)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        x = x[:max_images]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    n = len(x)
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    per_image, prior_sum, terms_sum, mse_sum = [], 0.0, None, None
    try:
        starts = range(0, n, batch_size)
        for s in tqdm(starts, desc="bits/dim", disable=not progress, unit="batch"):
            xb = x[s : s + batch_size].to(torch.float32).to(device)  # MPS holds no float64
            out = diffusion.vlb_terms(
                model, xb, clip_denoised=clip_denoised, decoder=decoder, generator=generator
            )
            out = {k: v.cpu().double() for k, v in out.items()}  # sums in float64, on the CPU
            per_image.append(out["total_bpd"])
            prior_sum += float(out["prior_bpd"].sum())
            terms = out["terms_bpd"].sum(dim=0)
            mse = out["x0_mse"].sum(dim=0)
            terms_sum = terms if terms_sum is None else terms_sum + terms
            mse_sum = mse if mse_sum is None else mse_sum + mse
    finally:
        if was_training is not None:
            model.train(was_training)
    total = torch.cat(per_image)
    stderr = float(total.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": stderr,
        "prior_bpd": prior_sum / n,
        "terms_bpd": (terms_sum / n).float(),
        "x0_mse": (mse_sum / n).float(),
        "per_image_bpd": total.float(),
        "num_images": n,
    }


def rate_distortion(result: dict) -> dict[str, torch.Tensor]:
    """The rate/distortion curves of the paper's Fig. 5 from a ``bits_per_dim`` result.

    Both are indexed by code step t (the paper's t + 1). The receiver holds x_t after the sender
    has coded x_T, ..., x_t: the "rate" is those bits, L_T + sum_{s > t} terms_bpd[s] (code
    indices; ``terms_bpd[s]`` codes x_{s-1} given x_s, and ``terms_bpd[0]`` is L_0). The
    "distortion" is the RMSE, on the [0, 255] scale, of the x0 predicted from that x_t. So
    rate_bpd[T-1] = L_T, rate_bpd[0] = bound - L_0; the rate falls as t grows, the distortion rises.
    """
    terms = result["terms_bpd"].double()
    after = terms.flip(0).cumsum(0).flip(0) - terms  # sum over s > t
    rate = result["prior_bpd"] + after
    distortion = result["x0_mse"].double().clamp(min=0).sqrt() * 127.5
    return {"rate_bpd": rate.float(), "distortion_rmse": distortion.float()}


# ====================================================================== bits/dim, sampled steps
def _kl_terms(diffusion, model, x, t, generator, clip_denoised, decoder) -> torch.Tensor:
    """The bound's term at the per-image steps ``t`` [B] (bits/dim), one fresh noise draw each."""
    noise = diffusion._randn(x.shape, generator, x.device)
    xt = diffusion.q_sample(x, t, noise)
    return diffusion._vb_term_bpd(model, x, xt, t, clip_denoised, decoder)[0].double()


def _pilot_grid(T: int, steps: int) -> np.ndarray:
    return np.unique(np.round(np.geomspace(1, T - 1, steps)).astype(int))


@torch.no_grad()
def importance_proposal(
    diffusion,
    model,
    x_pilot: torch.Tensor,
    *,
    steps: int = 32,
    mix: float = 0.1,
    generator: torch.Generator | None = None,
    clip_denoised: bool | None = None,
    decoder: str = "discretized",
) -> torch.Tensor:
    """A proposal p(t) [T] over the KL steps t = 1..T-1 for ``bits_per_dim_estimate``.

    The one-draw estimate L_t / p(t) of sum_t L_t has the least variance for p(t) proportional
    to sqrt(E[L_t^2]). That is measured on the pilot images (in [-1, 1]) at ``steps``
    geometrically spaced steps (one model call each: the terms fall steeply with t),
    interpolated in log space, and mixed with the uniform distribution (weight ``mix``), so no
    weight L_t / p(t) exceeds (T - 1) L_t / mix. p[0] = 0: L_0 is computed, not sampled.
    """
    T = diffusion.num_timesteps
    if T < 2 or steps < 2 or not 0.0 < mix <= 1.0:
        raise ValueError(f"need T >= 2, steps >= 2 and 0 < mix <= 1; got {T}, {steps}, {mix}")
    diffusion._check_decoder(decoder, x_pilot)
    clip = decoder == "discretized" if clip_denoised is None else clip_denoised
    x = _as_images(x_pilot, "x_pilot").to(device=_model_device(model), dtype=torch.float32)
    rms, grid = [], _pilot_grid(T, steps)
    for i in grid:
        t = torch.full((len(x),), int(i), dtype=torch.long, device=x.device)
        term = _kl_terms(diffusion, model, x, t, generator, clip, decoder)
        rms.append(float(term.pow(2).mean().sqrt()))
    log_rms = np.log(np.maximum(np.asarray(rms), 1e-30))
    shape = np.exp(np.interp(np.arange(1, T), grid, log_rms))
    p = np.concatenate([[0.0], (1 - mix) * shape / shape.sum() + mix / (T - 1)])
    return torch.from_numpy(p)


@torch.no_grad()
def bits_per_dim_estimate(
    diffusion,
    model,
    data,
    *,
    steps_per_image: int = 4,
    proposal: torch.Tensor | None = None,
    pilot_images: int = 16,
    batch_size: int = 64,
    max_images: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    clip_denoised: bool | None = None,
    decoder: str = "discretized",
    device: torch.device | str | None = None,
) -> dict:
    """An unbiased estimate of ``bits_per_dim``'s bound (eq. 5) at a fraction of its cost.

    Per image, L_T (closed form) and L_0 (one model call) are computed as in the full sum; the
    sum of the KL terms over t = 1..T-1 is estimated by importance sampling,
    sum_t L_t = E_{t~p}[L_t / p(t)], averaging ``steps_per_image`` independent draws of t (each
    with fresh noise). The per-image estimates are independent and each is unbiased for that
    image's bound, so their mean is unbiased for the test-set bound and ``bpd_stderr`` (their
    standard deviation / sqrt(N)) is its standard error, covering both the images and the draws.
    Cost: 1 + ``steps_per_image`` model calls per image instead of T (plus the pilot).

    ``proposal``: p(t) [T] (normalised here; p[0] is ignored); default ``importance_proposal``
    measured on the first ``pilot_images`` images. Other arguments as in ``bits_per_dim``.

    Returns ``bpd``, ``bpd_stderr``, ``per_image_bpd`` [N], ``prior_bpd`` and ``l0_bpd`` (means
    of L_T and L_0), ``proposal`` [T], ``num_images``, ``model_calls`` (images x calls).
    """
    x = _as_images(data)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        x = x[:max_images]
    if batch_size < 1 or steps_per_image < 1 or pilot_images < 1:
        raise ValueError("batch_size, steps_per_image and pilot_images must be >= 1")
    T = diffusion.num_timesteps
    if T < 2:
        raise ValueError("with T = 1 there is nothing to sample: use bits_per_dim")
    diffusion._check_decoder(decoder, x[:batch_size])
    clip = decoder == "discretized" if clip_denoised is None else clip_denoised
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training is not None:
        model.eval()
    n, calls = len(x), 0
    per_image, prior, l0 = [], [], []
    try:
        if proposal is None:
            pilot = x[:pilot_images].to(device=device, dtype=torch.float32)
            proposal = importance_proposal(diffusion, model, pilot, generator=generator,
                                           clip_denoised=clip, decoder=decoder)  # fmt: skip
            calls += len(pilot) * len(_pilot_grid(T, 32))
        p = _check_proposal(proposal, T)
        p_dev = p.to(device)
        p_gen = p.to(generator.device) if generator is not None else p  # draw t where g lives
        starts = range(0, n, batch_size)
        for s in tqdm(starts, desc="bits/dim (sampled t)", disable=not progress, unit="batch"):
            xb = x[s : s + batch_size].to(device=device, dtype=torch.float32)
            B = len(xb)
            zero = torch.zeros(B, dtype=torch.long, device=device)
            L0 = _kl_terms(diffusion, model, xb, zero, generator, clip, decoder)
            kl = torch.zeros(B, dtype=torch.float64, device=device)
            for _ in range(steps_per_image):
                t = torch.multinomial(p_gen, B, replacement=True, generator=generator).to(device)
                kl += _kl_terms(diffusion, model, xb, t, generator, clip, decoder) / p_dev[t]
            LT = diffusion.prior_bpd(xb).double()
            per_image.append((LT + L0 + kl / steps_per_image).cpu())
            prior.append(LT.cpu())
            l0.append(L0.cpu())
            calls += B * (1 + steps_per_image)
    finally:
        if was_training is not None:
            model.train(was_training)
    total = torch.cat(per_image)
    stderr = float(total.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": stderr,
        "per_image_bpd": total.float(),
        "prior_bpd": float(torch.cat(prior).mean()),
        "l0_bpd": float(torch.cat(l0).mean()),
        "proposal": p.float(),
        "num_images": n,
        "model_calls": calls,
    }


def _check_proposal(proposal, T: int) -> torch.Tensor:
    """p(t) [T] as float64 on the CPU, p[0] = 0, normalised; a clear error if unusable."""
    p = torch.as_tensor(proposal, dtype=torch.float64).flatten().cpu().clone()
    if p.shape != (T,) or not torch.isfinite(p).all() or (p < 0).any() or p[1:].sum() <= 0:
        raise ValueError(f"proposal must hold {T} finite non-negative weights (one per step) "
                         "with a positive sum over t >= 1")  # fmt: skip
    p[0] = 0.0
    return p / p.sum()


# ====================================================================== Inception FID
_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path() -> Path:
    """Where torch.hub caches torch-fidelity's InceptionV3 weights (used by torchmetrics' FID)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _INCEPTION_FILE


def _to_unit_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images [N, 1 or 3, H, W] -> float RGB in [0, 1] (grey repeated to 3 channels)."""
    x = x.float().clamp(-1, 1).add(1).div(2)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    return x


def inception_fid(
    real,
    fake,
    *,
    batch_size: int = 50,
    device: torch.device | str | None = None,
    weights_path: str | os.PathLike | None = None,
    progress: bool = False,
) -> float:
    """FID (Heusel et al. 2017) between two image sets with torchmetrics' InceptionV3 (2048-d pool).

    The paper reports FID 3.17 on CIFAR-10 with 50k samples against the training set; FID is
    biased upwards at small N, so compare numbers only at equal N. Images are [N, C, H, W] in
    [-1, 1] (or datasets with ``.data``); grey images are repeated to 3 channels; torchmetrics
    quantizes to 8 bits and resizes to 299x299 itself.

    ``weights_path`` points at a local copy of the weights file; by default torch.hub's cache
    (``inception_weights_path()``), downloaded on first use. Raises ``MetricUnavailableError``
    when torchmetrics / torch-fidelity are missing or the weights can be neither found nor
    downloaded (offline); ``digits_fid`` is the offline alternative for the digits dataset.
    """
    real, fake = _as_images(real, "real"), _as_images(fake, "fake")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:  # torch-fidelity missing raises ModuleNotFoundError too
        raise MetricUnavailableError(
            "inception_fid needs torchmetrics and torch-fidelity: "
            f'pip install "torchmetrics[image]" (or pip install -e ".[metrics]"); {err}. '
            "Offline, for digits, use ddpm.metrics.digits_fid instead."
        ) from None
    cached = inception_weights_path()
    try:
        fid = FrechetInceptionDistance(
            feature=2048,
            normalize=True,
            feature_extractor_weights_path=None if weights_path is None else str(weights_path),
        )
    except Exception as err:  # urllib / socket / SSL errors, a corrupt or partial file
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        where = Path(weights_path) if weights_path is not None else cached
        state = "is not readable" if where.is_file() else "is not there"
        raise MetricUnavailableError(
            f"inception_fid needs the InceptionV3 weights: {where} {state} and loading or "
            f"downloading them failed ({type(err).__name__}: {reason}). Copy {_INCEPTION_FILE} "
            f"into {cached.parent} (torch.hub's cache; set TORCH_HOME to move it) from a machine "
            "with network access, or pass weights_path=; offline, use ddpm.metrics.digits_fid "
            "(a Frechet distance on a small digits classifier) instead."
        ) from None
    device = torch.device(device) if device is not None else torch.device("cpu")
    fid = fid.to(device)
    for images, is_real in ((real, True), (fake, False)):
        starts = range(0, len(images), batch_size)
        desc = "FID real" if is_real else "FID fake"
        for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
            fid.update(_to_unit_rgb(images[s : s + batch_size]).to(device), real=is_real)
    return float(fid.compute())


# ====================================================================== Frechet distance
def frechet_distance_gaussians(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet (2-Wasserstein) distance
    squared between N(mu1, S1) and N(mu2, S2), as in FID (Heusel et al. 2017).

    tr (S1 S2)^(1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2), so the result is real by
    construction; eigenvalues that round to slightly negative values are clipped to 0.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    d = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    return float(max(d, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """The Frechet distance between Gaussians fitted (mean, unbiased covariance) to two feature
    sets [N, D] and [M, D]: FID when the features are InceptionV3's (Heusel et al. 2017)."""
    a = torch.as_tensor(feats_a).detach().cpu().double().numpy()
    b = torch.as_tensor(feats_b).detach().cpu().double().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least 2 rows to estimate a covariance")
    return frechet_distance_gaussians(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )


# ====================================================================== digits classifier
CLASSIFIER_VERSION = 1
CLASSIFIER_SEED = 0
CLASSIFIER_EPOCHS = 15
CLASSIFIER_WIDTH = 16
FEATURE_DIM = 128


class DigitsClassifier(nn.Module):
    """A small CNN for the 8x8 digits: two 3x3 convolutions, a max-pool, an MLP.

    ``features(x)`` is the 128-d penultimate layer that ``digits_fid`` compares.
    """

    def __init__(self, width: int = CLASSIFIER_WIDTH, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # 8x8 -> 4x4
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits_classifier_path() -> Path:
    """The cache file of the digits classifier: ``data_dir("classifiers")/digits_classifier.pt``."""
    return data_dir("classifiers") / "digits_classifier.pt"


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def _train_digits_classifier(progress: bool = False) -> tuple[DigitsClassifier, dict]:
    """Train on the digits train split (seeded: the same weights on a given machine and torch)."""
    from .data import load_dataset

    train = load_dataset("digits", "train", flip=False)
    test = load_dataset("digits", "test", flip=False)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: extra threads only add overhead (and contention)
    try:
        model = _fit_digits_classifier(train.data, train.targets, progress)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    info = {
        "test_accuracy": _accuracy(model, test.data, test.targets),
        "train_accuracy": _accuracy(model, train.data, train.targets),
        "train_seconds": seconds,
    }
    return model, info


def _fit_digits_classifier(x, y, progress: bool) -> DigitsClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CLASSIFIER_SEED)
        model = DigitsClassifier()
        gen = torch.Generator().manual_seed(CLASSIFIER_SEED)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in tqdm(range(CLASSIFIER_EPOCHS), desc="digits classifier", disable=not progress):
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            for s in range(0, len(x), 64):
                idx = perm[s : s + 64]
                # a one-pixel random shift: cheap augmentation that makes the features smoother
                shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
                xb = torch.roll(x[idx], shifts=shift, dims=(2, 3)) if any(shift) else x[idx]
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return model


def _load_cached(path: Path) -> tuple[DigitsClassifier, dict] | None:
    """The cached classifier, or None if the file is missing, corrupt or from another version."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("version") != CLASSIFIER_VERSION:
            return None
        model = DigitsClassifier()
        model.load_state_dict(ckpt["state_dict"])
        info = {k: float(ckpt[k]) for k in ("test_accuracy", "train_accuracy", "train_seconds")}
    except (
        OSError,
        RuntimeError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ):
        return None
    return model, info


def load_digits_classifier(*, retrain: bool = False, progress: bool = False) -> DigitsClassifier:
    """The digits classifier in eval mode, loaded from ``digits_classifier_path()`` (safely, with
    ``weights_only=True``), or trained (a few seconds on a CPU) and cached there atomically when
    the file is missing, corrupt, from an older version, or ``retrain`` is true.

    The returned model carries ``test_accuracy``, ``train_accuracy``, ``train_seconds`` (of the
    run that trained it) and ``trained_now`` (whether this call trained it).
    """
    path = digits_classifier_path()
    loaded = None if retrain else _load_cached(path)
    trained_now = loaded is None
    if loaded is None:
        model, info = _train_digits_classifier(progress=progress)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        atomic_save({"version": CLASSIFIER_VERSION, "state_dict": state, **info}, path)
    else:
        model, info = loaded
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for key, value in info.items():
        setattr(model, key, value)
    model.trained_now = trained_now
    return model


@torch.no_grad()
def digits_features(
    x, *, classifier: DigitsClassifier | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """Penultimate-layer features [N, 128] of the digits classifier for images [N, 1, 8, 8] in
    [-1, 1] (a tensor or a dataset with ``.data``)."""
    x = _as_images(x)
    if tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits images must be [N, 1, 8, 8], got {tuple(x.shape)}")
    clf = classifier if classifier is not None else load_digits_classifier()
    clf.eval()
    x = x.detach().float().cpu()
    return torch.cat([clf.features(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])


def digits_fid(samples, reference, *, classifier: DigitsClassifier | None = None) -> float:
    """An offline FID for digits: the Frechet distance (Heusel et al. 2017) between the digits
    classifier's features of ``samples`` and of ``reference`` (e.g. the test split).

    Biased by N: compare only at equal sizes, against ``digits_fid_floor(N)`` (real training
    images vs the same reference), which is what a perfect generator would score.
    """
    clf = classifier if classifier is not None else load_digits_classifier()
    return frechet_distance(
        digits_features(samples, classifier=clf), digits_features(reference, classifier=clf)
    )


def digits_fid_floor(
    n: int | None = None,
    *,
    reference=None,
    generator: torch.Generator | None = None,
    classifier: DigitsClassifier | None = None,
) -> float:
    """The real-data floor of ``digits_fid``: ``n`` random training images (drawn by
    ``generator``) against ``reference`` (default: the digits test split, 297 images).

    Call it with the same ``n`` as the number of samples scored by ``digits_fid`` and the same
    reference; ``n=None`` means the reference's size.
    """
    from .data import load_dataset

    ref = _as_images(reference if reference is not None else load_dataset("digits", "test"))
    train = load_dataset("digits", "train", flip=False).data
    n = len(ref) if n is None else int(n)
    if not 2 <= n <= len(train):
        raise ValueError(f"n must lie in 2..{len(train)} (the train split's size), got {n}")
    idx = torch.randperm(len(train), generator=generator)[:n]
    return digits_fid(train[idx], ref, classifier=classifier)


# ====================================================================== memorisation
@torch.no_grad()
def nearest_neighbour_distance(
    samples,
    train,
    *,
    batch_size: int = 256,
    train_batch_size: int = 4096,
    return_indices: bool = False,
):
    """The L2 distance in pixel space ([-1, 1] scale, over all C*H*W values) from each sample to
    its nearest training image: near-zero distances flag memorised training images.

    Works in chunks of ``batch_size`` samples x ``train_batch_size`` training images, so memory
    stays bounded; each pairwise distance is computed directly (not through the
    ||a||^2 + ||b||^2 - 2ab expansion), so it does not depend on the chunking and is exactly 0
    for a copy of a training image. Returns a tensor [N], and the nearest training indices [N]
    (the first one on ties) when ``return_indices``.
    """
    s = _as_images(samples, "samples")
    t = _as_images(train, "train")
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(
            f"samples {tuple(s.shape[1:])} and train {tuple(t.shape[1:])} image shapes differ"
        )
    if batch_size < 1 or train_batch_size < 1:
        raise ValueError("batch_size and train_batch_size must be >= 1")
    dtype = torch.promote_types(s.dtype, torch.float32)
    device = s.device
    s, t = s.flatten(1), t.flatten(1)
    dists, indices = [], []
    for i in range(0, len(s), batch_size):
        a = s[i : i + batch_size].to(dtype)
        best = torch.full((len(a),), math.inf, dtype=dtype, device=device)
        best_idx = torch.zeros(len(a), dtype=torch.long, device=device)
        for j in range(0, len(t), train_batch_size):
            b = t[j : j + train_batch_size].to(device=device, dtype=dtype)
            d = torch.cdist(a[None], b[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
            val, arg = d.min(dim=1)
            better = val < best
            best = torch.where(better, val, best)
            best_idx = torch.where(better, arg + j, best_idx)
        dists.append(best)
        indices.append(best_idx)
    dist = torch.cat(dists)
    return (dist, torch.cat(indices)) if return_indices else dist
