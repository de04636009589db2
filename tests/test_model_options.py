"""GPU-readiness loading options, checked for correctness on the CPU: channels_last, torch.compile,
torch.jit.trace, SDPA attention, bf16 networks with float32 rewards. Their speed is a GPU's to measure
(docs/performance.md)."""

import warnings

import pytest
import torch

import diffusers_tiny as tiny
from diffusers_tiny import one_thread  # noqa: F401 (an autouse fixture)
from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.models.registry import check_model_options
from noisealign.models.speed import TracedNetwork


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

    network = getattr(model.network, "eager", model.network)     # compile="trace" wraps the call
    return next(cell.cell_contents for cell in network.__closure__
                if isinstance(cell.cell_contents, UNet2DConditionModel))


def test_channels_last_gives_the_same_output(folder):
    contiguous, channels_last = (tiny.load(folder, memory_format=f) for f in ("contiguous", "channels_last"))
    weight = channels_last.decoder.vae.decoder.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    torch.testing.assert_close(denoise_and_decode(channels_last), denoise_and_decode(contiguous),
                               rtol=1e-5, atol=1e-5)


def test_attention_calls_its_processor_directly_with_the_same_bits_and_diffusers_path_for_extra_kwargs(folder):
    from diffusers.models.attention_processor import Attention

    from noisealign.models.diffusers_attention import DirectAttention

    direct = tiny.load(folder)
    attentions = [m for m in unet_of(direct).modules() if isinstance(m, Attention)]
    assert attentions and all(type(m) is DirectAttention for m in attentions)
    assert all(type(m) is DirectAttention for m in direct.decoder.vae.modules() if isinstance(m, Attention))
    expected = denoise_and_decode(direct), denoiser_gradient(direct)
    for module in attentions + [m for m in direct.decoder.vae.modules() if isinstance(m, Attention)]:
        module.__class__ = Attention                                         # diffusers' own forward
    assert torch.equal(denoise_and_decode(direct), expected[0]) and torch.equal(denoiser_gradient(direct), expected[1])
    attention = attentions[0]
    attention.__class__ = DirectAttention
    hidden = torch.randn(1, 4, attention.query_dim)
    with torch.no_grad():    # an extra keyword argument takes diffusers' path, which drops it with a logged warning
        assert torch.equal(attention(hidden, unknown=1), Attention.forward(attention, hidden))


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


def denoiser_gradient(model, batch: int = 2) -> torch.Tensor:
    """d/dx of a scalar of the denoiser output, as DNO back-propagates through the network."""
    x = (torch.randn(batch, *model.sample_shape, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
    out = model.denoise(x, torch.tensor(3.0), model.encode_prompt("a cat"))
    return torch.autograd.grad(out.square().mean(), x)[0]


def test_trace_gives_the_same_output_decode_and_gradient_as_eager(folder):
    """The trace replays the same kernels: bit-identical outputs and gradients on this CPU."""
    eager, traced = tiny.load(folder), tiny.load(folder, compile="trace")
    assert isinstance(traced.network, TracedNetwork) and unet_of(traced)._compiled_call_impl is None
    for _ in range(2):  # the trace's first call records it, the second replays it
        assert torch.equal(denoise_and_decode(traced), denoise_and_decode(eager))
        assert torch.equal(denoiser_gradient(traced), denoiser_gradient(eager))


def test_trace_is_cached_per_input_signature_and_runs_under_inference_mode(folder):
    traced = tiny.load(folder, compile="trace")
    cond, sigma = traced.encode_prompt("a cat"), torch.tensor(3.0)
    for batch in (2, 2, 3, 3):
        with torch.no_grad():
            traced.denoise(torch.randn(batch, *traced.sample_shape), sigma, cond)
    assert len(traced.network.traces) == 2      # one per batch size
    x = torch.randn(2, *traced.sample_shape)
    with torch.inference_mode():
        out = traced.denoise(x, sigma, cond)
    with torch.no_grad():
        assert torch.equal(out, tiny.load(folder).denoise(x, sigma, cond))
    assert len(traced.network.traces) == 2


class Brightness:
    name, differentiable = "brightness", True

    def __call__(self, outputs, prompts):
        return outputs.mean(dim=(1, 2, 3))


def test_dno_runs_the_same_through_a_traced_network(folder):
    """DNO back-propagates through the traced network, checkpointed or not, to the same noise."""
    runs = []
    for compile in ("off", "trace"):
        model = tiny.load(folder, compile=compile)
        for checkpointing in ("all", "none"):
            config = DnoConfig(steps=3, iterations=2, checkpointing=checkpointing, gamma=0.0)
            problem = Problem(model, Brightness(), "a cat")
            runs.append(Dno(config).run(RunContext(problem, 0, Ledger())).noises["z"])
    assert all(torch.equal(run, runs[0]) for run in runs[1:])


def test_a_network_that_cannot_be_traced_runs_eagerly_after_one_warning():
    def network(x, timestep, cond):
        if torch.jit.is_tracing():
            raise RuntimeError("untraceable")
        return x * timestep + cond["c"]

    traced, x, t, cond = TracedNetwork(network), torch.ones(2, 3), torch.tensor(2.0), {"c": torch.ones(1, 3)}
    with pytest.warns(RuntimeWarning, match="cannot trace the network.*untraceable.*running it eagerly"):
        assert torch.equal(traced(x, t, cond), network(x, t, cond))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(traced(x, t, cond), network(x, t, cond))


def test_trace_runs_a_flux_transformer_as_eager(tmp_path_factory):
    """Another family (FLUX: packed tokens, position ids, guidance embedding), with gradients first
    and then under inference_mode (which failed with TorchScript's optimizing executor)."""
    flux = tiny.saved(tiny.flux_pipeline(), tmp_path_factory, "flux-trace")
    eager, traced = tiny.load(flux), tiny.load(flux, compile="trace")
    assert torch.equal(denoiser_gradient(traced), denoiser_gradient(eager))
    x, sigma, cond = torch.randn(2, *eager.sample_shape), torch.tensor(0.5), eager.encode_prompt("a cat")
    with torch.inference_mode():
        assert torch.equal(traced.denoise(x, sigma, cond), eager.denoise(x, sigma, cond))
    assert all(isinstance(trace, torch.jit.ScriptFunction) for trace in traced.network.traces.values())


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
