"""Find a diffusers pipeline (hub id or local folder), recognise its family, load it as a DiffusionModel.

Detection reads only JSON: model_index.json's pipeline class and the network's config give
the family's spec (diffusers_families.py), scheduler/scheduler_config.json the prediction
type (epsilon / v) and the noise schedule. A hub id is first resolved to its folder in the
Hugging Face cache (HF_HOME), so hub ids and local folders go through one loading path.
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
from .diffusers_families import FamilySpec, families_of, is_few_step, matching_family
from .speed import COMPILE_MODES, MEMORY_FORMATS, TracedNetwork, apply_speed_options

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class PipelineInfo:
    """What the JSON configs of a pipeline folder say about it."""

    folder: Path
    spec: FamilySpec
    scheduler_config: dict
    network_config: dict       # unet/ or transformer/config.json
    vae_config: dict
    few_step: bool

    @property
    def defaults(self) -> FamilyDefaults:
        return self.spec.defaults_for(self.few_step)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: the VAE halves the size in every block but the last."""
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def token_side(self) -> int:
        """Latent cells per network token side: the transformer's patch, times FLUX's packing."""
        return self.network_config.get("patch_size", 1) * self.spec.packing


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


def inspect_pipeline(name_or_path: str, few_step: bool | None = None) -> PipelineInfo:
    """Read model_index.json and the network, scheduler and VAE configs; raise a one-line error
    for what we cannot run. few_step: whether it is a few-step distillation (None: its spec's
    word, or "turbo" in its name)."""
    folder = resolve_folder(name_or_path)
    index = _read_json(folder / "model_index.json", name_or_path)
    specs = families_of(index.get("_class_name", ""), name_or_path)
    network_config = _read_json(folder / specs[0].network / "config.json", name_or_path)
    spec = matching_family(specs, network_config)
    return PipelineInfo(
        folder, spec,
        scheduler_config=_read_json(folder / "scheduler" / "scheduler_config.json", name_or_path),
        network_config=network_config,
        vae_config=_read_json(folder / "vae" / "config.json", name_or_path),
        few_step=is_few_step(spec, name_or_path, few_step))


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
                         scheduler: str | None = None, few_step: bool | None = None,
                         memory_format: str = "contiguous", compile: str = "off"):
    """A diffusers pipeline of a supported family (diffusers_families.FAMILIES) as a DiffusionModel.

    Args:
        name_or_path: hub id (e.g. "stabilityai/sd-turbo") or a folder written by save_pretrained.
        device, dtype: where and in which precision ("fp32", "fp16", "bf16") the networks run;
            the sampler's state stays float32.
        height, width: image size in pixels (default: the model's native size).
        scheduler: the diffusers scheduler whose grid and initial noise the plain sampler
            reproduces: "ddim" or "euler" for VP families, "euler" (flow matching) for SD3,
            SD3.5 and FLUX, "karras" for any. Default: "euler" if the checkpoint ships an
            Euler scheduler (SDXL, Turbo) or is a flow model, else "ddim".
        few_step: whether it is a few-step distillation (Turbo, schnell), which sets its
            defaults and Demon's consistency look-ahead. None: FLUX.1-schnell's spec says so,
            and "turbo" in the name marks SD / SDXL / SD3 Turbo models, whose configs are
            their base models'.
        memory_format, compile: the speed options of `speed` (contiguous / channels_last;
            off, a torch.compile mode, or "trace": torch.jit.trace per input signature).
    """
    check_choice("dtype", dtype, tuple(DTYPES), name_or_path)
    check_choice("memory format", memory_format, tuple(MEMORY_FORMATS), name_or_path)
    check_choice("compile mode", compile, COMPILE_MODES, name_or_path)
    info = inspect_pipeline(name_or_path, few_step)  # options are checked before the (slow) weight loading
    try:
        return _load(info, name_or_path, device, dtype, height, width, scheduler, memory_format, compile)
    except torch.OutOfMemoryError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError, AttributeError) as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise NoiseAlignError(f"cannot load the diffusers pipeline {name_or_path} ({type(error).__name__}: "
                              f"{detail}); its configs or weights look damaged: re-download or re-save it") from None


def _load(info: PipelineInfo, name_or_path: str, device: str, dtype: str, height: int | None, width: int | None,
          scheduler: str | None, memory_format: str, compile: str):
    from .diffusers_attention import call_processors_directly
    from .diffusers_flow import FLOW_SCHEDULERS, FlowDiffusersModel
    from .diffusers_vp import VP_SCHEDULERS, VPDiffusersModel

    spec = info.spec
    scheduler = scheduler or ("euler" if spec.flow else _native_vp_scheduler(info))
    check_choice("scheduler", scheduler, FLOW_SCHEDULERS if spec.flow else VP_SCHEDULERS, name_or_path)
    if info.network_config.get("time_cond_proj_dim") is not None:
        raise NoiseAlignError(f"{name_or_path} is a guidance-embedded (LCM) UNet, which noisealign does not run "
                              "yet; use a Turbo model for few-step sampling")
    shape = _latent_shape(info, height, width, name_or_path)
    pipe = _load_pipeline(info, name_or_path, DTYPES[dtype], device)
    network = getattr(pipe, spec.network)
    call_processors_directly(network, pipe.vae)
    apply_speed_options(network, pipe.vae, memory_format, compile)
    height, width = shape[1] * info.vae_factor, shape[2] * info.vae_factor
    network_call = spec.network_call(network)
    if compile == "trace":
        network_call = TracedNetwork(network_call)
    common = dict(name=name_or_path, network=network_call, encoder=spec.encoder(pipe, height, width),
                  decoder=LatentDecoder(pipe.vae, shift=spec.vae_shift, latents_stats=spec.vae_latents_stats),
                  sample_shape=shape, defaults=info.defaults, device=network.device, dtype=network.dtype,
                  few_step=info.few_step, guidance_kind=spec.guidance, scheduler_config=info.scheduler_config,
                  scheduler=scheduler)
    if spec.flow:
        tokens = (shape[1] // info.token_side) * (shape[2] // info.token_side)
        return FlowDiffusersModel(**common, image_tokens=tokens, timestep_scale=spec.timestep_scale,
                                  linspace_times=spec.linspace_times)
    return VPDiffusersModel(**common)


def _native_vp_scheduler(info: PipelineInfo) -> str:
    return "euler" if info.scheduler_config.get("_class_name", "").startswith("Euler") else "ddim"


def _load_pipeline(info: PipelineInfo, name: str, torch_dtype: torch.dtype, device: str):
    """The pipeline's components on `device`, frozen (no parameter gradients: DNO only needs the noise's)."""
    diffusers = diffusers_module()
    spec = info.spec
    extra = {"safety_checker": None, "requires_safety_checker": False} if spec.safety_checker else {}
    try:
        with warnings.catch_warnings():  # newer diffusers rename torch_dtype to dtype; older lack dtype
            warnings.simplefilter("ignore", FutureWarning)
            pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(info.folder, torch_dtype=torch_dtype,
                                                                           **extra)
    except (OSError, ValueError) as error:
        message = f"cannot load the pipeline {name!r} from {info.folder}: {error}".splitlines()[0]
        raise NoiseAlignError(message) from error
    missing = [component for component in spec.text_encoders if getattr(pipe, component, None) is None]
    if missing:
        raise NoiseAlignError(f"{name} is a {spec.name} pipeline without its {', '.join(missing)}, which its prompt "
                              "encoding needs; re-download or re-save the full pipeline")
    try:
        pipe.to(device)
    except (RuntimeError, AssertionError) as error:
        raise NoiseAlignError(f"cannot move {name} to device {device!r}: {error}".splitlines()[0]) from error
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()
    # from_pretrained leaves some networks (diffusers 0.42: SD3's transformer) in the file's dtype.
    network = getattr(pipe, spec.network)
    if network.dtype != torch_dtype:
        network.to(torch_dtype)
    return pipe


def _latent_shape(info: PipelineInfo, height: int | None, width: int | None, name: str) -> tuple[int, int, int]:
    """(channels, height / f, width / f) of the (unpacked) latent; the size defaults to the network's
    native one. UNets need sides divisible by 8 pixels, transformers by whole tokens."""
    factor, config, spec = info.vae_factor, info.network_config, info.spec
    side = config.get("sample_size", spec.default_size)
    height, width = height or side * factor, width or side * factor
    multiple = 8 if spec.network == "unet" else factor * info.token_side
    if height % multiple or width % multiple:
        raise NoiseAlignError(f"{name} needs --height and --width divisible by {multiple}, got {height}x{width}")
    return config["in_channels"] // spec.packing ** 2, height // factor, width // factor
