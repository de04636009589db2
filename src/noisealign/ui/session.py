"""One person's Demon run, step by step, kept on disk after every action.

The person is Demon's reward (Yeh et al., ICLR 2025, section 4; docs/demon.md, "a person clicking the images they
prefer"): at each stochastic step they see the K candidates' decoded look-aheads, choose the
ones they prefer, and `HumanChoice.rewards` turns that into +1 / -1 for
`DemonSession.choose`. Everything else is Demon as `Demon.run` does it.

The run folder is the session's memory: after every choice or undo, `choices.json` (the run's
options and each step's chosen indices), `trace.csv` and `result.json` are rewritten, so a
closed browser loses nothing and `HumanSession.resume` rebuilds the exact state by replaying
the choices (same seed, same choices, same bits). Undo restores `DemonSession.snapshot()` taken
before the step's candidates were drawn (the state, the noise generators, the ledger) and draws
them again, so the person sees the very same candidates.

With a reference image (RunSpec.reference), every state's preview D(x, sigma) is also scored by
its DINOv2 similarity to the reference (rewards/dino.py): shown on the page beside the
trajectory, recorded per step in trace.csv (`reference_similarity`) and, for the finished image,
in result.json. It is a measurement for the person, not Demon's reward: no query is charged.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from ..budget import Ledger
from ..configs import config_from_dict
from ..errors import NoiseAlignError
from ..imaging import is_image_batch
from ..methods.base import Problem, RunContext
from ..methods.demon import DemonConfig, DemonSession, DemonSnapshot
from ..methods.plain import Plain
from ..rewards.dino import DEFAULT_MODEL, DinoSimilarity, load_dino, read_image
from ..rewards.human import HumanChoice
from ..runs import RunFolder, Trace, record_head
from . import render

CHOICES_FILE = "choices.json"
FORMAT = 1
RUN_FILES = ("result.json", "image.png", "baseline.png", "trace.csv", "noise.pt", CHOICES_FILE)
"""What a finished run folder holds, and what the download zips."""


class Conflict(NoiseAlignError):
    """An action that no longer fits the session's state (another tab moved on, the run is finished)."""


@dataclass(frozen=True)
class RunSpec:
    """What rebuilds the run's problem on resume: the model (a name or folder `load_model`
    takes, with its loading options), the prompt and guidance, the seed, and the optional
    reference image (a path) with its DINOv2 model (a hub id or folder; None: facebook/dinov2-base)."""

    model: str
    prompt: str = ""
    negative_prompt: str = ""
    guidance: float | None = None
    seed: int = 0
    device: str | None = None       # loading options: None is the model's default
    dtype: str | None = None
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None
    reference: str | None = None
    reference_model: str | None = None

    @property
    def model_options(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "height": self.height, "width": self.width,
                "scheduler": self.scheduler}

    def load_model(self):
        from ..models.registry import load_model

        return load_model(self.model, **self.model_options)

    def load_reference(self) -> DinoSimilarity | None:
        """The DINOv2 similarity to the reference image, or None for a run without one."""
        if self.reference is None:
            return None
        image = read_image(self.reference)          # a bad path fails before the model loads
        return DinoSimilarity(load_dino(self.reference_model or DEFAULT_MODEL), image)


class _Preview(NamedTuple):
    """D(x, sigma) of one state, decoded: page-size and thumbnail data URLs, DINOv2 similarity to the reference."""

    page: str
    thumb: str
    similarity: float | None


class HumanSession:
    """A Demon run whose reward is a person. Build it with `start` (new run) or `resume`.

    Mutating calls take the `version` of the view the person acted on; a view that is not
    the current one (another tab chose or undid meanwhile) raises Conflict. Not thread-safe:
    the server serializes calls.
    """

    def __init__(self, problem: Problem, spec: RunSpec, config: DemonConfig, folder: RunFolder,
                 reference: DinoSimilarity | None = None):
        self.problem, self.spec, self.config, self.folder = problem, spec, config, folder
        self.reference = reference                # spec.load_reference(), given by start / resume
        self._reference_url = None if reference is None else render.png_data_url(reference.reference,
                                                                                 render.THUMB_SIDE)
        self.run_dir = folder.path
        self.ledger = Ledger()
        self.context = RunContext(problem, spec.seed, self.ledger)
        self.trace = Trace()
        self.choices: list[dict[str, Any]] = []
        self.undone = 0
        self.version = 0
        self.finished = False
        self.output: Tensor | None = None         # the decoded final sample, once finished
        self.final_similarity: float | None = None  # its DINOv2 similarity to the reference
        self.replay_diverged_at: int | None = None  # first replayed step whose x hash differs
        self._seconds_before, self._clock = 0.0, time.perf_counter()
        with torch.inference_mode():
            self.demon = DemonSession(self.context, config)
            self.previews = [self._preview()]     # one per state: before any choice, then after each
            self._snapshots: list[DemonSnapshot] = [self.demon.snapshot()]  # before each step's candidates
            self.candidates = self._propose()

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def start(cls, problem: Problem, config: DemonConfig, seed: int = 0, out: str | Path | None = None,
              spec: RunSpec | None = None) -> "HumanSession":
        """A new run: the plain baseline of `seed`, then the first step's candidates.

        The run folder is `out` (new or empty) or a new folder under runs/. `spec` says how
        `load_model` rebuilds the model on resume (default: by the model's own name, on the
        CPU); its prompt, guidance and seed are taken from `problem` and `seed`. With
        `spec.reference`, the reference image and its DINOv2 model load first.
        """
        spec = replace(spec or RunSpec(problem.model.name), prompt=problem.prompt,
                       negative_prompt=problem.negative_prompt, guidance=problem.guidance, seed=seed)
        reference = spec.load_reference()
        baseline = Plain().run(RunContext(problem, seed, Ledger(query_limit=0))).output
        if not is_image_batch(baseline):
            raise NoiseAlignError(f"noisealign ui shows images, but model {problem.model.name!r} outputs tensors of "
                                  f"shape {tuple(baseline.shape[1:])}; use an image model such as --model digits")
        folder = RunFolder.create(None if out is None else str(out), f"ui-demon-seed{seed}")
        folder.save_output(baseline, "baseline")
        session = cls(problem, spec, config, folder, reference)
        session._save()
        return session

    @classmethod
    def resume(cls, run_dir: str | Path, model=None) -> "HumanSession":
        """Rebuild a run from its choices.json by replaying every choice (the model is loaded
        by name unless given). A finished run is finished again, to the same bits."""
        run_dir = Path(run_dir)
        data = read_choices(run_dir)
        spec = RunSpec(**data["run"])
        config = config_from_dict(DemonConfig, data["config"])
        reference = spec.load_reference()
        model = spec.load_model() if model is None else model
        problem = Problem(model, HumanChoice(), spec.prompt, spec.negative_prompt, spec.guidance)
        session = cls(problem, spec, config, RunFolder.open(run_dir), reference)  # a second server is refused
        for record in data["choices"]:
            if record["step"] != session.demon.index:
                raise NoiseAlignError(f"{run_dir / CHOICES_FILE} records step {record['step']} where step "
                                      f"{session.demon.index} comes next; the file was edited or is corrupt")
            session._apply(record["chosen"], record["seconds"])
            if session.replay_diverged_at is None and session.choices[-1]["x_sha256"] != record["x_sha256"]:
                session.replay_diverged_at = record["step"]
        session.undone = data["undone"]
        session._seconds_before, session._clock = data["seconds"], time.perf_counter()
        if data["finished"]:
            session._finish()
        return session

    def close(self) -> None:
        """Release the run folder (another `noisealign ui --resume` may then take it)."""
        self.folder.close()

    # -- actions ----------------------------------------------------------------------------

    def choose(self, chosen: Sequence[int], version: int | None = None) -> None:
        """The person prefers candidates `chosen`: +1 for them, -1 for the others; take the step."""
        self._check(version)
        if self.candidates is None:
            raise Conflict("every demon step is taken; finish the run")
        HumanChoice.rewards(chosen, self.config.K)  # validate before touching any state
        self._apply(sorted(chosen), self.seconds)
        self._save()

    def undo(self, version: int | None = None) -> None:
        """Back to the state before the last choice, showing the same candidates again."""
        self._check(version)
        if not self.choices:
            raise Conflict("nothing to undo: no choice made yet")
        self.choices.pop()
        self.trace.rows.pop()
        self.previews.pop()
        self._snapshots.pop()
        with torch.inference_mode():
            self.demon.restore(self._snapshots[-1])
            self.candidates = self._propose()
        self.undone += 1
        self.version += 1
        self._save()

    def finish(self, version: int | None = None) -> None:
        """Stop choosing: integrate the PF-ODE from the current state to sigma = 0 and keep it."""
        self._check(version)
        self._finish()
        self._save()

    # -- views ------------------------------------------------------------------------------

    @property
    def x(self) -> Tensor:
        """The current noisy state (sigma = self.sigma)."""
        return self.demon.x

    @property
    def sigma(self) -> float:
        return self.demon.sigma

    @property
    def steps_total(self) -> int:
        """Demon steps of the whole run: those taken plus those left."""
        return len(self.choices) + self.demon.stochastic_steps_left

    @property
    def seconds(self) -> float:
        """Wall time of the session so far, the person's thinking included, across restarts."""
        return self._seconds_before + time.perf_counter() - self._clock

    def state(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready (images as PNG data URLs)."""
        return {
            "version": self.version, "run_dir": str(self.run_dir), "model": self.spec.model,
            "prompt": self.spec.prompt, "seed": self.spec.seed, "K": self.config.K,
            "step": len(self.choices), "steps_total": self.steps_total, "sigma": self.sigma,
            "finished": self.finished, "undone": self.undone,
            "candidates": self._candidate_urls,
            "preview": self.previews[-1].page,
            "trajectory": [preview.thumb for preview in self.previews],  # before any choice, then after each
            "reference": self._reference_url,
            "similarities": [preview.similarity for preview in self.previews] if self.reference else None,
            "final_similarity": self.final_similarity,
            "history": [{"step": c["step"], "sigma": c["sigma"], "chosen": c["chosen"]} for c in self.choices],
            "baseline": render.file_data_url(self.run_dir / "baseline.png"),
            "image": render.file_data_url(self.run_dir / "image.png") if self.finished else None,
        }

    def zip_bytes(self) -> bytes:
        """The finished run folder's files as one zip (folder name as the top directory)."""
        if not self.finished:
            raise Conflict("finish the run before downloading it")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in RUN_FILES:
                archive.write(self.run_dir / name, f"{self.run_dir.name}/{name}")
        return buffer.getvalue()

    # -- internals --------------------------------------------------------------------------

    def _check(self, version: int | None) -> None:
        if self.finished:
            raise Conflict("this run is finished (maybe in another tab); reload to see and download it")
        if version is not None and version != self.version:
            raise Conflict("this step was already chosen or undone in another tab; reload")

    def _apply(self, chosen: list[int], seconds: float) -> None:
        """One step with the person's choice: charge the K judged images, step, record, move on."""
        rewards = HumanChoice.rewards(chosen, self.config.K)
        with torch.inference_mode():
            self.ledger.charge_queries(self.config.K)
            event = self.demon.choose(rewards)
            event.counts = {**self.ledger.snapshot(), "seconds": round(seconds, 3)}
            event.extras["chosen"] = float(len(chosen))
            preview = self._preview()
            if preview.similarity is not None:
                event.extras["reference_similarity"] = preview.similarity
            self.trace.record(event)
            self.choices.append({"step": event.step, "sigma": event.sigma, "chosen": list(chosen),
                                 "seconds": round(seconds, 3), "x_sha256": _digest(self.demon.x)})
            self.previews.append(preview)
            self._snapshots.append(self.demon.snapshot())
            self.candidates = self._propose()
        self.version += 1

    def _finish(self) -> None:
        with torch.inference_mode():
            sample = self.demon.finish()
            self.output = self.problem.model.decode(sample)
            self.final_similarity = self._similarity(self.output[0])
        self.folder.save_output(self.output, "image")
        self.folder.save_noises(self.demon.noises())
        self.finished, self.candidates = True, None
        self.version += 1

    def _preview(self) -> _Preview:
        """D(x, sigma) of the current state, decoded: what the sample looks like so far (one NFE),
        at page size, as a trajectory thumbnail, and its similarity to the reference."""
        image = self.problem.model.decode(self.context.denoiser(self.demon.x, self.demon.sigma))[0]
        return _Preview(render.png_data_url(image, render.PREVIEW_SIDE), render.png_data_url(image, render.THUMB_SIDE),
                        self._similarity(image))

    def _similarity(self, image: Tensor) -> float | None:
        """DINOv2 similarity of one decoded image to the reference (None without a reference)."""
        if self.reference is None:
            return None
        return float(self.reference(image[None], [self.spec.prompt])[0])

    def _propose(self) -> Tensor | None:
        """The current step's K decoded look-aheads, or None when no demon step is left."""
        if self.demon.stochastic_steps_left == 0:
            self._candidate_urls: list[str] = []
            return None
        candidates = self.demon.propose()
        self._candidate_urls = [render.png_data_url(image, render.CANDIDATE_SIDE) for image in candidates]
        return candidates

    def _save(self) -> None:
        """Rewrite choices.json, trace.csv and result.json (each replaced atomically)."""
        choices = {"format": FORMAT, "run": asdict(self.spec), "config": asdict(self.config),
                   "choices": self.choices, "undone": self.undone, "finished": self.finished,
                   "seconds": round(self.seconds, 3)}
        self.folder.write(CHOICES_FILE, lambda path: path.write_text(json.dumps(choices, indent=2) + "\n"))
        self.folder.write_trace(self.trace)
        self.folder.write_result(self._result())
        self.folder.check_rescued()

    def _result(self) -> dict[str, Any]:
        """result.json: the CLI's keys; the reward is the person ("human"), who gives no score."""
        spec, ledger = self.spec, self.ledger
        config = {"method": asdict(self.config), "budget": None, "guidance": spec.guidance,
                  "negative_prompt": spec.negative_prompt, "grid": 1,
                  "model_options": {k: v for k, v in spec.model_options.items() if v is not None}}
        record = record_head("demon", spec.model, spec.prompt, "human", spec.seed, None, config,
                             status="complete" if self.finished else "running")
        record.update(reward_source="human", final_reward=None, baseline_reward=None,
                      reward_queries=ledger.reward_queries, nfe=ledger.nfe,
                      network_evaluations=ledger.network_evaluations, seconds=round(self.seconds, 3),
                      demon_steps=len(self.choices), undone=self.undone,
                      degenerate_steps=self.demon.state.degenerate_steps, ode_after=self.demon.ode_after)
        if spec.reference is not None:
            record.update(reference_image=spec.reference, reference_model=spec.reference_model or DEFAULT_MODEL,
                          reference_similarity=self.final_similarity)
        return record


def _digest(x: Tensor) -> str:
    """SHA-256 of x's bytes: replay checks it to tell an exact resume from a drifted one."""
    return hashlib.sha256(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def read_choices(run_dir: Path) -> dict[str, Any]:
    """A run folder's choices.json, checked to be one this module wrote."""
    path = Path(run_dir) / CHOICES_FILE
    if not path.is_file():
        raise NoiseAlignError(f"{path} not found; --resume takes a run folder written by `noisealign ui`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise NoiseAlignError(f"{path} is not valid JSON ({error}); it cannot be resumed") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NoiseAlignError(f"{path} is not a format-{FORMAT} choices file of `noisealign ui`")
    return data
