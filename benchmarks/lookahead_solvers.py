"""Demon's ODE look-ahead: error of each solver against its model evaluations; and its SDE integrator.

Order: on the gmm from sigma_max, each solver's error against a 1000-step Heun solve of the same
PF-ODE as its grid is refined, and the log-log slope against NFE (Euler 1, Heun 2, 2M 2, UniPC 3).

Look-ahead (`engine.ode_lookahead`, Karras sub-grid from the candidate's sigma to sigma_min, then
the step into 0), for solver in heun / euler / dpmpp-2m / unipc and several `max_steps`:
- gmm: the exact mixture denoiser; states drawn from the exact noisy marginal at each sigma;
  error = mean distance of c(x) to a 1000-step Heun solve of the same ODE.
- digits (reward digit:3) and a tiny random SD 1.x pipeline (UNet 32/64 channels, 32 px, CFG 2,
  a fixed random linear reward of the decoded image): Demon's candidates (K beta-SDE steps from
  a beta-SDE trajectory of the seed); error = mean |r(c) - r(c_ref)| against a 200-step Heun
  solve, also over tau = the std of the reference rewards of the step's candidates (what the
  adaptive tanh demon divides by).
The look-ahead sigmas are those of Demon's steps 1, 6, 11 and 16 on the grid Demon fits to a
budget of 256 (`fit_grid`: K 16, 23 points on each model); NFE is the look-ahead's model
evaluations per candidate at the first step (sigma_1, the longest) and averaged over the four.

SDE integrator (Euler-Maruyama, Demon's, vs the official code's stochastic Heun) at equal
model evaluations:
- gaussian: data N(0, 1); the beta-SDE's exact marginal is N(0, 1 + sigma^2), and each
  integrator step is linear, so the state's variance is propagated exactly (no sampling):
  std of the state over the exact std, at sigma_min and the worst point of the path.
- gmm: 20,000 samples of the whole beta-SDE (Demon's beta 0.018) to 0; error of the mean and
  of the per-coordinate variance against the exact mixture, and the same for 20,000 exact draws
  (the Monte Carlo floor).

    python benchmarks/lookahead_solvers.py                 # all sections (~10 min on 1 CPU thread)
    python benchmarks/lookahead_solvers.py gmm gaussian    # some of them: printed, not saved
All sections write benchmarks/results/lookahead_solvers.csv (look-ahead), lookahead_solvers_order.csv
and lookahead_solvers_sde.csv.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from noisealign.engine import (beta_sde_step, karras_sigmas, ode_evaluations, ode_lookahead,  # noqa: E402
                               sample_beta_sde, sample_ode)
from noisealign.engine.lookahead import ode_lookahead_evaluations  # noqa: E402
from noisealign.methods.demon import DemonConfig, demon_steps_on, fit_grid  # noqa: E402
from noisealign.models.base import make_denoiser  # noqa: E402
from noisealign.models.gmm import GaussianMixture  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SOLVER_STEPS = {"heun": (3, 5, 8, 10, 15, 20, 40), "euler": (10, 20, 40, 80),
                "dpmpp-2m": (3, 5, 8, 10, 12, 15, 20, 25, 30, 40), "unipc": (3, 5, 8, 10, 12, 15, 20, 25, 30, 40)}
DEMON_STEPS = (0, 5, 10, 15)          # the demon steps whose look-aheads are measured
BUDGET = 256
K = 8                                 # candidates per seed and step


@dataclass
class Setting:
    """A model seen by Demon: its denoiser, the look-ahead sigmas, and how an estimate is scored."""

    name: str
    denoiser: Callable[[Tensor, float], Tensor]
    sigma_min: float
    sigma_max: float
    sigmas: list[float]               # the look-ahead start sigma of each measured demon step
    states: list[Tensor]              # the candidates at each of them
    score: Callable[[Tensor], Tensor] | None   # None: the state itself is compared
    reference_steps: int


def demon_grid(model) -> tuple[Tensor, float]:
    """(grid, beta) of Demon's default plan for BUDGET on `model`."""
    config = fit_grid(DemonConfig(), model, BUDGET)
    grid = karras_sigmas(config.grid_points, model.sigma_min, model.sigma_max)
    steps = demon_steps_on(config.grid_points, model, config.ode_after_for(model))
    assert steps >= DEMON_STEPS[-1] + 1, steps
    return grid, config.beta_for(model)


def candidates_along_trajectory(model, denoiser, seeds: int) -> tuple[list[float], list[Tensor]]:
    """Demon's candidates at DEMON_STEPS: a beta-SDE trajectory per seed, then K beta-SDE steps from it."""
    grid, beta = demon_grid(model)
    sigmas, states = [], []
    for step in DEMON_STEPS:
        chunks = []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(1000 + seed)
            shape = (1, *model.sample_shape)
            x = model.prior_std(float(grid[0])) * torch.randn(shape, generator=g)
            noises = [torch.randn(shape, generator=g) for _ in range(step)]
            x = sample_beta_sde(denoiser, x, grid[:step + 1], noises, beta)
            sigma, sigma_next = float(grid[step]), float(grid[step + 1])
            z = torch.randn((K, *model.sample_shape), generator=g)
            chunks.append(beta_sde_step(x, sigma, sigma_next, denoiser(x, sigma), z, beta))
        sigmas.append(float(grid[step + 1]))
        states.append(torch.cat(chunks))
    return sigmas, states


def gmm_setting() -> Setting:
    model = GaussianMixture.default()
    grid, _ = demon_grid(model)
    sigmas = [float(grid[step + 1]) for step in DEMON_STEPS]
    g = torch.Generator().manual_seed(0)
    states = [model.sample_exact(256, g) + sigma * torch.randn(256, 2, generator=g, dtype=torch.float64)
              for sigma in sigmas]
    denoiser = make_denoiser(model, "")
    return Setting("gmm", denoiser, model.sigma_min, model.sigma_max, sigmas, states, None, 1000)


def digits_setting() -> Setting:
    from noisealign.models.registry import load_model
    from noisealign.rewards.registry import parse_reward

    model, reward = load_model("digits"), parse_reward("digit:3")
    denoiser = make_denoiser(model, "")
    with torch.inference_mode():
        sigmas, states = candidates_along_trajectory(model, denoiser, seeds=4)
    return Setting("digits", denoiser, model.sigma_min, model.sigma_max, sigmas, states,
                   lambda x: reward(model.decode(x), [""] * len(x)), 200)


def sd_setting() -> Setting:
    import diffusers_tiny as tiny

    from noisealign.models.diffusers_loading import load_diffusers_model

    with tempfile.TemporaryDirectory(prefix="noisealign-sd-tiny-") as folder:   # the weights load into memory
        tiny.sd_pipeline().save_pretrained(folder)
        model = load_diffusers_model(folder, height=32, width=32, scheduler="karras")
    denoiser = make_denoiser(model, "a cat", 2.0)
    with torch.inference_mode():
        sigmas, states = candidates_along_trajectory(model, denoiser, seeds=2)
        image = model.decode(states[0][:1])
    weights = torch.randn(image.shape[1:], generator=torch.Generator().manual_seed(7))

    def linear_reward(x: Tensor) -> Tensor:
        return (model.decode(x) * weights).flatten(1).sum(1) / math.sqrt(weights.numel())

    return Setting("sd-tiny", denoiser, model.sigma_min, model.sigma_max, sigmas, states, linear_reward, 200)


def lookahead_rows(setting: Setting) -> list[dict]:
    """One row per (solver, max_steps): NFE and error against the reference look-ahead."""
    def estimate(solver: str, steps: int, index: int) -> Tensor:
        return ode_lookahead(setting.denoiser, setting.states[index], setting.sigmas[index],
                             setting.sigma_min, setting.sigma_max, steps, solver)

    def nfe(solver: str, steps: int, sigma: float) -> int:
        return ode_lookahead_evaluations(sigma, setting.sigma_min, setting.sigma_max, steps, solver)

    with torch.inference_mode():
        positions = range(len(setting.sigmas))
        references = [estimate("heun", setting.reference_steps, i) for i in positions]
        # How good the reference is: its distance to a UniPC solve of as many steps.
        check = [estimate("unipc", setting.reference_steps, i) for i in positions]
        scored_ref = [setting.score(r) if setting.score else r for r in references]
        taus = [float(s.view(-1, K).std(1).mean()) if setting.score else math.nan for s in scored_ref]
        reference_error = _mean_error(setting, check, scored_ref)
        rows = []
        for solver, all_steps in SOLVER_STEPS.items():
            for steps in all_steps:
                start = time.perf_counter()
                errors = _errors(setting, [estimate(solver, steps, i) for i in positions], scored_ref)
                rows.append({
                    "model": setting.name, "solver": solver, "max_steps": steps,
                    "nfe_first": nfe(solver, steps, setting.sigmas[0]),
                    "nfe_mean": sum(nfe(solver, steps, s) for s in setting.sigmas) / len(setting.sigmas),
                    "error_first": errors[0], "error_mean": sum(errors) / len(errors),
                    "error_over_tau": (sum(e / t for e, t in zip(errors, taus)) / len(errors)
                                       if setting.score else math.nan),
                    "reference_error": reference_error, "seconds": time.perf_counter() - start})
    return rows


def _errors(setting: Setting, estimates: list[Tensor], scored_ref: list[Tensor]) -> list[float]:
    """Mean error per position: |r - r_ref| for a reward, the state distance otherwise."""
    out = []
    for estimate, ref in zip(estimates, scored_ref):
        if setting.score:
            out.append(float((setting.score(estimate) - ref).abs().mean()))
        else:
            out.append(float((estimate - ref).flatten(1).norm(dim=1).mean()))
    return out


def _mean_error(setting: Setting, estimates: list[Tensor], scored_ref: list[Tensor]) -> float:
    errors = _errors(setting, estimates, scored_ref)
    return sum(errors) / len(errors)


def order_rows() -> list[dict]:
    """Convergence order on the mixture from sigma_max: error against a 1000-step Heun solve of the
    same PF-ODE for 256 states x_T, and the log-log slope of error against NFE over the finer half."""
    model = GaussianMixture.default()
    denoiser = make_denoiser(model, "")
    x = model.sigma_max * torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.inference_mode():
        reference = sample_ode(denoiser, x, model.sigmas(1000), "heun")
        rows = []
        for solver in SOLVER_STEPS:
            points = [9, 17, 33, 65, 129]
            errors = [float((sample_ode(denoiser, x, model.sigmas(n), solver) - reference).norm(dim=1).mean())
                      for n in points]
            nfe = [ode_evaluations(model.sigmas(n), solver) for n in points]
            slope = math.log(errors[2] / errors[-1]) / math.log(nfe[-1] / nfe[2])
            rows += [{"solver": solver, "grid_points": n, "nfe": e, "error": err, "slope_finer_half": slope}
                     for n, e, err in zip(points, nfe, errors)]
    return rows


# ---- the SDE integrator ------------------------------------------------------------------

def gaussian_variance_path(solver: str, points: int, beta: float, sigma_max: float,
                           sigma_min: float = 0.002) -> list[tuple[float, float]]:
    """(sigma, std of the state / exact std) along a beta-SDE run on data N(0, 1), exactly.

    D = x / (1 + sigma^2) is linear, so a step is x' = A x + B z and Var' = A^2 Var + B^2; A and
    B are read off the integrator applied to the states (1, 0) with the noises (0, 1).
    """
    def denoiser(x: Tensor, sigma: float) -> Tensor:
        return x / (1 + sigma * sigma)

    grid = karras_sigmas(points, sigma_min, sigma_max)[:-1]          # to sigma_min: no step into 0
    variance, path = 1 + sigma_max ** 2, [(sigma_max, 1.0)]
    unit, noise = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    for i in range(len(grid) - 1):
        a, b = sample_beta_sde(denoiser, unit, grid[i:i + 2], [noise], beta, solver=solver).tolist()
        variance = a * a * variance + b * b
        sigma = float(grid[i + 1])
        path.append((sigma, math.sqrt(variance / (1 + sigma * sigma))))
    return path


def gaussian_rows() -> list[dict]:
    rows = []
    for label, beta, sigma_max, ode_after in [("paper (SD): beta 0.1, sigma_max 14.648", 0.1, 14.648, 0.11),
                                              ("ours on 80: beta 0.0183", 0.1 * 14.648 / 80, 80.0, 0.32)]:
        for points in (16, 20, 23, 32, 64, 128):
            for solver, grid_points in (("euler", points), ("heun", (points + 1) // 2 + 1)):
                path = gaussian_variance_path(solver, grid_points, beta, sigma_max)
                at_switch = min(path, key=lambda p: abs(math.log(p[0] / ode_after)))
                rows.append({"test": "gaussian", "setting": label, "solver": solver, "grid_points": grid_points,
                             "nfe": (grid_points - 1) * (2 if solver == "heun" else 1),
                             "std_ratio_end": path[-1][1], "std_ratio_at_ode_after": at_switch[1],
                             "std_ratio_worst": max(path, key=lambda p: abs(p[1] - 1))[1]})
    return rows


def gmm_sde_rows(n: int = 20_000) -> list[dict]:
    """The whole beta-SDE on the mixture, EM on 2M points vs stochastic Heun on M + 1 (equal NFE)."""
    model = GaussianMixture.default()
    denoiser = make_denoiser(model, "")
    beta = DemonConfig().beta_for(model)
    true_mean = (model.weights[:, None] * model.means).sum(0)
    second = (model.weights[:, None] * (model.stds[:, None] ** 2 + model.means ** 2)).sum(0)
    true_var = second - true_mean ** 2

    def errors(samples: Tensor) -> tuple[float, float]:
        return (float((samples.mean(0) - true_mean).norm()),
                float(((samples.var(0) - true_var).abs() / true_var).max()))

    floor = errors(model.sample_exact(n, torch.Generator().manual_seed(11)))
    rows = []
    for half in (8, 12, 16, 24, 32):
        for solver, points in (("euler", 2 * half), ("heun", half + 1)):
            g = torch.Generator().manual_seed(12)
            sigmas = model.sigmas(points)
            x = model.sigma_max * torch.randn(n, 2, generator=g, dtype=torch.float64)
            noises = [torch.randn(n, 2, generator=g, dtype=torch.float64) for _ in range(points)]
            with torch.inference_mode():
                samples = sample_beta_sde(denoiser, x, sigmas, noises, beta, solver=solver)
            mean_error, var_error = errors(samples)
            rows.append({"test": "gmm", "setting": f"beta {beta:.4f}, n {n}", "solver": solver,
                         "grid_points": points, "nfe": points + (points - 1 if solver == "heun" else 0),
                         "mean_error": mean_error, "var_rel_error": var_error,
                         "floor_mean_error": floor[0], "floor_var_rel_error": floor[1]})
    return rows


# ---- output --------------------------------------------------------------------------------

def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows: list[dict], columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_format(row.get(c, "")) for c in columns) + " |")


def _format(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else (f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}")
    return str(value)


def recommend(rows: list[dict]) -> None:
    """Per model: the cheapest setting of each solver at least as accurate as 20-step Heun."""
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        target = next(r for r in mine if r["solver"] == "heun" and r["max_steps"] == 20)
        print(f"{model}: heun 20 steps = {target['nfe_first']} NFE, error {target['error_mean']:.3g}")
        for solver in SOLVER_STEPS:
            ok = [r for r in mine if r["solver"] == solver and r["error_mean"] <= target["error_mean"]]
            best = min(ok, key=lambda r: r["nfe_first"], default=None)
            print(f"  {solver:>9}: " + ("never" if best is None else
                                         f"{best['max_steps']} steps, {best['nfe_first']} NFE, "
                                         f"error {best['error_mean']:.3g}"))


def main(argv: list[str] | None = None) -> None:
    sections = ("order", "gmm", "digits", "sd", "gaussian", "gmm-sde")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(sections)} (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(sections)
    if unknown:
        parser.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(sections)}")
    args.sections = args.sections or sections
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    complete = set(args.sections) == set(sections)          # a subset prints, the whole set also saves
    if "order" in args.sections:
        order = order_rows()
        print_table(order, ["solver", "grid_points", "nfe", "error", "slope_finer_half"])
        if complete:
            write_csv(RESULTS / "lookahead_solvers_order.csv", order)
    settings = {"gmm": gmm_setting, "digits": digits_setting, "sd": sd_setting}
    lookahead = [row for name in args.sections if name in settings for row in lookahead_rows(settings[name]())]
    if lookahead:
        print_table(lookahead, ["model", "solver", "max_steps", "nfe_first", "nfe_mean", "error_first",
                                "error_mean", "error_over_tau", "reference_error"])
        recommend(lookahead)
        if complete:
            write_csv(RESULTS / "lookahead_solvers.csv", lookahead)
    sde = ((gaussian_rows() if "gaussian" in args.sections else [])
           + (gmm_sde_rows() if "gmm-sde" in args.sections else []))
    if sde:
        print_table(sde, ["test", "setting", "solver", "grid_points", "nfe", "std_ratio_end",
                          "std_ratio_at_ode_after", "std_ratio_worst", "mean_error", "var_rel_error",
                          "floor_mean_error", "floor_var_rel_error"])
        if complete:
            write_csv(RESULTS / "lookahead_solvers_sde.csv", sde)

if __name__ == "__main__":
    main()
