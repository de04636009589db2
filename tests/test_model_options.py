"""GPU-readiness loading options, checked for correctness on the CPU: channels_last, torch.compile,
SDPA attention, bf16 networks with float32 rewards. Their speed is a GPU's to measure
(docs/performance.md)."""

import pytest
import torch

import diffusers_tiny as tiny
from diffusers_tiny import one_thread  # noqa: F401 (an autouse fixture)
from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.models.registry import check_model_options


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.saved(tiny.sd_pipeline(), tmp_path_factory, "sd-options")


def denoise_and_decode(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *model.sample_shape, generator=generator) * 3
    with torch.no_grad():
        return model.decode(model.denoise(x, torch.tensor(3.0), model.encode_prompt("a cat")))


def unet_of(model):
    """The UNet2DConditionModel behind a loaded SD model's network call."""
    from diffusers import UNet2DConditionModel

    return next(cell.cell_contents for cell in model.network.__closure__
                if isinstance(cell.cell_contents, UNet2DConditionModel))


def test_channels_last_gives_the_same_output(folder):
    contiguous, channels_last = (tiny.load(folder, memory_format=f) for f in ("contiguous", "channels_last"))
    weight = channels_last.decoder.vae.decoder.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    torch.testing.assert_close(denoise_and_decode(channels_last), denoise_and_decode(contiguous),
                               rtol=1e-5, atol=1e-5)


def test_compile_wraps_the_network_without_running_it(folder):
    """Compiling happens at the first call: minutes for the tiny UNet on this shared CPU, so here
    only the wrapping is checked; the compiled output is checked where CUDA is."""
    assert unet_of(tiny.load(folder, compile="default"))._compiled_call_impl is not None
    assert unet_of(tiny.load(folder))._compiled_call_impl is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile's output is checked on CUDA only: "
                    "inductor took over 5 minutes to compile a 2-layer conv net on this loaded 2-core CPU")
def test_compiled_network_gives_the_same_output_on_cuda(folder):
    eager, compiled = (tiny.load(folder, device="cuda", compile=c) for c in ("off", "default"))
    torch.testing.assert_close(denoise_and_decode(compiled), denoise_and_decode(eager), rtol=1e-3, atol=1e-3)


def test_attention_runs_through_torchs_sdpa(folder):
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert set(map(type, unet_of(tiny.load(folder)).attn_processors.values())) == {AttnProcessor2_0}


def test_a_bf16_network_leaves_images_and_rewards_float32(folder):
    seen = []

    class Recorder:
        name, differentiable = "recorder", True

        def __call__(self, outputs, prompts):
            seen.append(outputs.dtype)
            return outputs.mean(dim=(1, 2, 3))

    model = tiny.load(folder, dtype="bf16")
    assert model.dtype == torch.bfloat16
    result = Dno(DnoConfig(steps=3, iterations=1)).run(RunContext(Problem(model, Recorder(), "a cat"), 0, Ledger()))
    assert set(seen) == {torch.float32} and result.output.dtype == torch.float32
    assert result.noises["z"].dtype == torch.float32 and result.reward == result.reward     # finite, not NaN


def test_bad_values_and_models_without_the_options_are_one_clear_error(folder):
    with pytest.raises(NoiseAlignError, match="unknown memory format 'nhwc'"):
        tiny.load(folder, memory_format="nhwc")
    with pytest.raises(NoiseAlignError, match="unknown compile mode 'fast'"):
        tiny.load(folder, compile="fast")
    with pytest.raises(NoiseAlignError, match="--memory-format does not apply to the digits model"):
        check_model_options("digits", memory_format="channels_last")
    with pytest.raises(NoiseAlignError, match="--compile does not apply to the gmm model"):
        check_model_options("gmm", compile="default")
