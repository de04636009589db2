"""A VLM judge as a reward: candidate images go to an OpenAI-compatible chat endpoint with the
prompt and a scenario, and the judge's answer becomes rewards in [-1, 1]. Not differentiable:
this is the feedback Demon aligns to without a gradient (Yeh et al., ICLR 2025, Sec. 5 and
Table 5: Gemini / GPT-4 pick the image that fits a role's scenario).

Modes (`--reward vlm:pick|rank|score`):

- pick (the default): the judge names the one best candidate of the batch; it gets +1, the
  others -1. This is the paper's protocol (the study notes record +5 / -5, the same up to
  a scale that an adaptive tau absorbs), and a comparative judgement within the batch is
  more reliable than absolute numbers from a VLM, which drift and bunch up.
- rank: the judge orders the whole batch; positions map to evenly spaced rewards from +1
  (best) to -1 (worst). More information per request than pick, at the cost of a longer,
  harder answer.
- score: each image is rated 1..10 on its own, in its own request; r = (s - 5.5) / 4.5.

Pick and rank rewards are relative to the batch they were asked with: +1 means "best of
these", not "good". That is exactly what Demon needs (it compares the K candidates of one
step). Best-of-N keeps the first batch's winner when every batch has a +1, so give it one
batch holding all N candidates (`batch_size >= n`; the judge then runs a tournament over
groups of `max_images_per_request`) or use score. DNO's zero-order estimates compare rewards
across calls, which only score supports.

A batch larger than `max_images_per_request` is split into balanced groups: pick runs a
knock-out tournament (group winners meet in the next round), rank ranks each group on its
own (rewards then relative to the group). The requests of one round run in up to
`max_concurrency` threads; every HTTP attempt first waits for the rate limiter.

Failures: timeouts, dropped connections, HTTP 408/429/5xx and replies without a valid answer
(malformed or too deeply nested JSON included) are retried with exponential backoff
(backoff_s * 2^(attempt-1), or the server's Retry-After if longer); other 4xx fail at once.
When the attempts run out the reward raises NoiseAlignError; it never falls back to a random
choice. A failure, or Ctrl-C in the calling thread, stops the whole batch at once: no request
starts after it, and requests in flight are not waited for.

Log and replay: `attach_run_dir(run_dir)` appends every attempt to run_dir/vlm_log.jsonl
(vlm_log.py). `VlmJudge(config, replay_from=log)` answers from such a log, without the
endpoint, matching requests by the content hash of mode, scenario, prompt and pixels.

The API key is read from the environment (config.api_key_env, default NOISEALIGN_VLM_API_KEY)
or passed as `api_key=`; it is never part of the config, so result.json cannot hold it. The
credentials a base URL may carry (user:password@host, ?api-key=...) are used for requests
only: the judge's config, its log and its error messages show the URL through `safe_url`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

import torch
from torch import Tensor

from ..errors import NoiseAlignError
from .vlm_client import ChatEndpoint, EndpointError, RateLimiter, one_line, redact, safe_url
from .vlm_log import LOG_NAME, JsonlLog, ReplayLog
from .vlm_protocol import (MODES, EncodedImage, InvalidReply, build_messages, encode_images,
                           parse_answer, reply_text, request_key, rewards_of, scenario_text)

OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "NOISEALIGN_VLM_API_KEY"
MAX_DELAY_S = 60.0  # longest wait between attempts, whatever Retry-After says

T = TypeVar("T")
U = TypeVar("U")


def _http_url(url: str) -> bool:
    """Whether `url` parses as an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class VlmJudgeConfig:
    """Options of the VLM judge; JSON-serializable and free of secrets.

    base_url: the OpenAI-compatible API root (ending in /v1 for most servers).
    model: the model name the server knows (gpt-4o-mini, qwen2.5vl:7b, ...).
    api_key_env: the environment variable holding the key (unset: no Authorization header).
    scenario: a role preset (teacher, artist, researcher, journalist: the paper's) or free
        text, sent as the system message; "" asks for a neutral judge.
    mode: pick, rank or score (see the module docstring).
    timeout_s: socket timeout of one attempt. max_retries: attempts after the first.
    backoff_s: wait before the first retry, doubled after each failure.
    max_concurrency: requests in flight at once. requests_per_minute: 0 for no limit.
    max_images_per_request: larger batches are split (at least 2).
    image_size / min_image_size: the longest side of the PNG sent is reduced to at most
        image_size, and a smaller image enlarged (nearest neighbour, integer factor) to at
        least min_image_size: 8 x 8 digits go out as 128 x 128.
    temperature: 0 for the most repeatable judge.
    json_mode: send response_format {"type": "json_object"}; switched off by itself if the
        server rejects it.
    """

    base_url: str = OPENAI_URL
    model: str = ""
    api_key_env: str = DEFAULT_KEY_ENV
    scenario: str = ""
    mode: str = "pick"
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_concurrency: int = 4
    requests_per_minute: float = 0.0
    max_images_per_request: int = 16
    image_size: int = 512
    min_image_size: int = 128
    temperature: float = 0.0
    json_mode: bool = True

    def __post_init__(self) -> None:
        problems = [
            (self.mode not in MODES, f"mode {self.mode!r}: choose from {', '.join(MODES)}"),
            (not _http_url(self.base_url),
             f"base_url {safe_url(self.base_url)!r}: give an http(s) URL such as http://127.0.0.1:11434/v1"),
            (self.timeout_s <= 0, f"timeout_s {self.timeout_s}: must be > 0"),
            (self.max_retries < 0, f"max_retries {self.max_retries}: must be >= 0"),
            (self.backoff_s < 0, f"backoff_s {self.backoff_s}: must be >= 0"),
            (self.max_concurrency < 1, f"max_concurrency {self.max_concurrency}: must be >= 1"),
            (self.requests_per_minute < 0, f"requests_per_minute {self.requests_per_minute}: must be >= 0"),
            (self.max_images_per_request < 2,
             f"max_images_per_request {self.max_images_per_request}: must be >= 2"),
            (not 1 <= self.min_image_size <= self.image_size,
             f"min_image_size {self.min_image_size}, image_size {self.image_size}: "
             "need 1 <= min_image_size <= image_size"),
        ]
        for bad, message in problems:
            if bad:
                raise NoiseAlignError(f"bad VLM judge option {message}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "VlmJudgeConfig":
        """Defaults, then NOISEALIGN_VLM_BASE_URL (or OPENAI_BASE_URL), NOISEALIGN_VLM_MODEL and
        NOISEALIGN_VLM_SCENARIO, then `overrides` (None values ignored)."""
        env = os.environ if environ is None else environ
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise NoiseAlignError(f"unknown VLM judge option(s) {', '.join(unknown)}; "
                                  f"choose from {', '.join(sorted(known))}")
        values = {"base_url": env.get("NOISEALIGN_VLM_BASE_URL") or env.get("OPENAI_BASE_URL"),
                  "model": env.get("NOISEALIGN_VLM_MODEL"), "scenario": env.get("NOISEALIGN_VLM_SCENARIO")}
        values.update(overrides)
        return cls(**{name: value for name, value in values.items() if value is not None})

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key in `api_key_env`. With the default variable unset, OPENAI_API_KEY is used,
        but only for the endpoint that the OpenAI settings name (OPENAI_BASE_URL or
        api.openai.com), so an OpenAI key is never sent to another server."""
        env = os.environ if environ is None else environ
        if env.get(self.api_key_env):
            return env[self.api_key_env]
        openai_url = (env.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        if self.api_key_env == DEFAULT_KEY_ENV and self.base_url.rstrip("/") == openai_url:
            return env.get("OPENAI_API_KEY") or None
        return None


class VlmJudge:
    """reward(outputs, prompts) -> float32 (B,) in [-1, 1], from a VLM's judgement.

    `config` is the config given with the base URL passed through safe_url: what a run may
    record. Requests go to the real URL.
    """

    differentiable = False

    def __init__(self, config: VlmJudgeConfig = VlmJudgeConfig(), *, api_key: str | None = None,
                 log_path: str | Path | None = None, replay_from: str | Path | None = None):
        """api_key: overrides config.api_key_env. log_path: where to append the request log
        (attach_run_dir sets it too). replay_from: a vlm_log.jsonl (or its run directory) to
        answer from instead of the endpoint."""
        self.config = replace(config, base_url=safe_url(config.base_url))
        self.name = f"vlm:{config.mode}"
        self._replay = ReplayLog(replay_from) if replay_from is not None else None
        if self._replay is None and not config.model:
            raise NoiseAlignError("no VLM model named; set NOISEALIGN_VLM_MODEL (or pass model=...) to a "
                                  "vision model your endpoint serves, e.g. gpt-4o-mini or qwen2.5vl:7b")
        self._key = api_key if api_key is not None else config.api_key()
        self._endpoint = ChatEndpoint(config.base_url, self._key, config.timeout_s)
        self._limiter = RateLimiter(config.requests_per_minute)
        self._scenario = scenario_text(config.scenario)
        self._json_mode = config.json_mode
        self._log = JsonlLog(log_path, self._key) if log_path is not None else None

    def attach_run_dir(self, run_dir: str | Path) -> Path:
        """Log every later request to run_dir/vlm_log.jsonl (appending); returns that path."""
        self._log = JsonlLog(Path(run_dir) / LOG_NAME, self._key)
        return self._log.path

    def __call__(self, outputs: Tensor, prompts: Sequence[str]) -> Tensor:
        prompts = list(prompts)
        if len(prompts) != len(outputs):
            raise NoiseAlignError(f"the vlm reward got {len(outputs)} images but {len(prompts)} prompts; "
                                  "pass one prompt per image")
        images = encode_images(outputs, self.config.min_image_size, self.config.image_size)
        abort = threading.Event()  # set when one request fails, so its siblings stop retrying
        if not images:
            values: list[float] = []
        elif self.config.mode == "score":
            values = self._map(lambda i: self._score(images[i], prompts[i], abort), range(len(images)), abort)
        elif len(set(prompts)) > 1:
            raise NoiseAlignError(f"vlm:{self.config.mode} compares candidates of one prompt, but the batch "
                                  "mixes prompts; score each prompt's batch separately or use vlm:score")
        elif self.config.mode == "pick":
            values = self._pick(images, prompts[0], abort)
        else:
            values = self._rank(images, prompts[0], abort)
        return torch.tensor(values, dtype=torch.float32, device=outputs.device)

    def _score(self, image: EncodedImage, prompt: str, abort: threading.Event) -> float:
        return rewards_of("score", self._ask("score", prompt, [image], abort), 1)[0]

    def _pick(self, images: list[EncodedImage], prompt: str, abort: threading.Event) -> list[float]:
        """Knock-out tournament over groups of at most max_images_per_request; a lone image
        (a group of one, or a batch of one) goes through unasked."""
        contenders = list(range(len(images)))
        while len(contenders) > 1:
            groups = _split(contenders, self.config.max_images_per_request)
            contenders = self._map(
                lambda group: group[self._ask("pick", prompt, [images[i] for i in group], abort)]
                if len(group) > 1 else group[0], groups, abort)
        return rewards_of("pick", contenders[0], len(images))

    def _rank(self, images: list[EncodedImage], prompt: str, abort: threading.Event) -> list[float]:
        values = [0.0] * len(images)
        groups = _split(list(range(len(images))), self.config.max_images_per_request)
        rankings = self._map(
            lambda group: self._ask("rank", prompt, [images[i] for i in group], abort)
            if len(group) > 1 else [0], groups, abort)
        for group, ranking in zip(groups, rankings):
            for local, value in enumerate(rewards_of("rank", ranking, len(group))):
                values[group[local]] = value
        return values

    def _map(self, function: Callable[[T], U], items: Sequence[T], abort: threading.Event) -> list[U]:
        """function over items in up to max_concurrency daemon threads, results in order.

        The first failure, in a worker or in the calling thread (Ctrl-C), sets `abort`: no
        thread takes another item or starts another attempt, waiting retries give up, and the
        failure propagates at once, without waiting for requests in flight (their threads are
        daemons, so they cannot hold the process open either).
        """
        items = list(items)
        if len(items) == 1:
            return [function(items[0])]
        results: list[Any] = [None] * len(items)
        failures: list[BaseException] = []
        pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(items)):
            pending.put(index)

        def work() -> None:
            while not abort.is_set():
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[index] = function(items[index])
                except BaseException as error:
                    failures.append(error)
                    abort.set()

        threads = [threading.Thread(target=work, name="noisealign-vlm", daemon=True)
                   for _ in range(min(self.config.max_concurrency, len(items)))]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # an interrupt in the calling thread
            abort.set()
            raise
        if failures:
            raise failures[0]
        return results

    def _ask(self, mode: str, prompt: str, images: list[EncodedImage], abort: threading.Event) -> Any:
        """One judge request, answered from the replay log or the endpoint (with retries)."""
        record = {"request_id": uuid.uuid4().hex[:12],
                  "key": request_key(mode, self._scenario, prompt, images), "mode": mode,
                  "model": self.config.model, "endpoint": self._endpoint.url, "prompt": prompt,
                  "scenario": self._scenario, "images": [image.sha256 for image in images]}
        if self._replay is not None:
            return self._replayed(record, len(images))
        messages = build_messages(mode, self._scenario, prompt, images, lambda image: image.data_url)
        logged = build_messages(mode, self._scenario, prompt, images, lambda image: "sha256:" + image.sha256)
        attempts, attempt = self.config.max_retries + 1, 0
        while attempt < attempts:
            attempt += 1
            self._limiter.wait()
            if abort.is_set():
                raise NoiseAlignError("VLM request abandoned: another request of the batch failed, "
                                      "or the run was interrupted")
            entry = dict(record, attempt=attempt, time=_now(), headers=self._endpoint.public_headers(),
                         request=self._body(logged))
            started = time.perf_counter()
            try:
                response = self._endpoint.post(self._body(messages))
                entry.update(status=200, response=response)
                entry["reply"] = reply_text(response)
                answer = parse_answer(mode, entry["reply"], len(images))
            except EndpointError as error:
                entry.update(status=error.status, error=str(error), response=error.body or None)
                if self._json_mode_refused(error):
                    self._write(entry, started, "json_mode_off")
                    attempt -= 1
                    continue
                if not error.retryable:
                    self._write(entry, started, "fatal")
                    raise NoiseAlignError(self._fatal_message(error)) from None
                failure, wait_hint = str(error), error.retry_after or 0.0
            except InvalidReply as error:
                entry["error"] = str(error)
                failure, wait_hint = f"{error}: {one_line(redact(entry.get('reply') or '', self._key), 120)}", 0.0
            else:
                entry["answer"] = answer
                self._write(entry, started, "ok")
                return answer
            self._write(entry, started, "failed" if attempt == attempts else "retry")
            if attempt < attempts:
                abort.wait(min(max(self.config.backoff_s * 2 ** (attempt - 1), wait_hint), MAX_DELAY_S))
        where = f"; every attempt is in {self._log.path}" if self._log is not None else ""
        raise NoiseAlignError(f"VLM judge at {self._endpoint.url} (model {self.config.model!r}) failed "
                              f"{attempts} attempt(s), last: {one_line(failure, 200)}{where}; check that the "
                              "server is up and serves this vision model, or raise timeout_s / max_retries")

    def _replayed(self, record: dict[str, Any], count: int) -> Any:
        reply = self._replay.take(record["key"], f"{record['mode']} of {count} image(s)")
        try:
            answer = parse_answer(record["mode"], reply, count)
        except InvalidReply as error:
            raise NoiseAlignError(f"replayed VLM reply does not fit its request ({error}); "
                                  "replay an unedited vlm_log.jsonl") from None
        entry = dict(record, attempt=1, time=_now(), reply=reply, answer=answer)
        self._write(entry, time.perf_counter(), "replayed")
        return answer

    def _body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages,
                                "temperature": self.config.temperature}
        if self._json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _json_mode_refused(self, error: EndpointError) -> bool:
        """A 400 that names response_format: the server lacks JSON mode; go on without it."""
        if self._json_mode and error.status == 400 and "response_format" in error.body:
            self._json_mode = False
            return True
        return False

    def _fatal_message(self, error: EndpointError) -> str:
        where = f"VLM endpoint {self._endpoint.url} answered {error}"
        if error.status in (401, 403):
            sent = "the key in" if self._key else "no key; set"
            return f"{where}; the request carried {sent} {self.config.api_key_env}: set it to a valid key"
        if error.status == 404:
            return (f"{where}; check the base URL (most servers want it to end in /v1) "
                    f"and the model {self.config.model!r}")
        return f"{where}; check the model {self.config.model!r} (it must accept images) and the options"

    def _write(self, entry: dict[str, Any], started: float, outcome: str) -> None:
        if self._log is not None:
            entry.update(outcome=outcome, seconds=round(time.perf_counter() - started, 4))
            self._log.write(entry)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _split(items: list[int], size: int) -> list[list[int]]:
    """items cut into the fewest contiguous groups of at most `size`, sizes differing by <= 1."""
    count = -(-len(items) // size)
    base, extra = divmod(len(items), count)
    groups, start = [], 0
    for group in range(count):
        end = start + base + (group < extra)
        groups.append(items[start:end])
        start = end
    return groups


def vlm_options_from_args(args: Any) -> dict[str, Any]:
    """VlmJudgeConfig overrides from an argparse namespace: attribute `vlm_<field>` (flag
    --vlm-<field>, e.g. --vlm-base-url, --vlm-timeout-s); None means not given."""
    return {field.name: getattr(args, "vlm_" + field.name) for field in fields(VlmJudgeConfig)
            if getattr(args, "vlm_" + field.name, None) is not None}


def vlm_reward(argument: str | None = None, *, replay_from: str | Path | None = None,
               **overrides: Any) -> VlmJudge:
    """The `vlm[:pick|rank|score]` reward: config from the environment and `overrides`."""
    if argument:
        if argument not in MODES:
            raise NoiseAlignError(f"unknown vlm mode {argument!r}; "
                                  "write vlm, vlm:pick, vlm:rank or vlm:score")
        if overrides.get("mode") not in (None, argument):
            raise NoiseAlignError(f"vlm:{argument} contradicts the VLM mode option {overrides['mode']!r}; "
                                  "give the mode once")
        overrides["mode"] = argument
    return VlmJudge(VlmJudgeConfig.from_env(**overrides), replay_from=replay_from)
