"""The ui on a diffusers pipeline folder (what `noisealign ui --model FOLDER` loads): a tiny
random-weight Stable Diffusion: choose, resume (reloading the folder), finish. Undo and the rest
are tested on a cheaper model in test_ui.py; a tiny UNet call costs about 0.3 s here."""

import json

import pytest
import torch

from noisealign.methods.base import Problem
from noisealign.methods.demon import DemonConfig
from noisealign.rewards.human import HumanChoice
from noisealign.ui import HumanSession, RunSpec

pytest.importorskip("diffusers")
import diffusers_tiny  # noqa: E402


def test_a_diffusers_pipeline_folder_works_like_any_model(tmp_path):
    folder = tmp_path / "tiny-sd"
    diffusers_tiny.sd_pipeline().save_pretrained(folder)
    spec = RunSpec(str(folder), scheduler="ddim")
    model = spec.load_model()
    model.default_steps = 4  # a short baseline: this test is about the ui, not the sampler
    config = DemonConfig(K=3, grid_points=4, lookahead="tweedie")
    problem = Problem(model, HumanChoice(), prompt="a cat", guidance=1.0)
    session = HumanSession.start(problem, config, seed=0, out=tmp_path / "run", spec=spec)
    assert session.candidates.shape == (3, 3, diffusers_tiny.SIZE, diffusers_tiny.SIZE)
    session.choose([0, 2])
    session.close()
    resumed = HumanSession.resume(session.run_dir)  # reloads the pipeline from its folder
    assert torch.equal(resumed.x, session.x) and resumed.replay_diverged_at is None
    resumed.finish()
    result = json.loads((session.run_dir / "result.json").read_text())
    assert result["model"] == str(folder) and result["config"]["model_options"]["scheduler"] == "ddim"
    assert result["prompt"] == "a cat" and result["config"]["guidance"] == 1.0
    assert (session.run_dir / "image.png").exists()
