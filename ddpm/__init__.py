"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020), small and tested."""

from .data import dataset_info, load_dataset
from .diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, normal_kl
from .paths import data_dir
from .schedules import (
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
    schedule_quantities,
)
from .unet import UNet, UNetConfig, timestep_embedding

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion",
    "UNet",
    "UNetConfig",
    "cosine_beta_schedule",
    "data_dir",
    "dataset_info",
    "discretized_gaussian_log_likelihood",
    "get_beta_schedule",
    "linear_beta_schedule",
    "load_dataset",
    "normal_kl",
    "schedule_quantities",
    "timestep_embedding",
]
