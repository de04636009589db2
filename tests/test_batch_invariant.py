"""`--kernels batch-invariant`: on a CPU, seeds run as one batch give the bits of each seed run
alone, for every method, on the convolutional digits model and the tiny SD pipeline, where
torch's default kernels round a row differently at another batch size."""

from __future__ import annotations

import json

import pytest
import torch

import diffusers_tiny as tiny
from noisealign import batch_invariant, cli
from noisealign.align import align
from noisealign.batch import align_batch, seed_batch_size
from noisealign.errors import NoiseAlignError
from noisealign.generate import RunRequest, execute, prepare
from noisealign.methods.base import Problem
from noisealign.methods.registry import METHODS
from noisealign.models import registry
from noisealign.models.registry import check_model_options, load_model
from noisealign.rewards.registry import parse_reward


@pytest.fixture(autouse=True)
def torch_kernels_after():
    """Loading a model with kernels="batch-invariant" switches the process; give it back."""
    yield
    batch_invariant.disable()


@pytest.fixture
def invariant():
    batch_invariant.enable()


@pytest.fixture
def thread_count():
    """Gives the process its thread count back after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def rows_alone(function, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([function(x[i:i + 1]) for i in range(len(x))])


def input_gradients(loss, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d x of the batch, the same of each row alone, stacked)."""
    batch = x.detach().requires_grad_()
    loss(batch).backward()
    alone = []
    for i in range(len(x)):
        row = x.detach()[i:i + 1].requires_grad_()
        loss(row).backward()
        alone.append(row.grad)
    return batch.grad, torch.cat(alone)


@pytest.mark.parametrize("rows", [2, 5, 64, 70, 130])
def test_a_linear_layer_gives_a_row_the_same_bits_in_any_batch_forward_and_backward(invariant, rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 256)
    x = torch.randn(rows, 3, 128)                                       # a 3-D input folds into one product
    batched, alone = input_gradients(lambda x: linear(x).pow(2).sum(), x)
    with torch.no_grad():
        assert torch.equal(linear(x), rows_alone(linear, x))
    assert torch.equal(batched, alone)


def test_channels_last_group_norm_and_convolution_give_a_row_the_same_bits_in_any_batch(invariant):
    torch.manual_seed(0)
    norm, conv = torch.nn.GroupNorm(32, 64), torch.nn.Conv2d(64, 8, 3, padding=1)
    x = torch.randn(20, 64, 4, 4).to(memory_format=torch.channels_last)   # 20: NNPACK's batch, were it on
    with torch.no_grad():
        assert torch.equal(norm(x), rows_alone(norm, x))
        assert torch.equal(conv(x), rows_alone(conv, x))
        assert torch.equal(conv(x[0]), conv(x[:1])[0])                      # an unbatched input, as torch takes it


@pytest.mark.parametrize("threads", [1, 2])
def test_a_convolution_gives_a_sample_the_same_bits_in_any_batch_forward_and_backward(invariant, thread_count,
                                                                                     threads):
    """With two threads torch convolves a batch's samples in parallel, each on one thread, and a
    lone sample on both; the one-channel input's backward GEMM then rounded differently on an
    AMD EPYC host, until the override convolved one sample at a time."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 32, 3, padding=1)
    x = torch.randn(4, 1, 8, 8)
    weights = torch.randn(32, 8, 8)
    batched, alone = input_gradients(lambda x: (conv(x) * weights).sum(), x)
    with torch.no_grad():
        assert torch.equal(conv(x), rows_alone(conv, x))
    assert torch.equal(batched, alone)


def test_addmm_keeps_its_definition_and_disable_gives_torch_its_kernels_back():
    a, b, bias = torch.randn(5, 7), torch.randn(7, 3), torch.randn(5, 3)
    flags = (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled())
    batch_invariant.enable()
    batch_invariant.enable()                                                # idempotent
    assert batch_invariant.enabled() and not torch.backends.mkldnn.enabled
    expected = 0.5 * bias.double() + 2 * (a.double() @ b.double())
    assert torch.allclose(torch.addmm(bias, a, b, beta=0.5, alpha=2).double(), expected, atol=1e-5)
    nan = torch.full((3,), float("nan"))
    assert torch.equal(torch.addmm(nan, a, b, beta=0), torch.mm(a, b))      # beta 0 ignores the bias
    batch_invariant.disable()
    batch_invariant.disable()
    assert not batch_invariant.enabled()
    assert (torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()) == flags


SMALL = {   # method -> (config overrides, budget): each default method, small
    "best-of-n": ({}, 6),
    "demon": ({"K": 4}, 8),
    "fk": ({"particles": 4, "steps": 8}, 16),
    "svdd": ({"steps": 8}, 16),
    "beam": ({"steps": 8}, 16),
    "zo-search": ({"neighbours": 4, "steps": 8}, 9),
    "path-search": ({"steps": 10}, 16),
    "dno": ({"steps": 6}, 3),
    "guidance": ({"steps": 6}, 8),
    "reno": ({"steps": 4}, 3),
}


def method(name: str):
    overrides, budget = SMALL[name]
    return METHODS[name].from_config(overrides), budget


def assert_batch_equals_alone(problem: Problem, name: str, seeds=(0, 1, 2)) -> None:
    alone = [align(problem, method(name)[0], seed, method(name)[1]) for seed in seeds]
    batch = align_batch(problem, method(name)[0], list(seeds), method(name)[1])
    for a, b in zip(alone, batch, strict=True):
        assert torch.equal(a.result.output, b.result.output), name
        assert a.final_reward == b.final_reward
        assert (a.ledger.reward_queries, a.ledger.nfe) == (b.ledger.reward_queries, b.ledger.nfe)


@pytest.mark.parametrize("name", list(SMALL))
def test_every_method_batched_on_digits_gives_each_seed_alone_bit_for_bit(name):
    model = load_model("digits", kernels="batch-invariant")
    assert batch_invariant.enabled()
    assert_batch_equals_alone(Problem(model, parse_reward("digit:3"), "3"), name)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny.saved(tiny.sd_pipeline(), tmp_path_factory, "sd-batch-invariant")


@pytest.mark.parametrize("name", ["demon", "dno", "fk"])
def test_the_tiny_sd_pipeline_batched_gives_each_seed_alone_bit_for_bit(sd_folder, thread_count, name):
    """Conv, attention, group norm on channels-last tensors, the VAE decode and, for dno, the
    backward pass through all of them."""
    torch.set_num_threads(1)
    model = load_model(sd_folder, height=32, width=32, kernels="batch-invariant")
    assert_batch_equals_alone(Problem(model, parse_reward("brightness"), "a cat"), name, seeds=(0, 1))


def test_the_cpu_default_batches_every_seed_only_under_batch_invariant_kernels():
    assert seed_batch_size(None, 8, "cpu") == 1 and seed_batch_size(None, 8, "cpu", "default") == 1
    assert seed_batch_size(None, 8, "cpu", "batch-invariant") == 8
    assert seed_batch_size(2, 8, "cpu", "batch-invariant") == 2


def test_a_grid_under_batch_invariant_kernels_runs_as_one_batch_and_equals_its_seeds_alone(tmp_path):
    def grid(seed_batch, name):
        request = RunRequest(model="digits", method="demon", method_config=METHODS["demon"].config_type(K=4),
                             prompt="3", budget=8, seed=0, grid=3, seed_batch=seed_batch, out=str(tmp_path / name),
                             model_options={"kernels": "batch-invariant"})
        return execute(prepare(request))
    batched, alone = grid(None, "batched"), grid(1, "alone")
    assert batched.record["config"]["seed_batch"] == 3 and alone.record["config"]["seed_batch"] == 1
    assert batched.record["environment"]["batch_invariant_kernels"] is True
    assert batched.record["config"]["model_options"] == {"kernels": "batch-invariant"}
    for b, a in zip(batched.seeds, alone.seeds, strict=True):
        assert torch.equal(b.aligned.result.output, a.aligned.result.output)
    assert (batched.folder / "image.png").read_bytes() == (alone.folder / "image.png").read_bytes()


def test_a_batch_invariant_run_regenerates_under_its_own_kernels(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["generate", "--quiet", "--out", str(out), "--method", "dno", "--steps", "4", "--budget", "3",
                     "--prompt", "3", "--grid", "2", "--kernels", "batch-invariant"]) == 0
    assert json.loads((out / "result.json").read_text())["config"]["seed_batch"] == 2
    batch_invariant.disable()                                              # a fresh process's kernels
    assert cli.main(["regenerate", str(out)]) == 0 and "identical" in capsys.readouterr().out
    assert batch_invariant.enabled()                                       # the run's own, from its config


def test_batch_invariant_kernels_on_a_gpu_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry, "check_device", lambda device: None)       # as on a machine with CUDA
    with pytest.raises(NoiseAlignError, match="runs on the CPU only, not on --device cuda"):
        check_model_options("digits", device="cuda", kernels="batch-invariant")
    with pytest.raises(NoiseAlignError, match="--kernels 'fast' is not one of default, batch-invariant"):
        check_model_options("gmm", kernels="fast")
    out = tmp_path / "run"
    code = cli.main(["generate", "--quiet", "--out", str(out), "--device", "cuda", "--kernels", "batch-invariant"])
    err = capsys.readouterr().err
    assert code == 2 and "CPU only" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert not batch_invariant.enabled()


TWO_METHODS = """method = "demon"
budgets = [8]
options = { K = 4 }

[[methods]]
method = "dno"
budgets = [3]
options = { steps = 4 }"""


def test_a_sweep_under_batch_invariant_kernels_batches_its_seeds_and_equals_the_sweep_run_alone(tmp_path, capsys):
    """`sweep --kernels batch-invariant`: every seed as one batch by default on the CPU (Demon in
    lockstep, DNO's cells at one align_batch); every line and noise equal the sweep run one seed
    at a time."""
    from test_sweep import assert_same_sweep, sweep, tiny

    spec = tiny(tmp_path, seeds="[0, 1, 2]", method=TWO_METHODS)
    assert sweep(spec, "--out", tmp_path / "batched", "--kernels", "batch-invariant") == 0
    assert "6 cells; local executor, 1 worker(s), seeds 3 at a time" in capsys.readouterr().err
    assert sweep(spec, "--out", tmp_path / "alone", "--quiet", "--kernels", "batch-invariant", "--seed-batch", "1") == 0
    for line in assert_same_sweep(tmp_path / "batched", tmp_path / "alone", cells=6):
        result = json.loads((tmp_path / "batched" / line["run_dir"] / "result.json").read_text())
        assert result["environment"]["batch_invariant_kernels"] is True
