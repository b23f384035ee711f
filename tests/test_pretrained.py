"""ddpm.pretrained against diffusers, offline: randomly initialised UNet2DModels with the released
models' configs, laid out as the hub repositories are, loaded through download()'s code path
(a stand-in hub serving a local folder), compared output for output with diffusers, and exported
back to a folder diffusers loads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from ddpm import pretrained
from ddpm.pretrained import (
    NotDownloadedError,
    PretrainedError,
    diffusers_config,
    diffusion_from_scheduler_config,
    export,
    load_folder,
    load_pretrained,
    scheduler_config,
    state_dict_from_diffusers,
    state_dict_to_diffusers,
    unet_config_from_diffusers,
)
from ddpm.unet import PRESETS, UNet

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

# google/ddpm-cifar10-32's UNet2DModel config.json, and the 256x256 models' (issue 13)
CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
    "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, act_fn="silu",
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1,
    dropout=0.1,
)  # fmt: skip
DDPM256 = dict(
    CIFAR10, sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512), dropout=0.0,
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)  # fmt: skip
# the two reverse variances the released scheduler configs use
SCHEDULERS = {
    "fixed_large": dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                        beta_end=0.02, variance_type="fixed_large", clip_sample=True),
    "fixed_small": dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                        beta_end=0.02, variance_type="fixed_small", clip_sample=True),
}  # fmt: skip

# Tolerance of the output comparison. The two networks hold identical float32 weights but sum in
# different orders (conv algorithms, attention kernels, GroupNorm reductions). A dot product of
# length K (K <= 9 * 1024 here) carries a relative rounding error of about sqrt(K) * 2**-24 ~ 6e-6
# when the errors are random; over the ~70 layers on the longest path (residual blocks add their
# error instead of compounding it) that is sqrt(70) * 6e-6 ~ 5e-5 at most. 2e-4 leaves room for
# a less favourable CPU kernel set, and is three orders of magnitude below the ~0.6 relative
# error that the symmetric (1, 1) downsampling padding produces.
RTOL = 2e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def random_unet2d(config: dict, seed: int):
    """A UNet2DModel with random weights: N(0, 1/fan_in) matrices and kernels, N(0, 0.1^2)
    vectors (cheaper than the default initialisation of 113M parameters, and nothing is zero)."""
    with torch.device("meta"):
        unet = diffusers.UNet2DModel(**config)
    unet = unet.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            std = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return unet


@pytest.fixture(scope="module")
def cifar_unet():
    return random_unet2d(CIFAR10, seed=0)


@pytest.fixture(scope="module")
def big_unet():
    return random_unet2d(DDPM256, seed=1)


def save_hub_layout(unet, sched: dict, folder: Path, layout: str, safetensors: bool) -> Path:
    """Save as the hub repositories do: a DDPMPipeline (model_index.json, unet/, scheduler/),
    or UNet2DModel.save_pretrained plus scheduler_config.json at the top."""
    scheduler = diffusers.DDPMScheduler(**sched)
    if layout == "pipeline":
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
        pipe.save_pretrained(folder, safe_serialization=safetensors)
        assert (folder / "model_index.json").is_file() and (folder / "unet").is_dir()
    else:
        unet.save_pretrained(folder, safe_serialization=safetensors)
        scheduler.save_pretrained(folder)
        assert (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file()
    return folder


class LocalHub:
    """Stands in for huggingface_hub: serves a folder's files with the metadata the hub gives
    (sha256 for large LFS files, the git blob id for small ones)."""

    def __init__(self, folder: Path):
        self.folder, self.fetched = folder, []

    def files(self, repo, revision):
        out = {}
        for p in self.folder.rglob("*"):
            if p.is_file():
                data, rel = p.read_bytes(), p.relative_to(self.folder).as_posix()
                lfs = p.suffix in (".safetensors", ".bin")
                out[rel] = {
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest() if lfs else None,
                    "blob_id": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                }
        return "0" * 40, out

    def fetch(self, repo, path, commit, dest):
        self.fetched.append(path)
        target = Path(dest) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.folder / path, target)
        return target


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def serve(monkeypatch, folder: Path, name: str, layout: str) -> LocalHub:
    hub = LocalHub(folder)
    monkeypatch.setattr(pretrained, "_hub", lambda: hub)
    entry = dataclasses.replace(pretrained.REGISTRY[name], layout=layout)
    monkeypatch.setitem(pretrained.REGISTRY, name, entry)
    return hub


def check_export_round_trip(model, diffusion, reference, x, t, folder: Path, layout: str):
    """ours -> diffusers layout -> diffusers loads it -> same weights, same output."""
    export(model, diffusion, folder, layout=layout)
    if layout == "pipeline":
        pipe = diffusers.DDPMPipeline.from_pretrained(folder)
        unet, scheduler = pipe.unet.eval(), pipe.scheduler
    else:
        unet = diffusers.UNet2DModel.from_pretrained(folder).eval()
        scheduler = diffusers.DDPMScheduler.from_pretrained(folder)
    ref_sd, new_sd = reference.state_dict(), unet.state_dict()
    assert set(ref_sd) == set(new_sd)
    assert all(torch.equal(ref_sd[k], new_sd[k]) for k in ref_sd)
    with torch.no_grad():  # equal weights: this checks the config (kernels may differ in bits)
        assert rel_err(unet(x[:1], t[:1]).sample, reference(x[:1], t[:1]).sample) < RTOL
    assert scheduler.config.variance_type == diffusion.model_var_type
    torch.testing.assert_close(scheduler.betas.double(), diffusion.betas, rtol=1e-6, atol=0)
    again, diffusion2, _ = load_folder(folder)
    ours = model.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in again.state_dict().items())
    assert torch.equal(diffusion2.model_variance, diffusion.model_variance)


# ---------------------------------------------------------------- the two released configs


@pytest.mark.parametrize(
    "layout, safetensors, variance",
    [("pipeline", False, "fixed_large"), ("top", True, "fixed_small")],
)
def test_cifar10_loads_through_download_and_matches_diffusers(
    cifar_unet, cache, tmp_path, monkeypatch, layout, safetensors, variance
):
    repo = save_hub_layout(cifar_unet, SCHEDULERS[variance], tmp_path / "repo", layout, safetensors)
    hub = serve(monkeypatch, repo, "cifar10", layout)
    model, diffusion, info = load_pretrained("cifar10")
    assert pretrained.is_downloaded("cifar10")
    assert hub.fetched[-1].endswith(".safetensors" if safetensors else ".bin")

    assert n_params(model) == n_params(cifar_unet) == 35_746_307
    assert model.config == PRESETS["cifar10"] and info["preset"] == "cifar10"
    assert (info["layout"], info["repo"], info["commit"]) == (layout, "google/ddpm-cifar10-32",
                                                              "0" * 40)  # fmt: skip
    assert diffusion.model_var_type == variance and info["clip_sample"] is True

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 500, 999])
    with torch.no_grad():
        ref = cifar_unet(x, t).sample
        assert ref.std() > 0.02  # the output varies: a relative error of it means something
        assert rel_err(model(x, t), ref) < RTOL
    check_export_round_trip(model, diffusion, cifar_unet, x, t, tmp_path / "export", layout)


@pytest.mark.parametrize("layout, safetensors", [("top", True), ("pipeline", False)])
def test_256_model_loads_through_download_and_matches_diffusers(
    big_unet, cache, tmp_path, monkeypatch, layout, safetensors
):
    repo = save_hub_layout(big_unet, SCHEDULERS["fixed_small"], tmp_path / "repo", layout,
                           safetensors)  # fmt: skip
    serve(monkeypatch, repo, "ema-church", layout)
    model, diffusion, info = load_pretrained("ema-church")
    assert n_params(model) == n_params(big_unet) == 113_673_219
    assert model.config == PRESETS["ddpm256"] and info["preset"] == "ddpm256" and info["ema"]
    assert diffusion.model_var_type == "fixed_small"

    # The same weights at 64x64 (a 256x256 forward takes too long on a CPU): the architecture is
    # the same, attention sits at the same depth (64 / 16 = 4 instead of 256 / 16 = 16).
    with torch.device("meta"):
        small = UNet(model.config, image_size=64, attn_resolutions=(4,)).eval()
    small.load_state_dict(model.state_dict(), assign=True)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 64, 64, generator=g), torch.tensor([3, 998])
    with torch.no_grad():
        ref = big_unet(x, t).sample
        assert ref.std() > 0.02
        assert rel_err(small(x, t), ref) < RTOL
    folder = tmp_path / "export"
    export(model, diffusion, folder, layout=layout)
    sd = diffusers.UNet2DModel.from_pretrained(folder / "unet" if layout == "pipeline" else folder)
    ref_sd = big_unet.state_dict()
    assert sd.config.sample_size == 256 and set(sd.state_dict()) == set(ref_sd)
    assert all(torch.equal(v, ref_sd[k]) for k, v in sd.state_dict().items())


def test_symmetric_downsampling_padding_would_be_caught(cifar_unet):
    """The comparison above detects the one-line padding bug it was written for."""
    config = unet_config_from_diffusers(dict(cifar_unet.config))
    model = UNet(config).eval()
    model.load_state_dict(state_dict_from_diffusers(cifar_unet.state_dict(), config))
    for stage in model.down:
        if stage.downsample is not None:
            conv = torch.nn.Conv2d(*stage.downsample.weight.shape[:2], 3, 2, 1)
            conv.load_state_dict(stage.downsample.state_dict())
            stage.downsample = conv
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (
            rel_err(model(x, torch.tensor([100])), cifar_unet(x, torch.tensor([100])).sample) > 0.1
        )


# ---------------------------------------------------------------- converter details


def test_diffusers_config_round_trips_and_diffusers_builds_it():
    for name in ("cifar10", "ddpm256", "digits"):
        cfg = diffusers_config(PRESETS[name])
        assert unet_config_from_diffusers(cfg) == PRESETS[name]
    cfg = diffusers_config(PRESETS["digits"])
    ours = UNet.from_preset("digits")
    theirs = diffusers.UNet2DModel.from_config(cfg)
    assert n_params(theirs) == n_params(ours)
    theirs.load_state_dict(state_dict_to_diffusers(ours.state_dict(), ours.config), strict=True)


def test_defaults_used_for_missing_config_keys_are_diffusers_defaults():
    import inspect

    params = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    for key, value in pretrained._UNET_DEFAULTS.items():
        assert params[key].default == value, key


@pytest.mark.parametrize(
    "change, field",
    [({"downsample_padding": 1}, "downsample_padding"), ({"flip_sin_to_cos": True}, "flip_sin"),
     ({"freq_shift": 0}, "freq_shift"), ({"attention_head_dim": 64}, "attention_head_dim"),
     ({"norm_eps": 1e-5}, "norm_eps"),
     ({"up_block_types": ["UpBlock2D"] * 4}, "mirror")],
)  # fmt: skip
def test_configs_computing_another_function_are_rejected(change, field):
    with pytest.raises(PretrainedError, match=field):
        unet_config_from_diffusers({**CIFAR10, **change})
    missing = {k: v for k, v in CIFAR10.items() if k != "flip_sin_to_cos"}  # default True
    with pytest.raises(PretrainedError, match="flip_sin_to_cos"):
        unet_config_from_diffusers(missing)


def test_state_dict_converter_names_missing_unexpected_and_misshaped_keys():
    ours = UNet.from_preset("digits")
    sd = state_dict_to_diffusers(ours.state_dict(), ours.config)
    back = state_dict_from_diffusers(sd, ours.config)
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    with pytest.raises(PretrainedError, match="lack mid_block.attentions.0.to_k.weight"):
        state_dict_from_diffusers({k: v for k, v in sd.items() if "attentions.0.to_k.w" not in k
                                   or "mid" not in k}, ours.config)  # fmt: skip
    with pytest.raises(PretrainedError, match="unexpected keys.*extra"):
        state_dict_from_diffusers({**sd, "extra.weight": torch.zeros(1)}, ours.config)
    bad = {**sd, "conv_in.weight": sd["conv_in.weight"][:, :, :2]}
    with pytest.raises(PretrainedError, match="conv_in.weight has shape"):
        state_dict_from_diffusers(bad, ours.config)


def test_qkv_rows_are_q_then_k_then_v():
    ours = UNet.from_preset("digits")
    sd = state_dict_to_diffusers(ours.state_dict(), ours.config)
    C = ours.mid_attn.qkv.weight.shape[1]
    q = ours.mid_attn.qkv.weight[:C, :, 0, 0]
    assert torch.equal(sd["mid_block.attentions.0.to_q.weight"], q)
    v = ours.mid_attn.qkv.bias[2 * C :]
    assert torch.equal(sd["mid_block.attentions.0.to_v.bias"], v)


# ---------------------------------------------------------------- the scheduler


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_scheduler_config_gives_diffusers_betas_and_variances(variance):
    cfg = SCHEDULERS[variance]
    diffusion, settings = diffusion_from_scheduler_config(cfg)
    scheduler = diffusers.DDPMScheduler(**cfg)
    torch.testing.assert_close(diffusion.betas.float(), scheduler.betas, rtol=1e-6, atol=0)
    # code step t >= 1: the variance diffusers uses (at t = 0 no noise is added by either)
    for t in (1, 2, 500, 999):
        # diffusers forms 1 - alpha-bar in float32: ~2e-4 at t = 1 with an absolute rounding
        # error of a few 2**-24 ~ 6e-8, so a relative error up to ~1e-3 there
        torch.testing.assert_close(diffusion.model_variance[t].float(),
                                   scheduler._get_variance(t), rtol=2e-3, atol=0)  # fmt: skip
    assert settings == {"clip_sample": True}
    again = diffusion_from_scheduler_config(scheduler_config(diffusion))[0]
    assert again.model_var_type == variance and torch.equal(again.betas, diffusion.betas)


def test_scheduler_config_trained_betas_and_rejections():
    betas = [0.01, 0.02, 0.05]
    diffusion, _ = diffusion_from_scheduler_config({"trained_betas": betas})
    assert diffusion.betas.tolist() == betas
    assert scheduler_config(diffusion)["trained_betas"] == betas
    for bad, match in [({"variance_type": "learned"}, "variance_type"),
                       ({"prediction_type": "v_prediction"}, "prediction_type"),
                       ({"beta_schedule": "scaled_linear"}, "beta_schedule")]:  # fmt: skip
        with pytest.raises(PretrainedError, match=match):
            diffusion_from_scheduler_config(bad)


# ---------------------------------------------------------------- download and cache


def test_plan_prefers_safetensors_and_falls_back_to_the_other_layout():
    files = {"config.json", "scheduler_config.json", "diffusion_pytorch_model.bin",
             "diffusion_pytorch_model.safetensors"}  # fmt: skip
    plan = pretrained._plan(files, "top")
    assert plan["weights"] == "diffusion_pytorch_model.safetensors" and plan["layout"] == "top"
    with pytest.warns(UserWarning, match="found 'top'"):
        assert pretrained._plan(files, "pipeline")["layout"] == "top"
    with pytest.raises(PretrainedError, match="no UNet2DModel config"):
        pretrained._plan({"config.json", "README.md"}, "top")


def test_not_downloaded_and_offline_give_one_line_errors(cache, monkeypatch):
    with pytest.raises(NotDownloadedError, match="run `ddpm download cifar10`") as e:
        load_pretrained("cifar10", download=False)
    assert "\n" not in str(e.value)

    from huggingface_hub.errors import OfflineModeIsEnabled

    class Offline(pretrained._Hub):
        def files(self, repo, revision):
            raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode\nmore")

    monkeypatch.setattr(pretrained, "_hub", Offline)
    with pytest.raises(NotDownloadedError, match="download cifar10.*OfflineModeIsEnabled") as e:
        load_pretrained("cifar10")
    assert "\n" not in str(e.value) and not pretrained.is_downloaded("cifar10")
    with pytest.raises(PretrainedError, match="unknown pretrained model 'cifar'.*cifar10"):
        load_pretrained("cifar")


def test_offline_huggingface_hub_gives_one_line_error(cache, monkeypatch):
    """The real client, in its offline mode (it refuses before any request is made)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NotDownloadedError, match="OfflineModeIsEnabled.*copy a downloaded") as e:
        pretrained.download("ema-cat")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_corrupted_download_is_deleted_and_reported(cache, tmp_path, monkeypatch):
    ours = UNet.from_preset("digits")
    from ddpm import GaussianDiffusion, linear_beta_schedule

    repo = export(
        ours,
        GaussianDiffusion(linear_beta_schedule(10, 1e-3, 0.2, rescale=False)),
        tmp_path / "repo",
    )
    hub = serve(monkeypatch, repo, "cifar10", "pipeline")
    files = hub.files
    hub.files = lambda r, v: (files(r, v)[0], {**files(r, v)[1], "unet/diffusion_pytorch_model"
                              ".safetensors": {"sha256": "0" * 64}})  # fmt: skip
    with pytest.raises(PretrainedError, match="does not match the hub's hash"):
        pretrained.download("cifar10")
    assert not pretrained.is_downloaded("cifar10")
    assert not (cache / "pretrained/cifar10/unet/diffusion_pytorch_model.safetensors").exists()
    hub.files = files  # a second try completes, and a third does not touch the hub
    assert pretrained.download("cifar10") == cache / "pretrained" / "cifar10"
    manifest = json.loads((cache / "pretrained/cifar10/ddpm_download.json").read_text())
    assert manifest["plan"]["layout"] == "pipeline" and manifest["commit"] == "0" * 40
    hub.files = None
    model, diffusion, info = load_pretrained("cifar10")
    assert diffusion.num_timesteps == 10 and info["preset"] == "digits"


def test_pages_verification_script_passes_on_a_faithful_copy(cache, tmp_path, monkeypatch):
    """tools/verify_pretrained.py (run by the Pages workflow) against a stand-in hub holding a
    small model; the relative difference it reports is float32 rounding."""
    import verify_pretrained

    from ddpm import GaussianDiffusion, linear_beta_schedule

    torch.manual_seed(0)
    ours = UNet.from_preset("digits")
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    repo = export(ours, GaussianDiffusion(linear_beta_schedule(1000)), tmp_path / "repo")
    serve(monkeypatch, repo, "cifar10", "pipeline")
    assert verify_pretrained.main(["cifar10"]) == 0
    assert verify_pretrained.verify("cifar10") < verify_pretrained.RTOL
