"""The paper's released models, loaded into our ``UNet`` and ``GaussianDiffusion``.

Ho, Jain & Abbeel (2020) published their trained TensorFlow checkpoints; Hugging Face converted
them to the ``diffusers`` ``UNet2DModel`` layout and hosts them as ``google/ddpm-*`` (see
``REGISTRY``). This module downloads them into the package's data cache, converts the weights
key by key to our ``UNet`` (and back: ``export`` writes a checkpoint of ours in that layout, which
``diffusers`` loads), and builds the schedule and reverse variance from each model's scheduler
config. ``diffusers`` itself is not needed.

Two repository layouts exist: weights and ``config.json`` at the top (with
``scheduler_config.json``), or a pipeline (``model_index.json``, ``unet/``, ``scheduler/``).
Safetensors files are preferred; a torch ``.bin`` is read with ``weights_only=True``.

API: ``download(name) -> folder``; ``load_pretrained(name, device=...) -> (model, diffusion,
info)``; ``load_folder(path)`` for any folder in either layout; ``export(model, diffusion, path)``.
Failures raise ``PretrainedError`` (``NotDownloadedError`` when the weights are not cached and
may not be fetched) with a one-line message saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .diffusion import GaussianDiffusion
from .paths import data_dir
from .schedules import linear_beta_schedule
from .unet import PRESETS, UNet, UNetConfig

__all__ = [
    "PretrainedError",
    "NotDownloadedError",
    "PretrainedModel",
    "REGISTRY",
    "local_dir",
    "is_downloaded",
    "is_standin",
    "download",
    "load_pretrained",
    "load_folder",
    "export",
    "unet_config_from_diffusers",
    "diffusers_config",
    "state_dict_from_diffusers",
    "state_dict_to_diffusers",
    "diffusion_from_scheduler_config",
    "scheduler_config",
]

MANIFEST = "ddpm_download.json"  # written last by download(): its presence means complete
# A manifest with this key set true marks a stand-in cache (random weights, written by the
# tests): the book refuses it unless told otherwise, the command line says so.
STANDIN_KEY = "standin"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class PretrainedError(RuntimeError):
    """A pretrained model cannot be downloaded, read or converted (one-line message)."""


class NotDownloadedError(PretrainedError):
    """The model's weights are not in the cache and downloading was not allowed or failed."""


# ====================================================================== the registry
@dataclass(frozen=True)
class PretrainedModel:
    """One released model: where it lives on the hub and what it is.

    ``revision`` is the git revision downloaded. It is ``"main"``: the commit it resolves to is
    recorded in the download's manifest (``info["commit"]``), every file is checked against the
    hub's sha256 / git hashes, and the Pages workflow compares the downloaded model's output with
    diffusers' on a fixed input, so a changed upload fails that check instead of slipping in.
    ``layout`` is ``"top"`` or ``"pipeline"`` (what the repository is expected to hold; when it
    holds only the other one, that one is used, with a warning).
    """

    repo: str
    preset: str  # the UNet preset with this architecture
    dataset: str
    ema: bool  # exponential-moving-average weights (the ones the paper samples with)
    layout: str = "top"
    revision: str = "main"

    @property
    def url(self) -> str:
        """The model card."""
        return f"https://huggingface.co/{self.repo}"


def _entries() -> dict[str, PretrainedModel]:
    out = {"cifar10": PretrainedModel("google/ddpm-cifar10-32", "cifar10", "CIFAR-10", False,
                                      layout="pipeline")}  # fmt: skip
    for data, label in [("celebahq", "CelebA-HQ"), ("church", "LSUN church"),
                        ("bedroom", "LSUN bedroom"), ("cat", "LSUN cat")]:  # fmt: skip
        out[data] = PretrainedModel(f"google/ddpm-{data}-256", "ddpm256", label, False)
        out[f"ema-{data}"] = PretrainedModel(f"google/ddpm-ema-{data}-256", "ddpm256", label, True)
    return out


REGISTRY: dict[str, PretrainedModel] = _entries()


def _entry(name: str) -> PretrainedModel:
    if name not in REGISTRY:
        raise PretrainedError(f"unknown pretrained model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def local_dir(name: str) -> Path:
    """The cache folder of model ``name``: ``data_dir("pretrained", name)``."""
    _entry(name)
    return data_dir("pretrained", name)


def is_downloaded(name: str) -> bool:
    """Whether ``download(name)`` has completed (its manifest is written last)."""
    return (local_dir(name) / MANIFEST).is_file()


def is_standin(name: str) -> bool:
    """Whether the cached copy of ``name`` is a stand-in with random weights (its manifest says
    so; a real download never does). False when nothing is cached."""
    if not is_downloaded(name):
        return False
    return bool(_read_json(local_dir(name) / MANIFEST).get(STANDIN_KEY, False))


# ====================================================================== files and hashes
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then os.replace: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PretrainedError(
            f"cannot read {path}: {e}; delete the folder and download again"
        ) from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """Git's object id of a (small, non-LFS) file: sha1 of ``b"blob <size>\\0" + content``."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _plan(files: set[str], layout: str) -> dict[str, str]:
    """Which repository files to use: config, weights (safetensors first), scheduler config."""
    other = "top" if layout == "pipeline" else "pipeline"
    for lay in (layout, other):
        prefix = "unet/" if lay == "pipeline" else ""
        weights = [prefix + w for w in WEIGHT_FILES if prefix + w in files]
        scheds = ["scheduler/scheduler_config.json", "scheduler_config.json"]
        scheds = [s for s in (scheds if lay == "pipeline" else scheds[::-1]) if s in files]
        if prefix + "config.json" in files and weights and scheds:
            if lay != layout:
                warnings.warn(f"expected the {layout!r} layout, found {lay!r}", stacklevel=3)
            plan = {"layout": lay, "config": prefix + "config.json", "weights": weights[0],
                    "scheduler": scheds[0]}  # fmt: skip
            if "model_index.json" in files:
                plan["model_index"] = "model_index.json"
            return plan
    raise PretrainedError(
        "no UNet2DModel config + weights + scheduler config found among the files "
        f"{sorted(files)[:8]}{'...' if len(files) > 8 else ''}"
    )


# ====================================================================== download
class _Hub:
    """The two Hugging Face hub calls download() makes (tests replace this with a local one)."""

    def __init__(self):
        try:
            import huggingface_hub
        except ImportError as e:
            raise PretrainedError(
                "downloading needs huggingface_hub: pip install 'ddpm[pretrained]'"
            ) from e
        self.hub = huggingface_hub

    def files(self, repo: str, revision: str) -> tuple[str, dict[str, dict]]:
        """(commit, {path: {"size", "sha256" (LFS files) or None, "blob_id"}})."""
        info = self.hub.HfApi().model_info(repo, revision=revision, files_metadata=True)
        out = {}
        for s in info.siblings or []:
            lfs = getattr(s, "lfs", None)
            sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            out[s.rfilename] = {"size": s.size, "sha256": sha, "blob_id": s.blob_id}
        return info.sha, out

    def fetch(self, repo: str, path: str, commit: str, dest: Path) -> Path:
        """Download one file to dest/path (resumes a partial download of the same file)."""
        return Path(self.hub.hf_hub_download(repo, path, revision=commit, local_dir=dest))


def _hub() -> _Hub:
    return _Hub()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {text[0] if text else ''}"
    return line if len(line) <= 160 else line[:157] + "..."


def _verify(path: Path, meta: dict) -> None:
    if meta.get("sha256"):
        ok = _sha256(path) == meta["sha256"]
    elif meta.get("blob_id"):
        ok = _git_blob_sha1(path) == meta["blob_id"]
    else:
        ok = meta.get("size") is None or path.stat().st_size == meta["size"]
    if not ok:
        path.unlink(missing_ok=True)
        raise PretrainedError(
            f"{path.name} does not match the hub's hash (deleted); download again"
        )


def download(name: str, *, force: bool = False) -> Path:
    """Download model ``name`` into ``local_dir(name)`` and return that folder.

    Only the files the model needs are fetched (config, one weights file, scheduler config).
    An interrupted download resumes; every file is checked against the hub's hash (sha256 for
    large files); the manifest ``ddpm_download.json`` is written last. Already complete: returns
    at once, without network, unless ``force``.
    """
    entry, dest = _entry(name), local_dir(name)
    if is_downloaded(name) and not force:
        return dest
    hub = _hub()
    try:
        commit, files = hub.files(entry.repo, entry.revision)
        plan = _plan(set(files), entry.layout)
        paths = [plan[k] for k in ("model_index", "config", "scheduler", "weights") if k in plan]
        for path in paths:
            _verify(hub.fetch(entry.repo, path, commit, dest), files[path])
    except PretrainedError:
        raise
    except Exception as e:  # offline, repository or revision not found, HTTP errors, ...
        raise NotDownloadedError(
            f"cannot download {name} ({entry.repo}@{entry.revision}): {_one_line(e)}; check the "
            f"network, or copy a downloaded copy into {dest}"
        ) from e
    manifest = {"name": name, "repo": entry.repo, "revision": entry.revision, "commit": commit,
                "plan": plan, "files": {p: files[p] for p in paths}}  # fmt: skip
    _write_json(dest / MANIFEST, manifest)
    return dest


_download = download  # load_pretrained's argument `download` shadows the name


# ====================================================================== the UNet converter
# diffusers' UNet2DModel defaults, for keys a config.json leaves out
_UNET_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
    "flip_sin_to_cos": True, "mid_block_type": "UNetMidBlock2D", "layers_per_block": 2,
    "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv",
    "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu", "attention_head_dim": 8,
    "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None,
}  # fmt: skip
# what our UNet computes; a config with another value is a different function
_UNET_FIXED = {
    "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 1,
    "flip_sin_to_cos": False, "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1,
    "downsample_padding": 0, "downsample_type": "conv", "upsample_type": "conv",
    "act_fn": "silu", "norm_eps": 1e-6, "resnet_time_scale_shift": "default",
    "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
}  # fmt: skip


def unet_config_from_diffusers(cfg: dict) -> UNetConfig:
    """Our ``UNetConfig`` for a diffusers ``UNet2DModel`` config (a ``config.json`` dict).

    Raises ``PretrainedError`` naming the field when the config describes a network ours does not
    compute (e.g. ``downsample_padding=1``, multi-head attention, a shifted time embedding).
    """
    c = {**_UNET_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    for key, want in _UNET_FIXED.items():
        if c[key] != want:
            raise PretrainedError(f"UNet2DModel config has {key}={c[key]!r}; ours needs {want!r}")
    size = c.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise PretrainedError(f"only square images are supported, got sample_size={size}")
        size = size[0]
    widths = list(c["block_out_channels"])
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    if not isinstance(size, int) or any(w % widths[0] for w in widths):
        raise PretrainedError(f"unsupported sample_size={size} / block_out_channels={widths}")
    if set(down) - {"DownBlock2D", "AttnDownBlock2D"} or len(down) != len(widths):
        raise PretrainedError(f"unsupported down_block_types {down}")
    mirror = [b.replace("Down", "Up") for b in reversed(down)]
    if up != mirror:
        raise PretrainedError(f"up_block_types {up} must mirror the down blocks: {mirror}")
    attn_levels = [i for i, b in enumerate(down) if b.startswith("Attn")]
    head = c["attention_head_dim"]
    if head is not None and any(head != widths[i] for i in attn_levels + [len(widths) - 1]):
        raise PretrainedError(f"attention_head_dim={head}: ours is single-head (use None)")
    if c["time_embedding_dim"] not in (None, 4 * widths[0]):
        raise PretrainedError(f"time_embedding_dim must be 4 * {widths[0]}")
    if c["attn_norm_num_groups"] not in (None, c["norm_num_groups"]):
        raise PretrainedError("attn_norm_num_groups must equal norm_num_groups")
    try:
        return UNetConfig(
            in_channels=c["in_channels"], image_size=size,
            out_channels=None if c["out_channels"] == c["in_channels"] else c["out_channels"],
            ch=widths[0], ch_mult=tuple(w // widths[0] for w in widths),
            num_res_blocks=c["layers_per_block"],
            attn_resolutions=tuple(size // 2**i for i in attn_levels),
            dropout=float(c["dropout"]), num_groups=c["norm_num_groups"],
        )  # fmt: skip
    except ValueError as e:
        raise PretrainedError(f"UNet2DModel config not representable: {e}") from e


def diffusers_config(config: UNetConfig) -> dict:
    """The diffusers ``UNet2DModel`` config (``config.json``) computing the same function."""
    levels = range(len(config.ch_mult))
    attn = [config.resolutions[i] in config.attn_resolutions for i in levels]
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn]
    out = {
        "_class_name": "UNet2DModel",
        **_UNET_DEFAULTS,
        **_UNET_FIXED,
        "sample_size": config.image_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels or config.in_channels,
        "block_out_channels": [config.ch * m for m in config.ch_mult],
        "layers_per_block": config.num_res_blocks,
        "down_block_types": down,
        "up_block_types": [b.replace("Down", "Up") for b in reversed(down)],
        "attention_head_dim": None,
        "norm_num_groups": config.num_groups,
        "dropout": config.dropout,
    }
    return out


# our key prefix -> diffusers' (regex, replacement), applied in order
_RENAMES = [
    (r"^time_mlp\.0\.", "time_embedding.linear_1."),
    (r"^time_mlp\.2\.", "time_embedding.linear_2."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"^(down|up)\.(\d+)\.blocks\.(\d+)\.", r"\1_blocks.\2.resnets.\3."),
    (r"^(down|up)\.(\d+)\.attns\.(\d+)\.", r"\1_blocks.\2.attentions.\3."),
    (r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.conv."),
    (r"^up\.(\d+)\.upsample\.conv\.", r"up_blocks.\1.upsamplers.0.conv."),
    (r"^mid1\.", "mid_block.resnets.0."),
    (r"^mid2\.", "mid_block.resnets.1."),
    (r"^mid_attn\.", "mid_block.attentions.0."),
    (r"\.temb_proj\.", ".time_emb_proj."),
    (r"\.shortcut\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."),
    (r"(attentions\.\d+)\.proj_out\.", r"\1.to_out.0."),
]
_QKV = ("to_q", "to_k", "to_v")


def _their_key(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _our_keys(config: UNetConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # no memory, no initialisation: only names and shapes
        return {k: v.shape for k, v in UNet(config).state_dict().items()}


def state_dict_from_diffusers(sd: dict, config: UNetConfig) -> dict[str, torch.Tensor]:
    """Our ``UNet`` state dict from a diffusers ``UNet2DModel`` one, key by key.

    The attention's q, k, v linear layers become one 1x1 conv ``qkv`` (rows stacked q, k, v) and
    ``to_out.0`` the 1x1 conv ``proj_out``. Every tensor is used once: a missing, unexpected or
    wrongly shaped key raises ``PretrainedError``.
    """
    out, used = {}, set()
    for key, shape in _our_keys(config).items():
        theirs = _their_key(key)
        names = [theirs.replace(".qkv.", f".{q}.") for q in _QKV] if ".qkv." in theirs else [theirs]
        missing = [n for n in names if n not in sd]
        if missing:
            raise PretrainedError(f"the diffusers weights lack {missing[0]} (for our {key})")
        value = torch.cat([sd[n] for n in names]) if len(names) > 1 else sd[names[0]]
        linear_as_conv = tuple(shape) == (*value.shape, 1, 1)  # attention: [C, C] -> 1x1 conv
        if value.shape != shape and not linear_as_conv:
            raise PretrainedError(f"{names[0]} has shape {tuple(value.shape)}, ours {tuple(shape)}")
        out[key] = value.reshape(shape)
        used.update(names)
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise PretrainedError(f"unexpected keys in the diffusers weights: {unexpected[:3]}")
    return out


def state_dict_to_diffusers(sd: dict, config: UNetConfig) -> dict[str, torch.Tensor]:
    """The inverse of ``state_dict_from_diffusers``: diffusers ``UNet2DModel`` keys and shapes."""
    out = {}
    for key in _our_keys(config):
        theirs, value = _their_key(key), sd[key]
        attention = ".attentions." in theirs and value.ndim == 4  # 1x1 conv -> linear
        value = value.reshape(value.shape[:2]) if attention else value
        if ".qkv." in theirs:
            for q, part in zip(_QKV, value.chunk(3), strict=True):
                out[theirs.replace(".qkv.", f".{q}.")] = part.contiguous()
        else:
            out[theirs] = value.contiguous()
    return out


# ====================================================================== the scheduler
_VAR_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
              "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}  # fmt: skip
_MEAN_TYPES = {"epsilon": "eps", "sample": "x0"}


def diffusion_from_scheduler_config(cfg: dict) -> tuple[GaussianDiffusion, dict]:
    """Our ``GaussianDiffusion`` from a diffusers ``DDPMScheduler`` config, and the sampling
    settings it holds (``{"clip_sample": bool}``).

    Betas: ``trained_betas`` when given, else the ``linear`` schedule from ``beta_start`` to
    ``beta_end`` over ``num_train_timesteps`` (computed in float64, as the original code does;
    diffusers uses float32). ``variance_type`` fixed_small -> beta-tilde_t, fixed_large -> beta_t.
    """
    c = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
         "beta_schedule": "linear", "trained_betas": None, "variance_type": "fixed_small",
         "clip_sample": True, "prediction_type": "epsilon", "clip_sample_range": 1.0,
         "thresholding": False, **cfg}  # fmt: skip
    if c["variance_type"] not in _VAR_TYPES:
        raise PretrainedError(f"variance_type {c['variance_type']!r} is not supported; "
                              f"supported: {', '.join(_VAR_TYPES)}")  # fmt: skip
    if c["prediction_type"] not in _MEAN_TYPES:
        raise PretrainedError(f"prediction_type {c['prediction_type']!r} is not supported")
    if c["thresholding"] or c["clip_sample_range"] != 1.0:
        raise PretrainedError("thresholding / clip_sample_range != 1 are not supported")
    if c["trained_betas"] is not None:
        betas = torch.tensor(c["trained_betas"], dtype=torch.float64)
    elif c["beta_schedule"] == "linear":
        betas = linear_beta_schedule(
            int(c["num_train_timesteps"]), c["beta_start"], c["beta_end"], rescale=False
        )
    else:
        raise PretrainedError(f"beta_schedule {c['beta_schedule']!r} is not supported (linear)")
    diffusion = GaussianDiffusion(
        betas, _MEAN_TYPES[c["prediction_type"]], _VAR_TYPES[c["variance_type"]]
    )
    return diffusion, {"clip_sample": bool(c["clip_sample"])}


def scheduler_config(diffusion: GaussianDiffusion, *, clip_sample: bool = True) -> dict:
    """The diffusers ``DDPMScheduler`` config of ``diffusion`` (linear, else trained_betas)."""
    means = {v: k for k, v in _MEAN_TYPES.items()}
    if diffusion.model_mean_type not in means:
        raise PretrainedError(f"diffusers has no model_mean_type {diffusion.model_mean_type!r}")
    betas, T = diffusion.betas, diffusion.num_timesteps
    start, end = float(betas[0]), float(betas[-1])
    linear = torch.allclose(betas, torch.linspace(start, end, T, dtype=torch.float64),
                            rtol=0, atol=1e-12)  # fmt: skip
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": T,
        "beta_schedule": "linear",
        "beta_start": start,
        "beta_end": end,
        "trained_betas": None if linear else betas.tolist(),
        "variance_type": diffusion.model_var_type,
        "prediction_type": means[diffusion.model_mean_type],
        "clip_sample": clip_sample,
    }


# ====================================================================== loading and export
def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as e:
        raise PretrainedError("reading safetensors needs: pip install 'ddpm[pretrained]'") from e
    except Exception as e:
        raise PretrainedError(f"cannot read {path}: {_one_line(e)}; download it again") from e


def _build(folder: Path, plan: dict, device) -> tuple[UNet, GaussianDiffusion, dict]:
    for key in ("config", "weights", "scheduler"):
        if not (folder / plan[key]).is_file():
            raise NotDownloadedError(f"{folder / plan[key]} is missing; download the model again")
    config = unet_config_from_diffusers(_read_json(folder / plan["config"]))
    state = state_dict_from_diffusers(_load_weights(folder / plan["weights"]), config)
    with torch.device("meta"):  # skip the random initialisation: every tensor is assigned
        model = UNet(config)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device or "cpu", dtype=torch.float32).eval()
    diffusion, settings = diffusion_from_scheduler_config(_read_json(folder / plan["scheduler"]))
    preset = next((n for n, p in PRESETS.items() if asdict(p) == asdict(config)), None)
    info = {"path": str(folder), "layout": plan["layout"], "weights": plan["weights"],
            "preset": preset, "num_params": sum(p.numel() for p in model.parameters()),
            "image_size": config.image_size, **settings}  # fmt: skip
    return model, diffusion, info


def load_folder(path, *, device=None) -> tuple[UNet, GaussianDiffusion, dict]:
    """Load a diffusers-layout folder (either layout; e.g. one ``export`` wrote).

    Returns ``(model, diffusion, info)``: our ``UNet`` in eval mode, its ``GaussianDiffusion``,
    and a dict with ``clip_sample`` (the sampler setting), ``preset``, ``num_params``, ``layout``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PretrainedError(f"{folder} is not a folder")
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return _build(folder, _plan(files, "pipeline" if "model_index.json" in files else "top"),
                  device)  # fmt: skip


def load_pretrained(
    name: str, *, device=None, download: bool = True
) -> tuple[UNet, GaussianDiffusion, dict]:
    """The released model ``name`` (a key of ``REGISTRY``) as ``(model, diffusion, info)``.

    Uses the cached copy in ``local_dir(name)``; when there is none, downloads it if
    ``download``, else raises ``NotDownloadedError`` naming the command that fetches it.
    ``info`` adds the registry entry (``repo``, ``revision``, ``commit``, ``ema``, ``url``) and
    ``standin`` (true for a test cache of random weights, see ``is_standin``) to ``load_folder``'s.
    """
    entry = _entry(name)
    if not is_downloaded(name):
        if not download:
            raise NotDownloadedError(
                f"{name} is not downloaded; run `ddpm download {name}` (needs the network)"
            )
        _download(name)
    folder = local_dir(name)
    manifest = _read_json(folder / MANIFEST)
    model, diffusion, info = _build(folder, manifest["plan"], device)
    registry = {k: v for k, v in asdict(entry).items() if k != "preset"}  # keep the loaded one
    standin = bool(manifest.get(STANDIN_KEY, False))
    info.update(
        name=name, commit=manifest.get("commit"), **registry, url=entry.url, standin=standin
    )
    return model, diffusion, info


def export(model: UNet, diffusion: GaussianDiffusion, path, *, layout: str = "pipeline",
           clip_sample: bool = True) -> Path:  # fmt: skip
    """Write ``model`` and ``diffusion`` in the diffusers layout; diffusers loads the folder
    (``DDPMPipeline.from_pretrained`` for ``"pipeline"``, ``UNet2DModel.from_pretrained`` for
    ``"top"``). Weights go to ``diffusion_pytorch_model.safetensors``. Returns the folder."""
    if layout not in ("top", "pipeline"):
        raise PretrainedError(f"layout must be 'top' or 'pipeline', got {layout!r}")
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise PretrainedError("writing safetensors needs: pip install 'ddpm[pretrained]'") from e
    folder = Path(path)
    unet_dir = folder / "unet" if layout == "pipeline" else folder
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    weights = state_dict_to_diffusers(state, model.config)
    unet_dir.mkdir(parents=True, exist_ok=True)
    tmp = unet_dir / f".{WEIGHT_FILES[0]}.tmp"
    try:  # atomic: a temporary file in the same folder, then os.replace
        save_file(weights, str(tmp))
        os.replace(tmp, unet_dir / WEIGHT_FILES[0])
    finally:
        tmp.unlink(missing_ok=True)
    _write_json(unet_dir / "config.json", diffusers_config(model.config))
    sched = scheduler_config(diffusion, clip_sample=clip_sample)
    if layout == "pipeline":
        _write_json(folder / "scheduler" / "scheduler_config.json", sched)
        _write_json(folder / "model_index.json", {"_class_name": "DDPMPipeline",
                    "unet": ["diffusers", "UNet2DModel"],
                    "scheduler": ["diffusers", "DDPMScheduler"]})  # fmt: skip
    else:
        _write_json(folder / "scheduler_config.json", sched)
    return folder
