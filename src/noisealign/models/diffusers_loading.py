"""Find a diffusers pipeline (hub id or local folder), recognise its family, load it as a DiffusionModel.

Detection reads only JSON: model_index.json's pipeline class gives the family
(StableDiffusionPipeline: SD 1.x / 2.x, StableDiffusionXLPipeline: SDXL,
StableDiffusion3Pipeline: SD3), scheduler/scheduler_config.json the prediction type
(epsilon / v) and the noise schedule; "turbo" in the name marks a few-step distillation.
A hub id is first resolved to its folder in the Hugging Face cache (HF_HOME), so hub ids
and local folders go through one loading path.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import NoiseAlignError
from .diffusers_base import FamilyDefaults, LatentDecoder, check_choice

FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
}
DEFAULTS = {  # diffusers' pipeline defaults for each family
    "sd": FamilyDefaults(steps=50, guidance=7.5),
    "sdxl": FamilyDefaults(steps=50, guidance=5.0),
    "sd3": FamilyDefaults(steps=28, guidance=7.0),
    # Turbo: few steps without guidance (diffusers' guidance_scale=0.0 means no CFG, our 1.0).
    "sd-turbo": FamilyDefaults(steps=1, guidance=1.0),
    "sdxl-turbo": FamilyDefaults(steps=1, guidance=1.0),
    "sd3-turbo": FamilyDefaults(steps=4, guidance=1.0),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class PipelineInfo:
    """What the JSON configs of a pipeline folder say about it."""

    folder: Path
    family: str                # "sd", "sdxl" or "sd3"
    pipeline_class: str
    scheduler_config: dict
    network_config: dict       # unet/ or transformer/config.json
    vae_config: dict
    few_step: bool

    @property
    def defaults(self) -> FamilyDefaults:
        return DEFAULTS[self.family + ("-turbo" if self.few_step else "")]

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: the VAE halves the size in every block but the last."""
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)


def resolve_folder(name_or_path: str) -> Path:
    """A local pipeline folder, or the cached (else downloaded) snapshot of a hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.suffix in (".safetensors", ".ckpt"):
        raise NoiseAlignError(f"{name_or_path} is a single-file checkpoint; convert it to a diffusers folder "
                              "(StableDiffusionPipeline.from_single_file(...).save_pretrained(folder)) "
                              "and pass the folder")
    if not HUB_ID.match(name_or_path):
        raise NoiseAlignError(f"unknown model {name_or_path!r}: not a registered name (digits, gmm), "
                              "a local pipeline folder or a hub id such as stabilityai/sd-turbo")
    DiffusionPipeline = diffusers_module().DiffusionPipeline
    from huggingface_hub.constants import is_offline_mode

    reason = "not in the cache"
    for local_only in (True, False):
        if not local_only and is_offline_mode():
            break
        try:
            return Path(DiffusionPipeline.download(name_or_path, local_files_only=local_only))
        except Exception as error:  # the hub client raises many kinds (not cached, offline, not found, gated)
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise missing_weights(name_or_path, reason)


def diffusers_module():
    """diffusers, imported on first use (it is an optional dependency, and slow to import)."""
    try:
        import diffusers
    except ImportError as error:
        raise NoiseAlignError(f"diffusers pipelines need the sd extra: pip install 'noisealign[sd]' "
                              f"({error})") from error
    return diffusers


def missing_weights(name: str, reason: str) -> NoiseAlignError:
    return NoiseAlignError(
        f"cannot find the diffusers pipeline {name!r} in the Hugging Face cache and cannot download it "
        f"({reason}); pre-download it where HF_HOME points (hf download {name}) or pass a local folder")


def inspect_pipeline(name_or_path: str) -> PipelineInfo:
    """Read model_index.json and the scheduler config; raise a one-line error for what we cannot run."""
    folder = resolve_folder(name_or_path)
    index = _read_json(folder / "model_index.json", name_or_path)
    pipeline_class = index.get("_class_name", "")
    if pipeline_class not in FAMILIES:
        known = ", ".join(FAMILIES)
        raise NoiseAlignError(f"{name_or_path} is a {pipeline_class or 'unknown'} pipeline; noisealign runs {known}")
    family = FAMILIES[pipeline_class]
    network = "transformer" if family == "sd3" else "unet"
    return PipelineInfo(
        folder, family, pipeline_class,
        scheduler_config=_read_json(folder / "scheduler" / "scheduler_config.json", name_or_path),
        network_config=_read_json(folder / network / "config.json", name_or_path),
        vae_config=_read_json(folder / "vae" / "config.json", name_or_path),
        few_step="turbo" in Path(name_or_path).name.lower())


def _read_json(path: Path, name: str) -> dict:
    if not path.is_file():
        raise NoiseAlignError(f"{name} has no {path.parent.name}/{path.name}: not a diffusers pipeline folder "
                              "(a folder written by save_pretrained or downloaded from the hub)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NoiseAlignError(f"{name}: {path.parent.name}/{path.name} is not valid JSON ({error}); "
                              "re-download or re-save the pipeline") from None
    if not isinstance(data, dict):
        raise NoiseAlignError(f"{name}: {path.parent.name}/{path.name} is not a JSON object; "
                              "re-download or re-save the pipeline")
    return data


def load_diffusers_model(name_or_path: str, device: str = "cpu", dtype: str = "fp32",
                         height: int | None = None, width: int | None = None,
                         scheduler: str | None = None):
    """A Stable Diffusion family pipeline as a DiffusionModel.

    Args:
        name_or_path: hub id (e.g. "stabilityai/sd-turbo") or a folder written by save_pretrained.
        device, dtype: where and in which precision ("fp32", "fp16", "bf16") the networks run;
            the sampler's state stays float32.
        height, width: image size in pixels (default: the model's native size).
        scheduler: the diffusers scheduler whose grid and initial noise the plain sampler
            reproduces: "ddim" or "euler" for SD / SDXL, "euler" (flow matching) for SD3,
            "karras" for either. Default: "euler" if the checkpoint ships an Euler scheduler
            (SDXL, Turbo) or is SD3, else "ddim".
    """
    check_choice("dtype", dtype, tuple(DTYPES), name_or_path)
    info = inspect_pipeline(name_or_path)  # options are checked before the (slow) weight loading
    try:
        return _load(info, name_or_path, device, dtype, height, width, scheduler)
    except torch.OutOfMemoryError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError, AttributeError) as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise NoiseAlignError(f"cannot load the diffusers pipeline {name_or_path} ({type(error).__name__}: "
                              f"{detail}); its configs or weights look damaged: re-download or re-save it") from None


def _load(info: PipelineInfo, name_or_path: str, device: str, dtype: str, height: int | None, width: int | None,
          scheduler: str | None):
    from .diffusers_flow import FLOW_SCHEDULERS
    from .diffusers_vp import VP_SCHEDULERS

    flow = info.family == "sd3"
    scheduler = scheduler or ("euler" if flow else _native_vp_scheduler(info))
    check_choice("scheduler", scheduler, FLOW_SCHEDULERS if flow else VP_SCHEDULERS, name_or_path)
    if info.network_config.get("time_cond_proj_dim") is not None:
        raise NoiseAlignError(f"{name_or_path} is a guidance-embedded (LCM) UNet, which noisealign does not run "
                              "yet; use a Turbo model for few-step sampling")
    patch = info.network_config.get("patch_size", 1) if flow else 1
    shape = _latent_shape(info, height, width, info.vae_factor * patch if flow else 8, name_or_path)
    pipe = _load_pipeline(info, name_or_path, DTYPES[dtype], device)
    if flow:
        return _flow_model(pipe, info, name_or_path, shape, scheduler, tokens=(shape[1] // patch) * (shape[2] // patch))
    return _vp_model(pipe, info, name_or_path, shape, scheduler)


def _native_vp_scheduler(info: PipelineInfo) -> str:
    return "euler" if info.scheduler_config.get("_class_name", "").startswith("Euler") else "ddim"


def _load_pipeline(info: PipelineInfo, name: str, torch_dtype: torch.dtype, device: str):
    """The pipeline's components on `device`, frozen (no parameter gradients: DNO only needs the noise's)."""
    diffusers = diffusers_module()
    extra = {"safety_checker": None, "requires_safety_checker": False} if info.family == "sd" else {}
    try:
        with warnings.catch_warnings():  # newer diffusers rename torch_dtype to dtype; older lack dtype
            warnings.simplefilter("ignore", FutureWarning)
            pipe = getattr(diffusers, info.pipeline_class).from_pretrained(info.folder, torch_dtype=torch_dtype,
                                                                           **extra)
    except (OSError, ValueError) as error:
        message = f"cannot load the pipeline {name!r} from {info.folder}: {error}".splitlines()[0]
        raise NoiseAlignError(message) from error
    try:
        pipe.to(device)
    except (RuntimeError, AssertionError) as error:
        raise NoiseAlignError(f"cannot move {name} to device {device!r}: {error}".splitlines()[0]) from error
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()
    # from_pretrained leaves some networks (diffusers 0.42: SD3's transformer) in the file's dtype.
    network = pipe.transformer if info.family == "sd3" else pipe.unet
    if network.dtype != torch_dtype:
        network.to(torch_dtype)
    return pipe


def _latent_shape(info: PipelineInfo, height: int | None, width: int | None, multiple: int,
                  name: str) -> tuple[int, int, int]:
    """(channels, height / f, width / f) of the latent; the size defaults to the network's native one."""
    factor, config = info.vae_factor, info.network_config
    height = height or config["sample_size"] * factor
    width = width or config["sample_size"] * factor
    if height % multiple or width % multiple:
        raise NoiseAlignError(f"{name} needs --height and --width divisible by {multiple}, got {height}x{width}")
    return config["in_channels"], height // factor, width // factor


def _vp_model(pipe, info: PipelineInfo, name: str, shape: tuple[int, ...], scheduler: str):
    from .diffusers_text import sd_encoder, sdxl_encoder
    from .diffusers_vp import VPDiffusersModel, unet_network

    height, width = shape[1] * info.vae_factor, shape[2] * info.vae_factor
    encoder = sdxl_encoder(pipe, height, width) if info.family == "sdxl" else sd_encoder(pipe)
    return VPDiffusersModel(name, unet_network(pipe.unet), encoder, LatentDecoder(pipe.vae), shape,
                            info.defaults, pipe.unet.device, pipe.unet.dtype, few_step=info.few_step,
                            scheduler_config=info.scheduler_config, scheduler=scheduler)


def _flow_model(pipe, info: PipelineInfo, name: str, shape: tuple[int, ...], scheduler: str, tokens: int):
    from .diffusers_flow import FlowDiffusersModel, sd3_network
    from .diffusers_text import sd3_encoder

    return FlowDiffusersModel(name, sd3_network(pipe.transformer), sd3_encoder(pipe), LatentDecoder(pipe.vae),
                              shape, info.defaults, pipe.transformer.device, pipe.transformer.dtype,
                              few_step=info.few_step, scheduler_config=info.scheduler_config,
                              scheduler=scheduler, image_tokens=tokens)
